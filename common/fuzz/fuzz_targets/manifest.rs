//! Fuzz target: `otpatch_common::bundle::fuzzing::manifest` must never panic, hang or allocate without bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = otpatch_common::bundle::fuzzing::manifest(data);
});
