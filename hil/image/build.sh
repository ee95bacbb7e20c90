#!/usr/bin/env bash
# Builds the gateway image into hil/build/image/: a GPT disk (EFI system partition with a standalone GRUB
# implementing RAUC's GRUB scheme, root file system slots A and B, a data partition for /data and
# /var/lib/otpatch), assembled without loop devices or mounts. Slot A is Debian bookworm (rootfs.sh, cached
# by a key of its inputs) with the release otpatchd, otpatchctl and otpatch-plcsim installed the way the
# Yocto recipe installs them, from the same daemon/dist/ files; slot B starts empty (an update fills it).
#
#   rootfs-KEY/      rootfs.sh's output; KEY = sha256 of rootfs.sh and the kernel ABI
#   disk-KEY2.img    the disk (sparse); KEY2 = sha256 of KEY, the binaries and every file put into the image
#   disk.img         a link to the newest disk-KEY2.img (run.sh copies it per boot)
#   update-KEY2/     what RAUC bundles for the A/B scenarios carry (run.sh signs them per run, with its PKI):
#     full.ext4      slot A's file system as image version 2.0.0 (an update that boots and runs otpatchd)
#     panic.ext4     a kernel and initramfs and no init: a slot whose system never comes up (panic=5 reboots)
#     newkernel.ext4 slot A's file system as image 3.0.0 with bookworm-backports' newer kernel instead of its own
#   debs/            that kernel's package (downloaded once)
#
# usage: bash hil/image/build.sh    (root; needs mmdebstrap, mtools, dosfstools, fdisk, e2fsprogs,
#                                    grub-efi-amd64-bin, grub-common, and target/release/ built)
#   HIL_ARCH=arm64 builds the arm64 image into hil/build/image-arm64/ instead: Debian's arm64 packages (their
#   maintainer scripts run under qemu-user-static, registered with binfmt_misc), the binaries cross-compiled
#   into target/aarch64-unknown-linux-gnu/release/, GRUB for arm64-efi from the image's own
#   grub-efi-arm64-bin. Its updates are full and panic (the newer-kernel image is made for amd64 only).
set -euo pipefail

IMG="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HIL="$(dirname "$IMG")"
REPO="$(dirname "$HIL")"
ARCH="${HIL_ARCH:-amd64}"
case $ARCH in
  amd64) OUT="$HIL/build/image" REL="$REPO/target/release" ;;
  arm64) OUT="$HIL/build/image-arm64" REL="$REPO/target/aarch64-unknown-linux-gnu/release" ;;
  *) echo "HIL_ARCH=$ARCH: amd64 or arm64" >&2; exit 2 ;;
esac
# What runs on the build host (completions, man pages): the host's own otpatchctl.
HOSTCTL="$REPO/target/release/otpatchctl"
mkdir -p "$OUT"

say() { printf '[image-build] %s\n' "$*"; }
die() { printf '[image-build] error: %s\n' "$*" >&2; exit 1; }
T0=$(date +%s%N)
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

for tool in mmdebstrap mkfs.ext4 mkfs.fat mmd mcopy sfdisk grub-mkstandalone grub-editenv sha256sum; do
  command -v "$tool" >/dev/null ||
    die "$tool is missing (apt-get install -y --no-install-recommends mmdebstrap mtools dosfstools fdisk e2fsprogs grub-efi-amd64-bin grub-common)"
done
for b in otpatchd otpatchctl otpatch-plcsim; do
  [[ -x "$REL/$b" ]] || die "$REL/$b is missing: cargo build --release -p otpatchd -p otpatchctl -p otpatch-plcsim$([[ $ARCH == amd64 ]] || echo " --target aarch64-unknown-linux-gnu")"
done
[[ -x $HOSTCTL ]] || die "$HOSTCTL is missing: cargo build --release -p otpatchctl"
if [[ $ARCH == arm64 ]]; then
  [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] ||
    die "arm64 programs do not run here: apt-get install -y qemu-user-static, then register /usr/lib/binfmt.d/qemu-aarch64.conf with /proc/sys/fs/binfmt_misc/register"
fi

