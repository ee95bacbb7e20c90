# Helpers of the gateway image's scenarios (hil/image/scenarios/*.sh source it: /usr/lib/otpatch-hil/lib.sh).
# The guest only reports facts on the console (HIL-FACT TOPIC key=value ... up_ms=N); the host judges them.
# Every wait is bounded. Sourcing it sets -u, pipefail and noglob (-f) for the scenario.
set -uo pipefail
set -f

up() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
fact() { echo "HIL-FACT $* up_ms=$(up)"; }
# oneline: stdin as one line, quotes and backslashes removed; q TEXT: TEXT as one quoted fact value.
oneline() { tr '\n\t"\\' '    ' | tr -s ' ' | sed 's/ $//' | cut -c1-1200; }
q() { printf '"%s"' "$(oneline <<<"$1")"; }

# hil_boot: counts this boot on the data partition (it survives slot changes); prints its number.
hil_boot() {
  local n
  n=$(($(cat /data/hil-boots 2>/dev/null || echo 0) + 1))
  echo "$n" >/data/hil-boots
  sync
  echo "$n"
}

# wait_otpatchd [SECONDS]: until systemd calls otpatchd active (Type=notify: READY=1, its D-Bus served).
wait_otpatchd() {
  local end=$(($(date +%s) + ${1:-150}))
  until [[ $(systemctl show -p ActiveState --value otpatchd) == active ]] || (($(date +%s) >= end)); do sleep 0.5; done
}

# jfield NAME: a string field of the JSON object on stdin (otpatchctl's status: no quotes inside the values
# read here).
jfield() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" | head -n1; }
# status_field NAME: one string field of `otpatchctl --json status`.
status_field() { otpatchctl --json status 2>/dev/null | jfield "$1"; }

# slot_facts TOPIC [key=value...]: the slot the kernel and RAUC say runs, RAUC's view of both slots, grubenv,
# the image version of the running slot and what otpatchctl status says.
slot_facts() {
  local rauc a= b= i topic=$1
  shift
  rauc=$(timeout 60 rauc status --output-format=shell 2>&1)
  for i in 1 2; do
    local st
    st=$(sed -n "s/^RAUC_SLOT_BOOT_STATUS_$i=//p" <<<"$rauc" | tr -d "'")
    case "$(sed -n "s/^RAUC_SLOT_BOOTNAME_$i=//p" <<<"$rauc" | tr -d "'")" in
      A) a=$st ;;
      B) b=$st ;;
    esac
  done
  local st
  st=$(otpatchctl --json status 2>/dev/null)
  fact "$topic" "$@" cmdline_slot=$(q "$(sed -n 's/.*rauc\.slot=\([^ ]*\).*/\1/p' /proc/cmdline)") \
    rauc_booted=$(q "$(sed -n 's/^RAUC_SYSTEM_BOOTED_BOOTNAME=//p' <<<"$rauc" | tr -d "'")") \
    rauc_primary=$(q "$(sed -n 's/^RAUC_BOOT_PRIMARY=//p' <<<"$rauc" | tr -d "'")") a_status=$(q "$a") b_status=$(q "$b") \
    image=$(q "$(cat /usr/lib/otpatch-hil/image-version 2>/dev/null)") \
    otpatchd=$(q "$(systemctl show -p ActiveState --value otpatchd)") \
    status_slot=$(q "$(jfield booted_slot <<<"$st")") status_state=$(q "$(jfield state <<<"$st")") \
    outcome=$(q "$(jfield last_outcome <<<"$st")") \
    grubenv=$(q "$(grub-editenv /boot/efi/EFI/BOOT/grubenv list | grep -v '^#' | tr '\n' ' ')")
}

# watch_states SECONDS: prints each state otpatchd passes through (HIL-STATE) until it is closed or idle with
# an outcome, or SECONDS passed; runs HOOK_ON_<state> (a function, if defined) the first time a state is seen.
watch_states() {
  local end=$(($(date +%s) + $1)) last= cur
  while (($(date +%s) < end)); do
    cur=$(status_field state)
    if [[ -n $cur && $cur != "$last" ]]; then
      echo "HIL-STATE ms=$(up) $cur"
      last=$cur
      if declare -F "on_${cur//-/_}" >/dev/null; then "on_${cur//-/_}"; fi
      [[ $cur == closed || $cur == idle ]] && [[ -n $(status_field last_outcome) ]] && return 0
    fi
    sleep 0.3
  done
  return 1
}

