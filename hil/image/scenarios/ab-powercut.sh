# Scenario "ab-powercut@STATE" of the gateway image (issue #18, scenario 5, A/B path). hil-image: reboots
# hil-image: rauc-bundle full 2.0.0
# hil-image: cut
# An A/B window (image 2.0.0 into B, the logind reboot, observation on B); the host kills QEMU (no shutdown) as
# soon as otpatchd reports STATE, on whichever boot that is, then starts the machine again on the same disk.
# The window must end consistently: outcome recorded, segmentation lifted, nothing applied twice, the audit chain
# intact, and RAUC, GRUB and otpatchctl agreeing on one good slot: B with 2.0.0 committed, or A after a rollback.
# lib.sh sets -u, pipefail and noglob.
. /usr/lib/otpatch-hil/lib.sh

hil_start
{ otpatchctl watch --max-wait 10m 2>&1; } | while IFS= read -r l; do echo "HIL-WATCH ms=$(up) $l"; done &
if ((N == 1)); then
  follow_reboot_request
  schedule_window
fi
watch_states 300
# The window is over on this boot (an outcome), or the system goes down for the update's reboot.
if [[ -n $(status_field last_outcome) ]]; then
  final_facts n="$N"
else
  wait_for_shutdown 120
fi
