//! What to do on entering a state: its [`Effect`]s, then at most one [`Drive`], as [`Actions`].

use serde::{Deserialize, Serialize};

use super::{BundleRef, CheckpointRef, VerifiedBundle, WindowCtx};

/// What entering a state does: the effects, in order, then at most one driving step, which runs last. The rule is
/// the type: a state cannot ask for two driving steps, or for an effect after its driving step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actions {
    pub effects: Vec<Effect>,
    pub drive: Option<Drive>,
}

impl Actions {
    /// Nothing to do.
    pub fn none() -> Self {
        Actions::default()
    }

    /// Only the driving step `drive`.
    pub fn drive(drive: Drive) -> Self {
        Actions { effects: Vec::new(), drive: Some(drive) }
    }

    /// `effects`, then the driving step `drive`.
    pub fn then(effects: Vec<Effect>, drive: Drive) -> Self {
        Actions { effects, drive: Some(drive) }
    }
}

/// A driving step: it yields the event that moves the engine on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Drive {
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
}

/// An effect: its failure is reported but does not change the walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Effect {
    /// Make the committed change permanent (persist, mark good) and record its version.
    Commit { bundle: VerifiedBundle },
    /// Remove checkpoint images that are no longer needed.
    DiscardCheckpoint { checkpoint: CheckpointRef },
    /// Lift any segmentation left from before a restart (when no window is in progress).
    LiftStale,
}

impl Drive {
    /// Short name, for logs and fault-injection points.
    pub fn name(&self) -> &'static str {
        match self {
            Drive::Preflight { .. } => "preflight",
            Drive::Segment { .. } => "segment",
            Drive::Fetch { .. } => "fetch",
            Drive::Verify { .. } => "verify",
            Drive::Checkpoint { .. } => "checkpoint",
            Drive::Apply { .. } => "apply",
            Drive::Reboot { .. } => "reboot",
            Drive::ConfirmBoot { .. } => "confirm-boot",
            Drive::Observe { .. } => "observe",
            Drive::Rollback { .. } => "rollback",
            Drive::Lift => "lift",
        }
    }
}

impl Effect {
    /// Short name, for logs and fault-injection points.
    pub fn name(&self) -> &'static str {
        match self {
            Effect::Commit { .. } => "commit",
            Effect::DiscardCheckpoint { .. } => "discard-checkpoint",
            Effect::LiftStale => "lift-stale",
        }
    }
}
