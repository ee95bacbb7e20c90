# Scenario "systemd" of the gateway image (bash, run by hil-runner.service; passed in through fw_cfg).
# The guest only reports what it sees, as HIL-FACT lines on the serial console; the host judges them
# (hil/image/tools/judge.py). In order:
#   boot     the shipped otpatchd.service (Type=notify) is active, when it became so, the boot's timestamps
#   install  what sysusers, tmpfiles and StateDirectory= made; who owns the bus name
#   dbus     every mutating method as nobody and as a member of group otpatch (otpatchctl, and dbus-send
#            for the bus's own error), a reading method as nobody
#   window   a whole livepatch window under the shipped unit's hardening (segmentation, mutual TLS, the
#            CMS verifier, the module load and transition, Modbus probes), committed
#   security systemd-analyze security otpatchd
#   watchdog systemctl kill -s STOP otpatchd; until systemd's watchdog has restarted it (new pid, active)
# lib.sh: -u, pipefail, noglob (fact values are printed through unquoted $(q ...) expansions), fact, q, oneline.
. /usr/lib/otpatch-hil/lib.sh
unit() {
  systemctl show otpatchd -p Type,NotifyAccess,ActiveState,SubState,MainPID,NRestarts,WatchdogUSec,Result \
    -p ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic,InactiveExitTimestampMonotonic | tr '\n' ' '
}
# wait_unit SECONDS: until otpatchd is active (0) or failed (1), or SECONDS passed (2)
wait_unit() {
  local end=$(( $(date +%s) + $1 )) st
  while :; do
    st=$(systemctl show -p ActiveState --value otpatchd)
    [[ $st == active ]] && return 0
    [[ $st == failed ]] && return 1
    (( $(date +%s) < end )) || return 2
    sleep 0.25
  done
}

