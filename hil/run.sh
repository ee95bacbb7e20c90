#!/usr/bin/env bash
# Runs the QEMU gateway scenarios: builds what is missing (hil/build.sh), boots the guest
# once per scenario (twice for otpatchd-reboot), keeps each serial log in
# hil/build/logs/NAME.log (each line prefixed with the host's arrival time, h=MS), prints each
# scenario's timeline and a summary, and exits 1 if any scenario failed.
# The otpatchd-* scenarios need the host's side (hil/host.sh): a patch server (nginx, mutual
# TLS) and a PLC simulator, started once for the run and stopped on exit.
#
# usage: bash hil/run.sh [SCENARIO...]     (default: every hil/guest/scenarios/*.sh)
# Environment: HIL_TIMEOUT=seconds per boot (default 120), HIL_SKIP_BUILD=1.
set -euo pipefail

HIL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HIL")"
B="$HIL/build"
. "$HIL/host.sh"
TIMEOUT="${HIL_TIMEOUT:-120}"
T_START=$(date +%s%N)

# The QEMU of the scenario in flight, stopped if this script is interrupted.
QPID=
cleanup() {
  if [[ -n "$QPID" ]] && kill -0 "$QPID" 2>/dev/null; then
    kill "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
  fi
  host_stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v qemu-system-x86_64 >/dev/null ||
  { echo "qemu-system-x86_64 is missing: apt-get install -y --no-install-recommends qemu-system-x86" >&2; exit 2; }

if [[ "${HIL_SKIP_BUILD:-0}" != 1 ]]; then
  # The guest carries the production binaries (no test features): build them first, so it never runs stale ones.
  (cd "$HIL/.." && cargo build --release --quiet -p otpatchd -p otpatchctl -p otpatch-plcsim)
  bash "$HIL/build.sh"
fi
[[ -s "$B/vmlinux" && -s "$B/initramfs.cpio" ]] || { echo "no guest in $B: run hil/build.sh" >&2; exit 2; }

# Default: every scenario; boot first (it says whether anything else can work), the
# plain livepatch life before its failure modes, then any others by name.
if (($# == 0)); then
  # otpatchd-reboot last: it is the longest, and the others say whether it can work.
  set -- boot livepatch-sysfs livepatch-stall vermagic-mismatch \
    otpatchd-happy otpatchd-health-rollback otpatchd-tampered otpatchd-wrong-kernel otpatchd-badmagic \
    otpatchd-criu otpatchd-criu-bad
  for f in "$HIL"/guest/scenarios/*.sh; do
    n="$(basename "$f" .sh)"
    # criu-bench runs on demand only (bash hil/run.sh criu-bench): minutes under TCG.
    [[ " $* " == *" $n "* || $n == otpatchd-reboot || $n == criu-bench ]] || set -- "$@" "$n"
  done
  [[ -f "$HIL/guest/scenarios/otpatchd-reboot.sh" ]] && set -- "$@" otpatchd-reboot
fi
for s in "$@"; do
  [[ -f "$HIL/guest/scenarios/$s.sh" ]] || { echo "unknown scenario: $s" >&2; exit 2; }
done

mkdir -p "$B/logs"
if [[ " $* " == *" otpatchd-"* ]]; then
  host_start
fi

# boot_guest SCENARIO LOG INITRD BOOT [DISK]: one QEMU boot, bounded; sets RC and WALL_MS.
boot_guest() {
  local s=$1 log=$2 initrd=$3 boot=$4 disk=${5:-} t0
  local mem=1G timeout=$TIMEOUT
  if [[ $s == criu-bench ]]; then
    # Processes of up to 300 MiB and their images (tmpfs) in one guest; minutes of dumps under TCG.
    mem=2G
    ((timeout >= 900)) || timeout=900
  fi
  local args=(-accel tcg -m "$mem" -smp 2 -nographic -no-reboot
    -kernel "$B/vmlinux" -initrd "$initrd"
    -append "console=ttyS0 panic=-1 quiet otpatch.scenario=$s otpatch.boot=$boot"
    # User networking: the guest reaches the host's 127.0.0.1 services as 10.0.2.2.
    -device virtio-net-pci,netdev=n0,romfile=)
  local netdev=user,id=n0 modbus=()
  if [[ $s == otpatchd-criu ]]; then
    # The guest's PLC (port 1502) on the host's loopback only, read by console.py when the guest asks.
    netdev+=",hostfwd=tcp:127.0.0.1:$HOST_FWD_PORT-:1502"
    modbus=(--modbus "127.0.0.1:$HOST_FWD_PORT")
  fi
  args+=(-netdev "$netdev")
  [[ -z "$disk" ]] || args+=(-drive "file=$disk,format=raw,if=virtio")
  local inject=()
  if [[ $s == otpatchd-health-rollback ]]; then
    # The fault: the critical register leaves 10..90 once the patch is in and observed.
    inject=(--inject 'HIL-WATCH .* applying -> observing' "$HOST_PLC_CONTROL" 'set holding 0 u16 0')
  elif [[ $s == otpatchd-v1v2 ]]; then
    # The fault comes with the second window only (v2 under observation), when the guest asks for it.
    inject=(--inject 'HIL-INFO break-plc-now' "$HOST_PLC_CONTROL" 'set holding 0 u16 0')
  fi
  t0=$(date +%s%N)
  # console.py stamps each serial line with the host's time, injects the fault, and bounds the boot.
  python3 "$HIL/tools/console.py" run --log "$log" --timeout "$timeout" "${inject[@]}" "${modbus[@]}" -- \
    qemu-system-x86_64 "${args[@]}" &
  QPID=$!
  RC=0
  wait "$QPID" || RC=$?
  QPID=
  WALL_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}

# verdict S LOG: prints the boot's lines and verdict; sets VERDICT and WHY.
verdict() {
  local s=$1 log=$2 lines result
  # The serial console ends lines with CR LF and kernel messages may share a line.
  lines="$(tr -d '\r' <"$log" | grep -o 'HIL-[A-Z]* .*' || true)"
  result="$(grep '^HIL-RESULT ' <<<"$lines" | tail -n 1 || true)"
  grep -E '^HIL-(TIME|CHECK .* ok=0|INFO)' <<<"$lines" | grep -v '^HIL-INFO \(status\|health-json\) ' |
    sed 's/^/    /' || true
  VERDICT=FAIL
  if ((RC == 124)); then
    WHY="timed out after ${TIMEOUT}s"
  elif [[ -z "$result" ]]; then
    WHY="no HIL-RESULT line (qemu exit $RC); see the log"
  elif [[ "$result" == *" ok=1 "* ]]; then
    VERDICT=PASS
    WHY="${result#HIL-RESULT name=$s ok=1 }"
  else
    WHY="${result#HIL-RESULT name=$s }"
  fi
  if [[ $VERDICT == PASS && $s == otpatchd-criu ]]; then
    # The host's own reads of the guest's PLC: before the window, and after the restore with the written
    # register (holding 7) back at its checkpointed value 7.
    grep -o 'HIL-HOST event=modbus .*' "$log" | sed 's/^/    /'
    if ! grep -q 'HIL-HOST event=modbus tag=before values=[0-9,]* ok=1' "$log"; then
      VERDICT=FAIL WHY="the host could not read the guest's PLC over Modbus before the window"
    elif ! grep -q 'HIL-HOST event=modbus tag=after-restore values=\([0-9]*,\)\{7\}7 ok=1' "$log"; then
      VERDICT=FAIL WHY="the host's Modbus read after the restore failed or holding 7 was not 7"
    fi
  fi
  [[ $VERDICT == PASS ]] || tail -n 25 "$log" | tr -d '\r' | sed 's/^/    | /'
  if [[ $s == otpatchd-* ]]; then
    python3 "$HIL/tools/console.py" timeline "$log" || true
  fi
}

declare -a SUMMARY=()
FAILED=0
for s in "$@"; do
  boots=1
  [[ $s == otpatchd-reboot ]] && boots=2
  initrd="$B/initramfs.cpio"
  disk=
  if [[ $s == otpatchd-* ]]; then
    initrd="$B/host/initrd-$s.cpio"
    host_initrd "$s" "$initrd"
    # Every scenario starts from a healthy plant.
    [[ "$(host_plc 'set holding 0 u16 50')" == ok ]] || host_die "the PLC simulator does not answer"
  fi
  if ((boots > 1)); then
    disk="$B/host/state-$s.img"
    host_disk "$disk"
  fi
  for ((boot = 1; boot <= boots; boot++)); do
    name=$s
    log="$B/logs/$s.log"
    if ((boots > 1)); then
      name="$s#$boot"
      log="$B/logs/$s-boot$boot.log"
    fi
    echo "=== $name (boot bounded to ${TIMEOUT}s; serial log: hil/build/logs/$(basename "$log"))"
    boot_guest "$s" "$log" "$initrd" "$boot" "$disk"
    verdict "$s" "$log"
    [[ $VERDICT == PASS ]] || FAILED=1
    echo "    -> $VERDICT ($WHY) wall ${WALL_MS} ms"
    SUMMARY+=("$(printf '%-26s %-5s %7d ms  %s' "$name" "$VERDICT" "$WALL_MS" "$WHY")")
    [[ $VERDICT == PASS ]] || break # a second boot proves nothing after a failed first
  done
  # 45 MB each and made again by every run: the scenario's overlay (host/overlay/) stays for reading.
  [[ $initrd == "$B/initramfs.cpio" ]] || rm -f "$initrd"
done

echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
echo "total $(( ($(date +%s%N) - T_START) / 1000000 )) ms"
exit "$FAILED"
