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
/// as of its commit by `patcher`. What this gateway committed as an A/B image is the bootloader's to keep; the
/// livepatch committed before it stays recorded, so a fallback to the old slot (its kernel) gets it back.
pub async fn reapply_livepatches(
    committed: &Committed,
    patcher: &dyn crate::backend::Patcher,
    progress: crate::backend::ProgressFn,
) -> Vec<Reapplied> {
    let mut out = Vec::new();
    for (compatible, c) in committed.records() {
        if c.kind != PatchKind::Livepatch {
            continue;
        }
        let bundle = c.to_verified(compatible);
        let result = match patcher.is_applied(&bundle).await {
            Ok(true) => Ok(false),
            Ok(false) => patcher.apply("boot", &bundle, progress.clone()).await.map(|_| true),
            Err(e) => Err(e),
        };
        out.push(Reapplied { compatible: compatible.to_string(), bundle: c.clone(), result });
    }
    out
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// By `compatible`: the last bundle committed, of whatever kind. Written for otpatchd releases before
    /// [`Committed::kinds`] (a bootloader fallback can start one on this same data partition; it reads this and
    /// ignores the rest); this release reads `kinds`.
    bundles: BTreeMap<String, CommittedBundle>,
    /// By `compatible`, then by kind: the last bundle committed of each kind. A livepatch and an A/B image are
    /// separate version series: a livepatch is compared with the last livepatch, an image with the last image, and
    /// an image commit does not forget the livepatch (a fallback to the old slot re-applies it at boot; pruning
    /// keeps its bundle). Filled from `bundles` when a file written by an older release lacks it.
    #[serde(default)]
    kinds: BTreeMap<String, BTreeMap<PatchKind, CommittedBundle>>,
    /// The latest signing time of a bundle this gateway verified: a clock floor for gateways without a
    /// battery-backed real-time clock (policy `trust.time_source = "system-with-floor"`).
    pub time_floor: Option<Timestamp>,
}

impl Committed {
    /// Reads the file; a missing file is "nothing committed yet".
    pub fn load(path: &Path) -> Result<Committed, String> {
        let mut c: Committed = crate::fsutil::load_json(path, "what is committed")?.unwrap_or_default();
        c.merge_latest();
        Ok(c)
    }

    /// `bundles` into `kinds`: an older release wrote only `bundles` (and drops `kinds` when it rewrites the
    /// file), so a record there that is newer than this kind's in `kinds`, or missing from it, is the truth.
    fn merge_latest(&mut self) {
        for (compatible, b) in &self.bundles {
            let per_kind = self.kinds.entry(compatible.clone()).or_default();
            match per_kind.get(&b.kind) {
                Some(k) if k.committed_at >= b.committed_at => {}
                _ => {
                    per_kind.insert(b.kind, b.clone());
                }
            }
        }
    }

    /// The version last committed for `compatible` of `kind`, if any.
    pub fn version_for(&self, compatible: &str, kind: PatchKind) -> Option<&str> {
        self.kinds.get(compatible).and_then(|k| k.get(&kind)).map(|b| b.version.as_str())
    }

    /// The versions last committed for `compatible`, by the signed manifest's kind ([`PatchKind::manifest_kind`]):
    /// what anti-rollback and the patch channel compare a bundle with.
    pub fn versions_for(&self, compatible: &str) -> BTreeMap<String, String> {
        self.kinds
            .get(compatible)
            .into_iter()
            .flatten()
            .map(|(k, b)| (k.manifest_kind().to_string(), b.version.clone()))
            .collect()
    }

    /// The last committed bundle of `kind` for `compatible`.
    pub fn get(&self, compatible: &str, kind: PatchKind) -> Option<&CommittedBundle> {
        self.kinds.get(compatible).and_then(|k| k.get(&kind))
    }

    /// Every record: per compatible, the last committed bundle of each kind.
    pub fn records(&self) -> impl Iterator<Item = (&str, &CommittedBundle)> {
        self.kinds.iter().flat_map(|(c, k)| k.values().map(move |b| (c.as_str(), b)))
    }

    /// `record` as the last committed bundle of its kind for `compatible` (in memory).
    pub fn insert(&mut self, compatible: &str, record: CommittedBundle) {
        self.kinds.entry(compatible.to_string()).or_default().insert(record.kind, record.clone());
        self.bundles.insert(compatible.to_string(), record);
    }

    /// Records a committed bundle (and raises the time floor to `signed_at`, if given).
    pub fn record(
        path: &Path,
        bundle: &VerifiedBundle,
        now: Timestamp,
        signed_at: Option<Timestamp>,
    ) -> Result<(), String> {
        let mut c = Committed::load(path)?;
        let record = CommittedBundle {
            version: bundle.version.clone(),
            digest: bundle.digest.clone(),
            kind: bundle.kind,
            path: bundle.path.clone(),
            signer: bundle.signer.clone(),
            committed_at: now,
        };
        c.insert(&bundle.compatible, record);
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
        assert_eq!(c.version_for("gw", PatchKind::Livepatch), Some("1.1"));
        assert_eq!(c.version_for("gw", PatchKind::Ab), None);
        assert_eq!(c.version_for("other", PatchKind::Livepatch), None);
        assert_eq!(c.time_floor, Some(t1), "the floor never goes back");
    }

