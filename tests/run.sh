#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace (unit, property and process tests).
# The process tests need dbus-daemon and dbus-send (Debian: dbus-daemon, dbus-bin) and run as root
# (they start clients as other uids).
set -euo pipefail
cd "$(dirname "$0")/.."
features="otpatchd/fake-backends,otpatchd/failpoints"
# Pinned Python tools and independent peers (pymodbus, oelint-adv) in a venv of the repository.
if [ ! -x .venv/bin/python3 ]; then python3 -m venv .venv; fi
.venv/bin/python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
export OTPATCH_PYTHON="$PWD/.venv/bin/python3"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features "$features" -- -D warnings
# The process tests run these binaries; build them with the test features first.
cargo build --workspace --bins --features "$features"
cargo test --workspace --no-fail-fast --features "$features" "$@"
# The Yocto layer: oelint-adv and its consistency with the workspace (bitbake itself cannot run here).
bash yocto/check.sh
# Every parser of untrusted bundle bytes under libFuzzer, briefly (the committed corpus also runs as a plain test).
bash common/fuzz/run.sh "${OTPATCH_FUZZ_SECONDS:-10}"
# The real kernel: Debian's stock 6.1 in QEMU (TCG), livepatch load, atomic replace, stall and revert, vermagic.
bash hil/run.sh
# The gateway as it ships: a Debian systemd image with GRUB A/B slots under OVMF (hil/image/): the shipped unit
# (Type=notify, watchdog, hardening) runs a whole window, the bus policy refuses nobody and allows group otpatch;
# three plain reboots stay on slot A (otpatchd marks ordinary boots good for RAUC's GRUB scheme).
bash hil/image/run.sh systemd plain-reboots
