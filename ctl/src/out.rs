//! Writing to stdout without panicking when the reader goes away (`otpatchctl log | head`).

use std::io::{self, Write};

/// Writes `text` (no newline added) and flushes. When stdout is a closed pipe, exits quietly with 0: the
/// reader has what it wanted.
pub fn write(text: &str) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("otpatchctl: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Writes one line.
pub fn line(text: &str) {
    write(&format!("{text}\n"));
}

/// Writes one JSON value on one line.
pub fn json(value: &serde_json::Value) {
    line(&value.to_string());
}
