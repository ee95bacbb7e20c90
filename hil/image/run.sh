#!/usr/bin/env bash
# Runs the gateway-image scenarios (hil/image/): builds what is missing (the busybox guest's kernel ABI and
# livepatch modules, hil/build.sh; the image, hil/image/build.sh), starts the host's side once (hil/host.sh:
# PKI, signed bundles and indexes, nginx with mutual TLS, the PLC simulator), then boots the image under
# OVMF + GRUB once per scenario from a fresh copy of the disk. The guest only reports facts (HIL-FACT lines
# on the serial console, stamped with the host's arrival time by hil/tools/console.py); the host judges
# them (hil/image/tools/judge.py), prints each scenario's checks and timeline, and exits 1 if one failed.
#
# usage: bash hil/image/run.sh [SCENARIO...]     (hil/image/scenarios/*.sh; default: CI's list below)
#   A scenario with a "hil-image: cut" header runs as NAME@STATE: the power is cut when otpatchd reaches STATE.
#   "powercut" stands for every NAME@STATE of the power-cut matrix (POWERCUT_LP, POWERCUT_AB below).
# Environment: HIL_IMAGE_TIMEOUT=seconds per scenario (default 420), HIL_SKIP_BUILD=1 (use what is built),
#   HIL_ARCH=arm64: the arm64 image (hil/build/image-arm64/, HIL_ARCH=arm64 hil/image/build.sh) in
#   qemu-system-aarch64 -machine virt under TCG with AAVMF (Debian's qemu-system-arm, qemu-efi-aarch64).
set -euo pipefail

IMG="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HIL="$(dirname "$IMG")"
REPO="$(dirname "$HIL")"
B="$HIL/build"
ARCH="${HIL_ARCH:-amd64}"
OUT="$B/image"
[[ $ARCH == amd64 ]] || OUT="$B/image-$ARCH"
# shellcheck source=../host.sh
. "$HIL/host.sh"
TIMEOUT="${HIL_IMAGE_TIMEOUT:-420}"
T_START=$(date +%s%N)
case $ARCH in
  amd64)
    QEMU=qemu-system-x86_64 QEMU_PKG=qemu-system-x86 FW_PKG=ovmf
    FW_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd FW_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
    MACHINE=(-machine q35 -cpu max)
    ;;
  arm64)
    # cortex-a72 (ARMv8.0): under TCG, -cpu max's pointer authentication costs much emulation time.
    QEMU=qemu-system-aarch64 QEMU_PKG=qemu-system-arm FW_PKG=qemu-efi-aarch64
    FW_CODE=/usr/share/AAVMF/AAVMF_CODE.fd FW_VARS=/usr/share/AAVMF/AAVMF_VARS.fd
    MACHINE=(-machine virt -cpu cortex-a72)
    ;;
  *) echo "HIL_ARCH=$ARCH: amd64 or arm64" >&2; exit 2 ;;
esac

