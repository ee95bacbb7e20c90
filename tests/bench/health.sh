#!/usr/bin/env bash
# Benchmark of the Modbus health probes against otpatch-plcsim on 127.0.0.1 (release build), printing:
#   - probe cost: reads/s and CPU of the daemon's probe engine, 50 probes at 10 Hz (and at 100 Hz);
#   - latency from a register leaving its range to the Failed verdict;
#   - read throughput of Debian's mbpoll on the same simulator, for comparison.
# Needs: mbpoll (Debian package mbpoll). Usage: bash tests/bench/health.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v mbpoll >/dev/null || { echo "health.sh: mbpoll is missing (apt-get install -y mbpoll)" >&2; exit 1; }

cargo build --release --quiet -p otpatch-plcsim --bins --examples
target="${CARGO_TARGET_DIR:-target}/release"

work="$(mktemp -d)"
sim_pid=""
cleanup() {
    if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The simulator keeps running while the fifo's writer (fd 3, this script) is open; --exit-on-eof ends it with us.
mkfifo "$work/stdin"
"$target/otpatch-plcsim" --listen 127.0.0.1:0 --control 127.0.0.1:0 --exit-on-eof <"$work/stdin" >"$work/out" 2>&1 &
sim_pid=$!
exec 3>"$work/stdin"
for _ in $(seq 100); do
    grep -q '^control ' "$work/out" 2>/dev/null && break
    sleep 0.1
done
addr="$(sed -n 's/^listening //p' "$work/out")"
ctl="$(sed -n 's/^control //p' "$work/out")"
[ -n "$addr" ] && [ -n "$ctl" ] || { echo "health.sh: the simulator did not start:" >&2; cat "$work/out" >&2; exit 1; }
port="${addr##*:}"
echo "simulator: modbus $addr, control $ctl"

"$target/examples/health_bench" "$addr" "$ctl"

# mbpoll on the same server: its fastest poll rate (-l 10 ms is its minimum), one holding register, 10 s.
secs=10
reads="$(timeout -s INT "$secs" mbpoll -0 -t 4 -r 0 -c 1 -l 10 -p "$port" 127.0.0.1 2>/dev/null | grep -c '^\[0\]:' || true)"
echo "mbpoll: 1 register every 10ms (its minimum poll rate) for ${secs}s: $reads reads, $((reads / secs)) reads/s"
