//! What this gateway has committed: per `compatible`, the last bundle a window kept, and the newest signing
//! time seen. Anti-rollback compares new bundles against it; the patch channel only fetches newer ones; the
//! livepatch path re-applies what is recorded here at boot.
//!
//! Kept in `<state>/committed.json`, written atomically. An unreadable file is an error, never "nothing
//! committed": that would let an older bundle in.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::engine::{PatchKind, VerifiedBundle};

/// The file's name in the state directory (`Sysroot::committed_file` is its path).
pub const FILE_NAME: &str = "committed.json";
use crate::fsutil::write_atomic;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedBundle {
    pub version: String,
    pub digest: String,
    pub kind: PatchKind,
    pub path: std::path::PathBuf,
    pub signer: String,
    pub committed_at: Timestamp,
}

impl CommittedBundle {
    /// The engine's view of this committed bundle, to put back (at boot, or when a later window is rolled back).
    /// It is re-verified as of when it was committed: integrity, not today's expiry (see
    /// [`VerifiedBundle::verified_at`]).
    pub fn to_verified(&self, compatible: &str) -> VerifiedBundle {
        VerifiedBundle {
            path: self.path.clone(),
            kind: self.kind,
            compatible: compatible.to_string(),
            version: self.version.clone(),
            digest: self.digest.clone(),
            signer: self.signer.clone(),
            verified_at: Some(self.committed_at),
        }
    }
}

/// What putting one committed livepatch back came to.
#[derive(Debug)]
pub struct Reapplied {
    pub compatible: String,
    pub bundle: CommittedBundle,
    /// `Ok(true)`: loaded now; `Ok(false)`: it was in place already (never applied twice).
    pub result: Result<bool, crate::backend::BackendError>,
}

impl Reapplied {
    /// Its audit record (`policy` says which policy it was re-verified under, when not the one in force); `None`
    /// when it was in place already and nothing was done.
    pub fn audit_event(&self, policy: Option<&str>) -> Option<otpatch_common::audit::AuditEvent> {
        use otpatch_common::audit::AuditEvent;
        let (version, digest) = (self.bundle.version.clone(), self.bundle.digest.clone());
        match &self.result {
            Ok(false) => None,
            Ok(true) => Some(AuditEvent::BootReapply { version, digest, policy: policy.map(str::to_string) }),
            Err(e) => Some(AuditEvent::BootReapplyFailed { version, error: e.to_string() }),
        }
    }
}

/// Puts back every committed livepatch the kernel does not have (after a reboot), from its bundle, re-verified
/// as of its commit by `patcher`. What this gateway committed as an A/B image is the bootloader's to keep.
pub async fn reapply_livepatches(
    committed: &Committed,
    patcher: &dyn crate::backend::Patcher,
    progress: crate::backend::ProgressFn,
) -> Vec<Reapplied> {
    let mut out = Vec::new();
    for (compatible, c) in &committed.bundles {
        if c.kind != PatchKind::Livepatch {
            continue;
        }
        let bundle = c.to_verified(compatible);
        let result = match patcher.is_applied(&bundle).await {
            Ok(true) => Ok(false),
            Ok(false) => patcher.apply("boot", &bundle, progress.clone()).await.map(|_| true),
            Err(e) => Err(e),
        };
        out.push(Reapplied { compatible: compatible.clone(), bundle: c.clone(), result });
    }
    out
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// By `compatible`.
    pub bundles: BTreeMap<String, CommittedBundle>,
    /// The latest signing time of a bundle this gateway verified: a clock floor for gateways without a
    /// battery-backed real-time clock (policy `trust.time_source = "system-with-floor"`).
    pub time_floor: Option<Timestamp>,
}

impl Committed {
    /// Reads the file; a missing file is "nothing committed yet".
    pub fn load(path: &Path) -> Result<Committed, String> {
        Ok(crate::fsutil::load_json(path, "what is committed")?.unwrap_or_default())
    }

    /// The version committed for `compatible`, if any.
    pub fn version_for(&self, compatible: &str) -> Option<&str> {
        self.bundles.get(compatible).map(|b| b.version.as_str())
    }

    /// Records a committed bundle (and raises the time floor to `signed_at`, if given).
    pub fn record(
        path: &Path,
        bundle: &VerifiedBundle,
        now: Timestamp,
        signed_at: Option<Timestamp>,
    ) -> Result<(), String> {
        let mut c = Committed::load(path)?;
        c.bundles.insert(
            bundle.compatible.clone(),
            CommittedBundle {
                version: bundle.version.clone(),
                digest: bundle.digest.clone(),
                kind: bundle.kind,
                path: bundle.path.clone(),
                signer: bundle.signer.clone(),
                committed_at: now,
            },
        );
        if let Some(t) = signed_at {
            c.time_floor = Some(c.time_floor.map_or(t, |f| f.max(t)));
        }
        let text = serde_json::to_vec_pretty(&c).map_err(|e| e.to_string())?;
        write_atomic(path, &text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reapply_is_audited_unless_it_was_in_place() {
        use otpatch_common::audit::AuditEvent;
        let c = CommittedBundle {
            version: "1.0.0".into(),
            digest: "ab".into(),
            kind: PatchKind::Livepatch,
            path: "/b.otb".into(),
            signer: "s".into(),
            committed_at: Timestamp::UNIX_EPOCH,
        };
        let r = |result| Reapplied { compatible: "gw".into(), bundle: c.clone(), result };
        assert_eq!(r(Ok(false)).audit_event(None), None);
        assert_eq!(
            r(Ok(true)).audit_event(Some("last good")),
            Some(AuditEvent::BootReapply {
                version: "1.0.0".into(),
                digest: "ab".into(),
                policy: Some("last good".into())
            })
        );
        assert_eq!(
            r(Err(crate::backend::BackendError::new("no"))).audit_event(None),
            Some(AuditEvent::BootReapplyFailed { version: "1.0.0".into(), error: "no".into() })
        );
    }

    fn bundle(v: &str) -> VerifiedBundle {
        VerifiedBundle {
            path: "/var/lib/otpatch/bundles/a.otb".into(),
            kind: PatchKind::Livepatch,
            compatible: "gw".into(),
            version: v.into(),
            digest: format!("d-{v}"),
            signer: "CN=vendor".into(),
            verified_at: None,
        }
    }

    #[test]
    fn records_the_latest_per_compatible_and_raises_the_floor() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("committed.json");
        assert_eq!(Committed::load(&p).unwrap(), Committed::default());
        let t1: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let t0: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
        Committed::record(&p, &bundle("1.0"), t1, Some(t1)).unwrap();
        Committed::record(&p, &bundle("1.1"), t1, Some(t0)).unwrap();
        let c = Committed::load(&p).unwrap();
        assert_eq!(c.version_for("gw"), Some("1.1"));
        assert_eq!(c.version_for("other"), None);
        assert_eq!(c.time_floor, Some(t1), "the floor never goes back");
    }

    #[test]
    fn an_unreadable_file_is_an_error_not_a_blank_slate() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("committed.json");
        std::fs::write(&p, b"{ torn").unwrap();
        let e = Committed::load(&p).unwrap_err();
        assert!(e.contains("refusing to guess"), "{e}");
    }
}
