# Scenario "plain-reboots" of the gateway image (bash, run by hil-runner.service on every boot; passed in
# through fw_cfg). hil-image: reboots
# Three ordinary reboots in a row, no update, no window: each boot reports which slot it runs, what RAUC says of
# the slots and what grubenv holds, then reboots (systemctl reboot) until the fourth boot powers off. The host
# judges (hil/image/tools/judge.py) that every boot ran slot A without GRUB running out of bootable slots, i.e.
# that something marked the booted slot good on each ordinary boot (issue #18, scenario 2: who marks good).
set -uo pipefail
set -f
up() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
fact() { echo "HIL-FACT $* up_ms=$(up)"; }
oneline() { tr '\n\t"\\' '    ' | tr -s ' ' | sed 's/ $//' | cut -c1-400; }
q() { printf '"%s"' "$(oneline <<<"$1")"; }

n=$(( $(cat /data/hil-boots 2>/dev/null || echo 0) + 1 ))
echo "$n" >/data/hil-boots
sync
end=$(( $(date +%s) + 150 ))
until [[ $(systemctl show -p ActiveState --value otpatchd) == active ]] || (( $(date +%s) >= end )); do sleep 0.5; done
# Give a mark-good unit or otpatchd the time to have done it (they run at start).
sleep 5
rauc=$(timeout 60 rauc status --output-format=shell 2>&1)
slot_status() { sed -n "s/^RAUC_SLOT_BOOT_STATUS_$1=//p" <<<"$rauc" | tr -d "'"; }
# RAUC numbers the slots in its own order; find A's and B's by bootname.
for i in 1 2; do
  case "$(sed -n "s/^RAUC_SLOT_BOOTNAME_$i=//p" <<<"$rauc" | tr -d "'")" in
    A) a=$(slot_status "$i") ;;
    B) b=$(slot_status "$i") ;;
  esac
done
fact boot n=$n cmdline_slot=$(q "$(sed -n 's/.*rauc\.slot=\([^ ]*\).*/\1/p' /proc/cmdline)") \
  rauc_booted=$(q "$(sed -n 's/^RAUC_SYSTEM_BOOTED_BOOTNAME=//p' <<<"$rauc" | tr -d "'")") \
  rauc_primary=$(q "$(sed -n 's/^RAUC_BOOT_PRIMARY=//p' <<<"$rauc" | tr -d "'")") a_status=$(q "${a:-}") b_status=$(q "${b:-}") \
  otpatchd=$(q "$(systemctl show -p ActiveState --value otpatchd)") \
  grubenv=$(q "$(grub-editenv /boot/efi/EFI/BOOT/grubenv list | grep -v '^#' | tr '\n' ' ')")
if (( n < 4 )); then
  touch /run/hil/no-poweroff
  fact reboot n=$n
  systemctl reboot
fi
