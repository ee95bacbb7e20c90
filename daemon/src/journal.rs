//! The write-ahead journal of the engine state.
//!
//! A transition is durably recorded before its actions run. Two slots (`journal.0`, `journal.1`) are written
//! alternately, each atomically (temp file, fsync, rename, fsync dir) and each carrying a sequence number and
//! the SHA-256 of its body. On start the valid slot with the highest sequence number wins; a torn, truncated or
//! corrupted slot is reported and the other (last good) one is used.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::State;
use crate::fsutil::write_atomic;

const MAGIC: &str = "otpatch-journal-v1";

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    written: Timestamp,
    state: State,
}

/// What was found on start.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The last good state (`Idle` on first start).
    pub state: State,
    pub seq: u64,
    /// Slots that could not be used, with why (torn, truncated, corrupted). Empty when all is well.
    pub problems: Vec<String>,
}

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    seq: u64,
}

fn slot_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("journal.{}", n % 2))
}

fn encode(entry: &Entry) -> Vec<u8> {
    let body = serde_json::to_string(entry).expect("journal entry serializes");
    let digest = hex::encode(Sha256::digest(body.as_bytes()));
    format!("{MAGIC} {digest}\n{body}\n").into_bytes()
}

fn decode(bytes: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 (corrupted)".to_string())?;
    let (header, rest) = text.split_once('\n').ok_or("no header line (truncated)")?;
    let digest = header.strip_prefix(MAGIC).map(str::trim).ok_or("bad header (not a journal, or corrupted)")?;
    let body = rest.strip_suffix('\n').ok_or("body does not end with a newline (torn write)")?;
    if hex::encode(Sha256::digest(body.as_bytes())) != digest {
        return Err("checksum mismatch (torn or corrupted)".into());
    }
    serde_json::from_str(body).map_err(|e| format!("unreadable entry: {e}"))
}

impl Journal {
    /// Opens (creating the directory) and reads the last good state.
    pub fn open(dir: &Path) -> io::Result<(Journal, Loaded)> {
        fs::create_dir_all(dir)?;
        let mut best: Option<Entry> = None;
        let mut problems = Vec::new();
        for n in 0..2 {
            let path = slot_path(dir, n);
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match decode(&bytes) {
                Ok(entry) => {
                    if best.as_ref().is_none_or(|b| entry.seq > b.seq) {
                        best = Some(entry);
                    }
                }
                Err(why) => problems.push(format!("{}: {why}", path.display())),
            }
        }
        let (state, seq) = best.map(|e| (e.state, e.seq)).unwrap_or((State::Idle, 0));
        Ok((Journal { dir: dir.to_path_buf(), seq }, Loaded { state, seq, problems }))
    }

    /// Durably records `state`. Returns only once it is on disk.
    pub fn record(&mut self, state: &State, now: Timestamp) -> io::Result<u64> {
        let seq = self.seq + 1;
        let entry = Entry { seq, written: now, state: state.clone() };
        write_atomic(&slot_path(&self.dir, seq), &encode(&entry))?;
        self.seq = seq;
        Ok(seq)
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::WindowCtx;

    fn scheduled(id: &str) -> State {
        State::Scheduled {
            window: WindowCtx {
                id: id.into(),
                start: "2026-12-01T01:00:00Z".parse().unwrap(),
                end: "2026-12-01T02:00:00Z".parse().unwrap(),
                auto_start: true,
            },
        }
    }

    fn now() -> Timestamp {
        "2026-11-30T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn first_start_is_idle() {
        let d = tempfile::tempdir().unwrap();
        let (_, loaded) = Journal::open(d.path()).unwrap();
        assert_eq!(loaded, Loaded { state: State::Idle, seq: 0, problems: vec![] });
    }

    #[test]
    fn last_recorded_state_wins() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(d.path()).unwrap();
        for i in 0..5 {
            j.record(&scheduled(&format!("w{i}")), now()).unwrap();
        }
        let (j2, loaded) = Journal::open(d.path()).unwrap();
        assert_eq!(loaded.state, scheduled("w4"));
        assert_eq!(loaded.seq, 5);
        assert_eq!(j2.seq(), 5);
        assert!(loaded.problems.is_empty());
    }

    #[test]
    fn torn_or_truncated_slot_is_reported_and_the_last_good_state_used() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(d.path()).unwrap();
        j.record(&scheduled("good"), now()).unwrap(); // seq 1 -> journal.1
        j.record(&scheduled("newer"), now()).unwrap(); // seq 2 -> journal.0
        let newest = d.path().join("journal.0");
        let bytes = fs::read(&newest).unwrap();
        for cut in [bytes.len() - 1, bytes.len() / 2, 10, 0] {
            fs::write(&newest, &bytes[..cut]).unwrap();
            let (_, loaded) = Journal::open(d.path()).unwrap();
            assert_eq!(loaded.state, scheduled("good"), "cut at {cut}");
            assert_eq!(loaded.problems.len(), 1, "cut at {cut}");
            assert!(loaded.problems[0].contains("journal.0"), "{:?}", loaded.problems);
        }
        // A flipped byte in the body is caught by the checksum.
        let mut flipped = bytes.clone();
        let i = flipped.len() - 5;
        flipped[i] ^= 0x01;
        fs::write(&newest, &flipped).unwrap();
        let (mut j, loaded) = Journal::open(d.path()).unwrap();
        assert_eq!(loaded.state, scheduled("good"));
        assert!(loaded.problems[0].contains("checksum"), "{:?}", loaded.problems);
        // Recording again goes on from the last good sequence number and overwrites the bad slot.
        j.record(&scheduled("after"), now()).unwrap();
        let (_, loaded) = Journal::open(d.path()).unwrap();
        assert_eq!(loaded.state, scheduled("after"));
        assert!(loaded.problems.is_empty());
    }
}
