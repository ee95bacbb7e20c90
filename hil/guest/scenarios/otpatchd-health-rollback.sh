# otpatchd-health-rollback: the patch is applied, then the host's harness breaks the critical register
# (it sees "-> observing" on this console and sends `set holding 0 u16 0` to the PLC simulator): the
# probe trips, otpatchd rolls back (patch disabled and unloaded, marker gone), segmentation is lifted,
# watch exits 9.
. /hil/otpatchd.sh

otp_setup
otp_start
otp_window
otp_evidence
check watch-exit-9 [ "$WATCH_RC" = 9 ]
otp_common_checks
check status-rolled-back otp_status_has '"last_outcome":"rolled-back'
check livepatch-seen-during-window otp_seen 'lp=1'
check marker-seen-during-window otp_seen 'marker=1'
check livepatch-gone sh -c "[ ! -e /sys/kernel/livepatch/$LP_NAME ]"
check module-unloaded module_unloaded $LP_NAME
check marker-gone sh -c '! grep -q otpatch.livepatch= /proc/cmdline'
check probe-tripped sh -c 'otpatchctl health | grep -q TRIPPED'
check nothing-committed sh -c "[ ! -s $STATE_DIR/committed.json ] || ! grep -q '1.0.0' $STATE_DIR/committed.json"
otp_stop
