//! Every kind of audit record the daemon writes, with the facts each carries: one enum instead of kinds and
//! details spelled out at each place that writes one. A record's `kind` is the variant's name in kebab case and
//! its `detail` the variant's fields (for `operator`, with the `action`), exactly as they are stored.

use serde::{Deserialize, Serialize};

use crate::api::ProbeReport;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum AuditEvent {
    /// The daemon started (what the journal said, and any problem found in the state).
    DaemonStart { version: String, journal_state: String, problems: Vec<String> },
    /// A window interrupted by a restart was recovered.
    Recovery { journal_state: String, resumed_as: String, window_open: bool },
    /// The engine moved from one state to another.
    Transition { from: String, to: String, event: String },
    /// The health verdict of an observation.
    Verdict { verdict: String, reason: String, probes: Vec<ProbeReport> },
    /// A window ended.
    WindowClosed { outcome: String },
    /// A change was committed.
    Commit { version: String, kind: String, digest: String, signer: String },
    /// The window's segmentation was lifted.
    SegmentationLifted { dropped_packets: u64 },
    /// Segmentation a crashed daemon left behind was lifted.
    StaleSegmentationLifted { dropped_packets: u64 },
    /// The daemon stopped (lifting the segmentation of a window in progress, if it had one).
    Shutdown {
        lifted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dropped_packets: Option<u64>,
    },
    /// A reboot into the updated slot was asked for.
    RebootRequested { slot: String },
    /// The gateway came back on the slot an update was staged in.
    StagedBoot { version: String, digest: String },
    /// A committed livepatch was put back at start (after a reboot).
    BootReapply {
        version: String,
        digest: String,
        /// Set when it was put back under the last good policy (the one in force being invalid).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
    },
    /// A committed livepatch could not be put back at start.
    BootReapplyFailed { version: String, error: String },
    /// The state directory was pruned to what is committed.
    StatePruned { removed: Vec<String>, problems: Vec<String> },
    /// A policy reload was refused; the running policy stays.
    PolicyRejected { errors: String },
    /// The policy was reloaded.
    PolicyReloaded { sources: Vec<String> },
    /// What an operator did, with their uid on the record.
    Operator(OperatorAction),
}

/// An operator's action, the `action` of an `operator` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum OperatorAction {
    Schedule {
        start: String,
        end: String,
        auto_start: bool,
    },
    Cancel {
        /// The state a window in progress was cancelled in.
        #[serde(rename = "while", default, skip_serializing_if = "Option::is_none")]
        while_state: Option<String>,
    },
    Apply,
    Rollback,
    Retry {
        compatible: String,
        version: String,
        digest: String,
        rolled_back_at: String,
        why: String,
    },
}

impl AuditEvent {
    /// The record's `kind` and `detail`.
    pub fn kind_and_detail(&self) -> (String, serde_json::Value) {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut m)) => {
                let kind = m.remove("kind").and_then(|k| k.as_str().map(str::to_string)).unwrap_or_default();
                (kind, m.remove("detail").unwrap_or(serde_json::Value::Null))
            }
            // Cannot happen for this enum (every variant is a map); kept total rather than panicking.
            _ => (String::new(), serde_json::Value::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pair(e: AuditEvent) -> (String, serde_json::Value) {
        e.kind_and_detail()
    }

    /// The records are what they were when each place wrote its own kind and `json!` detail.
    #[test]
    fn records_keep_their_kinds_and_details() {
        assert_eq!(
            pair(AuditEvent::Operator(OperatorAction::Cancel { while_state: Some("observing".into()) })),
            ("operator".into(), json!({"action": "cancel", "while": "observing"}))
        );
        assert_eq!(
            pair(AuditEvent::Operator(OperatorAction::Cancel { while_state: None })),
            ("operator".into(), json!({"action": "cancel"}))
        );
        assert_eq!(pair(AuditEvent::Operator(OperatorAction::Apply)), ("operator".into(), json!({"action": "apply"})));
        assert_eq!(
            pair(AuditEvent::Shutdown { lifted: false, dropped_packets: None }),
            ("shutdown".into(), json!({"lifted": false}))
        );
        assert_eq!(
            pair(AuditEvent::BootReapply { version: "1.0.0".into(), digest: "ab".into(), policy: None }),
            ("boot-reapply".into(), json!({"version": "1.0.0", "digest": "ab"}))
        );
        assert_eq!(
            pair(AuditEvent::StaleSegmentationLifted { dropped_packets: 3 }),
            ("stale-segmentation-lifted".into(), json!({"dropped_packets": 3}))
        );
        assert_eq!(
            pair(AuditEvent::Transition { from: "armed".into(), to: "segmented".into(), event: "x".into() }),
            ("transition".into(), json!({"from": "armed", "to": "segmented", "event": "x"}))
        );
    }
}
