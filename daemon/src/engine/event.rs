//! What happened: the [`Event`]s the engine steps on.

use serde::{Deserialize, Serialize};

use super::{BundleRef, CheckpointRef, VerifiedBundle, WindowCtx};

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum Event {
    /// The next window is known (or changed).
    Schedule {
        window: WindowCtx,
    },
    /// No window ahead any more (cancelled before it opened).
    Unschedule,
    /// The window is open and work starts (at its start with auto-start, or on `apply`).
    Start,
    PreflightPassed,
    PreflightFailed {
        error: String,
    },
    SegmentationApplied,
    SegmentationFailed {
        error: String,
    },
    Fetched {
        bundle: BundleRef,
    },
    /// The server has nothing newer for this gateway.
    NothingToFetch,
    FetchFailed {
        error: String,
    },
    Verified {
        bundle: VerifiedBundle,
    },
    VerifyFailed {
        error: String,
    },
    CheckpointTaken {
        checkpoint: CheckpointRef,
    },
    CheckpointFailed {
        error: String,
    },
    ApplyStarted,
    Applied,
    /// An A/B update went into the inactive slot `slot` during boot `boot_id`; it runs after a reboot.
    Installed {
        slot: String,
        boot_id: String,
    },
    RebootFailed {
        error: String,
    },
    /// After a restart in `Rebooting`: the slot the gateway runs from and the current boot.
    Booted {
        slot: String,
        boot_id: String,
        /// The version of the image that runs (os-release's `IMAGE_VERSION`); empty when the image names none.
        #[serde(default)]
        running: String,
    },
    /// At start, with no window in progress: the gateway runs an A/B slot that was staged (installed, reboot
    /// pending) and never confirmed. `window` is the confirmation's own span (the observation must fit in it).
    StagedBooted {
        window: WindowCtx,
        bundle: VerifiedBundle,
    },
    ApplyFailed {
        error: String,
    },
    /// In `Committed`: an A/B update could not be kept (the gateway does not run the slot it was installed into,
    /// e.g. the power went before the slot was marked good and the bootloader fell back). It is not committed.
    CommitFailed {
        error: String,
    },
    Healthy,
    Degraded {
        reason: String,
    },
    HealthFailed {
        reason: String,
    },
    RolledBack,
    RollbackFailed {
        error: String,
    },
    Lifted,
    LiftFailed {
        error: String,
    },
    /// The journal could not record the state just entered: its driving action must not run.
    JournalFailed {
        error: String,
    },
    /// The window's hard end passed.
    Deadline,
    Cancel {
        uid: u32,
    },
    RollbackRequested {
        uid: u32,
    },
}

impl Event {
    /// Short name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Schedule { .. } => "schedule",
            Event::Unschedule => "unschedule",
            Event::Start => "start",
            Event::PreflightPassed => "preflight-passed",
            Event::PreflightFailed { .. } => "preflight-failed",
            Event::SegmentationApplied => "segmentation-applied",
            Event::SegmentationFailed { .. } => "segmentation-failed",
            Event::Fetched { .. } => "fetched",
            Event::NothingToFetch => "nothing-to-fetch",
            Event::FetchFailed { .. } => "fetch-failed",
            Event::Verified { .. } => "verified",
            Event::VerifyFailed { .. } => "verify-failed",
            Event::CheckpointTaken { .. } => "checkpoint-taken",
            Event::CheckpointFailed { .. } => "checkpoint-failed",
            Event::ApplyStarted => "apply-started",
            Event::Applied => "applied",
            Event::Installed { .. } => "installed",
            Event::RebootFailed { .. } => "reboot-failed",
            Event::Booted { .. } => "booted",
            Event::StagedBooted { .. } => "staged-booted",
            Event::ApplyFailed { .. } => "apply-failed",
            Event::CommitFailed { .. } => "commit-failed",
            Event::Healthy => "healthy",
            Event::Degraded { .. } => "degraded",
            Event::HealthFailed { .. } => "health-failed",
            Event::RolledBack => "rolled-back",
            Event::RollbackFailed { .. } => "rollback-failed",
            Event::Lifted => "lifted",
            Event::LiftFailed { .. } => "lift-failed",
            Event::JournalFailed { .. } => "journal-failed",
            Event::Deadline => "deadline",
            Event::Cancel { .. } => "cancel",
            Event::RollbackRequested { .. } => "rollback-requested",
        }
    }
}