QPID=
cleanup() {
  if [[ -n "$QPID" ]] && kill -0 "$QPID" 2>/dev/null; then
    # console.py stops its QEMU when told to.
    kill "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
  fi
  host_stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v $QEMU >/dev/null ||
  { echo "$QEMU is missing: apt-get install -y --no-install-recommends $QEMU_PKG" >&2; exit 2; }
[[ -r $FW_CODE && -r $FW_VARS ]] || { echo "the UEFI firmware is missing: apt-get install -y $FW_PKG" >&2; exit 2; }
command -v rauc >/dev/null || { echo "rauc is missing (it makes the A/B scenarios' bundles): apt-get install -y rauc squashfs-tools" >&2; exit 2; }

# The power-cut matrix (issue #18, scenario 5): every state otpatchd journals in a livepatch window and in an
# A/B window (observing and committed on the A/B path are on the new slot, after the reboot).
POWERCUT_LP="armed segmented fetched verified checkpointed applying observing committed"
POWERCUT_AB="armed segmented fetched verified checkpointed applying rebooting observing committed"
# CI's list: the systemd unit, the three A/B scenarios (ab-reboot has the plain reboots before and after the
# update) and a fixed subset of the matrix: a cut in a livepatch's apply (about 26 minutes in all). A cut between
# the RAUC install and its reboot (ab-powercut@rebooting, 7 minutes) and the rest of the matrix run by hand.
(($# > 0)) || set -- systemd ab-reboot ab-health ab-panic lp-powercut@applying
declare -a LIST=()
for s in "$@"; do
  if [[ $s == powercut ]]; then
    for st in $POWERCUT_LP; do LIST+=("lp-powercut@$st"); done
    for st in $POWERCUT_AB; do LIST+=("ab-powercut@$st"); done
    continue
  fi
  [[ -f "$IMG/scenarios/${s%@*}.sh" ]] || { echo "unknown scenario: ${s%@*}" >&2; exit 2; }
  if grep -q '^# *hil-image: cut' "$IMG/scenarios/${s%@*}.sh"; then
    [[ $s == *@?* ]] || { echo "$s needs the state to cut the power at: $s@STATE" >&2; exit 2; }
  fi
  LIST+=("$s")
done
set -- "${LIST[@]}"
mkdir -p "$B/logs"
export HIL_MATRIX="$B/logs/image-powercut-matrix.txt"
: >"$HIL_MATRIX"

if [[ "${HIL_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$REPO" && cargo build --release --quiet -p otpatchd -p otpatchctl -p otpatch-plcsim)
  bash "$HIL/build.sh"
  [[ $ARCH == amd64 ]] || (cd "$REPO" && cargo build --release --quiet --target aarch64-unknown-linux-gnu \
    -p otpatchd -p otpatchctl -p otpatch-plcsim)
  HIL_ARCH=$ARCH bash "$IMG/build.sh"
fi
[[ -s "$OUT/disk.img" ]] || { echo "no image in $OUT: run hil/image/build.sh" >&2; exit 2; }

mkdir -p "$B/logs"
host_start

# A scenario's header lines "hil-image: WHAT ARGS" say what it needs from the host beyond host.sh's defaults:
#   hil-image: reboots                      the guest restarts (QEMU is started again, up to 8 boots)
#   hil-image: rauc-bundle IMAGE VERSION    its patch server directory serves a RAUC bundle of build.sh's update
#                                           image IMAGE (full, panic) as VERSION, signed with this run's PKI
#   hil-image: rauc-bundle IMAGE VERSION DIR   the same, served from the patch server's directory DIR
#   hil-image: inject REGEX COMMAND...      the first console line matching REGEX (in each boot) makes the host
#                                           send COMMAND to the PLC simulator's control port (one line each)
#   hil-image: pull-plug REGEX              the first console line matching REGEX cuts the power (once a run)
#   hil-image: clock-ahead BOOT SECONDS     from QEMU's start BOOT on, the machine's clock (its RTC) runs
#                                           SECONDS ahead of the host's
header() { sed -n "s/^# *hil-image: $2 *//p" "$IMG/scenarios/$1.sh" | head -n1; }

# rauc_bundle IMAGE VERSION: prints the path of the RAUC bundle (verity, as system.conf allows only that) of
# update image IMAGE at VERSION, made once per run.
rauc_bundle() {
  local out="$HOST_DIR/raucb/$1-$2.raucb" c="$HOST_DIR/raucb/$1-$2.d" t
  if [[ ! -s $out ]]; then
    t=$(date +%s%N)
    [[ -s "$OUT/update/$1.ext4" ]] || host_die "no update image $1 in $OUT/update: run hil/image/build.sh"
    mkdir -p "$c"
    ln -f "$OUT/update/$1.ext4" "$c/rootfs.ext4" 2>/dev/null || cp --sparse=always "$OUT/update/$1.ext4" "$c/rootfs.ext4"
    printf '[update]\ncompatible=%s\nversion=%s\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.ext4\n' \
      "$HOST_COMPATIBLE" "$2" >"$c/manifest.raucm"
    # gzip (mksquashfs's default), the compression otpatchd's verifier reads the manifest from; level 1 makes
    # the bundle in a third of the time of the default 9, a few MiB larger.
    rauc bundle --cert "$HOST_DIR/pki/signer.pem" --key "$HOST_DIR/pki/signer.key" \
      --mksquashfs-args="-comp gzip -Xcompression-level 1" "$c" "$out" >"$out.log" 2>&1 ||
      { cat "$out.log" >&2; host_die "rauc bundle $1 $2 failed"; }
    rm -rf "$c"
    host_say "RAUC bundle $1 $2: $(( $(stat -c %s "$out") >> 20 )) MiB in $(( ($(date +%s%N) - t) / 1000000 )) ms" >&2
  fi
  echo "$out"
}

# site_tar SCENARIO OUT: the files provisioning puts under / in the guest: the site policy (host.sh's, for
# this scenario's directory on the patch server), the trust anchor, the server CA, the client certificate
# and key, the host's clock, and RAUC's keyring (system.conf: /etc/rauc/ca.cert.pem): the same signing
# root, since otpatchd and RAUC verify RAUC bundles against the site's anchor alike.
site_tar() {
  local d="$HOST_DIR/overlay/image-$1"
  rm -rf "$d"
  mkdir -p "$d/etc/otpatch" "$d/hil" "$d/etc/rauc"
  host_policy "image-$1" >"$d/etc/otpatch/policy.toml"
  cp "$HOST_DIR/pki/server-ca.pem" "$HOST_DIR/pki/client.pem" "$HOST_DIR/pki/signing-root.pem" "$d/etc/otpatch/"
  install -m 0600 "$HOST_DIR/pki/client.key" "$d/etc/otpatch/client.key"
  cp "$HOST_DIR/pki/signing-root.pem" "$d/etc/rauc/ca.cert.pem"
  printf 'HOST_EPOCH=%s\n' "$(date +%s)" >"$d/hil/host.env"
  tar -C "$d" -cf "$2" --owner=0 --group=0 etc hil
}

declare -a SUMMARY=()
FAILED=0
for s in "$@"; do
  # NAME@STATE: scenario NAME, power cut at STATE.
  cut_at=
  [[ $s != *@* ]] || cut_at=${s#*@}
  name=${s%@*}
  run="$OUT/run-$s"
  rm -rf "$run"
  mkdir -p "$run"
  tag=$s
  [[ $ARCH == amd64 ]] || tag=$ARCH-$s
  log="$B/logs/image-$tag.log"
  # A scenario that reboots the guest says so in its header ("hil-image: reboots"): when the guest restarts,
  # QEMU exits (-no-reboot) and is started again on the same disk and firmware variables, up to 8 boots, the
  # console logs one after the other in one file. A cold start instead of QEMU's reset in place: OVMF's reset
  # path under TCG took 17-358 s to reach GRUB again (a cold start: 5-7 s); for what the guest and GRUB see it
  # is the same reboot.
  limit=$TIMEOUT max_boots=1
  read -r image version dir <<<"$(header "$name" rauc-bundle)"
  if [[ -n ${version:-} ]]; then
    b=$(rauc_bundle "$image" "$version")
    dir=${dir:-image-$name}
    mkdir -p "$HOST_DIR/www/$dir"
    ln -f "$b" "$HOST_DIR/www/$dir/os-$version.raucb"
    # Issued 30 s ago: later than any livepatch index of host.sh a scenario takes before it (replay check).
    host_index "$HOST_DIR/www/$dir" "os-$version.raucb" "$version" 30 ab
  fi
  inject=()
  while read -r regex cmd; do
    [[ -z ${cmd:-} ]] || inject+=(--inject "$regex" "$HOST_PLC_CONTROL" "$cmd")
  done < <(sed -n "s/^# *hil-image: inject *//p" "$IMG/scenarios/$name.sh")
  # The cut: otpatchctl watch's transition into the state, or the state poll's first sight of it (the state may
  # be there already when the poll starts after a boot), on whichever boot it comes; once per run.
  cut=()
  [[ -z $cut_at ]] || cut=(--cut "(-> $cut_at \\(|HIL-STATE ms=[0-9]+ $cut_at\$)")
  plug=$(header "$name" pull-plug)
  [[ -z $plug ]] || cut=(--cut "$plug")
  read -r ahead_from ahead_s <<<"$(header "$name" clock-ahead)"
  if grep -q 'hil-image: reboots' "$IMG/scenarios/$name.sh"; then
    max_boots=8
    ((limit >= 1200)) || limit=1200
  fi
  t=$(date +%s%N)
  cp --sparse=always "$(readlink -f "$OUT/disk.img")" "$run/disk.img"
  cp "$FW_VARS" "$run/vars.fd"
  site_tar "$name" "$run/site.tar"
  [[ "$(host_plc 'set holding 0 u16 50')" == ok ]] || host_die "the PLC simulator does not answer"
  echo "=== image $tag (bounded to ${limit}s; serial log: hil/build/logs/$(basename "$log"); disk copied in $(( ($(date +%s%N) - t) / 1000000 )) ms)"
  args=("${MACHINE[@]}" -accel tcg -m 1G -smp 2 -nographic -no-reboot
    -drive "if=pflash,format=raw,readonly=on,file=$FW_CODE"
    -drive "if=pflash,format=raw,file=$run/vars.fd"
    -drive "file=$run/disk.img,format=raw,if=virtio"
    # User networking: the guest reaches the host's 127.0.0.1 services as 10.0.2.2.
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=
    -fw_cfg "name=opt/otpatch/scenario,file=$IMG/scenarios/$name.sh"
    -fw_cfg "name=opt/otpatch/site.tar,file=$run/site.tar")
  t=$(date +%s%N)
  : >"$log"
  for ((boot = 1; ; boot++)); do
    left=$(( limit - ($(date +%s%N) - t) / 1000000000 ))
    ((left > 0)) || { rc=124; break; }
    rtc=()
    if [[ -n ${ahead_s:-} ]] && ((boot >= ahead_from)); then
      rtc=(-rtc "base=$(date -u -d "@$(($(date +%s) + ahead_s))" +%Y-%m-%dT%H:%M:%S)")
      echo "h=0 HIL-HOST event=clock-ahead boot=$boot seconds=$ahead_s" >>"$log"
    fi
    # Its own session and process group: nothing sent to this script's group reaches QEMU; console.py bounds
    # the boot and stops QEMU itself.
    setsid python3 "$HIL/tools/console.py" run --log "$run/boot.log" --timeout "$left" "${inject[@]}" "${cut[@]}" -- "$QEMU" "${args[@]}" "${rtc[@]}" &
    QPID=$!
    rc=0
    wait "$QPID" || rc=$?
    QPID=
    echo "h=0 HIL-HOST event=qemu-start boot=$boot" >>"$log"
    cat "$run/boot.log" >>"$log"
    # The power was cut (console.py exits 3): it comes back, once.
    if ((rc == 3 && boot < max_boots)); then
      cut=()
      continue
    fi
    # The machine restarted (its kernel's "reboot: Restarting system", a panic's "Rebooting in N seconds", GRUB
    # out of slots): boot it again.
    ((rc == 0 && boot < max_boots)) || break
    grep -q 'reboot: Restarting system\|Rebooting in [0-9]* seconds\|HIL-GRUB no bootable slot' "$run/boot.log" || break
  done
  wall=$(( ($(date +%s%N) - t) / 1000000 ))
  verdict=PASS
  python3 "$IMG/tools/judge.py" "$s" "$log" "$rc" || verdict=FAIL
  [[ $verdict == PASS ]] || { FAILED=1; tail -n 30 "$log" | tr -d '\r' | sed 's/^/    | /'; }
  echo "    -> $verdict, wall ${wall} ms"
  SUMMARY+=("$(printf 'image-%-28s %-5s %7d ms' "$tag" "$verdict" "$wall")")
  rm -rf "$run"
done

echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
if [[ -s $HIL_MATRIX ]]; then
  # judge.py wrote one line per power-cut run: path, state, outcome after the next boot, verdict.
  echo "=== power cut at every state: path x state -> outcome ($(grep -c ' PASS$' "$HIL_MATRIX")/$(wc -l <"$HIL_MATRIX") consistent)"
  cat "$HIL_MATRIX"
fi
echo "total $(( ($(date +%s%N) - T_START) / 1000000 )) ms"
exit "$FAILED"
