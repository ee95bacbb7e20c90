#!/usr/bin/env bash
# The main job until the QEMU gateway (hil/) exists: otpatchd with the FAKE backends on a private D-Bus system
# bus, driven by otpatchctl exactly as a plant engineer would. Nothing on this machine is changed: the fake
# backends only record what they were asked to do. Two windows run: one commits, one is rolled back after a
# scripted health failure. The timeline of each is printed as otpatchctl watch shows it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dbus-daemon >/dev/null || { echo "demo: needs dbus-daemon (apt-get install dbus-daemon)" >&2; exit 1; }

cargo build --quiet --bins --features otpatchd/fake-backends,otpatchd/failpoints
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
otpatchd="$target/debug/otpatchd"
otpatchctl="$target/debug/otpatchctl"

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A private bus configured like a system bus, with the shipped policy for io.otpatch.Daemon1.
cat >"$work/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$work/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  </policy>
  <include>$PWD/daemon/dist/io.otpatch.Daemon1.conf</include>
</busconfig>
CONF
dbus-daemon --config-file="$work/bus.conf" --nofork --nopidfile &
pids+=($!)
export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$work/bus.sock"
for _ in $(seq 100); do [ -S "$work/bus.sock" ] && break; sleep 0.05; done

# The gateway's root: the demo policy and a placeholder trust anchor (the fake verifier does not read it).
root="$work/root"
mkdir -p "$root/etc/otpatch/trust"
cp policies/demo.toml "$root/etc/otpatch/policy.toml"
echo "demo trust anchor placeholder" >"$root/etc/otpatch/trust/demo-ca.pem"

start_daemon() {
  OTPATCH_FAKE_SCRIPT="$1" "$otpatchd" --root "$root" --backends fake --log text 2>>"$work/otpatchd.log" &
  pids+=($!)
  for _ in $(seq 200); do "$otpatchctl" status >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "demo: otpatchd did not come up; its log:" >&2; cat "$work/otpatchd.log" >&2; exit 1
}

in_seconds() { date -u -d "+$1 seconds" +%Y-%m-%dT%H:%M:%SZ; }

echo "== otpatchd with FAKE backends (nothing on this machine is changed) =="
start_daemon "delay=300ms"
"$otpatchctl" status
echo
echo "== window 1: a patch that keeps the plant healthy =="
"$otpatchctl" window schedule --start "$(in_seconds 2)" --duration 15m
"$otpatchctl" window list
rc=0; "$otpatchctl" watch --exit-on-complete --max-wait 120s || rc=$?
echo "watch exit code: $rc (0 = committed)"
[ "$rc" -eq 0 ] || exit 1

echo
echo "== window 2: a newer bundle in the same window; the plant's health fails after apply -> automatic rollback =="
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
start_daemon "delay=300ms,health=fail,health-fail-after=1s,version=1.0.2"
"$otpatchctl" watch --exit-on-complete --max-wait 120s & watcher=$!
sleep 0.5
"$otpatchctl" apply
rc=0; wait "$watcher" || rc=$?
echo "watch exit code: $rc (9 = rolled back)"
[ "$rc" -eq 9 ] || exit 1

echo
echo "== audit log =="
"$otpatchctl" log | tail -n 12
"$otpatchctl" log --verify
echo
echo "== what the fake backends were asked to do =="
python3 -c 'import json,sys; w=json.load(open(sys.argv[1])); print("\n".join(w["calls"])); print("in place:", w["applied"], "committed:", w["committed"], "segmentation active:", w["segmentation_active"])' "$root/run/otpatch-fake/world.json"