# The kernel ABI: the busybox guest's (hil/build/kver), so the livepatch modules built for it fit here too.
if [[ -s "$HIL/build/kver" ]]; then
  KVER="$(cat "$HIL/build/kver")"
else
  KVER="$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1)"
  [[ -n "$KVER" ]] || die "apt-cache knows no linux-image-amd64: run 'apt-get update' first"
fi
# arm64: the same ABI's arm64 flavour (Debian builds both from one source).
[[ $ARCH == amd64 ]] || KVER="${KVER%-amd64}-arm64"

# ---------------------------------------------------------------- base root file system (cached)
KEY="$( { sha256sum <"$IMG/rootfs.sh"; echo "$KVER"; } | sha256sum | cut -c1-16)"
BASE="$OUT/rootfs-$KEY"
if [[ -e "$BASE/.done" ]]; then
  say "rootfs: cached ($KEY, kernel $KVER)"
else
  t=$(date +%s%N)
  rm -rf "$BASE" "$BASE.tmp"
  bash "$IMG/rootfs.sh" "$BASE.tmp" "$KVER" "$ARCH" >"$OUT/rootfs.log" 2>&1 ||
    { tail -n 30 "$OUT/rootfs.log" >&2; die "mmdebstrap failed (log: $OUT/rootfs.log)"; }
  touch "$BASE.tmp/.done"
  mv "$BASE.tmp" "$BASE"
  for old in "$OUT"/rootfs-*; do
    [[ "$old" == "$BASE" ]] || rm -rf "$old"
  done
  say "rootfs: built $KEY in $(ms "$t") ms ($(du -sm "$BASE" | cut -f1) MB)"
fi

# ---------------------------------------------------------------- the newer kernel (cached by its name)
# The newest kernel of bookworm-backports, for the image an A/B update brings in the months scenario. apt with
# a list of its own (the host's sources and caches are not touched); the package is kept in $OUT/debs.
KV2=none
if [[ $ARCH == amd64 ]]; then
  APTD="$OUT/apt-backports"
  mkdir -p "$APTD/lists/partial" "$OUT/debs"
  echo "deb http://deb.debian.org/debian bookworm-backports main" >"$APTD/sources.list"
  aopt=(-o "Dir::Etc::SourceList=$APTD/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APTD/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
  KV2_DEB=$(find "$OUT/debs" -name 'linux-image-6.*-amd64_*.deb' | sort -V | tail -n1)
  if [[ -z $KV2_DEB ]]; then
    t=$(date +%s%N)
    apt-get "${aopt[@]}" -qq update || die "apt-get update of bookworm-backports failed"
    kv2="$(apt-cache "${aopt[@]}" depends linux-image-amd64 2>/dev/null |
      sed -n 's/^ *Depends: linux-image-\(6[^ ]*-amd64\)$/\1/p' | head -n1)"
    [[ -n $kv2 ]] || die "bookworm-backports names no linux-image-amd64 kernel"
    (cd "$OUT/debs" && apt-get "${aopt[@]}" -qq download "linux-image-$kv2" 2>/dev/null) ||
      die "downloading linux-image-$kv2 from bookworm-backports failed"
    KV2_DEB=$(find "$OUT/debs" -name "linux-image-${kv2}_*.deb" | head -n1)
    say "newer kernel: downloaded linux-image-$kv2 in $(ms "$t") ms"
  fi
  KV2=$(dpkg-deb -f "$KV2_DEB" Package | sed 's/^linux-image-//')
fi

# ---------------------------------------------------------------- the disk (keyed on everything in it)
# Every file the image takes from the repository; the key changes when any of them does.
INPUTS=("$REL/otpatchd" "$REL/otpatchctl" "$REL/otpatch-plcsim" "$IMG/build.sh"
  "$REPO/policies/vendor/00-defaults.toml" "$REPO/yocto/meta-otpatch/templates/rauc-conf/files/system.conf")
