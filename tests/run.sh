#!/usr/bin/env bash
# The test command. `bash tests/run.sh [LAYER] [ARGS...]` runs one layer, or all of them (the default, what CI
# runs): every layer runs, the failed ones are named at the end and make the exit code 1.
#
#   lint     cargo fmt --check, clippy -D warnings, the Yocto layer (oelint-adv, consistency with the workspace)
#   unit     unit, property and doc tests of every crate (no root, no tools)
#   interop  the crates' integration tests against real peers: netfilter in namespaces, nginx, openssl,
#            `rauc bundle`, pymodbus, socat/mbpoll (root; the packages .ci/run installs)
#   process  whole processes: a private dbus-daemon, otpatchd and otpatchctl as other uids, RAUC's service
#   fuzz     every parser of untrusted bundle bytes under libFuzzer, briefly (OTPATCH_FUZZ_SECONDS, default 10)
#   hil      Debian's kernel in QEMU (TCG): livepatch, CRIU and whole otpatchd windows (hil/run.sh)
#
# ARGS go to `cargo test` in the unit, interop and process layers (a test name filter, `-- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."
features="otpatchd/fake-backends,otpatchd/failpoints"
layers=(lint unit interop process fuzz hil)
layer=all
if [ $# -gt 0 ] && [[ " all ${layers[*]} " == *" $1 "* ]]; then
  layer=$1
  shift
fi

venv() {
  # Pinned Python tools and independent peers (pymodbus, oelint-adv) in a venv of the repository.
  if [ ! -x .venv/bin/python3 ]; then python3 -m venv .venv; fi
  .venv/bin/python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  export OTPATCH_PYTHON="$PWD/.venv/bin/python3"
}

run_lint() {
  venv
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --features "$features" -- -D warnings
  bash yocto/check.sh
}

run_unit() {
  cargo test --workspace --no-fail-fast --features "$features" --lib --bins "$@"
  cargo test --workspace --no-fail-fast --features "$features" --doc "$@"
}

run_interop() {
  venv
  cargo test --no-fail-fast --features "$features" -p otpatch-common -p otpatchd -p otpatchctl -p otpatch-plcsim \
    --test '*' "$@"
}

run_process() {
  venv
  # The process tests run these binaries; build them with the test features first.
  cargo build --workspace --bins --features "$features"
  # (otpatch-tests has no features of its own: the binaries it runs were built with them just above.)
  cargo test --no-fail-fast -p otpatch-tests --test "*" "$@"
}

run_fuzz() {
  bash common/fuzz/run.sh "${OTPATCH_FUZZ_SECONDS:-10}"
}

run_hil() {
  bash hil/run.sh
  # The gateway as it ships: a Debian systemd image with GRUB A/B slots under OVMF (hil/image/), CI's list of
  # hil/image/run.sh: the shipped unit (Type=notify, watchdog, hardening) runs a whole window and the bus policy
  # refuses nobody; a RAUC update with a real logind reboot, kept only after observation, plain reboots before
  # and after it; the plant failing on the new slot; a new slot that never comes up; a power cut in a livepatch
  # apply. The whole power-cut matrix is `bash hil/image/run.sh powercut` (not in CI: about an hour).
  bash hil/image/run.sh
}

if [ "$layer" != all ]; then
  "run_$layer" "$@"
  exit 0
fi
failed=()
for l in "${layers[@]}"; do
  echo "=== tests/run.sh: layer $l"
  # A layer of its own process, so that `set -e` holds inside it.
  if ! bash "$0" "$l" "$@"; then
    failed+=("$l")
    echo "=== tests/run.sh: layer $l FAILED"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "=== tests/run.sh: failed layers: ${failed[*]}"
  exit 1
fi
echo "=== tests/run.sh: all layers passed"
