# otpatchd-tampered: the host serves a bundle with one payload byte flipped after signing (the signed
# index names the tampered file's own SHA-256, so the download succeeds): otpatchd refuses it at
# verification, nothing is loaded, segmentation is lifted, watch exits 10.
. /hil/otpatchd.sh

otp_setup
otp_start
otp_window
otp_evidence
check watch-exit-10 [ "$WATCH_RC" = 10 ]
otp_common_checks
check status-failed otp_status_has '"last_outcome":"failed'
check never-loaded otp_not_seen 'lp=1'
check livepatch-empty sh -c '[ -z "$(ls -A /sys/kernel/livepatch)" ]'
check module-not-loaded module_unloaded $LP_NAME
check no-marker sh -c '! grep -q otpatch.livepatch= /proc/cmdline'
otp_stop