mapfile -t -O "${#INPUTS[@]}" INPUTS < <(find "$REPO/daemon/dist" "$IMG/guest" "$IMG/grub" -type f | LC_ALL=C sort)
KEY2="$( { echo "$KEY $KV2"; sha256sum "${INPUTS[@]}" | cut -d' ' -f1; } | sha256sum | cut -c1-16)"
DISK="$OUT/disk-$KEY2.img"
UPD="$OUT/update-$KEY2"
if [[ -s "$DISK" && -s "$UPD/full.ext4" && -s "$UPD/panic.ext4" && ( $ARCH != amd64 || -s "$UPD/newkernel.ext4" ) ]]; then
  say "disk: up to date ($KEY2)"
  ln -sf "$(basename "$DISK")" "$OUT/disk.img"
  ln -sfn "$(basename "$UPD")" "$OUT/update"
  exit 0
fi

# What the build holds at its peak (the staged tree, slot A, the updates, the disk): about 2.5 GiB. A full disk
# fails it halfway with a flood of cp/mkfs errors, so it is told here, before anything is written.
need_mb=3072
avail_mb=$(df -Pm "$OUT" | awk 'NR == 2 { print $4 }')
[[ -z $avail_mb ]] || (( avail_mb >= need_mb )) ||
  die "the image build needs about $need_mb MiB free under $OUT; the file system has $avail_mb MiB free"
W="$OUT/work"
rm -rf "$W"
mkdir -p "$W"
ST="$W/slot-a"
t=$(date +%s%N)
cp -a "$BASE" "$ST"
rm -f "$ST/.done"
say "stage: copied the rootfs in $(ms "$t") ms"

# ---- otpatch, as meta-otpatch's otpatch_git.bb installs it (packages otpatchd and otpatchctl; paths for
# bindir=/usr/bin, systemd_system_unitdir=/usr/lib/systemd/system, datadir=/usr/share, nonarch_libdir=/usr/lib).
# yocto/tests/test_layer.py checks that every daemon/dist/ file the recipe installs is installed here to
# the same path. otpatchd-criu (the CRIU drop-in) is not part of this image: its unit runs with the shipped
# hardening.
D=daemon/dist
# one line per file: SOURCE (relative to the repository) DESTINATION MODE
OTPATCH_FILES="
$D/otpatchd.service /usr/lib/systemd/system/otpatchd.service 0644
$D/io.otpatch.Daemon1.conf /usr/share/dbus-1/system.d/io.otpatch.Daemon1.conf 0644
$D/io.otpatch.Daemon1.xml /usr/share/dbus-1/interfaces/io.otpatch.Daemon1.xml 0644
$D/otpatch.sysusers.conf /usr/lib/sysusers.d/otpatch.conf 0644
$D/otpatch.tmpfiles.conf /usr/lib/tmpfiles.d/otpatch.conf 0644
policies/vendor/00-defaults.toml /usr/lib/otpatch/policy.d/00-defaults.toml 0644
"
while read -r src dst mode; do
  [[ -n "$src" ]] || continue
  install -D -m "$mode" "$REPO/$src" "$ST$dst"
done <<<"$OTPATCH_FILES"
install -D -m 0755 "$REL/otpatchd" "$ST/usr/bin/otpatchd"
install -D -m 0755 "$REL/otpatchctl" "$ST/usr/bin/otpatchctl"
install -d "$ST/etc/otpatch/policy.d"
install -d "$ST/usr/share/bash-completion/completions" "$ST/usr/share/zsh/site-functions" \
  "$ST/usr/share/fish/vendor_completions.d"
"$HOSTCTL" completions bash >"$ST/usr/share/bash-completion/completions/otpatchctl"
"$HOSTCTL" completions zsh >"$ST/usr/share/zsh/site-functions/_otpatchctl"
"$HOSTCTL" completions fish >"$ST/usr/share/fish/vendor_completions.d/otpatchctl.fish"
"$HOSTCTL" man --out "$ST/usr/share/man/man1" >/dev/null
# SYSTEMD_SERVICE:otpatchd: enabled (systemd.bbclass does `systemctl enable` at rootfs time).
ln -sf /usr/lib/systemd/system/otpatchd.service "$ST/etc/systemd/system/multi-user.target.wants/otpatchd.service"
# The PLC simulator is a test peer (never in the recipe): the guest's own soft-PLC for later scenarios.
install -D -m 0755 "$REL/otpatch-plcsim" "$ST/usr/bin/otpatch-plcsim"
# The group otpatch is not added here: systemd-sysusers creates it from otpatch.conf at boot (the scenario
# checks it). The Yocto image adds it at build time as well (useradd), for read-only root file systems.

