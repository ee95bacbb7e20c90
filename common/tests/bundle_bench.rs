//! The verifier as the benchmark (`tests/bench/verify.sh`) runs it: ignored in normal runs; given a bundle, an
//! anchor and a compatible in the environment, it verifies once and prints the wall time and the peak RSS of this
//! process (VmHWM), so the script compares them with `openssl cms -verify` and `rauc info` on the same files.
#![cfg(feature = "bundle")]
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use otpatch_common::bundle::{self, Expectations, TrustStore};

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "run by tests/bench/verify.sh"]
fn bench_verify_once() {
    let path = PathBuf::from(std::env::var("OTPATCH_BENCH_BUNDLE").unwrap());
    let anchor = PathBuf::from(std::env::var("OTPATCH_BENCH_ANCHOR").unwrap());
    let compatible = std::env::var("OTPATCH_BENCH_COMPATIBLE").unwrap();
    let before = vm_hwm_kib();
    let trust = TrustStore::from_pem_files(&[anchor], &[], None).unwrap();
    let exp = Expectations {
        compatible,
        last_committed: Default::default(),
        allow_downgrade: false,
        now: jiff::Timestamp::now(),
        kernel_release: None,
    };
    let start = std::time::Instant::now();
    let v = bundle::verify(&path, &trust, &exp).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "BENCH format={:?} bytes={size} seconds={secs:.3} throughput_mib_s={:.0} vmhwm_before_kib={before} vmhwm_after_kib={}",
        v.format,
        size as f64 / secs / 1048576.0,
        vm_hwm_kib()
    );
}
