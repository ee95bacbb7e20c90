# Scenario "lp-powercut@STATE" of the gateway image (issue #18, scenario 5, livepatch path). hil-image: reboots
# hil-image: cut
# A livepatch window (the signed 1.0.0 bundle); the host kills QEMU (no shutdown) as soon as otpatchd reports
# STATE (otpatchctl watch's transition, or the state poll), then starts the machine again on the same disk.
# After the boot that follows, the window must have ended consistently: outcome recorded, segmentation lifted,
# nothing applied twice, the audit chain intact (a torn tail set aside), the livepatch loaded only if committed.
# lib.sh sets -u, pipefail and noglob.
. /usr/lib/otpatch-hil/lib.sh

hil_start
if ((N == 1)); then
  { otpatchctl watch --max-wait 10m 2>&1; } | while IFS= read -r l; do echo "HIL-WATCH ms=$(up) $l"; done &
  schedule_window
fi
watch_states 300
final_facts n="$N"
