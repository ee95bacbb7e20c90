#!/usr/bin/env bash
# Builds the QEMU gateway guest into hil/build/:
#   vmlinux          Debian's stock kernel, uncompressed (QEMU boots it through PVH)
#   initramfs.cpio   busybox, kernel modules, nft, dbus-daemon, criu, the otpatch binaries
#                    (when built), the guest /init and scenarios, the livepatch test modules
# Only Debian packages are used: the kernel, its headers and busybox-static are fetched
# with `apt-get download` and unpacked with `dpkg -x` (never installed on the host).
# Incremental: every step is skipped when its output is newer than its inputs.
#
# Environment: HIL_KVER=6.1.0-NN-amd64 pins the kernel ABI (default: the one the
# linux-image-amd64 metapackage depends on, remembered in build/kver after the first run).
set -euo pipefail

HIL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HIL")"
B="$HIL/build"
mkdir -p "$B"

T_START=$(date +%s%N)
say() { printf '[hil-build] %s\n' "$*"; }
die() { printf '[hil-build] error: %s\n' "$*" >&2; exit 1; }
# step NAME: starts timing a step; done_step prints how long it took.
step() { STEP="$1"; T_STEP=$(date +%s%N); }
done_step() { say "$STEP: $* ($(( ($(date +%s%N) - T_STEP) / 1000000 )) ms)"; }
skip() { say "$STEP: up to date${1:+ ($1)}"; }

# Temporary files of this run; removed whatever happens.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

for tool in apt-get apt-cache dpkg objcopy gcc-12 gcc make python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (see hil/README.md for the host packages)"
done

# ---------------------------------------------------------------- kernel version
step kver
if [[ -n "${HIL_KVER:-}" ]]; then
  KVER="$HIL_KVER"
elif [[ -s "$B/kver" ]]; then
  KVER="$(cat "$B/kver")"
else
  KVER="$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1)"
  [[ -n "$KVER" ]] || die "apt-cache knows no linux-image-amd64: run 'apt-get update' first"
fi
echo "$KVER" >"$B/kver"
ABI="${KVER%-amd64}"                 # 6.1.0-56
KMAJ="$(echo "$KVER" | cut -d. -f1-2)" # 6.1
say "kernel: $KVER"

# ---------------------------------------------------------------- packages
step download
PKGS=("linux-image-$KVER" "linux-headers-$KVER" "linux-headers-$ABI-common" "linux-kbuild-$KMAJ" busybox-static)
mkdir -p "$B/debs"
missing=()
for p in "${PKGS[@]}"; do
  compgen -G "$B/debs/${p}_*.deb" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  # apt-get download writes into the current directory; run it in a subshell.
  (cd "$B/debs" && apt-get download -q "${missing[@]}" 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; }) ||
    die "apt-get download ${missing[*]} failed (run 'apt-get update'?)"
  done_step "fetched ${missing[*]}"
else
  skip
fi

step unpack
PK="$B/pkgs"
if [[ ! -e "$PK/.unpacked-$KVER" ]]; then
  rm -rf "$PK"
  mkdir -p "$PK"
  for p in "${PKGS[@]}"; do
    dpkg -x "$(compgen -G "$B/debs/${p}_*.deb" | head -n1)" "$PK"
  done
  touch "$PK/.unpacked-$KVER"
  done_step "$(du -sm "$PK" | cut -f1) MB in $PK"
else
  skip
fi
HDR="$PK/usr/src/linux-headers-$KVER"
MODROOT="$PK/lib/modules/$KVER"
BB="$PK/bin/busybox"
[[ -d "$HDR" && -d "$MODROOT" && -x "$BB" ]] || die "unpacked packages incomplete; remove $PK and retry"

step headers
# The flavour's Makefile includes the -common tree by its absolute /usr/src path; point
# it at the unpacked copy next to it, relative to the Makefile so the tree can move.
if grep -q "^include /usr/src/" "$HDR/Makefile"; then
  sed -i "s|^include /usr/src/\(linux-headers-$ABI-common\)/Makefile|include \$(dir \$(lastword \$(MAKEFILE_LIST)))../\1/Makefile|" "$HDR/Makefile"
  done_step "Makefile now includes ../linux-headers-$ABI-common"
else
  skip
fi

# ---------------------------------------------------------------- kernel image
step vmlinux
if [[ ! -s "$B/vmlinux" || "$PK/boot/vmlinuz-$KVER" -nt "$B/vmlinux" ]]; then
  python3 "$HIL/tools/hiltool.py" vmlinux "$PK/boot/vmlinuz-$KVER" "$B/vmlinux"
  done_step "$B/vmlinux"
else
  skip
fi