# ---- RAUC: meta-otpatch's system.conf template, filled in as its bbappend does. Into /etc/rauc: Debian's
# RAUC 1.8 reads only /etc/rauc/system.conf ("Failed to load system config (/etc/rauc/system.conf)"
# otherwise); newer RAUC also reads /usr/lib/rauc/system.conf, where meta-rauc's rauc-conf installs it. The
# keyring (path=ca.cert.pem, next to it) is the site's signing root, put there per run by provisioning.
install -d "$ST/etc/rauc"
sed -e 's,@OTPATCH_COMPATIBLE@,hil-gw,g' -e 's,@OTPATCH_RAUC_BOOTLOADER@,grub,g' \
  -e 's,@OTPATCH_RAUC_SLOT_A@,/dev/disk/by-partlabel/rootfs-a,g' \
  -e 's,@OTPATCH_RAUC_SLOT_B@,/dev/disk/by-partlabel/rootfs-b,g' \
  "$REPO/yocto/meta-otpatch/templates/rauc-conf/files/system.conf" >"$ST/etc/rauc/system.conf"
# bootloader=grub needs the environment file's path; on the ESP, as GRUB reads it.
sed -i '/^bootloader=/a grubenv=/boot/efi/EFI/BOOT/grubenv' "$ST/etc/rauc/system.conf"

# ---- the machine: mounts, network, console, and the test harness's units (hil/image/guest/).
cat >"$ST/etc/fstab" <<'EOF'
# Made by hil/image/build.sh. The root is the slot GRUB booted (root=PARTUUID= on the command line).
PARTLABEL=esp      /boot/efi         vfat  umask=0077,flush  0 2
PARTLABEL=data     /data             ext4  defaults          0 2
/data/otpatch      /var/lib/otpatch  none  bind,x-systemd.requires-mounts-for=/data  0 0
EOF
install -d "$ST/boot/efi" "$ST/data" "$ST/var/lib/otpatch"
echo hil-gw >"$ST/etc/hostname"
install -D -m 0644 /dev/stdin "$ST/etc/systemd/network/10-qemu.network" <<'EOF'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
EOF
ln -sf /usr/lib/systemd/system/systemd-networkd.service "$ST/etc/systemd/system/multi-user.target.wants/"
install -d "$ST/etc/systemd/system/sockets.target.wants" "$ST/etc/systemd/system/network-online.target.wants"
ln -sf /usr/lib/systemd/system/systemd-networkd.socket "$ST/etc/systemd/system/sockets.target.wants/"
ln -sf /usr/lib/systemd/system/systemd-networkd-wait-online.service \
  "$ST/etc/systemd/system/network-online.target.wants/"
# Nothing periodic competes with the scenarios for the emulated CPU; no login prompts on the console.
for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
  e2scrub_reap.service getty@tty1.service serial-getty@ttyS0.service serial-getty@ttyAMA0.service; do
  ln -sf /dev/null "$ST/etc/systemd/system/$u"
done
rm -f "$ST/etc/systemd/system/timers.target.wants/"* "$ST/etc/systemd/system/getty.target.wants/"*
echo qemu_fw_cfg >"$ST/etc/modules-load.d/hil.conf"
install -D -m 0755 "$IMG/guest/provision.sh" "$ST/usr/lib/otpatch-hil/provision.sh"
install -D -m 0755 "$IMG/guest/runner.sh" "$ST/usr/lib/otpatch-hil/runner.sh"
install -D -m 0644 "$IMG/guest/hil-provision.service" "$ST/usr/lib/systemd/system/hil-provision.service"
install -D -m 0644 "$IMG/guest/hil-runner.service" "$ST/usr/lib/systemd/system/hil-runner.service"
ln -sf /usr/lib/systemd/system/hil-provision.service "$ST/etc/systemd/system/multi-user.target.wants/"
ln -sf /usr/lib/systemd/system/hil-runner.service "$ST/etc/systemd/system/multi-user.target.wants/"
install -D -m 0644 "$IMG/guest/lib.sh" "$ST/usr/lib/otpatch-hil/lib.sh"
# Which image a slot holds: the A/B scenarios tell the installed update from the original by it, and otpatchd
# names it (os-release's IMAGE_VERSION, as meta-otpatch's os-release.bbappend stamps it) in the rollback it
# records after a bootloader fallback.
image_version() {
  echo "$2" >"$1/usr/lib/otpatch-hil/image-version"
  sed -i '/^IMAGE_VERSION=/d' "$1/usr/lib/os-release"
  echo "IMAGE_VERSION=\"$2\"" >>"$1/usr/lib/os-release"
}
image_version "$ST" 1.0.0

