# Helpers for the otpatchd scenarios (busybox ash; sourced after lib.sh, not run).
# The real otpatchd runs a whole window on the guest's system bus against the host's patch server
# (nginx, mutual TLS) and PLC simulator, both at 10.0.2.2; hil/host.sh put the policy and the
# certificates into /etc/otpatch through this boot's extra cpio. Lines for the host:
#   HIL-WATCH ms=N <line>    each line of `otpatchctl watch`, as it comes (ms: guest boot clock)
#   HIL-STATE ms=N seg=0|1 lp=0|1 marker=0|1
#                            the guest as a sampler sees it every 200 ms, printed on change:
#                            `table inet otpatch` listed, /sys/kernel/livepatch/otpatch_lp_cmdline
#                            present, /proc/cmdline carrying the module's marker
#   HIL-DLOG <line>          otpatchd's own log
#   HIL-AUDIT <line>         the audit log after the window (`otpatchctl log`)

LP_NAME=otpatch_lp_cmdline
STATE_DIR=/var/lib/otpatch
WATCH_RC=
WATCH_PID=
SAMPLER_PID=
DAEMON_PID=

# otp_setup [disk]: the host's files are there, the clock is right; with "disk", /var/lib/otpatch is
# the persistent virtio disk (/dev/vda) instead of the initramfs.
otp_setup() {
  check policy-present test -s /etc/otpatch/policy.toml
  . /hil/host.env
  # Certificates and the signed index have validity periods: the guest's clock (from QEMU's RTC)
  # must be the host's, give or take the seconds the boot took.
  _now=$(date +%s)
  info "guest clock $(date -u +%Y-%m-%dT%H:%M:%SZ), host made this boot at $(date -u -d "@$HOST_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
  check clock-matches-host sh -c "[ $_now -ge $((HOST_EPOCH - 5)) ] && [ $_now -le $((HOST_EPOCH + 120)) ]"
  check policy-valid otpatchctl policy check
  mkdir -p "$STATE_DIR"
  if [ "${1:-}" = disk ]; then
    modprobe virtio_blk
    modprobe ext4
    check state-disk wait_for 5000 test -b /dev/vda
    check state-mounted mount -t ext4 /dev/vda "$STATE_DIR"
    info "state disk: $(ls -A "$STATE_DIR" | tr '\n' ' ')"
  fi
}

# otp_start: the system bus, then otpatchd; returns when otpatchctl status answers.
otp_start() {
  mkdir -p /run/dbus
  check dbus-daemon dbus-daemon --system --fork
  check dbus-socket wait_for 5000 test -S /run/dbus/system_bus_socket
  rm -f /run/otpatchd.fifo
  mkfifo /run/otpatchd.fifo
  # Each log line goes to the console as it comes (echo is a builtin: nothing buffers it).
  (while IFS= read -r l; do echo "HIL-DLOG $l"; done </run/otpatchd.fifo) &
  _t=$(hil_ms)
  NO_COLOR=1 otpatchd --log text >/run/otpatchd.fifo 2>&1 &
  DAEMON_PID=$!
  check otpatchd-ready wait_for 60000 sh -c 'otpatchctl --timeout 5s status >/dev/null 2>&1'
  hil_time otpatchd-start-to-status "$_t"
  otp_sampler &
  SAMPLER_PID=$!
}

otp_sample() {
  _seg=0; nft list tables 2>/dev/null | grep -q '^table inet otpatch$' && _seg=1
  _lp=0; [ -d "/sys/kernel/livepatch/$LP_NAME" ] && _lp=1
  _mk=0; grep -q 'otpatch.livepatch=' /proc/cmdline && _mk=1
  echo "seg=$_seg lp=$_lp marker=$_mk"
}

otp_sampler() {
  _last=
  while :; do
    _cur=$(otp_sample)
    if [ "$_cur" != "$_last" ]; then
      echo "HIL-STATE ms=$(hil_ms) $_cur"
      echo "$_cur" >>/run/hil-states
      _last=$_cur
    fi
    usleep 200000
  done
}

