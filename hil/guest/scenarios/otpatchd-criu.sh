# otpatchd-criu: a window with a critical process, through the real otpatchd and the real CRIU. The guest's
# PLC (otpatch-plcsim, policy [process.plc] exe = ...) is checkpointed before the patch goes in; once the
# window observes, its state is changed (a register written, and the heartbeat counts on) and the operator
# rolls back: the PLC comes back from the images with the same pid, the written register back at its
# checkpointed value, the heartbeat continuing from the checkpointed count, served over Modbus to the host
# (hostfwd). The images stay after the rollback. A second window commits: the first window's images are
# removed when it checkpoints, its own after the commit, and the PLC's health probe is green throughout.
. /hil/otpatchd.sh

CK=$STATE_DIR/checkpoints
otp_setup
plc_start
check plc-not-on-a-tty sh -c "! ls -l /proc/$PLC_PID/fd | grep -q -e /dev/console -e /dev/tty -e /dev/pts"
plc set h 7 u16 7 >/dev/null
echo "HIL-ASK modbus tag=before start=0 count=8"
otp_start

# ---- window 1: checkpoint, change, operator rollback, restore
otp_window_start 30
check window1-observing wait_for 60000 otp_watch_saw '-> observing'
W1=$WINDOW_ID
check w1-checkpoint-manifest test -s "$CK/$W1/plc/manifest.json"
check w1-pid-in-manifest grep -q "\"pid\": $PLC_PID," "$CK/$W1/plc/manifest.json"
# The state moves on after the checkpoint: a register write, and a few more heartbeats.
check state-changed [ "$(plc set h 7 u16 999)" = ok ]
usleep 2500000
BEFORE=$(plc get h 1)
info "before rollback: heartbeat $BEFORE, h7 $(plc get h 7)"
check operator-rollback otpatchctl rollback
otp_window_wait
check w1-rolled-back otp_status_has '"last_outcome":"rolled-back'
info "window 1 watch exit code $WATCH_RC"
check same-pid plc_alive "$PLC_PID"
AFTER=$(plc get h 1)
info "after restore: pid $PLC_PID $(cut -d' ' -f1-3 /proc/$PLC_PID/stat), heartbeat $AFTER, h7 $(plc get h 7)"
check heartbeat-from-checkpoint [ "$AFTER" -lt "$BEFORE" ]
check register-restored [ "$(plc get h 7)" = 7 ]
heartbeat_above() { [ "$(plc get h 1)" -gt "$1" ]; }
check heartbeat-continues wait_for 5000 heartbeat_above "$AFTER"
check same-exe [ "$(readlink /proc/$PLC_PID/exe)" = /usr/bin/otpatch-plcsim ]
check images-kept test -s "$CK/$W1/plc/manifest.json"
check restore-log grep -q 'Restore finished successfully' "$CK/$W1/plc/restore.log"
check livepatch-reverted sh -c "[ ! -e /sys/kernel/livepatch/$LP_NAME ]"
# The host reads the restored PLC over Modbus, then writes 4242 to holding 9 to say so.
echo "HIL-ASK modbus tag=after-restore start=0 count=8 write=9:4242"
host_marked() { [ "$(plc get h 9)" = 4242 ]; }
check host-read-after-restore wait_for 15000 host_marked
M=$CK/$W1/plc/manifest.json
echo "HIL-TIME what=criu-dump ms=$(manifest_num "$M" dump_ms)"
echo "HIL-TIME what=criu-frozen ms=$(( $(manifest_num "$M" frozen_us) / 1000 ))"
echo "HIL-TIME what=criu-freezing ms=$(( $(manifest_num "$M" freezing_us) / 1000 ))"

# ---- window 2: commits; images of window 1 removed at its checkpoint, its own after the commit. The version was
# rolled back here, so the next window does not install it on its own: the operator says so first.
check rolled-back-recorded otp_status_has '"rolled_back"'
check operator-retry otpatchctl retry 1.0.0
otp_window
W2=$WINDOW_ID
otp_evidence
check w2-watch-exit-0 [ "$WATCH_RC" = 0 ]
check w2-committed otp_status_has '"last_outcome":"committed'
check w1-images-removed gone "$CK/$W1"
check w2-images-removed gone "$CK/$W2"
check plc-still-same-pid plc_alive "$PLC_PID"
check plc-probe-read sh -c 'otpatchctl health | grep -q guest-plc'
check plc-probe-not-tripped sh -c '! otpatchctl health | grep guest-plc | grep -q TRIPPED'
check audit-has-checkpoint otp_audit_has checkpointed
otp_common_checks
otp_stop
