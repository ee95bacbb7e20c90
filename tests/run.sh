#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace (unit, property and process tests).
# The process tests need dbus-daemon and dbus-send (Debian: dbus-daemon, dbus-bin) and run as root
# (they start clients as other uids).
set -euo pipefail
cd "$(dirname "$0")/.."
features="otpatchd/fake-backends,otpatchd/failpoints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features "$features" -- -D warnings
# The process tests run these binaries; build them with the test features first.
cargo build --workspace --bins --features "$features"
cargo test --workspace --no-fail-fast --features "$features" "$@"