# ---------------------------------------------------------------- livepatch modules
step modules
# Kbuild writes its outputs next to the sources: build a copy under build/ so the
# source tree stays clean. cp -p keeps timestamps, so make rebuilds only what changed.
MB="$B/modules"
mkdir -p "$MB"
cp -p "$HIL"/modules/Kbuild "$HIL"/modules/*.c "$HIL"/modules/*.h "$MB"/
# Kbuild's "make -q" always answers "out of date"; a stamp tells whether a source changed.
if [[ -e "$MB/.built" && -z "$(find "$MB" -maxdepth 1 \( -name '*.[ch]' -o -name Kbuild \) -newer "$MB/.built" -print -quit)" ]]; then
  skip
else
  make -s -C "$HDR" M="$MB" modules >"$TMP/kbuild.log" 2>&1 || { cat "$TMP/kbuild.log"; die "module build failed"; }
  # Kbuild's own warnings (e.g. about the compiler) are worth seeing; "make -s" keeps them few.
  # (BTF needs the vmlinux with debug info, which Debian ships only in the -dbg package.)
  grep -v "Skipping BTF generation" "$TMP/kbuild.log" | sed "s/^/  kbuild: /" || true
  touch "$MB/.built"
  done_step "$(cd "$MB" && ls ./*.ko | tr '\n' ' ')"
fi
for ko in otpatch_lp_cmdline otpatch_lp_cmdline_v2 otpatch_lp_stall; do
  [[ -s "$MB/$ko.ko" ]] || die "$MB/$ko.ko was not built"
done

step forge
# A copy of the v1 module whose vermagic is what Debian's PREEMPT_RT flavour of the same
# ABI carries: a real-world mismatch (right version number, wrong kernel) the kernel refuses.
BAD="$MB/otpatch_lp_cmdline_badmagic.ko"
if [[ ! -s "$BAD" || "$MB/otpatch_lp_cmdline.ko" -nt "$BAD" ]]; then
  good="$(python3 "$HIL/tools/hiltool.py" modinfo "$MB/otpatch_lp_cmdline.ko" vermagic)"
  [[ "$good" == "$KVER "* ]] || die "built module's vermagic '$good' does not start with $KVER"
  bad="$(echo "$good" | sed "s/^$KVER /$ABI-rt-amd64 /; s/ preempt / preempt_rt /")"
  [[ "$bad" != "$good" ]] || die "could not derive a mismatching vermagic from '$good'"
  python3 "$HIL/tools/hiltool.py" forge-modinfo "$MB/otpatch_lp_cmdline.ko" "$BAD" vermagic "$bad"
  done_step "vermagic '$good' -> '$bad'"
else
  skip
fi

# ---------------------------------------------------------------- guest helpers
step tools
mkdir -p "$B/tools"
built=()
for t in hil-ms vforkpark memhog; do
  if [[ ! -x "$B/tools/$t" || "$HIL/tools/$t.c" -nt "$B/tools/$t" ]]; then
    gcc -static -O2 -Wall -Werror -o "$B/tools/$t" "$HIL/tools/$t.c"
    built+=("$t")
  fi
done
if ((${#built[@]})); then done_step "built ${built[*]}"; else skip; fi

# ---------------------------------------------------------------- initramfs
# Kernel modules the guest loads; their dependencies come from .modinfo depends=.
GUEST_MODULES=(
  crc32c_generic # libcrc32c asks the crypto API for crc32c; load it before, no request_module
  virtio_pci virtio_net
  nfnetlink nf_tables nft_ct nf_conntrack nft_reject_inet nf_defrag_ipv4 nf_defrag_ipv6 libcrc32c
  unix_diag inet_diag tcp_diag udp_diag raw_diag netlink_diag af_packet_diag # for CRIU
  tun
  virtio_blk ext4 # the otpatchd scenarios' state disk (/var/lib/otpatch across a reboot)
)
# Host binaries copied with their libraries: required, then optional.
REQ_BINS=(nft dbus-daemon)
OPT_BINS=(dbus-send criu)
PROJECT_BINS=(otpatchd otpatchctl otpatch-plcsim)

host_bins=()
for b in "${REQ_BINS[@]}"; do
  p="$(command -v "$b")" || die "$b is missing on the host (apt-get install -y nftables dbus-daemon)"
  host_bins+=("$p")
done
for b in "${OPT_BINS[@]}"; do
  if p="$(command -v "$b")"; then host_bins+=("$p"); else say "note: $b not on the host, the guest goes without"; fi
done
proj_bins=()
for b in "${PROJECT_BINS[@]}"; do
  [[ -x "$REPO/target/release/$b" ]] && proj_bins+=("$REPO/target/release/$b")
done
# The CRIU benchmark (scenario criu-bench), when built: cargo build --release -p otpatchd --example criu_bench
[[ -x "$REPO/target/release/examples/criu_bench" ]] && proj_bins+=("$REPO/target/release/examples/criu_bench")

step initramfs
CPIO="$B/initramfs.cpio"
stale=0
if [[ ! -s "$CPIO" ]]; then
  stale=1
elif [[ -n "$(find "$HIL/guest" "$HIL/build.sh" "$MB" "$B/tools" "$PK/.unpacked-$KVER" \
  "${host_bins[@]}" "${proj_bins[@]}" -newer "$CPIO" -print -quit)" ]]; then
  stale=1
fi
if ((stale == 0)); then
  skip "$(du -m "$CPIO" | cut -f1) MB"
else
  R="$B/rootfs"
  rm -rf "$R"
  mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,var/lib,hil/modules,hil/scenarios}
  ln -s ../run "$R/var/run"
  # The kernel opens /dev/console before /init runs and devtmpfs is not mounted yet. Its
  # built-in initramfs has the node too, so this is belt and braces (and needs root).
  mknod "$R/dev/console" c 5 1 2>/dev/null || true
  mknod "$R/dev/null" c 1 3 2>/dev/null || true

  # busybox with every applet as a symlink.
  cp "$BB" "$R/bin/busybox"
  while read -r applet; do
    [[ "$applet" == */* && ! -e "$R/$applet" ]] && ln -s /bin/busybox "$R/$applet"
  done < <("$BB" --list-full)

  # Kernel modules: the list above plus what they depend on, then depmod (busybox's:
  # the host has no kmod) so busybox modprobe finds them.
  mapfile -t mods < <(python3 "$HIL/tools/hiltool.py" resolve "$MODROOT" "${GUEST_MODULES[@]}")
  for m in "${mods[@]}"; do
    install -D -m 0644 "$MODROOT/$m" "$R/lib/modules/$KVER/$m"
  done
  cp "$MODROOT"/modules.builtin* "$MODROOT"/modules.order "$R/lib/modules/$KVER/" 2>/dev/null || true
  "$BB" depmod -b "$R" "$KVER"

  # Host binaries and their shared libraries (by the paths ldd reports, loader included).
  copy_elf() { # copy_elf SRC DEST-IN-ROOTFS
    install -D -m 0755 "$1" "$R/$2"
    ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\//{print $1}' | while read -r lib; do
      [[ -e "$R/$lib" ]] || install -D -m 0755 "$(readlink -f "$lib")" "$R/$lib"
    done
  }
  for p in "${host_bins[@]}"; do
    rm -f "$R/$p" # a busybox applet of the same name must not shadow the real tool
    copy_elf "$p" "$p"
  done
  for p in "${proj_bins[@]}"; do copy_elf "$p" "/usr/bin/$(basename "$p")"; done

  # A minimal system: root user, machine id, the system bus config.
  printf 'root:x:0:0:root:/root:/bin/sh\nmessagebus:x:100:101::/nonexistent:/bin/false\n' >"$R/etc/passwd"
  printf 'root:x:0:\nmessagebus:x:101:\notpatch:x:102:\n' >"$R/etc/group"
  echo 0f7a0c7e5e1d4c0b8a3c1f2e3d4c5b6a >"$R/etc/machine-id"
  install -D -m 0644 "$HIL/guest/dbus-system.conf" "$R/usr/share/dbus-1/system.conf" # where Debian's dbus-daemon --system looks
  if [[ -f "$REPO/daemon/dist/io.otpatch.Daemon1.conf" ]]; then
    install -D -m 0644 "$REPO/daemon/dist/io.otpatch.Daemon1.conf" "$R/usr/share/dbus-1/system.d/io.otpatch.Daemon1.conf"
  fi

  # The HIL payload.
  install -m 0755 "$HIL/guest/init" "$R/init"
  install -m 0644 "$HIL/guest/lib.sh" "$R/hil/lib.sh"
  install -m 0644 "$HIL/guest/otpatchd.sh" "$R/hil/otpatchd.sh"
  install -m 0644 "$HIL"/guest/scenarios/*.sh "$R/hil/scenarios/"
  install -m 0644 "$MB"/*.ko "$R/hil/modules/"
  install -m 0755 "$B/tools/hil-ms" "$B/tools/vforkpark" "$B/tools/memhog" "$R/bin/"

  # Uncompressed: QEMU loads it into memory and the TCG guest saves a decompression.
  (cd "$R" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0 2>/dev/null) >"$CPIO.tmp"
  mv "$CPIO.tmp" "$CPIO"
  done_step "$(du -m "$CPIO" | cut -f1) MB, ${#mods[@]} kernel modules, host bins: $(basename -a "${host_bins[@]}" | tr '\n' ' ')project bins: $( ((${#proj_bins[@]})) && basename -a "${proj_bins[@]}" | tr '\n' ' ' || echo none)"
fi

say "done in $(( ($(date +%s%N) - T_START) / 1000000 )) ms; build/ uses $(du -sm "$B" | cut -f1) MB"
