//! Fuzz target: libFuzzer's bytes drive the structure-aware generator (`bundle::fuzzing::shapes`), whose DER
//! shapes reach deep into the CMS, certificate and trust checks; none of them may panic, and every refusal must
//! carry a message. The proptest in `common/src/bundle/shapes/` runs the same generator in `cargo test`.
#![no_main]

use std::sync::OnceLock;

use otpatch_common::bundle::fuzzing::shapes::{check, Context};

/// The real PKI's certificates: the `cms` seed of the corpus.
const SEED: &[u8] = include_bytes!("../corpus/cms/seed-p256");

fn context() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let scratch = std::env::temp_dir().join(format!("otpatch-fuzz-shapes-{}.otp", std::process::id()));
        Context::new(SEED, Some(scratch)).expect("the seed CMS parses")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = check(data, context());
});
