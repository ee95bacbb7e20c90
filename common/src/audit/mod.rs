//! The audit record and its hash chain.
//!
//! Each record carries the SHA-256 of the previous record (`prev`) and its own `hash`, computed over `prev`
//! followed by the record's canonical JSON without the `hash` field. Deleting, reordering or editing a record
//! breaks the chain at that point; [`verify_chain`] says where.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod event;
pub use event::{AuditEvent, OperatorAction};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3... with no gaps.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// `window-scheduled`, `transition`, `verdict`, `operator`, `daemon-start`, `recovery`, `policy`...
    pub kind: String,
    pub window: Option<String>,
    /// D-Bus caller uid for operator actions.
    pub actor_uid: Option<u32>,
    /// Kind-specific facts (keys sorted, so the JSON is canonical).
    pub detail: serde_json::Value,
    pub prev: String,
    pub hash: String,
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record {seq}: sequence number out of order (expected {expected})")]
    Sequence { seq: u64, expected: u64 },
    #[error(
        "record {seq}: previous-hash link broken (record {seq} names {found}, record before it hashes to {expected})"
    )]
    Link { seq: u64, expected: String, found: String },
    #[error("record {seq}: hash does not match its contents (edited?)")]
    Hash { seq: u64 },
    #[error("line {line}: not an audit record: {reason}")]
    Parse { line: usize, reason: String },
}

impl AuditRecord {
    /// Builds a record linked to `prev` and computes its hash.
    pub fn new(
        seq: u64,
        time: String,
        kind: &str,
        window: Option<String>,
        actor_uid: Option<u32>,
        detail: serde_json::Value,
        prev: &str,
    ) -> Self {
        let mut r = AuditRecord {
            seq,
            time,
            kind: kind.to_string(),
            window,
            actor_uid,
            detail,
            prev: prev.to_string(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash.clear();
        // serde_json's Map keeps keys sorted (no preserve_order feature), so this text is canonical.
        let body = serde_json::to_string(&unhashed).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.prev.as_bytes());
        h.update(b"\n");
        h.update(body.as_bytes());
        hex::encode(h.finalize())
    }
}

/// Checks a whole chain from its first record. `start_prev` is [`GENESIS`] for a full log.
pub fn verify_chain(records: &[AuditRecord], start_prev: &str) -> Result<(), ChainError> {
    let mut prev = start_prev.to_string();
    let first = records.first().map(|r| r.seq).unwrap_or(1);
    for (r, expected_seq) in records.iter().zip(first..) {
        if r.seq != expected_seq {
            return Err(ChainError::Sequence { seq: r.seq, expected: expected_seq });
        }
        if r.prev != prev {
            return Err(ChainError::Link { seq: r.seq, expected: prev, found: r.prev.clone() });
        }
        if r.compute_hash() != r.hash {
            return Err(ChainError::Hash { seq: r.seq });
        }
        prev = r.hash.clone();
    }
    Ok(())
}

/// Parses JSON lines into records; blank lines are skipped.
pub fn parse_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Vec<AuditRecord>, ChainError> {
    let mut out = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str(line).map_err(|e| ChainError::Parse { line: i + 1, reason: e.to_string() })?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let r = AuditRecord::new(
                    seq,
                    format!("2026-11-22T00:00:0{seq}Z"),
                    "transition",
                    Some("w-1".into()),
                    Some(0),
                    serde_json::json!({"from": "armed", "to": "segmented"}),
                    &prev,
                );
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5), GENESIS), Ok(()));
    }

    #[test]
    fn edited_record_is_found() {
        let mut c = chain(5);
        c[2].detail = serde_json::json!({"from": "armed", "to": "committed"});
        assert_eq!(verify_chain(&c, GENESIS), Err(ChainError::Hash { seq: 3 }));
    }

    #[test]
    fn removed_record_is_found() {
        let mut c = chain(5);
        c.remove(1);
        assert!(matches!(verify_chain(&c, GENESIS), Err(ChainError::Sequence { seq: 3, expected: 2 })));
    }

    #[test]
    fn rehashed_edit_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].kind = "operator".into();
        c[2].hash = c[2].compute_hash();
        assert!(matches!(verify_chain(&c, GENESIS), Err(ChainError::Link { seq: 4, .. })));
    }

    #[test]
    fn round_trips_through_json_lines() {
        let c = chain(3);
        let text: Vec<String> = c.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        let parsed = parse_lines(text.iter().map(|s| s.as_str())).unwrap();
        assert_eq!(parsed, c);
        assert!(matches!(parse_lines(["{not json"]), Err(ChainError::Parse { line: 1, .. })));
    }
}
