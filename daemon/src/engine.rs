//! The window state machine. Pure: no I/O, no clock.
//!
//! [`Engine::step`] takes the current [`State`] and an [`Event`] (the result of an action, a timer the orchestrator
//! saw fire, or an operator request) and returns the next state with the [`Action`]s to run. The actions of a
//! state are exactly those of *entering* it ([`Engine::entry_actions`]), so the write-ahead journal only needs to
//! store the state: after a crash, [`Engine::recover`] decides from the stored state alone whether to resume the
//! pending action or to roll back.
//!
//! One walk through a window:
//! `Scheduled -> Arming -> Armed -> Segmented -> Fetched -> Verified -> Checkpointed -> Applying -> Observing ->
//! Committed | RollingBack -> RolledBack | Failed | UpToDate`, and always `-> Closed` once segmentation is lifted.
//!
//! The A/B path (a RAUC bundle) leaves `Applying` once the bundle is in the inactive slot: with reboots allowed it
//! goes to `Rebooting` (the journal says the reboot is expected; after it, [`Engine::recover`] asks which slot
//! booted and moves on to `Observing` on the new slot, or to `RollingBack` when the bootloader fell back), without
//! them to `Staged` (installed, reboot pending) and the window ends there.
//!
//! Rules the property tests hold it to: nothing is applied that was not verified in this window; every window
//! that was segmented ends lifted; once a change may have been applied (from `Checkpointed` on), every failure,
//! deadline, cancel or operator rollback goes through `RollingBack`, which reverts the change and restores the
//! checkpoint; a bundle that was committed is never applied again.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchKind {
    /// A kernel livepatch module: no reboot.
    Livepatch,
    /// A RAUC bundle for the inactive slot (A/B).
    Ab,
    /// An application payload.
    App,
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
    /// The gateway came back from the update's reboot on the old slot (the bootloader fell back).
    BootFallback(String),
    /// A transition could not be written to the journal: nothing goes on without it on disk.
    Journal(String),
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
            Reason::Journal(m) => write!(f, "journal write failed: {m}"),
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

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Committed { version } => write!(f, "committed {version}"),
            Outcome::Staged { version, slot } => write!(f, "installed {version} into slot {slot}, reboot pending"),
            Outcome::UpToDate => f.write_str("up-to-date"),
            Outcome::RolledBack { reason } => write!(f, "rolled-back: {reason}"),
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
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

/// An event that does not fit the state. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event} is not allowed in state {state}")]
pub struct IllegalEvent {
    pub state: &'static str,
    pub event: &'static str,
}

/// What the engine needs from the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineConfig {
    /// Roll back when health is only degraded (advisory probes failing).
    pub rollback_on_degraded: bool,
    /// Reboot into an installed A/B slot inside the window (otherwise the update is staged).
    pub allow_reboot: bool,
}