# otp_seen WORD: the sampler saw WORD (e.g. seg=1) at least once.
otp_seen() { grep -q "$1" /run/hil-states 2>/dev/null; }
otp_not_seen() { ! otp_seen "$1"; }

# otp_window: watch first (a window that completes before watch subscribed is not seen), then a
# one-off window starting 3 s from now; waits (bounded) for watch to exit; sets WATCH_RC.
otp_window() {
  otp_window_start "$@"
  otp_window_wait
}

# otp_watch_start: `otpatchctl watch` in the background, each line to the console and /run/watch.log,
# its exit code to /run/watch.rc; returns once it has subscribed.
otp_watch_start() {
  rm -f /run/watch.rc /run/watch.log
  (
    otpatchctl watch --exit-on-complete --max-wait 90s 2>&1 && _rc=0 || _rc=$?
    echo "$_rc" >/run/watch.rc
  ) | while IFS= read -r l; do
    echo "HIL-WATCH ms=$(hil_ms) $l"
    echo "$l" >>/run/watch.log
  done &
  WATCH_PID=$!
  check watch-subscribed wait_for 20000 test -s /run/watch.log
}

# otp_apply_start: runs the open window again (`otpatchctl apply`: a window that has finished may run again
# while it is open), watched like otp_window_start; otp_window_wait waits for it.
otp_apply_start() {
  otp_watch_start
  check apply-started otpatchctl apply
}

# otp_window_start [SECONDS]: the first half of otp_window (watch, schedule a window of SECONDS, default
# 600); sets WINDOW_ID. /run/watch.log fills as the window goes. A one-off window stays scheduled until its
# end, so in a scenario with several windows the next one starts when the previous one ends at the earliest.
OTP_FREE_AT=0
otp_window_start() {
  _secs=${1:-600}
  otp_watch_start
  _at=$(( $(date +%s) + 3 ))
  [ "$_at" -ge "$OTP_FREE_AT" ] || _at=$OTP_FREE_AT
  OTP_FREE_AT=$(( _at + _secs ))
  _start=$(date -u -d "@$_at" +%Y-%m-%dT%H:%M:%SZ)
  WINDOW_ID=$(otpatchctl window schedule --start "$_start" --duration "${_secs}s")
  check window-scheduled test -n "$WINDOW_ID"
  info "window $WINDOW_ID starts $_start"
}

# otp_window_wait: the second half: waits (bounded) for watch to exit; sets WATCH_RC.
otp_window_wait() {
  check watch-exited wait_for 100000 test -s /run/watch.rc
  wait "$WATCH_PID" || true
  WATCH_RC=$(cat /run/watch.rc)
  echo "HIL-TIME what=watch-exit-code ms=$WATCH_RC"
  info "watch exit code $WATCH_RC"
}

# otp_evidence: what the host reads about the gateway after the window (never fails).
otp_evidence() {
  usleep 500000 # one more sampler round after the window closed
  otpatchctl --json status 2>&1 | while IFS= read -r l; do info "status $l"; done || true
  otpatchctl health 2>&1 | while IFS= read -r l; do info "health $l"; done || true
  otpatchctl --json health 2>&1 | while IFS= read -r l; do info "health-json $l"; done || true
  otpatchctl log 2>&1 | while IFS= read -r l; do echo "HIL-AUDIT $l"; done || true
  info "log --verify: $(otpatchctl log --verify 2>&1)"
  info "nft list tables: $(nft list tables 2>&1 | tr '\n' ' ')"
  info "/proc/cmdline: $(cat /proc/cmdline)"
  info "/sys/kernel/livepatch: $(ls -A /sys/kernel/livepatch | tr '\n' ' ')"
  info "modules: $(grep otpatch /proc/modules | cut -d' ' -f1 | tr '\n' ' ')"
  info "state: $(ls -A "$STATE_DIR" | tr '\n' ' ')"
  if [ -s "$STATE_DIR/committed.json" ]; then info "committed.json: $(cat "$STATE_DIR/committed.json" | tr '\n' ' ')"; fi
}

