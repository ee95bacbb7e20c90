# otpatchd-happy: a whole window through the real otpatchd: the window arms, segmentation goes up, the
# bundle comes over mutual TLS from the host's nginx and is verified, the livepatch is applied, the
# health probe (the host's PLC simulator) stays green through the observation, the window commits and
# segmentation is lifted; /proc/cmdline then carries the module's marker.
. /hil/otpatchd.sh

otp_setup
check no-marker-before sh -c '! grep -q otpatch.livepatch= /proc/cmdline'
otp_start
otp_window
otp_evidence
check watch-exit-0 [ "$WATCH_RC" = 0 ]
otp_common_checks
check status-committed otp_status_has '"last_outcome":"committed'
check livepatch-seen-during-window otp_seen 'lp=1'
check livepatch-enabled sysfs_is /sys/kernel/livepatch/$LP_NAME/enabled 1
check livepatch-settled sysfs_is /sys/kernel/livepatch/$LP_NAME/transition 0
check marker grep -q 'otpatch.livepatch=v1$' /proc/cmdline
check cmdline-kept grep -q 'otpatch.scenario=otpatchd-happy' /proc/cmdline
check committed-recorded grep -q '"1.0.0"' "$STATE_DIR/committed.json"
check health-read otpatchctl health
check probe-not-tripped sh -c '! otpatchctl health | grep -q TRIPPED'
otp_stop
