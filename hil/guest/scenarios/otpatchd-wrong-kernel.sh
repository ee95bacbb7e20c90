# otpatchd-wrong-kernel: a correctly signed bundle whose manifest names another kernel release (Debian's
# PREEMPT_RT flavour of the same ABI): refused before anything is loaded, watch exits 10.
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