# otp_watch_saw TEXT: a line of the current window's watch output contains TEXT.
otp_watch_saw() { grep -q -- "$1" /run/watch.log 2>/dev/null; }

otp_status_has() { otpatchctl --json status | grep -q "$1"; }
otp_audit_has() { otpatchctl log | grep -q "$1"; }
# The audit records since this daemon started (the log on a state disk holds earlier boots' too).
otp_audit_this_start() { otpatchctl log | awk '$3 == "daemon-start" { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }'; }
otp_no_window_this_start() { ! otp_audit_this_start | grep -q '^[0-9]* [^ ]* transition '; }

# otp_stop: the daemon stops as systemd would stop it (SIGTERM), bounded; the state disk is synced.
otp_stop() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
  if [ -n "$DAEMON_PID" ]; then
    kill -TERM "$DAEMON_PID" 2>/dev/null
    check otpatchd-stopped wait_for 15000 sh -c "! kill -0 $DAEMON_PID 2>/dev/null"
  fi
  sync
  if grep -q " $STATE_DIR " /proc/mounts; then umount "$STATE_DIR" || true; fi
}

# The checks every completed window must pass, whatever its outcome.
otp_common_checks() {
  check segmented-during-window otp_seen 'seg=1'
  check segmentation-lifted sh -c '! nft list tables | grep -q "table inet otpatch"'
  check status-not-segmented otp_status_has '"segmentation_active":false'
  check audit-chain-intact otpatchctl log --verify
}

# The checks of a window whose bundle is refused: it fails (watch exits 10) and nothing ever reaches the kernel.
otp_refused_checks() {
  check watch-exit-10 [ "$WATCH_RC" = 10 ]
  otp_common_checks
  check status-failed otp_status_has '"last_outcome":"failed'
  check never-loaded otp_not_seen 'lp=1'
  check livepatch-empty sh -c '[ -z "$(ls -A /sys/kernel/livepatch)" ]'
  check module-not-loaded module_unloaded $LP_NAME
  check no-marker sh -c '! grep -q otpatch.livepatch= /proc/cmdline'
}

# ---------------------------------------------------------------- the guest's own PLC (CRIU scenarios)
# A critical process in the guest: otpatch-plcsim serving Modbus on 0.0.0.0:1502 (the host reaches it
# through QEMU's hostfwd), commands on 127.0.0.1:1503, holding 0 = 50 (the probe's value) and a
# heartbeat on holding 1 (+1 every second). Started the way a service manager starts a daemon: its own
# session (setsid), stdio on files, never on the console; /run/plc.pid names it.
PLC_PID=

# plc_start [EXTRA-SHELL-REDIRECTIONS]: starts it, waits (bounded) until its control port answers.
plc_start() {
  rm -f /run/plc.pid
  # The subshell's & makes setsid's child an orphan of init (which reaps it), not of this script.
  ( setsid sh -c "echo \$\$ >/run/plc.pid; exec otpatch-plcsim --listen 0.0.0.0:1502 --control 127.0.0.1:1503 \
      -e 'set h 0 u16 50' -e 'heartbeat h 1 1000' ${1:-</dev/null >/run/plc.log 2>&1}" & )
  check plc-started wait_for 10000 plc_up
  PLC_PID=$(cat /run/plc.pid)
  info "plc pid $PLC_PID: $(cat /proc/$PLC_PID/stat | cut -d' ' -f1-8)"
}

# plc COMMAND...: one command to the PLC's control port; its reply line.
plc() { printf '%s\n' "$*" | timeout 3 nc 127.0.0.1 1503 | head -n 1; }

plc_up() { [ -s /run/plc.pid ] && [ "$(plc get h 0)" = 50 ]; }

plc_alive() { [ -d "/proc/$1" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat"; }

# The manifest value of KEY (a number) in a pretty-printed manifest.json.
manifest_num() { sed -n "s/^ *\"$2\": \([0-9][0-9]*\),*$/\1/p" "$1" | head -n 1; }
