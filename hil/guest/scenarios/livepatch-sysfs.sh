# livepatch-sysfs: the whole life of a cumulative livepatch through the kernel's sysfs
# interface, as otpatchd's livepatch backend drives it: load v1, wait for its transition,
# see it work, atomically replace it with v2, disable v2, wait, unload.
LP=/sys/kernel/livepatch
V1=otpatch_lp_cmdline
V2=otpatch_lp_cmdline_v2
TMO=30000 # ms; a transition takes about a second under TCG

check no-marker-before sh -c '! grep -q otpatch.livepatch= /proc/cmdline'

t=$(hil_ms)
check v1-insmod insmod /hil/modules/$V1.ko
hil_time v1-load "$t"
t=$(hil_ms)
check v1-sysfs test -d $LP/$V1
check v1-transition-done wait_for $TMO sysfs_is $LP/$V1/transition 0
hil_time v1-enable-transition "$t"
check v1-enabled sysfs_is $LP/$V1/enabled 1
check v1-marker grep -q 'otpatch.livepatch=v1$' /proc/cmdline
# The patched function still prints the real command line before the marker.
check v1-cmdline-kept grep -q 'otpatch.scenario=livepatch-sysfs' /proc/cmdline
check taint-K sh -c '[ $(( $(cat /proc/sys/kernel/tainted) & 32768 )) -ne 0 ]'
info "cmdline with v1: $(cat /proc/cmdline)"

# Atomic replace: v2 (.replace = true) takes over in one transition; v1's patch is
# released by the kernel (its sysfs directory goes), its module stays until rmmod.
t=$(hil_ms)
check v2-insmod insmod /hil/modules/$V2.ko
hil_time v2-load "$t"
t=$(hil_ms)
check v2-transition-done wait_for $TMO sysfs_is $LP/$V2/transition 0
hil_time v2-replace-transition "$t"
check v1-sysfs-gone wait_for $TMO gone $LP/$V1
check v2-marker grep -q 'otpatch.livepatch=v2$' /proc/cmdline
check v1-marker-gone sh -c '! grep -q "otpatch.livepatch=v1" /proc/cmdline'
t=$(hil_ms)
check v1-rmmod rmmod $V1
hil_time v1-rmmod "$t"

# Revert: disable, wait for the transition back (the directory disappears when it is
# done), then unload.
t=$(hil_ms)
check v2-disable sh -c "echo 0 > $LP/$V2/enabled"
check v2-sysfs-gone wait_for $TMO gone $LP/$V2
hil_time v2-disable-transition "$t"
t=$(hil_ms)
check v2-rmmod rmmod $V2
hil_time v2-rmmod "$t"
check v2-unloaded module_unloaded $V2
check no-marker-after sh -c '! grep -q otpatch.livepatch= /proc/cmdline'
check cmdline-restored grep -q 'otpatch.scenario=livepatch-sysfs' /proc/cmdline
