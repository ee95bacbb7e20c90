//! What the engine talks about: the window, the bundle at each stage, why a window ended, and the [`State`]s of
//! its walk with what the orchestrator reads from them.

use std::fmt;
use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The window the engine is working on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCtx {
    pub id: String,
    pub start: Timestamp,
    /// Hard end: work not committed by then is rolled back.
    pub end: Timestamp,
    pub auto_start: bool,
}

/// A downloaded, not yet verified bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    pub path: PathBuf,
    pub size: u64,
}

/// What a bundle changes, which decides the apply path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchKind {
    /// A kernel livepatch module: no reboot.
    Livepatch,
    /// A RAUC bundle for the inactive slot (A/B).
    Ab,
    /// An application payload.
    App,
}

impl PatchKind {
    /// The signed manifest's `kind` for bundles of this kind (`livepatch`, `app`; RAUC bundles are `rauc`): what
    /// the verifier's anti-rollback compares a bundle's version within.
    pub fn manifest_kind(self) -> &'static str {
        match self {
            PatchKind::Livepatch => "livepatch",
            PatchKind::Ab => "rauc",
            PatchKind::App => "app",
        }
    }
}

impl fmt::Display for PatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatchKind::Livepatch => "livepatch",
            PatchKind::Ab => "ab",
            PatchKind::App => "app",
        })
    }
}

/// A bundle whose signature chained to the site's trust anchors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedBundle {
    pub path: PathBuf,
    pub kind: PatchKind,
    pub compatible: String,
    pub version: String,
    /// SHA-256 of the signed manifest: identifies the bundle.
    pub digest: String,
    pub signer: String,
    /// For a bundle this gateway committed earlier: when it was accepted. Its file is re-verified at that time
    /// (its integrity: same signed manifest, same payload hashes, a signature that chained then), never against
    /// today's clock, so an expiry or a signer's notAfter that passed since never un-patches the gateway. `None`
    /// for the window's own bundle, re-verified now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<jiff::Timestamp>,
}

/// Checkpoint images of the critical processes (none when the policy names no process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub id: String,
    pub processes: Vec<String>,
}

/// Why a window did not keep its change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason", content = "detail")]
pub enum Reason {
    Preflight(String),
    Segmentation(String),
    Fetch(String),
    Verify(String),
    Checkpoint(String),
    Apply(String),
    Health(String),
    /// Health degraded (advisory probes failing) and the policy says roll back.
    Degraded(String),
    DeadlineExpired,
    /// Cancelled by an operator (caller uid).
    Cancelled(u32),
    /// Rolled back on an operator's request (caller uid).
    OperatorRollback(u32),
    /// The daemon stopped while the change may have been in place.
    Interrupted,
    /// The rollback itself failed: the gateway needs attention.
    RollbackFailed(String),
    /// The gateway came back from the update's reboot on the old slot (the bootloader fell back); the image it
    /// runs did not say its version.
    BootFallback(String),
    /// As [`Reason::BootFallback`], with the version of the image that runs and of the one that did not come up.
    CameBack {
        slot: String,
        running: String,
        updated: String,
    },
    /// A transition could not be written to the journal: nothing goes on without it on disk.
    Journal(String),
    /// The update passed its observation but could not be kept (an A/B slot that does not run any more).
    CommitFailed(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Preflight(m) => write!(f, "preflight failed: {m}"),
            Reason::Segmentation(m) => write!(f, "segmentation failed: {m}"),
            Reason::Fetch(m) => write!(f, "download failed: {m}"),
            Reason::Verify(m) => write!(f, "bundle rejected: {m}"),
            Reason::Checkpoint(m) => write!(f, "checkpoint failed: {m}"),
            Reason::Apply(m) => write!(f, "apply failed: {m}"),
            Reason::Health(m) => write!(f, "health failed: {m}"),
            Reason::Degraded(m) => write!(f, "health degraded: {m}"),
            Reason::DeadlineExpired => f.write_str("window ended before the change was committed"),
            Reason::Cancelled(uid) => write!(f, "cancelled by uid {uid}"),
            Reason::OperatorRollback(uid) => write!(f, "rollback requested by uid {uid}"),
            Reason::Interrupted => f.write_str("daemon restarted while the change was in place"),
            Reason::RollbackFailed(m) => write!(f, "rollback failed: {m}"),
            Reason::BootFallback(slot) => write!(f, "the gateway came back on slot {slot}, not the updated one"),
            Reason::CameBack { slot, running, updated } => {
                write!(f, "the gateway came back on slot {slot}, which runs image {running}, not the updated {updated}")
            }
            Reason::Journal(m) => write!(f, "journal write failed: {m}"),
            Reason::CommitFailed(m) => write!(f, "commit failed: {m}"),
        }
    }
}