# ---------------------------------------------------------------- boot
wait_unit 150
fact unit phase=boot wait_rc=$? $(unit)
fact manager $(systemctl show -p KernelTimestampMonotonic,InitRDTimestampMonotonic,UserspaceTimestampMonotonic,FinishTimestampMonotonic | tr '\n' ' ')
fact system state=$(systemctl is-system-running) failed_units=$(q "$(systemctl --failed --plain --no-legend | awk '{print $1}' | tr '\n' ',')")
rauc=$(timeout 60 rauc status --output-format=shell 2>&1)
fact boot-slot cmdline_slot=$(q "$(sed -n 's/.*rauc\.slot=\([^ ]*\).*/\1/p' /proc/cmdline)") \
  rauc_booted=$(q "$(sed -n 's/^RAUC_SYSTEM_BOOTED_BOOTNAME=//p' <<<"$rauc" | tr -d "'")") \
  rauc_primary=$(q "$(sed -n 's/^RAUC_BOOT_PRIMARY=//p' <<<"$rauc" | tr -d "'")")
grep -v '^RAUC_SLOT_STATUS_\(CHECKSUM\|INSTALLED\|ACTIVATED\)' <<<"$rauc" | while IFS= read -r l; do echo "HIL-RAUC $l"; done
journalctl -b -u otpatchd -o short-monotonic --no-pager | while IFS= read -r l; do echo "HIL-JOURNAL $l"; done
systemd-analyze critical-chain otpatchd.service --no-pager 2>&1 | while IFS= read -r l; do echo "HIL-CHAIN $l"; done
. /hil/host.env
fact clock guest=$(date +%s) host_made=$HOST_EPOCH

# ---------------------------------------------------------------- install
fact group otpatch=$(q "$(getent group otpatch)")
for p in /var/lib/otpatch /etc/otpatch /etc/otpatch/policy.d /etc/otpatch/trust /run/otpatch; do
  fact path path=$p mode=$(q "$(stat -c '%a %U:%G' "$p" 2>/dev/null || echo missing)")
done
fact mount path=/var/lib/otpatch source=$(q "$(findmnt -n -o SOURCE /var/lib/otpatch)") data=$(q "$(findmnt -n -o SOURCE /data)")
owner=$(dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetConnectionUnixProcessID \
  string:io.otpatch.Daemon1 2>&1 | awk '/uint32/ {print $2}')
fact busname owner_pid="${owner:-none}" main_pid=$(q "$(systemctl show -p MainPID --value otpatchd)")
fact policy-check msg=$(q "$(otpatchctl policy check 2>&1 | oneline)")

# ---------------------------------------------------------------- dbus
useradd --system --no-create-home --shell /usr/sbin/nologin --groups otpatch hil-op
fact user hil-op=$(q "$(id hil-op)")
# ctl USER METHOD ARGS...: one otpatchctl call as USER, its exit code, error name and first output line
ctl() {
  local user=$1 method=$2 out rc
  shift 2
  out=$(runuser -u "$user" -- otpatchctl --json --timeout 20s "$@" 2>&1)
  rc=$?
  fact ctl user="$user" method="$method" rc=$rc error=$(q "$(sed -n 's/.*"name": *"\([^"]*\)".*/\1/p' <<<"$out" | head -n1)") \
    msg=$(q "$(oneline <<<"$out")")
  LAST_OUT=$out
}
# raw USER METHOD ARGS...: the same method through dbus-send, to see the bus's own error
raw() {
  local user=$1 method=$2 out rc
  shift 2
  out=$(runuser -u "$user" -- dbus-send --system --print-reply --reply-timeout=20000 --dest=io.otpatch.Daemon1 \
    /io/otpatch/Daemon1 "io.otpatch.Daemon1.$method" "$@" 2>&1)
  rc=$?
  fact raw user="$user" method="$method" rc=$rc error=$(q "$(sed -n 's/^Error \([^:]*\):.*/\1/p' <<<"$out" | head -n1)") \
    msg=$(q "$(oneline <<<"$out")")
}
later=$(date -u -d '+3 hours' +%Y-%m-%dT%H:%M:%SZ)
for user in nobody hil-op; do
  ctl "$user" ScheduleWindow window schedule --start "$later" --duration 10m
  id=$(sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' <<<"$LAST_OUT" | head -n1)
  [[ -n $id ]] || id=no-such-window
  ctl "$user" CancelWindow window cancel "$id"
  ctl "$user" Apply apply
  ctl "$user" Rollback rollback
  ctl "$user" Reload reload
  ctl "$user" Retry retry 9.9.9
done
raw nobody ScheduleWindow string:"$later" string:10m string:UTC boolean:true
raw nobody CancelWindow string:no-such-window
raw nobody Apply
raw nobody Rollback
raw nobody Reload
raw nobody Retry string:9.9.9
ctl nobody GetStatus status
ctl nobody ListWindows window list
journalctl -b -u otpatchd --no-pager -g 'refused' -o cat | while IFS= read -r l; do fact daemon-refused msg=$(q "$(oneline <<<"$l")"); done

# ---------------------------------------------------------------- window
# A one-off window 5 s from now, followed by otpatchctl watch until it completes.
sampler() {
  local last= cur seg lp
  while :; do
    seg=0; nft list tables 2>/dev/null | grep -q '^table inet otpatch$' && seg=1
    lp=0; [[ -d /sys/kernel/livepatch/otpatch_lp_cmdline ]] && lp=1
    cur="seg=$seg lp=$lp"
    [[ $cur == "$last" ]] || echo "HIL-STATE ms=$(up) $cur"
    last=$cur
    sleep 0.2
  done
}
# The machine and whether its kernel can be live-patched (Debian's arm64 kernel: see judge.py).
fact kernel machine="$(uname -m)" release="$(uname -r)" livepatch_sysfs=$([[ -d /sys/kernel/livepatch ]] && echo 1 || echo 0) \
  config=$(q "$(grep -E '^(# )?CONFIG_(HAVE_)?LIVEPATCH[ =]' "/boot/config-$(uname -r)" 2>/dev/null | paste -sd, -)")
sampler &
SAMPLER=$!
start=$(date -u -d '+6 sec' +%Y-%m-%dT%H:%M:%SZ)
{
  otpatchctl watch --exit-on-complete --max-wait 150s 2>&1
  echo "watch-rc $?"
} | while IFS= read -r l; do echo "HIL-WATCH ms=$(up) $l"; done &
WATCH=$!
sleep 1
wid=$(otpatchctl window schedule --start "$start" --duration 10m 2>&1)
fact window-scheduled rc=$? id=$(q "$(oneline <<<"$wid")") start="$start"
wait "$WATCH"
kill "$SAMPLER" 2>/dev/null
st=$(otpatchctl --json status 2>&1)
fact window-outcome last_outcome=$(q "$(sed -n 's/.*"last_outcome": *"\([^"]*\)".*/\1/p' <<<"$st" | head -n1)") \
  segmentation_active=$(q "$(grep -o '"segmentation_active": *[a-z]*' <<<"$st" | head -n1 | sed 's/.*: *//')")
fact window-after marker=$(q "$(grep -o 'otpatch.livepatch=[^ ]*' /proc/cmdline)") \
  livepatch=$(q "$(cat /sys/kernel/livepatch/otpatch_lp_cmdline/enabled 2>/dev/null || echo none)") \
  tables=$(q "$(nft list tables 2>&1 | oneline)") committed=$(q "$(oneline </var/lib/otpatch/committed.json 2>/dev/null)") \
  audit_verify=$(q "$(otpatchctl log --verify 2>&1 | oneline)")
fact unit phase=after-window $(unit)
journalctl -b -u otpatchd --no-pager -p warning -o cat | while IFS= read -r l; do fact daemon-warning msg=$(q "$(oneline <<<"$l")"); done

# ---------------------------------------------------------------- security
systemd-analyze security otpatchd --no-pager 2>&1 | while IFS= read -r l; do echo "HIL-SECURITY $l"; done
fact security score=$(q "$(systemd-analyze security otpatchd --no-pager 2>&1 | sed -n 's/.*Overall exposure level for otpatchd.service: *\([0-9.]*\).*/\1/p')")

# ---------------------------------------------------------------- watchdog
pid1=$(systemctl show -p MainPID --value otpatchd)
restarts1=$(systemctl show -p NRestarts --value otpatchd)
systemctl kill -s STOP otpatchd
fact stopped pid=$pid1 nrestarts=$restarts1 proc_state=$(q "$(awk '{print $3}' "/proc/$pid1/stat" 2>/dev/null)")
# WatchdogSec=60s, then RestartSec=5s and the new start: bounded at 180 s.
end=$(( $(date +%s) + 180 ))
last=
while (( $(date +%s) < end )); do
  now=$(systemctl show -p ActiveState,SubState,MainPID --value otpatchd | tr '\n' ' ')
  [[ $now == "$last" ]] || fact watchdog-sample state=$(q "$now")
  last=$now
  pid=$(systemctl show -p MainPID --value otpatchd)
  if [[ $pid != "$pid1" && $pid != 0 && $(systemctl show -p ActiveState --value otpatchd) == active ]]; then
    break
  fi
  sleep 0.5
done
fact unit phase=after-watchdog old_pid=$pid1 $(unit)
journalctl -b -u otpatchd --no-pager -o short-monotonic | grep -i -E 'watchdog|signal|Scheduled restart|Started|Main process' |
  while IFS= read -r l; do fact watchdog-journal msg=$(q "$(oneline <<<"$l")"); done
otpatchctl --timeout 20s status >/dev/null 2>&1
fact after-restart status_rc=$? tables=$(q "$(nft list tables 2>&1 | oneline)")
fact system-at-end state=$(systemctl is-system-running) failed_units=$(q "$(systemctl --failed --plain --no-legend | awk '{print $1}' | tr '\n' ',')")