# ---------------------------------------------------------------- file systems
# Sizes in MiB; the GPT's partitions start at 1 MiB and follow each other.
# The data partition holds /var/lib/otpatch, where a RAUC bundle is downloaded before it is installed.
ESP_MB=64 SLOT_MB=1024 DATA_MB=1024
t=$(date +%s%N)
mkfs.ext4 -q -F -L rootfs-a -d "$ST" "$W/a.img" "${SLOT_MB}M" || die "mkfs.ext4 slot A failed"
mkfs.ext4 -q -F -L rootfs-b "$W/b.img" "${SLOT_MB}M" || die "mkfs.ext4 slot B failed"
install -d -m 0755 "$W/data"
install -d -m 0750 "$W/data/otpatch"
mkfs.ext4 -q -F -L data -d "$W/data" "$W/data.img" "${DATA_MB}M" || die "mkfs.ext4 data failed"
say "file systems: slots and data in $(ms "$t") ms"

# The updates' file systems, sized to their content (RAUC copies the image into the 1 GiB slot as it is).
t=$(date +%s%N)
rm -rf "$OUT"/update-*
mkdir -p "$UPD.tmp"
image_version "$ST" 2.0.0
mkfs.ext4 -q -F -L rootfs -d "$ST" "$UPD.tmp/full.ext4" "$(( $(du -sm "$ST" | cut -f1) * 112 / 100 + 48 ))M" ||
  die "mkfs.ext4 of the update failed"
