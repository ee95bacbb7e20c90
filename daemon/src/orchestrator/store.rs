//! The records kept beside the journal: `windows.json`, `rolled-back.json`, what `committed.json` says a
//! rollback puts back, and pruning the state directory to what is committed.

use otpatch_common::audit::AuditEvent;
use std::collections::BTreeSet;
use std::path::PathBuf;

use jiff::Timestamp;
use otpatch_common::schedule::Schedule;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::Orchestrator;
use crate::engine::PatchKind;
use crate::fsutil::write_atomic;

/// Windows the operator scheduled and windows already done, persisted in `windows.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct WindowStore {
    pub(super) schedule: Schedule,
    /// Occurrence ids whose work is over (so an early finish does not start the same window again).
    pub(super) done: BTreeSet<String>,
}

impl Orchestrator {
    pub(super) fn save_store(&mut self) {
        let now = self.now();
        self.run.store.schedule.prune(now);
        let text = serde_json::to_vec_pretty(&self.run.store).expect("window store serializes");
        if let Err(e) = write_atomic(&self.setup.store_path, &text) {
            error!(error = %e, path = %self.setup.store_path.display(), "could not save windows");
            self.out.status.send_modify(|s| s.last_error = format!("saving windows: {e}"));
        }
    }

    pub(super) fn rolled_back_path(&self) -> PathBuf {
        self.setup.store_path.with_file_name("rolled-back.json")
    }

    /// Remembers that a window rolled `bundle` back, so the next one does not install it again on its own.
    pub(super) fn record_rolled_back(&mut self, bundle: &crate::engine::VerifiedBundle, why: &str, now: Timestamp) {
        let rec = otpatch_common::api::RolledBackVersion {
            compatible: bundle.compatible.clone(),
            version: bundle.version.clone(),
            digest: bundle.digest.clone(),
            rolled_back_at: now,
            why: why.to_string(),
        };
        if let Err(e) = crate::rolled_back::RolledBack::record(&self.rolled_back_path(), rec) {
            error!(error = %e, version = %bundle.version, "could not record the rolled-back version");
            self.out
                .status
                .send_modify(|s| s.last_error = format!("recording the rollback of {}: {e}", bundle.version));
        }
        self.refresh_rolled_back();
    }

    /// Shows the rolled-back versions in the status (an unreadable record as the last error).
    pub(super) fn refresh_rolled_back(&self) {
        match crate::rolled_back::RolledBack::load(&self.rolled_back_path()) {
            Ok(r) => self.out.status.send_modify(|s| s.rolled_back = r.versions),
            Err(e) => self.out.status.send_modify(|s| s.last_error = e),
        }
    }

    /// The livepatch committed before `bundle` for its compatible, which a rollback of `bundle` puts back. An error
    /// when `committed.json` cannot be read: a rollback must then say it may not have restored the committed fix.
    pub(super) fn committed_before(
        &self,
        bundle: &crate::engine::VerifiedBundle,
    ) -> Result<Option<crate::engine::VerifiedBundle>, String> {
        if bundle.kind != PatchKind::Livepatch {
            return Ok(None);
        }
        let path = self.setup.sysroot.committed_file();
        let committed = crate::committed::Committed::load(&path)
            .map_err(|e| format!("cannot tell which livepatch was committed before, to put it back: {e}"))?;
        Ok(committed
            .get(&bundle.compatible, PatchKind::Livepatch)
            .filter(|c| c.digest != bundle.digest)
            .map(|c| c.to_verified(&bundle.compatible)))
    }

    /// At the end of a window: `downloads/`, `bundles/` and `livepatch/` keep only what is committed. Nothing is
    /// deleted when `committed.json` cannot be read.
    pub(super) fn prune_state(&mut self, window: &str) {
        let committed = match crate::committed::Committed::load(&self.setup.sysroot.committed_file()) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "not pruning the state directory: what is committed is unknown");
                return;
            }
        };
        let (removed, problems) = crate::prune::prune(&self.setup.sysroot.state_dir(), &committed);
        for p in &problems {
            warn!(problem = %p, "could not prune");
        }
        if !removed.is_empty() || !problems.is_empty() {
            let removed: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
            info!(window, files = removed.len(), "state directory pruned to what is committed");
            self.audit_log(Some(window), None, AuditEvent::StatePruned { removed, problems });
        }
    }
}