/// How a window ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    Committed {
        version: String,
    },
    /// An A/B update in the inactive slot, waiting for a reboot the policy did not allow in the window.
    Staged {
        version: String,
        slot: String,
    },
    UpToDate,
    RolledBack {
        reason: Reason,
    },
    Failed {
        reason: Reason,
    },
}

impl Outcome {
    /// Its kind, whose word the text starts with (clients read it back with `OutcomeKind::of`).
    pub fn kind(&self) -> otpatch_common::api::OutcomeKind {
        use otpatch_common::api::OutcomeKind;
        match self {
            Outcome::Committed { .. } => OutcomeKind::Committed,
            Outcome::Staged { .. } => OutcomeKind::Staged,
            Outcome::UpToDate => OutcomeKind::UpToDate,
            Outcome::RolledBack { .. } => OutcomeKind::RolledBack,
            Outcome::Failed { .. } => OutcomeKind::Failed,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.kind().word();
        match self {
            Outcome::Committed { version } => write!(f, "{word} {version}"),
            Outcome::Staged { version, slot } => write!(f, "{word} {version} into slot {slot}, reboot pending"),
            Outcome::UpToDate => f.write_str(word),
            Outcome::RolledBack { reason } | Outcome::Failed { reason } => write!(f, "{word}: {reason}"),
        }
    }
}

/// Where the engine is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum State {
    /// No window ahead.
    Idle,
    /// The next window is known; waiting for it to open (and, without auto-start, for `apply`).
    Scheduled { window: WindowCtx },
    /// The window opened; preflight checks are running (health baseline, CRIU, disk, firewall).
    Arming { window: WindowCtx },
    /// Preflight passed; segmentation is being applied.
    Armed { window: WindowCtx },
    /// Segmentation is up; the bundle is being fetched.
    Segmented { window: WindowCtx },
    /// Downloaded; the signature is being verified.
    Fetched { window: WindowCtx, bundle: BundleRef },
    /// Verified; the critical processes are being checkpointed.
    Verified { window: WindowCtx, bundle: VerifiedBundle },
    /// Checkpoint taken; apply was requested (it may have begun).
    Checkpointed { window: WindowCtx, bundle: VerifiedBundle, checkpoint: CheckpointRef },
    /// The change is going in (module loading / transition, slot install).
    Applying { window: WindowCtx, bundle: VerifiedBundle, checkpoint: CheckpointRef },
    /// An A/B update is in the inactive slot `slot`; the reboot into it was asked for during boot `boot_id`.
    Rebooting { window: WindowCtx, bundle: VerifiedBundle, checkpoint: CheckpointRef, slot: String, boot_id: String },
    /// An A/B update is in the inactive slot and the policy allows no reboot: segmentation is being lifted.
    Staged { window: WindowCtx, bundle: VerifiedBundle, checkpoint: CheckpointRef, slot: String },
    /// Applied; health is observed for the policy's observation period.
    Observing { window: WindowCtx, bundle: VerifiedBundle, checkpoint: CheckpointRef },
    /// The change stays; segmentation is being lifted.
    Committed { window: WindowCtx, bundle: VerifiedBundle, checkpoint: CheckpointRef },
    /// Nothing newer to install; segmentation is being lifted.
    UpToDate { window: WindowCtx },
    /// The change is being reverted and the checkpoint restored.
    RollingBack { window: WindowCtx, bundle: VerifiedBundle, checkpoint: CheckpointRef, reason: Reason },
    /// Rolled back; segmentation is being lifted.
    RolledBack { window: WindowCtx, reason: Reason },
    /// The window failed (before anything was applied, or the rollback failed); segmentation is being lifted.
    Failed { window: WindowCtx, reason: Reason, checkpoint: Option<CheckpointRef> },
    /// Segmentation lifted; the window is over.
    Closed { window: WindowCtx, outcome: Outcome },
}