# reboot_next N: reports the reboot and asks systemd for it (the host starts the machine again).
reboot_next() {
  touch /run/hil/no-poweroff
  fact reboot n=$1
  systemctl reboot
}

# schedule_window: a one-off window starting 5 s from now, 20 minutes long.
schedule_window() {
  local start wid
  start=$(date -d "@$(($(date +%s) + 5))" '+%Y-%m-%dT%H:%M:%S')
  wid=$(otpatchctl window schedule --start "$start" --duration 20m 2>&1)
  fact window-scheduled rc=$? id=$(q "$wid") start="$start"
}

# wait_for_shutdown SECONDS: after otpatchd asked logind for the reboot the system goes down; if it has not
# within SECONDS, says so (the host then sees no second boot).
wait_for_shutdown() {
  touch /run/hil/no-poweroff
  sleep "$1"
  fact error what=no-reboot-within-"$1"s
  rm -f /run/hil/no-poweroff
}

# audit_kinds: the kinds of the audit log's records, in order, comma-separated; a run of one kind as KIND*N
# (a gateway's months of records stay one console line).
audit_kinds() {
  otpatchctl --json log 2>/dev/null | grep -o '"kind": *"[a-z-]*"' | sed 's/.*"\([a-z-]*\)"$/\1/' | uniq -c |
    awk '{ print ($1 > 1 ? $2 "*" $1 : $2) }' | paste -sd, -
}

# follow_reboot_request: in the background, reports the moment otpatchd asks systemd for the reboot (its
# journal line), which the state poll may not see before the shutdown stops this script.
follow_reboot_request() {
  journalctl -f -n 0 -u otpatchd -o cat 2>/dev/null | grep --line-buffered -m1 'asking systemd for a reboot' |
    while IFS= read -r l; do fact reboot-asked msg=$(q "$l"); done &
}

# final_facts [key=value...]: what must hold after any window, however it ended (power cuts included): the
# outcome, segmentation, livepatches loaded, how often the audit log says the window applied and committed,
# its hash chain, the install record; then the slots (slot_facts final-slots).
final_facts() {
  local st log
  st=$(otpatchctl --json status 2>/dev/null)
  log=$(otpatchctl --json log 2>/dev/null)
  fact final "$@" state=$(q "$(jfield state <<<"$st")") outcome=$(q "$(jfield last_outcome <<<"$st")") \
    seg_active=$(grep -o '"segmentation_active": *[a-z]*' <<<"$st" | head -n1 | sed 's/.*: *//') \
    tables=$(q "$(nft list tables 2>&1)") livepatches=$(q "$(ls /sys/kernel/livepatch 2>/dev/null | paste -sd, -)") \
    modules=$(grep -c '^otpatch_lp' /proc/modules) applying=$(grep -o '"to": *"applying"' <<<"$log" | wc -l) \
    commits=$(grep -o '"kind": *"commit"' <<<"$log" | wc -l) audit=$(q "$(otpatchctl log --verify 2>&1)") \
    committed_json=$(q "$(cat /var/lib/otpatch/committed.json 2>/dev/null)") \
    install_record=$([[ -e /var/lib/otpatch/ab-install.json ]] && echo 1 || echo 0) kinds=$(q "$(audit_kinds)") \
    recovered_from=$(q "$(grep '"kind":"recovery"' /var/lib/otpatch/audit.log 2>/dev/null |
      grep -o '"journal_state":"[a-z-]*"' | cut -d'"' -f4 | paste -sd, -)")
  slot_facts final-slots "$@"
}

# hil_start: what every scenario does first on every boot: counts this run (N), waits for otpatchd, reports the
# slots (fact boot).
hil_start() {
  N=$(hil_boot)
  wait_otpatchd
  slot_facts boot n="$N"
}

# ab_window: on A, a window that installs the patch server's RAUC bundle into B; the system goes down for the
# update's reboot (or, if it does not, says so).
ab_window() {
  follow_reboot_request
  schedule_window
  watch_states 600
  wait_for_shutdown 120
}

# window_report TOPIC: the slots after a window (slot_facts TOPIC) with its audit log (chain, record kinds),
# committed.json and whether the A/B install record is still there.
window_report() {
  slot_facts "$1" n="$N" audit=$(q "$(otpatchctl log --verify 2>&1)") kinds=$(q "$(audit_kinds)") \
    committed_json=$(q "$(cat /var/lib/otpatch/committed.json 2>/dev/null)") \
    install_record=$([[ -e /var/lib/otpatch/ab-install.json ]] && echo 1 || echo 0)
}
