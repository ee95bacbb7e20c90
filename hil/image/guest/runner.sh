#!/bin/bash
# Runs the host's scenario (fw_cfg blob opt/otpatch/scenario, a bash script) with the helpers of
# lib.sh, then powers the machine off unless the scenario says otherwise (hil/image test harness).
set -uo pipefail
blob=/sys/firmware/qemu_fw_cfg/by_name/opt/otpatch/scenario/raw
for _ in $(seq 100); do [[ -r $blob ]] && break; sleep 0.1; done
mkdir -p /run/hil
if ! cp "$blob" /run/hil/scenario.sh 2>/dev/null; then
  echo "HIL-FACT runner error=no-scenario"
  systemctl poweroff
  exit 1
fi
echo "HIL-FACT runner start uptime_ms=$(awk '{printf "%d", $1 * 1000}' /proc/uptime)"
rc=0
bash /run/hil/scenario.sh || rc=$?
echo "HIL-END rc=$rc uptime_ms=$(awk '{printf "%d", $1 * 1000}' /proc/uptime)"
[[ -e /run/hil/no-poweroff ]] || systemctl poweroff
