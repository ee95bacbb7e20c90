# Scenario "ab-reboot" of the gateway image (issue #18, scenario 2). hil-image: reboots
# hil-image: rauc-bundle full 2.0.0
# Three plain reboots stay on slot A (otpatchd marks ordinary boots good for RAUC's GRUB scheme, which sets a
# slot's TRY flag on every boot). Then a window installs a RAUC bundle (image 2.0.0) into slot B and otpatchd asks
# logind to reboot inside the window; GRUB boots B; otpatchd observes the plant's health there and only then
# marks B good; three plain reboots stay on B. Each boot reports what the kernel, RAUC, grubenv and otpatchctl
# status say; the host judges (hil/image/tools/judge.py).
#   runs 1-3 (A): plain reboots        run 4 (A): window -> installed -> reboot asked
#   run 5 (B): observing -> committed  runs 6, 7 (B): plain reboots; run 8 (B): powers off
# lib.sh sets -u, pipefail and noglob.
. /usr/lib/otpatch-hil/lib.sh

hil_start
case $N in
  1 | 2 | 3 | 6 | 7) reboot_next "$N" ;;
  4) ab_window ;;
  5)
    # While otpatchd observes the new slot, it is not good yet (grubenv B_TRY=1: RAUC calls it bad).
    on_observing() { slot_facts observing n="$N"; }
    watch_states 300
    window_report committed
    reboot_next "$N"
    ;;
esac
