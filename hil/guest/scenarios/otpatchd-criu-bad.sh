# otpatchd-criu-bad: the ways a checkpoint or a restore must fail, each clearly and with no process lost.
# One boot, one window through the real otpatchd and CRIU, run four times (`otpatchctl apply` runs a finished
# window again while it is open); the policy's critical process is whatever /run/plc.pid names:
#   1. the PLC holds the console             -> preflight refuses it, naming the terminal; it keeps running
#   2. the pidfile names a process that exited -> preflight refuses, naming the pid
#   3. the images' file system is a 4 MiB tmpfs -> the checkpoint fails on free space before CRIU runs; the
#      window fails before any change, the PLC untouched
#   4. an image is damaged after the checkpoint -> the operator's rollback reverts the patch, refuses the
#      restore (RollbackFailed, naming the file) and leaves the running PLC alone
. /hil/otpatchd.sh

CK=$STATE_DIR/checkpoints

# ---- 1: a PLC on the console (started first: the policy names its pidfile, which must exist)
plc_start '</dev/console >/dev/console 2>&1'
TTY_PID=$PLC_PID
otp_setup
otp_start
otp_window
W=$WINDOW_ID
check tty-window-failed otp_status_has '"last_outcome":"failed'
check tty-reason otp_status_has "process plc (pid $TTY_PID) holds a terminal (fd 0 -> /dev/console)"
check tty-before-segmentation otp_not_seen 'seg=1'
check tty-plc-still-running plc_alive "$TTY_PID"
check tty-plc-still-serving [ "$(plc get h 0)" = 50 ]
kill "$TTY_PID"
check tty-plc-stopped wait_for 5000 sh -c "[ ! -d /proc/$TTY_PID ]"

# ---- 2: the pidfile names a process that has exited
plc_start
GOOD_PID=$PLC_PID
sh -c 'echo $$ >/run/exited.pid'
DEAD=$(cat /run/exited.pid)
echo "$DEAD" >/run/plc.pid
otp_apply_start
otp_window_wait
check exited-window-failed otp_status_has '"last_outcome":"failed'
check exited-reason otp_status_has "process plc (pid $DEAD) does not exist: it has exited"
echo "$GOOD_PID" >/run/plc.pid

# ---- 3: no space for the images
mkdir -p "$CK"
mount -t tmpfs -o size=4m tmpfs "$CK"
otp_apply_start
otp_window_wait
check nospace-window-failed otp_status_has '"last_outcome":"failed'
check nospace-reason otp_status_has 'not enough space for the checkpoint images'
check nospace-never-patched otp_not_seen 'lp=1'
check nospace-plc-untouched plc_alive "$GOOD_PID"
check nospace-plc-serving [ "$(plc get h 0)" = 50 ]
check nospace-no-images sh -c "[ -z \"\$(find $CK -name '*.img')\" ]"
umount "$CK"

# ---- 4: a damaged image at restore
plc set h 7 u16 7 >/dev/null
otp_apply_start
check damaged-observing wait_for 60000 otp_watch_saw '-> observing'
IMG=$CK/$W/plc/core-$GOOD_PID.img
check damaged-image-there test -s "$IMG"
printf 'XXXX' | dd of="$IMG" bs=1 seek=40 conv=notrunc 2>/dev/null
plc set h 7 u16 999 >/dev/null
check damaged-operator-rollback otpatchctl rollback
otp_window_wait
check damaged-window-failed otp_status_has '"last_outcome":"failed'
check damaged-rollback-failed otp_status_has 'rollback failed: restore'
check damaged-reason otp_status_has "core-$GOOD_PID.img: content changed since the dump"
check damaged-nothing-stopped otp_status_has 'nothing was stopped'
check damaged-patch-reverted sh -c "[ ! -e /sys/kernel/livepatch/$LP_NAME ]"
check damaged-plc-same-pid plc_alive "$GOOD_PID"
check damaged-plc-not-rolled-back [ "$(plc get h 7)" = 999 ]
check damaged-images-kept test -s "$CK/$W/plc/manifest.json"
otp_evidence
otp_common_checks
otp_stop
