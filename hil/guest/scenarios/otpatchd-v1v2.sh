# otpatchd-v1v2: a rollback keeps the committed fix. Window 1 commits livepatch v1 (1.0.0, marker v1).
# Then the site's patch server offers v2 (1.1.0, the cumulative otpatch_lp_cmdline_v2, marker v2): the
# policy's server url is pointed at that index and reloaded, the open window runs again (`otpatchctl
# apply`), v2 atomically replaces v1 (otpatchd unloads v1's module once the replace finished), and once
# v2 is being observed the scenario asks the host's harness to break the critical register
# ("HIL-INFO break-plc-now"). otpatchd rolls back: v1 is loaded again from its committed bundle and
# replaces v2 in one transition, v2's module is unloaded. At the end v1's marker is in /proc/cmdline,
# `otpatchctl livepatch list` shows v1 1.0.0, committed.json still names 1.0.0.
. /hil/otpatchd.sh

V2_NAME=otpatch_lp_cmdline_v2
otp_setup
otp_start
otp_window 600
check v1-watch-exit-0 [ "$WATCH_RC" = 0 ]
otp_common_checks
check v1-committed otp_status_has '"last_outcome":"committed'
check v1-marker grep -q 'otpatch.livepatch=v1$' /proc/cmdline
check v1-recorded grep -q '"1.0.0"' "$STATE_DIR/committed.json"

# The next release appears on the server: the site points the gateway at it.
check policy-next sed -i 's#/otpatchd-v1v2/#/otpatchd-v1v2-next/#' /etc/otpatch/policy.toml
check policy-next-valid otpatchctl policy check
check reloaded otpatchctl reload
# A reload is applied between windows: wait (bounded) until the daemon serves the new policy's files.
usleep 500000
rm -f /run/hil-states
otp_apply_start
check v2-observing wait_for 90000 otp_watch_saw '-> observing'
check v2-replaced-v1 test -d "/sys/kernel/livepatch/$V2_NAME"
check v2-marker grep -q 'otpatch.livepatch=v2$' /proc/cmdline
check v1-module-unloaded-after-replace wait_for 10000 module_unloaded "$LP_NAME"
info "break-plc-now"
otp_window_wait
otp_evidence
check v2-watch-exit-9 [ "$WATCH_RC" = 9 ]
check status-rolled-back otp_status_has '"last_outcome":"rolled-back'
check v1-back-in-sysfs test -d "/sys/kernel/livepatch/$LP_NAME"
check v1-enabled sysfs_is "/sys/kernel/livepatch/$LP_NAME/enabled" 1
check v1-settled wait_for 30000 sysfs_is "/sys/kernel/livepatch/$LP_NAME/transition" 0
check v1-marker-back grep -q 'otpatch.livepatch=v1$' /proc/cmdline
check v2-gone sh -c "[ ! -e /sys/kernel/livepatch/$V2_NAME ]"
check v2-module-unloaded module_unloaded "$V2_NAME"
check livepatch-list-v1 sh -c "otpatchctl livepatch list | grep '$LP_NAME' | grep -q '1.0.0'"
check still-committed-v1 grep -q '"1.0.0"' "$STATE_DIR/committed.json"
check not-committed-v2 sh -c "! grep -q '1.1.0' $STATE_DIR/committed.json"
check restore-audited otp_audit_has 'rolled-back'
check segmentation-lifted sh -c '! nft list tables | grep -q "table inet otpatch"'
check audit-chain-intact otpatchctl log --verify
otp_stop
