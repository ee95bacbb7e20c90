# Scenario "months" of the gateway image (issue #18, scenario 6): a gateway's months in one run. hil-image: reboots
# hil-image: rauc-bundle newkernel 3.0.0 image-months-ab
# hil-image: inject HIL-ASK.break-plc set holding 0 u16 0
# hil-image: inject HIL-ASK.heal-plc set holding 0 u16 50
# hil-image: pull-plug HIL-ASK.pull-plug
# hil-image: clock-ahead 3 10800
#   run 1 (A): livepatch v1 (1.0.0; its manifest expires in an hour) committed. The site's server then offers
#              v2 (1.1.0, cumulative); the PLC breaks while v2 is observed: rolled back, v1 active again.
#              The host cuts the power (no shutdown).
#   run 2 (A): v1 re-applied before otpatchd said READY.
#   run 3 (A): the machine's clock is 3 h ahead, past v1's manifest expiry: v1 is still re-applied. The server
#              offers an A/B update: image 3.0.0 with a newer kernel (bookworm-backports' 6.12); installed into
#              B, reboot.
#   run 4 (B): the newer kernel runs; v1 (built for the old kernel) no longer fits: otpatchctl status says so
#              and nothing is loaded; the A/B window commits 3.0.0 after its observation. committed.json keeps
#              v1 beside 3.0.0 (each kind its own record). The site then goes back to slot A, as after an image
#              found bad in the field (`rauc status mark-active other`), and reboots.
#   run 5 (A): A's old kernel runs: v1 is re-applied before READY (it fits again); nothing is missing.
# Each run reports facts; the host judges them (hil/image/tools/judge.py, judge_months).
# lib.sh sets -u, pipefail and noglob.
. /usr/lib/otpatch-hil/lib.sh

# serve_from DIR: the site points the gateway at another directory of its patch server, as a plant engineer
# would for the next release (the policy's [server] url), and otpatchd reloads its policy.
serve_from() {
  sed -i "s#^url = \"\(https://[^/]*\)/[^\"]*\"#url = \"\1/$1/\"#" /etc/otpatch/policy.toml
  local out
  out=$(otpatchctl reload 2>&1)
  fact serve-from n="$N" dir="$1" rc=$? msg=$(q "$out") url=$(q "$(grep '^url' /etc/otpatch/policy.toml)")
  sleep 1
}

# lp_facts TOPIC [key=value...]: the livepatch the kernel runs (sysfs, the marker it prints into /proc/cmdline,
# modules), what otpatchd says it carries and does not, committed.json, the audit log, the clock.
lp_facts() {
  local st topic=$1
  shift
  st=$(otpatchctl --json status 2>/dev/null)
  fact "$topic" n="$N" "$@" outcome=$(q "$(jfield last_outcome <<<"$st")") kernel=$(q "$(uname -r)") \
    livepatches=$(q "$(ls /sys/kernel/livepatch 2>/dev/null | paste -sd, -)") \
    modules=$(grep -c '^otpatch_lp' /proc/modules) marker=$(q "$(grep -o 'otpatch.livepatch=[a-z0-9]*' /proc/cmdline)") \
    not_in_place=$(q "$(tr -d '\n' <<<"$st" | grep -o '"committed_not_in_place": *\[[^]]*\]')") \
    lp_list=$(q "$(otpatchctl livepatch list 2>&1)") committed_json=$(q "$(cat /var/lib/otpatch/committed.json 2>/dev/null)") \
    audit=$(q "$(otpatchctl log --verify 2>&1)") kinds=$(q "$(audit_kinds)") clock="$(date -u +%s)"
}

# reapply_facts: when otpatchd said it re-applied the committed livepatch at this start (its journal line,
# monotonic) and when systemd saw READY=1 (Type=notify).
reapply_facts() {
  local line
  line=$(journalctl -b -u otpatchd -o short-monotonic --no-pager 2>/dev/null | grep -m1 're-applied at start\|could not re-apply')
  fact reapply n="$N" line_s=$(q "$(sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p' <<<"$line")") msg=$(q "$line") \
    ready_us="$(systemctl show -p ActiveEnterTimestampMonotonic --value otpatchd)"
}

# apply_again: runs the open window again (`otpatchctl apply`: the one-off window lasts 20 minutes, the next
# release arrived inside it) and waits (bounded) until otpatchd is at work, so that watch_states does not take
# the last run's outcome for this one's.
apply_again() {
  local end=$(($(date +%s) + 60)) st out
  out=$(otpatchctl apply 2>&1)
  fact apply n="$N" rc=$? msg=$(q "$out")
  while (($(date +%s) < end)); do
    st=$(status_field state)
    [[ -z $st || $st == idle || $st == closed ]] || return 0
    sleep 0.3
  done
  fact error what=apply-did-not-start
}

hil_start
case $N in
  1)
    schedule_window
    watch_states 300
    lp_facts v1
    serve_from image-months-v2
    on_observing() { echo "HIL-ASK break-plc"; }
    apply_again
    watch_states 300
    unset -f on_observing
    lp_facts v2
    echo "HIL-ASK heal-plc"
    sleep 2
    # The power goes: the host kills QEMU on this line. Nothing is synced on purpose.
    touch /run/hil/no-poweroff
    echo "HIL-ASK pull-plug"
    sleep 120
    fact error what=power-not-cut
    ;;
  2)
    reapply_facts
    lp_facts after-cut
    reboot_next "$N"
    ;;
  3)
    reapply_facts
    lp_facts clock-ahead host_epoch="$(sed -n 's/^HOST_EPOCH=//p' /hil/host.env)"
    serve_from image-months-ab
    ab_window
    ;;
  4)
    on_observing() { slot_facts observing n="$N"; }
    watch_states 300
    reapply_facts
    lp_facts new-kernel
    window_report committed
    out=$(timeout 60 rauc status mark-active other 2>&1)
    fact mark-active n="$N" rc=$? msg=$(q "$out")
    reboot_next "$N"
    ;;
  5)
    reapply_facts
    lp_facts back-on-a
    ;;
esac
