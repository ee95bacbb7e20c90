#!/usr/bin/env bash
# Benchmark of bundle verification: time and peak memory of our verifier against `openssl cms -verify` on the same
# payload and signer, and against `rauc info` on a RAUC bundle. Prints figures; asserts nothing.
#
#   bash tests/bench/verify.sh [payload-MiB, default 1024] [rauc-image-MiB, default 256]
#
# Needs openssl, rauc and squashfs-tools (Debian: openssl rauc squashfs-tools) and GNU time (Debian: time).
# Builds the verifier once in release mode. Everything is made in a temporary directory and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib="${1:-1024}"
rauc_mib="${2:-256}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== PKI (openssl)"
(
    cd "$work"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out root.key 2>/dev/null
    openssl req -x509 -new -key root.key -subj "/CN=bench root" -days 30 -out root.pem \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out signer.key
    openssl req -new -key signer.key -subj "/CN=bench signer" -out signer.csr
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n' > signer.ext
    openssl x509 -req -in signer.csr -CA root.pem -CAkey root.key -set_serial 7 -days 30 -extfile signer.ext \
        -out signer.pem 2>/dev/null
)

echo "== ${size_mib} MiB payload"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$work/payload.bin"

echo "== otpatch bundle (the FORMAT.md shell recipe)"
sed -n '/<!-- recipe:begin -->/,/<!-- recipe:end -->/p' common/src/bundle/FORMAT.md | sed '1,2d;$d' | sed '$d' \
    > "$work/recipe.sh"
KIND=app COMPATIBLE=bench-gw VERSION=1.0 EXPIRES=2099-01-01T00:00:00Z KERNEL_RELEASE= \
    SIGNER_CERT="$work/signer.pem" SIGNER_KEY="$work/signer.key" CHAIN= OUT="$work/bundle.otp" \
    sh "$work/recipe.sh" "$work/payload.bin"

echo "== detached CMS over the same payload for openssl"
openssl cms -sign -binary -outform DER -in "$work/payload.bin" -signer "$work/signer.pem" -inkey "$work/signer.key" \
    -out "$work/payload.cms"

echo "== build the verifier (release, once)"
cargo test --release -p otpatch-common --features bundle --test bundle_bench --no-run 2>&1 | tail -1
bench_bin="$(cargo test --release -p otpatch-common --features bundle --test bundle_bench --no-run 2>&1 |
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)"

run_ours() { # bundle compatible
    OTPATCH_BENCH_BUNDLE="$1" OTPATCH_BENCH_ANCHOR="$work/root.pem" OTPATCH_BENCH_COMPATIBLE="$2" \
        /usr/bin/time -f "ours: wall %e s, max RSS %M KiB" "$bench_bin" --ignored --nocapture --test-threads 1 \
        bench_verify_once 2>&1 | grep -oE "(BENCH|ours:).*"
}

# Warm the page cache so both sides read from memory.
cat "$work/payload.bin" > /dev/null

echo "== results (${size_mib} MiB, page cache warm)"
/usr/bin/time -f "sha256sum: wall %e s, max RSS %M KiB" sha256sum "$work/payload.bin" > /dev/null
for i in 1 2; do
    /usr/bin/time -f "openssl cms -verify (run $i): wall %e s, max RSS %M KiB" openssl cms -verify -binary \
        -inform DER -in "$work/payload.cms" -content "$work/payload.bin" -CAfile "$work/root.pem" -purpose any \
        -out /dev/null 2>&1 | grep -v "Verification successful"
    run_ours "$work/bundle.otp" bench-gw
done

echo "== RAUC plain bundle, ${rauc_mib} MiB image"
mkdir -p "$work/rauc"
head -c "$((rauc_mib * 1024 * 1024))" /dev/urandom > "$work/rauc/rootfs.img"
printf '[update]\ncompatible=bench-gw\nversion=1.0\n\n[bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.img\n' \
    > "$work/rauc/manifest.raucm"
rauc bundle --cert "$work/signer.pem" --key "$work/signer.key" "$work/rauc" "$work/bench.raucb" > /dev/null 2>&1
printf '[system]\ncompatible=bench-gw\nbootloader=noop\n\n[keyring]\npath=%s\ncheck-purpose=codesign\n' \
    "$work/root.pem" > "$work/system.conf"
cat "$work/bench.raucb" > /dev/null
for i in 1 2; do
    /usr/bin/time -f "rauc info (run $i): wall %e s, max RSS %M KiB" rauc --conf="$work/system.conf" info \
        "$work/bench.raucb" 2>&1 | grep -E "rauc info"
    run_ours "$work/bench.raucb" bench-gw
done
echo "(ours on a RAUC plain bundle hashes it twice: the CMS digest over the squashfs, then each image read"
echo " through squashfs against its manifest SHA-256; rauc info checks the signature only)"
