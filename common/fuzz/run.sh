#!/usr/bin/env bash
# Runs every fuzz target of the bundle parsers briefly under libFuzzer (cargo-fuzz), seeded from corpus/<target>/.
# cargo-fuzz needs nightly-only flags (-Zsanitizer=address); only the stable toolchain is installable here, so this
# sets RUSTC_BOOTSTRAP=1, which lets stable rustc accept them. Usage: bash run.sh [seconds-per-target, default 15]
# New inputs go to a temporary corpus; a crash leaves its input in artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-15}"
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
targets=(trailer manifest cms otpatch_bundle rauc_manifest squashfs shapes)
cargo fuzz build
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    echo "== fuzz $t (${seconds}s)"
    if ! cargo fuzz run "$t" "$work/$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=1024 \
        -max_len=65536 > "$work/$t.log" 2>&1; then
        grep -E "panicked|ERROR|SUMMARY|artifact" "$work/$t.log" | head -20
        echo "fuzz target $t failed; the input is in common/fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E "^Done [0-9]+ runs" "$work/$t.log"
done
echo "all ${#targets[@]} fuzz targets ran ${seconds}s each without a crash"
