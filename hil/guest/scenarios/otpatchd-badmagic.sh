# otpatchd-badmagic: a correctly signed bundle for the running kernel's release whose module carries a
# forged vermagic (Debian's PREEMPT_RT flavour, made by build.sh): the signature and the manifest pass,
# so only otpatchd's own .modinfo check before finit_module can refuse it. Nothing is loaded.
. /hil/otpatchd.sh

otp_setup
otp_start
otp_window
otp_evidence
check watch-exit-10 [ "$WATCH_RC" = 10 ]
otp_common_checks
check status-failed otp_status_has '"last_outcome":"failed'
check refused-for-vermagic otp_status_has 'vermagic'
check never-loaded otp_not_seen 'lp=1'
check livepatch-empty sh -c '[ -z "$(ls -A /sys/kernel/livepatch)" ]'
check module-not-loaded module_unloaded $LP_NAME
check no-marker sh -c '! grep -q otpatch.livepatch= /proc/cmdline'
otp_stop
