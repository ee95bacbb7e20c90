//! The policy this daemon last started with, and what it is for: a gateway whose policy was later edited into
//! something invalid (a typo in a drop-in, a trust file removed) still gets its committed livepatches back when it
//! boots. otpatchd then runs no window and stops with the policy's errors, as before — the site must fix the
//! policy — but it does not leave the kernel less patched than it found it. Nothing new is trusted: the committed
//! bundles are re-verified against the anchors of the policy they were committed under, as of their commit.
//!
//! Kept in `<state>/policy-last-good.json` (the validated settings, no key material), written at every start
//! whose policy is valid.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use otpatch_common::policy::Settings;

use crate::audit::AuditLog;
use crate::backend::{Clock, Patcher};
use crate::committed::{reapply_livepatches, Committed};

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("policy-last-good.json")
}

/// Records `settings` as the last good policy (when it differs from the one recorded).
pub fn save(state_dir: &Path, settings: &Settings) -> Result<(), String> {
    if load(state_dir).ok().flatten().as_ref() == Some(settings) {
        return Ok(());
    }
    let text = serde_json::to_vec_pretty(settings).map_err(|e| e.to_string())?;
    crate::fsutil::write_atomic(&path(state_dir), &text).map_err(|e| format!("{}: {e}", path(state_dir).display()))
}

/// The last good policy, if one was recorded.
pub fn load(state_dir: &Path) -> Result<Option<Settings>, String> {
    crate::fsutil::load_json(&path(state_dir), "which policy was in force")
}

/// With the policy in force invalid: puts back every committed livepatch the kernel lacks, with `patcher` (made
/// from the last good policy), and audits it. Returns a line for the operator.
pub async fn reapply_under_invalid_policy(state_dir: &Path, patcher: Arc<dyn Patcher>, clock: &dyn Clock) -> String {
    let committed = match Committed::load(&state_dir.join(crate::committed::FILE_NAME)) {
        Ok(c) => c,
        Err(e) => return format!("cannot read what was committed, nothing re-applied: {e}"),
    };
    let audit = AuditLog::open(&state_dir.join("audit.log"));
    let mut audit = match audit {
        Ok((a, _)) => Some(a),
        Err(e) => {
            tracing::error!(error = %e, "audit log unavailable");
            None
        }
    };
    let progress: crate::backend::ProgressFn = Arc::new(|_, _| {});
    let mut lines = Vec::new();
    for r in reapply_livepatches(&committed, patcher.as_ref(), progress).await {
        match &r.result {
            Ok(false) => lines.push(format!("{} in place", r.bundle.version)),
            Ok(true) => {
                lines.push(format!("{} re-applied", r.bundle.version));
                tracing::info!(version = %r.bundle.version, "committed livepatch re-applied under the last good policy");
            }
            Err(e) => {
                lines.push(format!("{} NOT re-applied: {e}", r.bundle.version));
                tracing::error!(version = %r.bundle.version, error = %e, "could not re-apply the committed livepatch");
            }
        }
        let Some(event) = r.audit_event(Some("last good (the policy in force is invalid)")) else { continue };
        if let Some(a) = audit.as_mut() {
            let (kind, detail) = event.kind_and_detail();
            if let Err(e) = a.append(clock.now(), &kind, None, None, detail) {
                tracing::error!(error = %e, kind, "audit log write failed");
            }
        }
    }
    if lines.is_empty() {
        "no committed livepatch".into()
    } else {
        format!("committed livepatches: {}", lines.join("; "))
    }
}
