//! The append-only audit log: every window, transition, verdict and operator action, hash-chained
//! (see [`otpatch_common::audit`]). One JSON record per line, fsynced on append.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use otpatch_common::audit::{AuditRecord, GENESIS};

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    next_seq: u64,
    last_hash: String,
}

impl AuditLog {
    /// Opens the log, creating it if needed. A torn last line (a crash mid-append) is moved to
    /// `<log>.torn` and cut off, so appending continues the chain from the last whole record; the returned
    /// problems say so.
    pub fn open(path: &Path) -> io::Result<(AuditLog, Vec<String>)> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut problems = Vec::new();
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut good_len = 0usize;
        let mut last: Option<AuditRecord> = None;
        let mut offset = 0usize;
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let whole = chunk.ends_with(b"\n");
            match (whole, serde_json::from_slice::<AuditRecord>(chunk)) {
                (true, Ok(r)) => {
                    last = Some(r);
                    good_len = offset + chunk.len();
                }
                _ if offset + chunk.len() == bytes.len() => {
                    // The last line is torn: keep its bytes aside, cut it off.
                    let torn = path.with_extension("log.torn");
                    fs::write(&torn, chunk)?;
                    problems.push(format!(
                        "{}: torn last record ({} bytes) moved to {}",
                        path.display(),
                        chunk.len(),
                        torn.display()
                    ));
                }
                _ => problems.push(format!("{}: unreadable record at byte {offset}", path.display())),
            }
            offset += chunk.len();
        }
        let file = OpenOptions::new().create(true).append(true).read(true).open(path)?;
        if good_len < bytes.len() && problems.iter().any(|p| p.contains("torn")) {
            file.set_len(good_len as u64)?;
            file.sync_all()?;
        }
        let (next_seq, last_hash) = match last {
            Some(r) => (r.seq + 1, r.hash),
            None => (1, GENESIS.to_string()),
        };
        Ok((AuditLog { path: path.to_path_buf(), file, next_seq, last_hash }, problems))
    }

    /// Appends a record and fsyncs it.
    pub fn append(
        &mut self,
        now: Timestamp,
        kind: &str,
        window: Option<&str>,
        actor_uid: Option<u32>,
        detail: serde_json::Value,
    ) -> io::Result<AuditRecord> {
        let rec = AuditRecord::new(
            self.next_seq,
            now.to_string(),
            kind,
            window.map(str::to_string),
            actor_uid,
            detail,
            &self.last_hash,
        );
        let mut line = serde_json::to_string(&rec).map_err(io::Error::other)?;
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        self.next_seq += 1;
        self.last_hash = rec.hash.clone();
        Ok(rec)
    }

    /// Up to `max` record lines starting at sequence number `from_seq`.
    pub fn read(&self, from_seq: u64, max: usize) -> io::Result<Vec<String>> {
        read_file(&self.path, from_seq, max)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Records (JSON lines) of the audit log at `path` from `from_seq`, at most `max`: what `GetAuditLog` serves, read
/// off the event loop (the log only grows by whole lines, each appended with one write).
pub fn read_file(path: &Path, from_seq: u64, max: usize) -> io::Result<Vec<String>> {
    let f = File::open(path)?;
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        if out.len() >= max {
            break;
        }
        // Cheap filter on the seq field; records are written in order.
        let seq = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("seq").and_then(|s| s.as_u64()))
            .unwrap_or(0);
        if seq >= from_seq {
            out.push(line);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use otpatch_common::audit::{parse_lines, verify_chain};

    fn now() -> Timestamp {
        "2026-11-30T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn appends_a_verifiable_chain_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let (mut log, problems) = AuditLog::open(&p).unwrap();
        assert!(problems.is_empty());
        log.append(now(), "daemon-start", None, None, serde_json::json!({})).unwrap();
        log.append(now(), "operator", Some("w1"), Some(0), serde_json::json!({"action": "schedule"})).unwrap();
        drop(log);
        let (mut log, _) = AuditLog::open(&p).unwrap();
        assert_eq!(log.next_seq(), 3);
        log.append(now(), "transition", Some("w1"), None, serde_json::json!({"to": "arming"})).unwrap();
        let lines = log.read(1, 100).unwrap();
        let recs = parse_lines(lines.iter().map(|s| s.as_str())).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(verify_chain(&recs, GENESIS), Ok(()));
        assert_eq!(log.read(2, 1).unwrap().len(), 1);
    }

    #[test]
    fn torn_tail_is_set_aside_and_the_chain_continues() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let (mut log, _) = AuditLog::open(&p).unwrap();
        log.append(now(), "daemon-start", None, None, serde_json::json!({})).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":2,\"time\":\"2026").unwrap();
        drop(f);
        let (mut log, problems) = AuditLog::open(&p).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("torn"));
        assert_eq!(fs::read(p.with_extension("log.torn")).unwrap(), b"{\"seq\":2,\"time\":\"2026");
        log.append(now(), "recovery", None, None, serde_json::json!({})).unwrap();
        let lines = log.read(1, 100).unwrap();
        let recs = parse_lines(lines.iter().map(|s| s.as_str())).unwrap();
        assert_eq!(verify_chain(&recs, GENESIS), Ok(()));
        assert_eq!(recs.len(), 2);
    }
}
