#!/usr/bin/env bash
# Runs the QEMU gateway scenarios: builds what is missing (hil/build.sh), boots the guest
# once per scenario, keeps each serial log in hil/build/logs/NAME.log, prints each
# scenario's timeline (HIL-TIME lines) and a summary, and exits 1 if any scenario failed.
#
# usage: bash hil/run.sh [SCENARIO...]     (default: every hil/guest/scenarios/*.sh)
# Environment: HIL_TIMEOUT=seconds per boot (default 120), HIL_SKIP_BUILD=1.
set -euo pipefail

HIL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
B="$HIL/build"
TIMEOUT="${HIL_TIMEOUT:-120}"
T_START=$(date +%s%N)

# The QEMU of the scenario in flight, stopped if this script is interrupted.
QPID=
cleanup() {
  if [[ -n "$QPID" ]] && kill -0 "$QPID" 2>/dev/null; then
    kill "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v qemu-system-x86_64 >/dev/null ||
  { echo "qemu-system-x86_64 is missing: apt-get install -y --no-install-recommends qemu-system-x86" >&2; exit 2; }

if [[ "${HIL_SKIP_BUILD:-0}" != 1 ]]; then
  bash "$HIL/build.sh"
fi
[[ -s "$B/vmlinux" && -s "$B/initramfs.cpio" ]] || { echo "no guest in $B: run hil/build.sh" >&2; exit 2; }

# Default: every scenario; boot first (it says whether anything else can work), the
# plain livepatch life before its failure modes, then any others by name.
if (($# == 0)); then
  set -- boot livepatch-sysfs livepatch-stall vermagic-mismatch
  for f in "$HIL"/guest/scenarios/*.sh; do
    n="$(basename "$f" .sh)"
    [[ " $* " == *" $n "* ]] || set -- "$@" "$n"
  done
fi
for s in "$@"; do
  [[ -f "$HIL/guest/scenarios/$s.sh" ]] || { echo "unknown scenario: $s" >&2; exit 2; }
done

mkdir -p "$B/logs"
declare -a SUMMARY=()
FAILED=0
for s in "$@"; do
  log="$B/logs/$s.log"
  echo "=== $s (boot bounded to ${TIMEOUT}s; serial log: hil/build/logs/$s.log)"
  t0=$(date +%s%N)
  # TCG only: KVM hangs with Debian's kernel on this kind of host. User networking, no
  # port forwarded: the scenarios so far need no traffic from the host.
  timeout -k 5 "$TIMEOUT" qemu-system-x86_64 \
    -accel tcg -m 1G -smp 2 -nographic -no-reboot \
    -kernel "$B/vmlinux" -initrd "$B/initramfs.cpio" \
    -append "console=ttyS0 panic=-1 quiet otpatch.scenario=$s" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    </dev/null >"$log" 2>&1 &
  QPID=$!
  rc=0
  wait "$QPID" || rc=$?
  QPID=
  wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

  # The serial console ends lines with CR LF and kernel messages may share a line.
  lines="$(tr -d '\r' <"$log" | grep -o 'HIL-[A-Z]* .*' || true)"
  result="$(grep '^HIL-RESULT ' <<<"$lines" | tail -n 1 || true)"
  grep -E '^HIL-(TIME|CHECK .* ok=0|INFO)' <<<"$lines" | sed 's/^/    /' || true
  verdict=FAIL
  if ((rc == 124)); then
    why="timed out after ${TIMEOUT}s"
  elif [[ -z "$result" ]]; then
    why="no HIL-RESULT line (qemu exit $rc); see the log"
  elif [[ "$result" == *" ok=1 "* ]]; then
    verdict=PASS
    why="${result#HIL-RESULT name=$s ok=1 }"
  else
    why="${result#HIL-RESULT name=$s }"
  fi
  [[ $verdict == PASS ]] || FAILED=1
  [[ $verdict == PASS ]] || tail -n 25 "$log" | tr -d '\r' | sed 's/^/    | /'
  echo "    -> $verdict ($why) wall ${wall_ms} ms"
  SUMMARY+=("$(printf '%-20s %-5s %7d ms  %s' "$s" "$verdict" "$wall_ms" "$why")")
done

echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
echo "total $(( ($(date +%s%N) - T_START) / 1000000 )) ms"
exit "$FAILED"
