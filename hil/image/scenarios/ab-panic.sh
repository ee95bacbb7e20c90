# Scenario "ab-panic" of the gateway image (issue #18, scenario 3). hil-image: reboots
# hil-image: rauc-bundle panic 2.0.0
# The new slot does not come up: a window installs an image whose root has no init into B and reboots into it;
# the initramfs finds no init and panics (panic=5 reboots), so nothing runs there and this script does not
# either. GRUB finds B's one try used and boots A; otpatchd records the rollback naming the slot and the image
# actually running (os-release IMAGE_VERSION), marks B bad and leaves A good (grubenv: A first, A_OK=1 A_TRY=0,
# B_OK=0: GRUB's next choice is A).
#   boot 1 (A): window -> rebooting    boot 2 (B): kernel, initramfs, panic, reboot (no scenario run)
#   scenario run 2 (A): rolled-back recorded, powers off
# lib.sh sets -u, pipefail and noglob.
. /usr/lib/otpatch-hil/lib.sh

hil_start
case $N in
  1) ab_window ;;
  2)
    watch_states 120
    window_report rolled-back
    ;;
esac
