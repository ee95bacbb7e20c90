//! The walk through a window: events fed to the engine, transitions journaled before their actions run, the
//! timers (window opening, hard end) and the schedule the engine waits on.

use jiff::Timestamp;
use otpatch_common::audit::AuditEvent;
use tracing::{error, info, warn};

use super::{occurrence_ctx, Notice, Orchestrator};
use crate::engine::{Event, Outcome, State};

impl Orchestrator {
    /// The next timer: the window opening (auto-start) or its hard end.
    pub(super) fn next_timer(&self) -> Option<(Timestamp, Event)> {
        match &self.run.state {
            State::Scheduled { window } if window.auto_start => Some((window.start, Event::Start)),
            State::Scheduled { window } => Some((window.end, Event::Deadline)),
            s if s.deadline_applies() => s.window().map(|w| (w.end, Event::Deadline)),
            _ => None,
        }
    }

    /// With no window in progress, make the engine's next window match the schedule.
    pub(super) async fn sync_schedule(&mut self) {
        if self.run.state.in_progress() {
            return;
        }
        let now = self.now();
        let next = self.next_occurrence(now);
        let current = match &self.run.state {
            State::Scheduled { window } => Some(window.clone()),
            _ => None,
        };
        let wanted = next.as_ref().map(occurrence_ctx);
        if wanted == current {
            return;
        }
        let ev = match wanted {
            Some(window) => Event::Schedule { window },
            None if current.is_some() => Event::Unschedule,
            None => return,
        };
        self.feed(ev).await;
    }

    /// Feeds an event and everything that follows from it synchronously (e.g. `ApplyStarted`).
    pub(super) async fn feed(&mut self, event: Event) {
        let mut pending = Some(event);
        let mut rounds = 0;
        while let Some(ev) = pending.take() {
            rounds += 1;
            if rounds > 16 {
                error!("event chain did not settle; stopping it");
                return;
            }
            let (next, actions) = match self.policy.engine.step(&self.run.state, &ev) {
                Ok(r) => r,
                Err(e) => {
                    // A late result of an action that was preempted, typically: the state moved on.
                    warn!(error = %e, "event ignored");
                    return;
                }
            };
            self.note_event(&ev);
            if matches!(ev, Event::SegmentationApplied | Event::Lifted) {
                self.refresh_segmentation_view().await;
            }
            if next != self.run.state {
                let journaled = self.enter(next, ev.name());
                self.sync_health_watch().await;
                if let Err(error) = journaled {
                    // Write-ahead is a rule: the state's actions do not run without its transition on disk. The
                    // engine says where that leads (failed before the checkpoint, rolling back from it on); a
                    // finishing state goes on with its own actions.
                    let stop = Event::JournalFailed { error };
                    if matches!(self.policy.engine.step(&self.run.state, &stop), Ok((s, _)) if s != self.run.state) {
                        pending = Some(stop);
                        continue;
                    }
                }
            }
            pending = self.run_actions(actions).await;
        }
    }

    /// Moves to `next`: journal first (write-ahead), then audit, notify, and drop what the old state waited for.
    /// `Err` (with the reason) when the journal could not record it: the caller must not run its actions.
    pub(super) fn enter(&mut self, next: State, event: &str) -> Result<(), String> {
        let now = self.now();
        // Before the journal says rolled-back: a crash in between rolls back again on restart and records it then.
        if let (State::RollingBack { bundle, .. }, State::RolledBack { reason, .. }) = (&self.run.state, &next) {
            let bundle = bundle.clone();
            self.record_rolled_back(&bundle, &reason.to_string(), now);
        }
        let journaled = match self.setup.failpoints.hit(&format!("journal-write:{}", next.name())) {
            Err(e) => Err(e),
            Ok(()) => self.out.journal.record(&next, now).map(|_| ()).map_err(|e| e.to_string()),
        };
        if let Err(e) = &journaled {
            // Without the journal a crash could lose track of the change: say so loudly, and stop (see feed).
            error!(error = %e, state = next.name(), "journal write failed");
            self.out.status.send_modify(|s| s.last_error = format!("journal write failed: {e}"));
        }
        let prev = std::mem::replace(&mut self.run.state, next);
        let window = self.run.state.window().map(|w| w.id.clone()).unwrap_or_default();
        info!(window = %window, from = prev.name(), to = self.run.state.name(), event, "transition");

        self.audit_log(
            Some(&window),
            None,
            AuditEvent::Transition {
                from: prev.name().into(),
                to: self.run.state.name().into(),
                event: event.to_string(),
            },
        );
        let _ = self.out.notices.send(Notice::Transition {
            window: window.clone(),
            from: prev.name().into(),
            to: self.run.state.name().into(),
            event: event.into(),
        });
        // The apply already under way continues into Applying; anything else in flight is for the old state.
        let keeps_inflight = matches!((&prev, &self.run.state), (State::Checkpointed { .. }, State::Applying { .. }));
        if !keeps_inflight {
            self.run.inflight = None;
        }
        if let State::Closed { window: w, outcome } = self.run.state.clone() {
            let note = self.run.skip_note.lock().ok().and_then(|mut n| n.take());
            let outcome_text = match (&outcome, note) {
                (Outcome::UpToDate, Some(note)) => format!("{outcome}: {note}"),
                _ => outcome.to_string(),
            };
            self.run.store.done.insert(w.id.clone());
            self.save_store();
            self.out.status.send_modify(|s| s.last_outcome = outcome_text.clone());
            self.audit_log(Some(&w.id), None, AuditEvent::WindowClosed { outcome: outcome_text.clone() });
            let _ = self.out.notices.send(Notice::WindowCompleted { window: w.id.clone(), outcome: outcome_text });
            if matches!(outcome, Outcome::Committed { .. } | Outcome::UpToDate) {
                self.out.status.send_modify(|s| s.last_error.clear());
            }
            // A staged A/B update still needs its bundle until the boot into it is confirmed.
            if !matches!(outcome, Outcome::Staged { .. }) {
                self.prune_state(&w.id);
            }
        }
        if let State::Arming { .. } = self.run.state {
            self.out.status.send_modify(|s| s.last_error.clear());
            if let Ok(mut n) = self.run.skip_note.lock() {
                *n = None;
            }
        }
        // Each state starts with its own progress; backends refine it while they work.
        let (percent, message) = (self.run.state.percent(), self.run.state.doing().to_string());
        self.out.status.send_modify(|s| {
            s.progress_percent = percent;
            s.progress_message = message;
        });
        if let Err(e) = self.setup.failpoints.hit(&format!("journal:{}", self.run.state.name())) {
            warn!(error = %e, "failpoint");
        }
        self.publish();
        journaled
    }

    /// The probes keep being read from the baseline on, while the change goes in and while it comes out (the
    /// observation reads them itself); they stop when the window is decided.
    pub(super) async fn sync_health_watch(&mut self) {
        let watch = matches!(
            self.run.state,
            State::Armed { .. }
                | State::Segmented { .. }
                | State::Fetched { .. }
                | State::Verified { .. }
                | State::Checkpointed { .. }
                | State::Applying { .. }
                | State::RollingBack { .. }
        );
        let observing = matches!(self.run.state, State::Observing { .. });
        // Not borrowing self across the await: the orchestrator's future must stay Send.
        let health = self.policy.backends.health.clone();
        if watch {
            health.start_watch().await;
        } else if !observing {
            health.stop_watch().await;
        }
    }
}
