# livepatch-stall: a transition that cannot finish, and its revert.
# otpatch_lp_stall patches __x64_sys_vfork; vforkpark leaves a parent sleeping
# (killable, state D) below that function until its child exits. The livepatch core
# cannot switch that task, so the transition stays pending, even past the kernel's
# "fake signal" round at 15 s (it wakes only interruptible sleepers).
LP=/sys/kernel/livepatch
P=otpatch_lp_stall
HOLD_S=17 # past the livepatch core's 15 s signal round
TMO=30000

vforkpark 600 &
PARENT=$!
parked() { grep -q '^State:.*D' /proc/$PARENT/status; }
check vfork-parent-parked wait_for 5000 parked
# The vfork child (busybox here has no pgrep): the task whose parent is PARENT.
child_of() {
  for f in /proc/[0-9]*/stat; do
    read -r line <"$f" 2>/dev/null || continue
    set -- ${line##*) } # state ppid ...; comm may hold spaces, so cut after its ")"
    if [ "$2" = "$PARENT" ]; then f=${f#/proc/}; echo "${f%/stat}"; return 0; fi
  done
  return 1
}
CHILD=$(child_of)
info "vfork parent pid=$PARENT child pid=$CHILD; parent's kernel stack: $(tr '\n' ' ' </proc/$PARENT/stack)"
check parent-in-sys_vfork grep -q 'sys_vfork' /proc/$PARENT/stack

# Let the livepatch core say why a task cannot switch (its pr_debug lines, to dmesg).
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
echo 'file kernel/livepatch/transition.c +p' >/sys/kernel/debug/dynamic_debug/control 2>/dev/null ||
  info "no dynamic debug: the kernel will not name the blocking function"

t=$(hil_ms)
check insmod insmod /hil/modules/$P.ko
hil_time load "$t"
check sysfs test -d $LP/$P

# The transition must still be pending at every look for HOLD_S seconds.
t=$(hil_ms)
still_pending() {
  _end=$(( $(hil_ms) + HOLD_S * 1000 ))
  while [ "$(hil_ms)" -lt "$_end" ]; do
    sysfs_is $LP/$P/transition 1 || return 1
    sleep 1
  done
}
check transition-stays-pending still_pending
hil_time held-pending "$t"

# Which tasks are still in the old code: patch_state 0 = unpatched, 1 = patched.
stalled=
for f in /proc/[0-9]*/patch_state; do
  read -r s <"$f" 2>/dev/null || continue
  if [ "$s" = 0 ]; then
    pid=${f#/proc/}; pid=${pid%/patch_state}
    stalled="$stalled $pid($(cat /proc/$pid/comm 2>/dev/null))"
  fi
done
info "tasks still unpatched:$stalled"
check parent-unpatched sysfs_is /proc/$PARENT/patch_state 0
check shell-patched sysfs_is /proc/$$/patch_state 1
check only-parent-stalled test "$stalled" = " $PARENT(vforkpark)"
info "kernel log: $(dmesg | grep -i -e livepatch -e $P | grep -v 'is sleeping on' | tail -n 4 | tr '\n' '|')"
info "kernel says: $(dmesg | grep 'is sleeping on\|unreliable stack' | tail -n 1)"
check kernel-names-parent sh -c "dmesg | grep -q 'vforkpark:$PARENT is sleeping on function'"

# Revert: writing 0 to enabled reverses the transition; the stalled task is already in
# the old code, so the reversal completes and the patch can go.
t=$(hil_ms)
check disable sh -c "echo 0 > $LP/$P/enabled"
check sysfs-gone wait_for $TMO gone $LP/$P
hil_time revert-transition "$t"
t=$(hil_ms)
check rmmod rmmod $P
hil_time rmmod "$t"
check unloaded module_unloaded $P

# Release the parked parent: its child goes, the vfork returns.
kill -9 "$CHILD"
check parent-returns wait_for 5000 sh -c "! kill -0 $PARENT 2>/dev/null || grep -q '^State:.*Z' /proc/$PARENT/status"
wait "$PARENT" || true
