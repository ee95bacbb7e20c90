# Scenario "ab-health" of the gateway image (issue #18, scenario 4). hil-image: reboots
# hil-image: rauc-bundle full 2.0.0
# hil-image: inject HIL-ASK.break-plc set holding 0 u16 0
# The new slot comes up but the plant does not: a window installs image 2.0.0 into B and reboots into it; while
# otpatchd observes on B the guest asks the host to break the PLC's register (the probe reads 0, below min 10);
# otpatchd marks B bad, makes A primary and reboots; on A the rollback is recorded and A is left good (grubenv).
#   boot 1 (A): window -> rebooting    boot 2 (B): observing -> PLC broken -> rolling-back -> reboot
#   boot 3 (A): rolled-back recorded, powers off
# lib.sh sets -u, pipefail and noglob.
. /usr/lib/otpatch-hil/lib.sh

hil_start
case $N in
  1) ab_window ;;
  2)
    follow_reboot_request
    on_observing() {
      slot_facts observing n="$N"
      echo "HIL-ASK break-plc"
    }
    watch_states 300
    wait_for_shutdown 120
    ;;
  3)
    watch_states 120
    window_report rolled-back
    ;;
esac
