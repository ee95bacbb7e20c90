# vermagic-mismatch: the forged module (the v1 livepatch with the vermagic of Debian's
# PREEMPT_RT flavour of the same ABI, made by build.sh) is a real mismatch: the kernel
# refuses it, while the same module with its true vermagic loads.
GOOD=/hil/modules/otpatch_lp_cmdline.ko
BAD=/hil/modules/otpatch_lp_cmdline_badmagic.ko
LP=/sys/kernel/livepatch/otpatch_lp_cmdline

vermagic() { strings "$1" | sed -n 's/^vermagic=//p'; }
KREL=$(uname -r)
info "running kernel: $KREL"
info "good vermagic: $(vermagic $GOOD)"
info "bad vermagic:  $(vermagic $BAD)"
check good-matches sh -c "strings $GOOD | grep -q '^vermagic=$KREL '"
check bad-differs sh -c "! strings $BAD | grep -q '^vermagic=$KREL '"

out=$(insmod $BAD 2>&1) && rc=0 || rc=$?
info "insmod of the forged module: rc=$rc: $out"
check kernel-refuses test "$rc" -ne 0
check refusal-is-vermagic sh -c "dmesg | grep -q 'version magic'"
info "kernel log: $(dmesg | grep 'version magic' | tail -n 1)"
check not-loaded module_unloaded otpatch_lp_cmdline
check no-sysfs gone $LP

# Control: the genuine module loads, and goes again.
check good-insmod insmod $GOOD
check good-transition wait_for 30000 sysfs_is $LP/transition 0
check good-disable sh -c "echo 0 > $LP/enabled"
check good-sysfs-gone wait_for 30000 gone $LP
check good-rmmod rmmod otpatch_lp_cmdline