impl State {
    /// Lower-case name, as shown on D-Bus and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Scheduled { .. } => "scheduled",
            State::Arming { .. } => "arming",
            State::Armed { .. } => "armed",
            State::Segmented { .. } => "segmented",
            State::Fetched { .. } => "fetched",
            State::Verified { .. } => "verified",
            State::Checkpointed { .. } => "checkpointed",
            State::Applying { .. } => "applying",
            State::Rebooting { .. } => "rebooting",
            State::Staged { .. } => "staged",
            State::Observing { .. } => "observing",
            State::Committed { .. } => "committed",
            State::UpToDate { .. } => "up-to-date",
            State::RollingBack { .. } => "rolling-back",
            State::RolledBack { .. } => "rolled-back",
            State::Failed { .. } => "failed",
            State::Closed { .. } => "closed",
        }
    }

    /// The window this state belongs to, if any.
    pub fn window(&self) -> Option<&WindowCtx> {
        match self {
            State::Idle => None,
            State::Scheduled { window }
            | State::Arming { window }
            | State::Armed { window }
            | State::Segmented { window }
            | State::Fetched { window, .. }
            | State::Verified { window, .. }
            | State::Checkpointed { window, .. }
            | State::Applying { window, .. }
            | State::Rebooting { window, .. }
            | State::Staged { window, .. }
            | State::Observing { window, .. }
            | State::Committed { window, .. }
            | State::UpToDate { window }
            | State::RollingBack { window, .. }
            | State::RolledBack { window, .. }
            | State::Failed { window, .. }
            | State::Closed { window, .. } => Some(window),
        }
    }

    /// Whether work for a window is under way (from arming until segmentation is lifted).
    pub fn in_progress(&self) -> bool {
        !matches!(self, State::Idle | State::Scheduled { .. } | State::Closed { .. })
    }

    /// Whether the window's hard end still changes the outcome (work under way, nothing decided yet).
    pub fn deadline_applies(&self) -> bool {
        matches!(
            self,
            State::Arming { .. }
                | State::Armed { .. }
                | State::Segmented { .. }
                | State::Fetched { .. }
                | State::Verified { .. }
                | State::Checkpointed { .. }
                | State::Applying { .. }
                | State::Rebooting { .. }
                | State::Observing { .. }
        )
    }

    /// Whether the change may be in place and not yet committed.
    pub fn change_pending(&self) -> bool {
        matches!(
            self,
            State::Checkpointed { .. } | State::Applying { .. } | State::Rebooting { .. } | State::Observing { .. }
        )
    }

    /// What the daemon is doing in this state, for the `Progress` property.
    pub fn doing(&self) -> &'static str {
        match self {
            State::Idle => "",
            State::Scheduled { .. } => "waiting for the window to open",
            State::Arming { .. } => "preflight checks",
            State::Armed { .. } => "applying segmentation",
            State::Segmented { .. } => "downloading the bundle",
            State::Fetched { .. } => "verifying the bundle's signature",
            State::Verified { .. } => "checkpointing critical processes",
            State::Checkpointed { .. } => "starting the apply",
            State::Applying { .. } => "applying the change",
            State::Rebooting { .. } => "rebooting into the updated slot",
            State::Staged { .. } => "installed, reboot pending; lifting segmentation",
            State::Observing { .. } => "observing plant health",
            State::Committed { .. } => "committed; lifting segmentation",
            State::UpToDate { .. } => "nothing newer; lifting segmentation",
            State::RollingBack { .. } => "rolling back",
            State::RolledBack { .. } => "rolled back; lifting segmentation",
            State::Failed { .. } => "failed; lifting segmentation",
            State::Closed { .. } => "window closed",
        }
    }

    /// Percent done through a window's walk, for the `Progress` property.
    pub fn percent(&self) -> i32 {
        match self {
            State::Idle | State::Scheduled { .. } => 0,
            State::Arming { .. } => 5,
            State::Armed { .. } => 10,
            State::Segmented { .. } => 20,
            State::Fetched { .. } => 35,
            State::Verified { .. } => 45,
            State::Checkpointed { .. } => 55,
            State::Applying { .. } => 65,
            State::Rebooting { .. } => 70,
            State::Observing { .. } => 75,
            State::Committed { .. }
            | State::Staged { .. }
            | State::UpToDate { .. }
            | State::RolledBack { .. }
            | State::Failed { .. } => 95,
            State::RollingBack { .. } => 85,
            State::Closed { .. } => 100,
        }
    }
}
