#!/usr/bin/env bash
# Builds the gateway image's base root file system (Debian bookworm, systemd, dbus, RAUC, nftables, CRIU,
# Debian's kernel with a trimmed module tree and a small initramfs) with mmdebstrap into a directory.
# Everything that decides its content is in this file and its arguments: build.sh keys the cache on the
# sha256 of this file, the kernel ABI and the mirror, and runs it only when that key changes.
#
# usage: bash hil/image/rootfs.sh OUT_DIR KVER [ARCH]   (the kernel's ABI comes from bookworm-security;
#        ARCH amd64, the default, or arm64: then maintainer scripts run under qemu-user through binfmt_misc)
# Runs as root with --mode=root (mmdebstrap chroots into OUT_DIR). Never --mode=chrootless as root: it ran
# maintainer scripts against the host.
set -euo pipefail

out=$1 kver=$2 arch=${3:-amd64}
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security
[[ $(id -u) == 0 ]] || { echo "rootfs.sh: run as root" >&2; exit 2; }
[[ ! -e $out ]] || { echo "rootfs.sh: $out exists" >&2; exit 2; }

# systemd and its logind (the reboot), dbus (the system bus otpatchd serves on; dbus-bin: dbus-send),
# udev (by-partlabel links RAUC's slots use), the kernel of the busybox guest's ABI (its livepatch modules
# fit), RAUC with its D-Bus service and grub-editenv (grub-common) for bootloader=grub, squashfs-tools
# (RAUC bundles), zstd (the initramfs), nftables (segmentation), CRIU, e2fsprogs, iproute2, procps, kmod, passwd (useradd).
pkgs=(systemd systemd-sysv dbus dbus-bin udev kmod initramfs-tools zstd "linux-image-$kver" rauc rauc-service
  grub-common squashfs-tools nftables criu e2fsprogs iproute2 procps passwd)
# arm64: GRUB's arm64-efi modules, which the host's grub-mkstandalone builds the ESP's GRUB from.
[[ $arch != arm64 ]] || pkgs+=(grub-efi-arm64-bin)
# Module trees a virtio gateway under QEMU never loads (about half of the modules' size).
trim=(drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet drivers/infiniband drivers/staging
  drivers/bluetooth drivers/isdn drivers/iio drivers/scsi drivers/usb drivers/hid drivers/input/touchscreen
  drivers/net/can drivers/mmc drivers/mtd drivers/misc drivers/platform drivers/hwmon drivers/thunderbolt
  sound net/wireless net/mac80211 net/bluetooth fs/ocfs2 fs/gfs2 fs/xfs fs/btrfs fs/nfs fs/ceph fs/smb fs/f2fs)


inst_conf="$(mktemp)"
trap 'rm -f "$inst_conf"' EXIT
# Set before the kernel's package runs update-initramfs: only the listed modules (the disk and its file
# system), and ext4 named so the initramfs carries and runs fsck.ext4 on the root.
cat >"$inst_conf" <<'CONF'
MODULES=list
FSTYPE=ext4
COMPRESS=zstd
CONF

mmdebstrap --mode=root --variant=minbase --format=directory --architectures="$arch" \
  --include="$(IFS=,; echo "${pkgs[*]}")" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"' \
  --setup-hook="cp '$inst_conf' \"\$1/etc/initramfs-tools/conf.d/otpatch-image.conf\"" \
  --customize-hook="cd \"\$1/usr/lib/modules/$kver/kernel\" && rm -rf ${trim[*]}" \
  --customize-hook="chroot \"\$1\" depmod -a $kver" \
  --customize-hook='printf "%s\n" virtio_pci virtio_blk ext4 crc32c_generic >"$1/etc/initramfs-tools/modules"' \
  --customize-hook="chroot \"\$1\" update-initramfs -u -k $kver" \
  --customize-hook='rm -rf "$1/var/cache/apt/archives/"*.deb "$1/var/lib/apt/lists/"*' \
  bookworm "$out" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main"
