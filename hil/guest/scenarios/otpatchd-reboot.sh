# otpatchd-reboot: a committed livepatch survives a reboot. Two boots with the same state disk
# (/var/lib/otpatch on /dev/vda). Boot 1: a window commits the patch (as otpatchd-happy), the daemon is
# stopped, the disk unmounted. Boot 2: no window at all; otpatchd finds the patch in committed.json,
# the kernel does not have it, so it re-verifies and loads it before it is ready: the first answer of
# `otpatchctl status` already finds it loaded, and the marker comes with the transition. Boot 2 happens
# months later: the guest clock is moved 400 days on, past the manifest's expiry (180 days by default) and
# the signer certificate's validity; the committed fix is put back all the same (its integrity is checked as
# of its commit), while nothing new could be verified at that clock. And before that, the policy has been
# broken by an edit: the first start refuses to run (no window) but puts the committed fix back first.
. /hil/otpatchd.sh

BOOT=1
for w in $(cat /proc/cmdline); do
  case "$w" in otpatch.boot=*) BOOT="${w#otpatch.boot=}" ;; esac
done
info "boot $BOOT"
otp_setup disk

if [ "$BOOT" = 1 ]; then
  check state-disk-empty sh -c "[ ! -e $STATE_DIR/committed.json ]"
  otp_start
  otp_window
  otp_evidence
  check watch-exit-0 [ "$WATCH_RC" = 0 ]
  otp_common_checks
  check status-committed otp_status_has '"last_outcome":"committed'
  check marker grep -q 'otpatch.livepatch=v1$' /proc/cmdline
  check committed-recorded grep -q '"1.0.0"' "$STATE_DIR/committed.json"
  otp_stop
  mkdir -p /mnt
  check state-on-disk sh -c "mount -t ext4 -o ro /dev/vda /mnt && grep -q '1.0.0' /mnt/committed.json; r=\$?; umount /mnt; exit \$r"
else
  check committed-survived grep -q '"1.0.0"' "$STATE_DIR/committed.json"
  check fresh-kernel-no-livepatch sh -c '[ -z "$(ls -A /sys/kernel/livepatch)" ]'
  check fresh-kernel-no-marker sh -c '! grep -q otpatch.livepatch= /proc/cmdline'
  check clock-moved-400-days date -s "@$(( $(date +%s) + 400 * 86400 ))"
  info "guest clock now $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  # Meanwhile the policy in force was edited into something invalid: otpatchd runs no window and stops with
  # the policy's errors, but first puts back what was committed, under the policy it last started with.
  mkdir -p /etc/otpatch/policy.d
  printf '[limits]\nmax_window = "forever"\n' >/etc/otpatch/policy.d/zz-broken.toml
  _t=$(hil_ms)
  _rc=0
  NO_COLOR=1 otpatchd --log text >/tmp/otpatchd-broken.log 2>&1 || _rc=$?
  hil_time broken-policy-start-to-exit "$_t"
  tail -n 5 /tmp/otpatchd-broken.log | while IFS= read -r l; do info "broken-policy otpatchd: $l"; done
  check broken-policy-refused [ "$_rc" != 0 ]
  check broken-policy-named grep -q 'max_window' /tmp/otpatchd-broken.log
  check broken-policy-reapplied test -d "/sys/kernel/livepatch/$LP_NAME"
  check broken-policy-said-so grep -q '1.0.0 re-applied' /tmp/otpatchd-broken.log
  rm /etc/otpatch/policy.d/zz-broken.toml
  _t=$(hil_ms)
  otp_start
  # Before READY: loaded by the time the daemon first answers on the bus.
  check loaded-before-ready test -d "/sys/kernel/livepatch/$LP_NAME"
  check reapplied-transition wait_for 30000 sysfs_is "/sys/kernel/livepatch/$LP_NAME/transition" 0
  hil_time start-to-patched "$_t"
  otp_evidence
  otp_audit_this_start | while IFS= read -r l; do info "audit since this start: $l"; done
  check livepatch-enabled sysfs_is "/sys/kernel/livepatch/$LP_NAME/enabled" 1
  check marker grep -q 'otpatch.livepatch=v1$' /proc/cmdline
  check cmdline-kept grep -q 'otpatch.boot=2' /proc/cmdline
  check no-window-ran otp_no_window_this_start
  check reapply-audited otp_audit_has ' boot-reapply '
  check no-reapply-failure sh -c '! otpatchctl log | grep -q boot-reapply-failed'

  check no-segmentation sh -c '! nft list tables | grep -q "table inet otpatch"'
  check still-committed otp_status_has '"segmentation_active":false'
  check audit-chain-intact otpatchctl log --verify
  otp_stop
fi
