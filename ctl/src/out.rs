//! Writing to stdout without panicking when the reader goes away (`otpatchctl log | head`), and never passing a
//! terminal control through: text from the daemon, bundles and certificates (an error text, a progress message,
//! a certificate subject) could otherwise clear the operator's screen, retitle the window or reorder what they
//! read. Text output shows such characters escaped (`\x1b`, `\u{202e}`); JSON output carries them as JSON escapes
//! (`\u001b`), so a JSON reader still gets the exact string.

use std::borrow::Cow;
use std::io::{self, Write};

/// Whether a terminal would act on `c`: C0 controls but line feed and tab, DEL, C1 controls, and the
/// bidirectional embeddings, overrides and isolates.
fn acts_on_terminal(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character a terminal acts on shown as an escape (`\x1b`, `\u{9b}`, `\u{202e}`).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut s = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !acts_on_terminal(c) => s.push(c),
            c if (c as u32) < 0x80 => s.push_str(&format!("\\x{:02x}", c as u32)),
            c => s.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(s)
}

/// JSON text with every character a terminal acts on written as a JSON escape (`\u001b`). Raw control characters
/// are only valid inside JSON strings as escapes anyway, so the value a JSON reader gets is unchanged.
pub fn escape_json(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut s = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts_on_terminal(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                s.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            s.push(c);
        }
    }
    Cow::Owned(s)
}

/// Writes `text` (no newline added), escaped for the terminal, and flushes.
pub fn write(text: &str) {
    write_trusted(&escape(text));
}

/// Writes one line of JSON text (from the daemon, or serialized here), escaped as JSON.
pub fn json_text(text: &str) {
    write_trusted(&format!("{}\n", escape_json(text)));
}

/// Writes `text` as it is: only for what otpatchctl itself made whole (completions, man pages, its own progress
/// bar controls around escaped text). When stdout is a closed pipe, exits quietly with 0: the reader has what it
/// wanted.
pub fn write_trusted(text: &str) {
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
    json_text(&value.to_string());
}

/// Writes an error line on stderr, escaped for the terminal.
pub fn error_line(text: &str) {
    eprintln!("{}", escape(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_escaped() {
        assert_eq!(escape("plain text\n\tindented"), "plain text\n\tindented");
        assert_eq!(escape("a\u{1b}[2Jb\r\u{7f}"), r"a\x1b[2Jb\x0d\x7f");
        assert_eq!(escape("\u{9b}31m \u{202e}exe.ko \u{2066}"), r"\u{9b}31m \u{202e}exe.ko \u{2066}");
        assert!(matches!(escape("ok"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_keeps_its_value_but_not_the_raw_controls() {
        let v = serde_json::json!({"m": "x\u{1b}[2J\u{9b}\u{202e}\u{7}y"});
        let text = escape_json(&v.to_string()).into_owned();
        assert!(!text.chars().any(|c| c.is_control() || c == '\u{202e}'), "{text:?}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, v);
    }
}
