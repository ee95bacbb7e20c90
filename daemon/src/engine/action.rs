//! What to do: the [`Action`]s of entering a state.

use serde::{Deserialize, Serialize};

use super::{BundleRef, CheckpointRef, VerifiedBundle, WindowCtx};

/// What to do. Exactly one action of a state yields the event that moves the engine on ([`Action::drives`]); the
/// others are effects whose failures are reported but do not change the walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Action {
    /// Yields PreflightPassed / PreflightFailed. Captures the health baseline.
    Preflight { window: WindowCtx },
    /// Yields SegmentationApplied / SegmentationFailed. Idempotent (re-applies the whole ruleset).
    Segment { window: WindowCtx },
    /// Yields Fetched / NothingToFetch / FetchFailed. Resumes a partial download.
    Fetch { window: WindowCtx },
    /// Yields Verified / VerifyFailed.
    Verify { bundle: BundleRef },
    /// Yields CheckpointTaken / CheckpointFailed.
    Checkpoint { window: WindowCtx },
    /// Yields ApplyStarted, then (fed by the orchestrator) Applied / Installed / ApplyFailed.
    Apply { window: WindowCtx, bundle: VerifiedBundle },
    /// Asks for the reboot into `slot` (through systemd). Yields RebootFailed, or nothing: the system goes down.
    Reboot { slot: String },
    /// After a restart in `Rebooting`: yields Booted with the slot the gateway runs from and the boot id.
    ConfirmBoot { slot: String, boot_id: String },
    /// Yields Healthy / Degraded / HealthFailed after the observation period (or sooner on failure).
    Observe { window: WindowCtx },
    /// Yields RolledBack / RollbackFailed. Reverts the change (a no-op if it is not in place), then restores the
    /// checkpoint.
    Rollback { bundle: VerifiedBundle, checkpoint: CheckpointRef },
    /// Yields Lifted / LiftFailed. Idempotent.
    Lift,
    /// Effect: make the committed change permanent (persist, mark good) and record its version.
    Commit { bundle: VerifiedBundle },
    /// Effect: remove checkpoint images that are no longer needed.
    DiscardCheckpoint { checkpoint: CheckpointRef },
    /// Effect: lift any segmentation left from before a restart (when no window is in progress).
    LiftStale,
}

impl Action {
    /// Whether this action yields the event that moves the engine on.
    pub fn drives(&self) -> bool {
        !matches!(self, Action::Commit { .. } | Action::DiscardCheckpoint { .. } | Action::LiftStale)
    }

    /// Short name, for logs and fault-injection points.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Preflight { .. } => "preflight",
            Action::Segment { .. } => "segment",
            Action::Fetch { .. } => "fetch",
            Action::Verify { .. } => "verify",
            Action::Checkpoint { .. } => "checkpoint",
            Action::Apply { .. } => "apply",
            Action::Reboot { .. } => "reboot",
            Action::ConfirmBoot { .. } => "confirm-boot",
            Action::Observe { .. } => "observe",
            Action::Rollback { .. } => "rollback",
            Action::Lift => "lift",
            Action::Commit { .. } => "commit",
            Action::DiscardCheckpoint { .. } => "discard-checkpoint",
            Action::LiftStale => "lift-stale",
        }
    }
}