    fn image(v: &str) -> VerifiedBundle {
        VerifiedBundle {
            path: format!("/var/lib/otpatch/bundles/os-{v}.raucb").into(),
            kind: PatchKind::Ab,
            version: v.into(),
            digest: format!("i-{v}"),
            ..bundle(v)
        }
    }

    /// A livepatch committed, then an A/B image: if the bootloader later falls back to the old slot (its kernel
    /// is the one the livepatch is for), the daemon must still put the livepatch back at boot.
    #[tokio::test(start_paused = true)]
    async fn an_image_commit_keeps_the_committed_livepatch_for_the_old_slot() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("committed.json");
        let t: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        Committed::record(&p, &bundle("1.0.0"), t, None).unwrap();
        Committed::record(&p, &image("3.0.0"), t, None).unwrap();
        let c = Committed::load(&p).unwrap();
        let world = crate::backend::fake::FakeWorld::in_memory(crate::backend::fake::FakeScript::default());
        let clock: std::sync::Arc<dyn crate::backend::Clock> =
            std::sync::Arc::new(crate::backend::TokioClock::starting_at(t));
        let patcher = world.backends(clock).livepatcher;
        let out = reapply_livepatches(&c, patcher.as_ref(), std::sync::Arc::new(|_, _| {})).await;
        let put_back: Vec<_> = out.iter().map(|r| (r.bundle.version.as_str(), r.result.is_ok())).collect();
        assert_eq!(put_back, vec![("1.0.0", true)]);
        assert_eq!(world.snapshot().applied, vec!["1.0.0"]);
        // And the pruning at the end of a window keeps the livepatch's bundle beside the image's.
        let state = d.path().join("state");
        for f in ["bundles/lp-1.0.0.otb", "bundles/os-3.0.0.raucb"] {
            std::fs::create_dir_all(state.join(f).parent().unwrap()).unwrap();
            std::fs::write(state.join(f), f).unwrap();
        }
        let lp = state.join("bundles/lp-1.0.0.otb");
        Committed::record(&p, &VerifiedBundle { path: lp.clone(), ..bundle("1.0.0") }, t, None).unwrap();
        let img = state.join("bundles/os-3.0.0.raucb");
        Committed::record(&p, &VerifiedBundle { path: img.clone(), ..image("3.0.0") }, t, None).unwrap();
        let (removed, problems) = crate::prune::prune(&state, &Committed::load(&p).unwrap());
        assert!(problems.is_empty() && removed.is_empty(), "{removed:?} {problems:?}");
        assert!(lp.exists() && img.exists());
    }

    /// The file across releases: one written before `kinds` loads with its record under its kind; the file written
    /// now still tells an older release (which reads `bundles` and ignores the rest) the last commit.
    #[test]
    fn files_of_older_releases_load_and_older_releases_read_this_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("committed.json");
        std::fs::write(
            &p,
            r#"{"bundles": {"gw": {"version": "1.0.0", "digest": "ab", "kind": "livepatch", "path": "/b/lp.otb",
                "signer": "CN=v", "committed_at": "2026-11-01T00:00:00Z"}}, "time_floor": null}"#,
        )
        .unwrap();
        let c = Committed::load(&p).unwrap();
        assert_eq!(c.version_for("gw", PatchKind::Livepatch), Some("1.0.0"));
        assert_eq!(c.versions_for("gw"), BTreeMap::from([("livepatch".to_string(), "1.0.0".to_string())]));
        let t: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        Committed::record(&p, &image("3.0.0"), t, None).unwrap();
        let c = Committed::load(&p).unwrap();
        assert_eq!(c.version_for("gw", PatchKind::Livepatch), Some("1.0.0"), "migrated, then kept");
        assert_eq!(c.version_for("gw", PatchKind::Ab), Some("3.0.0"));
        assert_eq!(c.records().count(), 2);
        #[derive(Deserialize)]
        struct OlderRelease {
            bundles: BTreeMap<String, CommittedBundle>,
        }
        let older: OlderRelease = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(older.bundles["gw"].version, "3.0.0");
        // An older release that commits livepatch 1.1.0 rewrites the file without `kinds`: its record wins for
        // its kind (the image's record is lost with `kinds`: what the older release knew is all there is).
        let mut rewritten: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        rewritten.as_object_mut().unwrap().remove("kinds");
        rewritten["bundles"]["gw"]["version"] = "1.1.0".into();
        rewritten["bundles"]["gw"]["kind"] = "livepatch".into();
        rewritten["bundles"]["gw"]["committed_at"] = "2026-12-02T00:00:00Z".into();
        std::fs::write(&p, serde_json::to_vec(&rewritten).unwrap()).unwrap();
        let c = Committed::load(&p).unwrap();
        assert_eq!(c.version_for("gw", PatchKind::Livepatch), Some("1.1.0"));
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
