//! The window state machine. Pure: no I/O, no clock.
//!
//! [`Engine::step`] takes the current [`State`] and an [`Event`] (the result of an action, a timer the orchestrator
//! saw fire, or an operator request) and returns the next state with the [`Actions`] to run. The actions of a
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

mod action;
mod event;
mod state;
mod transition;

pub use action::{Actions, Drive, Effect};
pub use event::Event;
pub use state::{BundleRef, CheckpointRef, Outcome, PatchKind, Reason, State, VerifiedBundle, WindowCtx};

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

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Engine { config }
    }

    /// One transition. An event that does not fit the state is an [`IllegalEvent`] and changes nothing.
    pub fn step(&self, state: &State, event: &Event) -> Result<(State, Actions), IllegalEvent> {
        let next = self.transition(state, event)?;
        let actions = if let Event::LiftFailed { .. } = event {
            // Segmentation must never outlive its window: lift again (the orchestrator paces the retries).
            Actions::drive(Drive::Lift)
        } else if &next == state {
            Actions::none()
        } else {
            Self::entry_actions(&next)
        };
        Ok((next, actions))
    }

    /// The actions of entering `state`. Running them again is safe: every driving step is idempotent.
    pub fn entry_actions(state: &State) -> Actions {
        match state {
            State::Idle | State::Scheduled { .. } | State::Closed { .. } => Actions::none(),
            State::Arming { window } => Actions::drive(Drive::Preflight { window: window.clone() }),
            State::Armed { window } => Actions::drive(Drive::Segment { window: window.clone() }),
            State::Segmented { window } => Actions::drive(Drive::Fetch { window: window.clone() }),
            State::Fetched { bundle, .. } => Actions::drive(Drive::Verify { bundle: bundle.clone() }),
            State::Verified { window, .. } => Actions::drive(Drive::Checkpoint { window: window.clone() }),
            State::Checkpointed { window, bundle, .. } => {
                Actions::drive(Drive::Apply { window: window.clone(), bundle: bundle.clone() })
            }
            // Applying waits for `Applied` from the apply already under way.
            State::Applying { .. } => Actions::none(),
            State::Rebooting { slot, .. } => Actions::drive(Drive::Reboot { slot: slot.clone() }),
            State::Staged { checkpoint, .. } => {
                Actions::then(vec![Effect::DiscardCheckpoint { checkpoint: checkpoint.clone() }], Drive::Lift)
            }
            State::Observing { window, .. } => Actions::drive(Drive::Observe { window: window.clone() }),
            State::Committed { bundle, checkpoint, .. } => Actions::then(
                vec![
                    Effect::Commit { bundle: bundle.clone() },
                    Effect::DiscardCheckpoint { checkpoint: checkpoint.clone() },
                ],
                Drive::Lift,
            ),
            State::UpToDate { .. } | State::RolledBack { .. } => Actions::drive(Drive::Lift),
            State::RollingBack { bundle, checkpoint, .. } => {
                Actions::drive(Drive::Rollback { bundle: bundle.clone(), checkpoint: checkpoint.clone() })
            }
            State::Failed { checkpoint, .. } => {
                let mut effects = Vec::new();
                if let Some(c) = checkpoint {
                    effects.push(Effect::DiscardCheckpoint { checkpoint: c.clone() });
                }
                Actions::then(effects, Drive::Lift)
            }
        }
    }

    /// After a restart: the state to continue from and the actions to run, from the journaled state alone.
    ///
    /// Before anything was applied the window resumes if it is still open (from preflight, or from segmentation
    /// once it was segmented), and fails (lifting segmentation) if it is over. From `Checkpointed` on, a change may be in place that nobody observed: it is
    /// rolled back. Finishing states re-run their actions (all idempotent); a commit is recorded again, never
    /// re-applied. With no window in progress, stale segmentation is lifted.
    pub fn recover(&self, state: &State, window_open: bool) -> (State, Actions) {
        match state {
            State::Idle | State::Scheduled { .. } | State::Closed { .. } => {
                (state.clone(), Actions { effects: vec![Effect::LiftStale], drive: None })
            }
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
                (state.clone(), Actions::drive(Drive::ConfirmBoot { slot: slot.clone(), boot_id: boot_id.clone() }))
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

    fn expired(window: &WindowCtx) -> (State, Actions) {
        let next = State::Failed { window: window.clone(), reason: Reason::DeadlineExpired, checkpoint: None };
        let actions = Self::entry_actions(&next);
        (next, actions)
    }
}

#[cfg(test)]
mod tests;
