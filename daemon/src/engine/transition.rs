//! The transition table: which event moves which state where.

use super::{CheckpointRef, Engine, Event, IllegalEvent, Outcome, Reason, State, VerifiedBundle, WindowCtx};

impl Engine {
    pub(super) fn transition(&self, state: &State, event: &Event) -> Result<State, IllegalEvent> {
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
            (
                S::Rebooting { window, bundle, checkpoint, slot, boot_id },
                E::Booted { slot: now, boot_id: boot, running },
            ) => {
                if boot == boot_id {
                    // Restarted before the reboot happened: nobody will observe the new slot in this window.
                    rollback(window, bundle, checkpoint, Reason::Interrupted)
                } else if now == slot {
                    S::Observing { window: window.clone(), bundle: bundle.clone(), checkpoint: checkpoint.clone() }
                } else {
                    let reason = if running.is_empty() {
                        Reason::BootFallback(now.clone())
                    } else {
                        Reason::CameBack {
                            slot: now.clone(),
                            running: running.clone(),
                            updated: bundle.version.clone(),
                        }
                    };
                    rollback(window, bundle, checkpoint, reason)
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
            (S::Committed { window, bundle, checkpoint }, E::CommitFailed { error }) => {
                rollback(window, bundle, checkpoint, Reason::CommitFailed(error.clone()))
            }
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