install -d "$W/panic/boot"
cp -a "$ST"/boot/vmlinuz-* "$ST"/boot/initrd.img-* "$W/panic/boot/"
cp -a "$ST/vmlinuz" "$ST/initrd.img" "$W/panic/"
mkfs.ext4 -q -F -L rootfs -d "$W/panic" "$UPD.tmp/panic.ext4" 64M || die "mkfs.ext4 of the panic image failed"
# newkernel.ext4: slot A's system as image 3.0.0 with a newer kernel in place of its own (bookworm-backports'
# 6.12, $KV2): the livepatch committed for $KVER no longer fits it. The kernel package is unpacked and its
# initramfs made in the copy (dpkg's database still names the old kernel: nothing on the image reads it).
if [[ $ARCH == amd64 ]]; then
  # Slot A's staged tree is not needed after this on amd64 (slot A and full.ext4 are made): moved, not copied.
  NK="$W/newkernel"
  mv "$ST" "$NK"
  rm -rf "$NK"/boot/*-"$KVER" "$NK/usr/lib/modules/$KVER" "$NK/vmlinuz.old" "$NK/initrd.img.old"
  dpkg-deb --fsys-tarfile "$KV2_DEB" | tar -x --keep-directory-symlink -C "$NK" || die "unpacking $KV2_DEB failed"
  chroot "$NK" depmod -a "$KV2" || die "depmod $KV2 failed"
  chroot "$NK" update-initramfs -c -k "$KV2" >"$OUT/newkernel-initramfs.log" 2>&1 ||
    { tail -n 20 "$OUT/newkernel-initramfs.log" >&2; die "update-initramfs $KV2 failed"; }
  ln -sfn "boot/vmlinuz-$KV2" "$NK/vmlinuz"
  ln -sfn "boot/initrd.img-$KV2" "$NK/initrd.img"
  image_version "$NK" 3.0.0
  mkfs.ext4 -q -F -L rootfs -d "$NK" "$UPD.tmp/newkernel.ext4" "$(( $(du -sm "$NK" | cut -f1) * 112 / 100 + 48 ))M" ||
    die "mkfs.ext4 of the newer kernel's image failed"
  rm -rf "$NK"
fi
mv "$UPD.tmp" "$UPD"
say "updates: full $(( $(stat -c %s "$UPD/full.ext4") >> 20 )) MiB, panic $(( $(stat -c %s "$UPD/panic.ext4") >> 20 )) MiB$([[ ! -s $UPD/newkernel.ext4 ]] || echo ", newkernel ($KV2) $(( $(stat -c %s "$UPD/newkernel.ext4") >> 20 )) MiB") in $(ms "$t") ms"

# ESP: the standalone GRUB (its embedded config finds the ESP by label and loads grub.cfg from it), grub.cfg,
# and grubenv with slot A good and first in ORDER.
t=$(date +%s%N)
# The removable-media path UEFI firmware boots: BOOTX64.EFI (OVMF), BOOTAA64.EFI (AAVMF).
if [[ $ARCH == amd64 ]]; then
  efi=BOOTX64.EFI gopt=(-O x86_64-efi)
else
  efi=BOOTAA64.EFI gopt=(-O arm64-efi -d "$ST/usr/lib/grub/arm64-efi")
fi
grub-mkstandalone "${gopt[@]}" -o "$W/$efi" \
  --modules="part_gpt fat ext2 search search_label regexp loadenv test echo linux normal configfile halt reboot sleep" \
  --locales= --fonts= --themes= "boot/grub/grub.cfg=$IMG/grub/embedded.cfg" || die "grub-mkstandalone failed"
grub-editenv "$W/grubenv" create
grub-editenv "$W/grubenv" set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
rm -f "$W/esp.img"
mkfs.fat -F 32 -n ESP -C "$W/esp.img" $((ESP_MB * 1024)) >/dev/null || die "mkfs.fat failed"
export MTOOLS_SKIP_CHECK=1
mmd -i "$W/esp.img" ::EFI ::EFI/BOOT
mcopy -i "$W/esp.img" "$W/$efi" "$IMG/grub/grub.cfg" "$W/grubenv" ::EFI/BOOT/
say "ESP: GRUB $(( $(stat -c %s "$W/$efi") / 1024 )) KiB in $(ms "$t") ms"

# ---------------------------------------------------------------- GPT, partitions copied in at their offsets
t=$(date +%s%N)
TOTAL_MB=$((1 + ESP_MB + 2 * SLOT_MB + DATA_MB + 1))
rm -f "$DISK.tmp"
truncate -s "${TOTAL_MB}M" "$DISK.tmp"
# Fixed PARTUUIDs: grub.cfg boots root=PARTUUID= of the slot it chose.
sfdisk -q "$DISK.tmp" <<EOF || die "sfdisk failed"
label: gpt
unit: sectors
start=2048, size=$((ESP_MB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp, uuid=6f7a0001-0000-4000-8000-000000000001
size=$((SLOT_MB * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=rootfs-a, uuid=6f7a0001-0000-4000-8000-00000000000a
size=$((SLOT_MB * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=rootfs-b, uuid=6f7a0001-0000-4000-8000-00000000000b
size=$((DATA_MB * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data, uuid=6f7a0001-0000-4000-8000-0000000000da
EOF
off=1
for part in esp:$ESP_MB a:$SLOT_MB b:$SLOT_MB data:$DATA_MB; do
  dd if="$W/${part%%:*}.img" of="$DISK.tmp" bs=1M seek="$off" conv=notrunc,sparse status=none
  off=$((off + ${part#*:}))
done
mv "$DISK.tmp" "$DISK"
for old in "$OUT"/disk-*.img; do
  [[ "$old" == "$DISK" ]] || rm -f "$old"
done
ln -sf "$(basename "$DISK")" "$OUT/disk.img"
ln -sfn "$(basename "$UPD")" "$OUT/update"
rm -rf "$W"
say "disk: $DISK ($TOTAL_MB MiB, $(du -m "$DISK" | cut -f1) MiB allocated) in $(ms "$t") ms; total $(ms "$T0") ms"
