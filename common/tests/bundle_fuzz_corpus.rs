//! The fuzz targets' entry points over the committed corpus (`common/fuzz/corpus/<target>/`), as a plain test on
//! the stable toolchain: each seed must parse, and every single-byte corruption and every truncation of it, and
//! every input that once crashed a target (`regress-*`), must be refused or accepted without a panic. `common/fuzz/run.sh` runs the same entry points under libFuzzer.
#![cfg(feature = "bundle")]
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;

use otpatch_common::bundle::fuzzing;

/// Valid inputs (`seed-*`); with `regressions`, also inputs that once crashed a target (`regress-*`).
fn inputs(target: &str, regressions: bool) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("seed-") || (regressions && name.starts_with("regress-"))
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(!out.is_empty(), "no seed in {}", dir.display());
    out.sort();
    out
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    inputs(target, false)
}

/// The seed, then each byte xor-ed with a few masks, then each prefix (bounded: at most 4096 positions).
fn variants(seed: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let step = (seed.len() / 4096).max(1);
    let flips = (0..seed.len()).step_by(step).flat_map(move |i| {
        [0x01u8, 0x80, 0xff].into_iter().map(move |m| {
            let mut v = seed.to_vec();
            v[i] ^= m;
            v
        })
    });
    let cuts = (0..seed.len()).step_by(step).map(move |n| seed[..n].to_vec());
    std::iter::once(seed.to_vec()).chain(flips).chain(cuts)
}

#[test]
fn seeds_parse() {
    for s in seeds("trailer") {
        assert!(fuzzing::trailer(&s));
    }
    for s in seeds("manifest") {
        assert!(fuzzing::manifest(&s));
    }
    for s in seeds("cms") {
        assert!(fuzzing::cms(&s));
    }
    for s in seeds("otpatch_bundle") {
        fuzzing::otpatch_bundle(&s).unwrap();
    }
    for s in seeds("rauc_manifest") {
        assert!(fuzzing::rauc_manifest(&s));
    }
    for s in seeds("squashfs") {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&s).unwrap();
        let m = fuzzing::squashfs_manifest(&f, s.len() as u64).unwrap();
        assert!(String::from_utf8(m).unwrap().contains("[update]"));
    }
}

#[test]
fn corrupted_seeds_never_panic() {
    let mut runs = 0usize;
    for s in inputs("trailer", true) {
        variants(&s).for_each(|v| {
            fuzzing::trailer(&v);
            runs += 1;
        });
    }
    for s in inputs("manifest", true) {
        variants(&s).for_each(|v| {
            fuzzing::manifest(&v);
        });
    }
    for s in inputs("cms", true) {
        variants(&s).for_each(|v| {
            fuzzing::cms(&v);
            runs += 1;
        });
    }
    for s in inputs("otpatch_bundle", true) {
        variants(&s).for_each(|v| {
            let _ = fuzzing::otpatch_bundle(&v);
        });
    }
    for s in inputs("rauc_manifest", true) {
        variants(&s).for_each(|v| {
            fuzzing::rauc_manifest(&v);
        });
    }
    let mut f = tempfile::tempfile().unwrap();
    for s in inputs("squashfs", true) {
        for v in variants(&s) {
            f.set_len(0).unwrap();
            std::io::Seek::rewind(&mut f).unwrap();
            f.write_all(&v).unwrap();
            let _ = fuzzing::squashfs_manifest(&f, v.len() as u64);
            runs += 1;
        }
    }
    assert!(runs > 1000);
}