/// The state machine. Holds only configuration; the state is passed in and out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Engine {
    pub config: EngineConfig,
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

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Engine { config }
    }

    /// One transition. An event that does not fit the state is an [`IllegalEvent`] and changes nothing.
    pub fn step(&self, state: &State, event: &Event) -> Result<(State, Vec<Action>), IllegalEvent> {
        let next = self.transition(state, event)?;
        let actions = if let Event::LiftFailed { .. } = event {
            // Segmentation must never outlive its window: lift again (the orchestrator paces the retries).
            vec![Action::Lift]
        } else if &next == state {
            Vec::new()
        } else {
            Self::entry_actions(&next)
        };
        Ok((next, actions))
    }

    /// The actions of entering `state`. Running them again is safe: every driving action is idempotent.
    pub fn entry_actions(state: &State) -> Vec<Action> {
        match state {
            State::Idle | State::Scheduled { .. } | State::Closed { .. } => Vec::new(),
            State::Arming { window } => vec![Action::Preflight { window: window.clone() }],
            State::Armed { window } => vec![Action::Segment { window: window.clone() }],
            State::Segmented { window } => vec![Action::Fetch { window: window.clone() }],
            State::Fetched { bundle, .. } => vec![Action::Verify { bundle: bundle.clone() }],
            State::Verified { window, .. } => vec![Action::Checkpoint { window: window.clone() }],
            State::Checkpointed { window, bundle, .. } => {
                vec![Action::Apply { window: window.clone(), bundle: bundle.clone() }]
            }
            // Applying waits for `Applied` from the apply already under way.
            State::Applying { .. } => Vec::new(),
            State::Rebooting { slot, .. } => vec![Action::Reboot { slot: slot.clone() }],
            State::Staged { checkpoint, .. } => {
                vec![Action::DiscardCheckpoint { checkpoint: checkpoint.clone() }, Action::Lift]
            }
            State::Observing { window, .. } => vec![Action::Observe { window: window.clone() }],
            State::Committed { bundle, checkpoint, .. } => vec![
                Action::Commit { bundle: bundle.clone() },
                Action::DiscardCheckpoint { checkpoint: checkpoint.clone() },
                Action::Lift,
            ],
            State::UpToDate { .. } | State::RolledBack { .. } => vec![Action::Lift],
            State::RollingBack { bundle, checkpoint, .. } => {
                vec![Action::Rollback { bundle: bundle.clone(), checkpoint: checkpoint.clone() }]
            }
            State::Failed { checkpoint, .. } => {
                let mut a = Vec::new();
                if let Some(c) = checkpoint {
                    a.push(Action::DiscardCheckpoint { checkpoint: c.clone() });
                }
                a.push(Action::Lift);
                a
            }
        }
    }

    /// After a restart: the state to continue from and the actions to run, from the journaled state alone.
    ///
    /// Before anything was applied the window resumes if it is still open (from preflight, or from segmentation
    /// once it was segmented), and fails (lifting segmentation) if it is over. From `Checkpointed` on, a change may be in place that nobody observed: it is
    /// rolled back. Finishing states re-run their actions (all idempotent); a commit is recorded again, never
    /// re-applied. With no window in progress, stale segmentation is lifted.
    pub fn recover(&self, state: &State, window_open: bool) -> (State, Vec<Action>) {
        match state {
            State::Idle | State::Scheduled { .. } | State::Closed { .. } => (state.clone(), vec![Action::LiftStale]),
            State::Arming { window } => {
                if window_open {
                    (state.clone(), Self::entry_actions(state))
                } else {
                    Self::expired(window)
                }
            }
            // Segmentation may have been lifted by the unit's stop path: segment again, then fetch again (the
            // download resumes), verify again and checkpoint again.
            State::Armed { window }
            | State::Segmented { window }
            | State::Fetched { window, .. }
            | State::Verified { window, .. } => {
                if window_open {
                    let next = State::Armed { window: window.clone() };
                    let actions = Self::entry_actions(&next);
                    (next, actions)
                } else {
                    Self::expired(window)
                }
            }
            // The reboot the journal expected (or a restart before it): which slot runs decides.
            State::Rebooting { slot, boot_id, .. } => {
                (state.clone(), vec![Action::ConfirmBoot { slot: slot.clone(), boot_id: boot_id.clone() }])
            }
            State::Checkpointed { window, bundle, checkpoint }
            | State::Applying { window, bundle, checkpoint }
            | State::Observing { window, bundle, checkpoint } => {
                let next = State::RollingBack {
                    window: window.clone(),
                    bundle: bundle.clone(),
                    checkpoint: checkpoint.clone(),
                    reason: Reason::Interrupted,
                };
                let actions = Self::entry_actions(&next);
                (next, actions)
            }
            State::Committed { .. }
            | State::Staged { .. }
            | State::UpToDate { .. }
            | State::RollingBack { .. }
            | State::RolledBack { .. }
            | State::Failed { .. } => (state.clone(), Self::entry_actions(state)),
        }
    }

    fn expired(window: &WindowCtx) -> (State, Vec<Action>) {
        let next = State::Failed { window: window.clone(), reason: Reason::DeadlineExpired, checkpoint: None };
        let actions = Self::entry_actions(&next);
        (next, actions)
    }

    fn transition(&self, state: &State, event: &Event) -> Result<State, IllegalEvent> {
        use Event as E;
        use State as S;
        let illegal = || IllegalEvent { state: state.name(), event: event.name() };
        let fail = |window: &WindowCtx, reason: Reason| S::Failed { window: window.clone(), reason, checkpoint: None };
        let rollback = |window: &WindowCtx, bundle: &VerifiedBundle, checkpoint: &CheckpointRef, reason: Reason| {
            S::RollingBack { window: window.clone(), bundle: bundle.clone(), checkpoint: checkpoint.clone(), reason }
        };

        let next = match (state, event) {
            // Scheduling: only when no window is in progress.
            (S::Idle | S::Scheduled { .. } | S::Closed { .. }, E::Schedule { window }) => {
                S::Scheduled { window: window.clone() }
            }
            (S::Idle | S::Scheduled { .. } | S::Closed { .. }, E::Unschedule) => S::Idle,
            (S::Scheduled { window }, E::Start) => S::Arming { window: window.clone() },
            // A staged slot is running: it is observed before it is kept (Mark good) or given up (Mark bad,
            // back to the other slot). There is no checkpoint: the boot restarted every process.
            (S::Idle | S::Scheduled { .. } | S::Closed { .. }, E::StagedBooted { window, bundle }) => S::Observing {
                window: window.clone(),
                bundle: bundle.clone(),
                checkpoint: CheckpointRef { id: format!("none-{}", window.id), processes: Vec::new() },
            },
            (S::Scheduled { window }, E::Deadline) => fail(window, Reason::DeadlineExpired),
            (S::Scheduled { window }, E::Cancel { uid }) => fail(window, Reason::Cancelled(*uid)),

            // Before anything is applied: failure, deadline or cancel ends the window; nothing to revert.
            (S::Arming { window }, E::PreflightPassed) => S::Armed { window: window.clone() },
            (S::Arming { window }, E::PreflightFailed { error }) => fail(window, Reason::Preflight(error.clone())),
            (S::Armed { window }, E::SegmentationApplied) => S::Segmented { window: window.clone() },
            (S::Armed { window }, E::SegmentationFailed { error }) => fail(window, Reason::Segmentation(error.clone())),
            (S::Segmented { window }, E::Fetched { bundle }) => {
                S::Fetched { window: window.clone(), bundle: bundle.clone() }
            }
            (S::Segmented { window }, E::NothingToFetch) => S::UpToDate { window: window.clone() },
            (S::Segmented { window }, E::FetchFailed { error }) => fail(window, Reason::Fetch(error.clone())),
            (S::Fetched { window, .. }, E::Verified { bundle }) => {
                S::Verified { window: window.clone(), bundle: bundle.clone() }
            }
            (S::Fetched { window, .. }, E::VerifyFailed { error }) => fail(window, Reason::Verify(error.clone())),
            (S::Verified { window, bundle }, E::CheckpointTaken { checkpoint }) => {
                S::Checkpointed { window: window.clone(), bundle: bundle.clone(), checkpoint: checkpoint.clone() }
            }
            (S::Verified { window, .. }, E::CheckpointFailed { error }) => {
                fail(window, Reason::Checkpoint(error.clone()))
            }
            (
                S::Arming { window } | S::Armed { window } | S::Segmented { window } | S::Fetched { window, .. },
                E::Deadline,
            )
            | (S::Verified { window, .. }, E::Deadline) => fail(window, Reason::DeadlineExpired),
            (
                S::Arming { window } | S::Armed { window } | S::Segmented { window } | S::Fetched { window, .. },
                E::Cancel { uid },
            )
            | (S::Verified { window, .. }, E::Cancel { uid }) => fail(window, Reason::Cancelled(*uid)),
            (
                S::Arming { window } | S::Armed { window } | S::Segmented { window } | S::Fetched { window, .. },
                E::JournalFailed { error },
            )
            | (S::Verified { window, .. }, E::JournalFailed { error }) => fail(window, Reason::Journal(error.clone())),

            // From the apply request on, the change may be in place: every way out goes through RollingBack.
            (S::Checkpointed { window, bundle, checkpoint }, E::ApplyStarted) => {
                S::Applying { window: window.clone(), bundle: bundle.clone(), checkpoint: checkpoint.clone() }
            }
            (S::Applying { window, bundle, checkpoint }, E::Applied) => {
                S::Observing { window: window.clone(), bundle: bundle.clone(), checkpoint: checkpoint.clone() }
            }
            (S::Applying { window, bundle, checkpoint }, E::Installed { slot, boot_id }) => {
                if self.config.allow_reboot {
                    S::Rebooting {
                        window: window.clone(),
                        bundle: bundle.clone(),
                        checkpoint: checkpoint.clone(),
                        slot: slot.clone(),
                        boot_id: boot_id.clone(),
                    }
                } else {
                    S::Staged {
                        window: window.clone(),
                        bundle: bundle.clone(),
                        checkpoint: checkpoint.clone(),
                        slot: slot.clone(),
                    }
                }
            }
            (S::Rebooting { window, bundle, checkpoint, .. }, E::RebootFailed { error }) => {
                rollback(window, bundle, checkpoint, Reason::Apply(format!("reboot: {error}")))
            }
            (S::Rebooting { window, bundle, checkpoint, slot, boot_id }, E::Booted { slot: now, boot_id: boot }) => {
                if boot == boot_id {
                    // Restarted before the reboot happened: nobody will observe the new slot in this window.
                    rollback(window, bundle, checkpoint, Reason::Interrupted)
                } else if now == slot {
                    S::Observing { window: window.clone(), bundle: bundle.clone(), checkpoint: checkpoint.clone() }
                } else {
                    rollback(window, bundle, checkpoint, Reason::BootFallback(now.clone()))
                }
            }
            (
                S::Checkpointed { window, bundle, checkpoint } | S::Applying { window, bundle, checkpoint },
                E::ApplyFailed { error },
            ) => rollback(window, bundle, checkpoint, Reason::Apply(error.clone())),
            (S::Observing { window, bundle, checkpoint }, E::Healthy) => {
                S::Committed { window: window.clone(), bundle: bundle.clone(), checkpoint: checkpoint.clone() }
            }
            (S::Observing { window, bundle, checkpoint }, E::Degraded { reason }) => {
                if self.config.rollback_on_degraded {
                    rollback(window, bundle, checkpoint, Reason::Degraded(reason.clone()))
                } else {
                    S::Committed { window: window.clone(), bundle: bundle.clone(), checkpoint: checkpoint.clone() }
                }
            }
            (S::Observing { window, bundle, checkpoint }, E::HealthFailed { reason }) => {
                rollback(window, bundle, checkpoint, Reason::Health(reason.clone()))
            }
            (
                S::Checkpointed { window, bundle, checkpoint }
                | S::Applying { window, bundle, checkpoint }
                | S::Rebooting { window, bundle, checkpoint, .. }
                | S::Observing { window, bundle, checkpoint },
                E::Deadline,
            ) => rollback(window, bundle, checkpoint, Reason::DeadlineExpired),
            (
                S::Checkpointed { window, bundle, checkpoint }
                | S::Applying { window, bundle, checkpoint }
                | S::Rebooting { window, bundle, checkpoint, .. }
                | S::Observing { window, bundle, checkpoint },
                E::Cancel { uid },
            ) => rollback(window, bundle, checkpoint, Reason::Cancelled(*uid)),
            (
                S::Checkpointed { window, bundle, checkpoint }
                | S::Applying { window, bundle, checkpoint }
                | S::Rebooting { window, bundle, checkpoint, .. }
                | S::Observing { window, bundle, checkpoint },
                E::RollbackRequested { uid },
            ) => rollback(window, bundle, checkpoint, Reason::OperatorRollback(*uid)),
            // From the checkpoint on (the apply may be under way), and a commit that could not be recorded: back.
            (
                S::Checkpointed { window, bundle, checkpoint }
                | S::Applying { window, bundle, checkpoint }
                | S::Rebooting { window, bundle, checkpoint, .. }
                | S::Observing { window, bundle, checkpoint }
                | S::Committed { window, bundle, checkpoint },
                E::JournalFailed { error },
            ) => rollback(window, bundle, checkpoint, Reason::Journal(error.clone())),
            // Finishing states go on (their work is to end the window: lift, roll back); there is nothing to stop.
            (
                S::Idle
                | S::Scheduled { .. }
                | S::Staged { .. }
                | S::UpToDate { .. }
                | S::RollingBack { .. }
                | S::RolledBack { .. }
                | S::Failed { .. }
                | S::Closed { .. },
                E::JournalFailed { .. },
            ) => state.clone(),

            (S::RollingBack { window, reason, .. }, E::RolledBack) => {
                S::RolledBack { window: window.clone(), reason: reason.clone() }
            }
            (S::RollingBack { window, .. }, E::RollbackFailed { error }) => {
                fail(window, Reason::RollbackFailed(error.clone()))
            }

            // Finishing: lift segmentation, then the window is closed. A failed lift is retried.
            (S::Committed { window, bundle, .. }, E::Lifted) => {
                S::Closed { window: window.clone(), outcome: Outcome::Committed { version: bundle.version.clone() } }
            }
            (S::Staged { window, bundle, slot, .. }, E::Lifted) => S::Closed {
                window: window.clone(),
                outcome: Outcome::Staged { version: bundle.version.clone(), slot: slot.clone() },
            },
            (S::UpToDate { window }, E::Lifted) => S::Closed { window: window.clone(), outcome: Outcome::UpToDate },
            (S::RolledBack { window, reason }, E::Lifted) => {
                S::Closed { window: window.clone(), outcome: Outcome::RolledBack { reason: reason.clone() } }
            }
            (S::Failed { window, reason, .. }, E::Lifted) => {
                S::Closed { window: window.clone(), outcome: Outcome::Failed { reason: reason.clone() } }
            }
            (
                S::Committed { .. } | S::Staged { .. } | S::UpToDate { .. } | S::RolledBack { .. } | S::Failed { .. },
                E::LiftFailed { .. },
            ) => state.clone(),
            // The deadline passing while the window is already finishing changes nothing.
            (
                S::Committed { .. }
                | S::Staged { .. }
                | S::UpToDate { .. }
                | S::RollingBack { .. }
                | S::RolledBack { .. }
                | S::Failed { .. }
                | S::Closed { .. }
                | S::Idle,
                E::Deadline,
            ) => state.clone(),
            _ => return Err(illegal()),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests;
