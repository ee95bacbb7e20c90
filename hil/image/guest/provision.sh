#!/bin/bash
# Unpacks the host's site files (fw_cfg blob opt/otpatch/site.tar) into / (hil/image test harness).
set -euo pipefail
blob=/sys/firmware/qemu_fw_cfg/by_name/opt/otpatch/site.tar/raw
if [[ ! -r $blob ]]; then
  modprobe qemu_fw_cfg
  for _ in $(seq 50); do [[ -r $blob ]] && break; sleep 0.1; done
fi
[[ -r $blob ]] || { echo "hil-provision: no $blob" >&2; exit 1; }
tar -xf "$blob" -C / --no-same-owner
chmod 0600 /etc/otpatch/client.key
