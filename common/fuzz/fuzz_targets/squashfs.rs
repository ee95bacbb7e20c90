//! Fuzz target: the squashfs reader looking up and reading `manifest.raucm`, over a file holding the input.
#![no_main]

use std::io::{Seek, Write};
use std::sync::Mutex;

static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut guard = FILE.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let path = std::env::temp_dir().join(format!("otpatch-fuzz-squashfs-{}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path);
        let _ = std::fs::remove_file(&path);
        *guard = f.ok();
    }
    let Some(f) = guard.as_mut() else { return };
    if f.set_len(0).is_err() || f.rewind().is_err() || f.write_all(data).is_err() {
        return;
    }
    let _ = otpatch_common::bundle::fuzzing::squashfs_manifest(f, data.len() as u64);
});
