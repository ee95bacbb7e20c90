//! Runs the actions of a state: the effects inline, the driving action as the future in flight.

use std::time::Duration;

use tracing::{error, warn};

use super::{drive, Orchestrator};
use crate::backend::{BoxFuture, SegmentationPlan};
use crate::engine::{Action, Event, WindowCtx};

impl Orchestrator {
    /// Runs effects inline and starts the driving action. Returns an event to feed at once, if any.
    pub(super) async fn run_actions(&mut self, actions: Vec<Action>) -> Option<Event> {
        for action in actions {
            if let Err(e) = self.failpoints.hit(&format!("action:{}", action.name())) {
                if action.drives() {
                    return Some(injected_failure(&action, e));
                }
                warn!(error = %e, "failpoint");
                continue;
            }
            let b = self.backends.clone();
            match action {
                Action::Commit { bundle } => {
                    let patcher = b.patcher(bundle.kind);
                    if let Err(e) = patcher.commit(&bundle).await {
                        error!(error = %e, version = %bundle.version, "commit failed; the change stays for this boot");
                        self.status.send_modify(|s| s.last_error = format!("commit: {e}"));
                    }
                    let committed = self.store_path.with_file_name("committed.json");
                    if let Err(e) = crate::committed::Committed::record(&committed, &bundle, self.now(), None) {
                        error!(error = %e, "could not record the committed bundle");
                        self.status.send_modify(|s| s.last_error = format!("recording the commit: {e}"));
                    }
                    self.audit_log(
                        "commit",
                        self.state.window().map(|w| w.id.clone()).as_deref(),
                        None,
                        serde_json::json!({"version": bundle.version, "kind": bundle.kind.to_string(), "digest": bundle.digest, "signer": bundle.signer}),
                    );
                }
                Action::DiscardCheckpoint { checkpoint } => {
                    if let Err(e) = b.checkpointer.discard(&checkpoint).await {
                        warn!(error = %e, checkpoint = %checkpoint.id, "could not remove checkpoint images");
                    }
                }
                Action::LiftStale => match b.firewall.lift().await {
                    Ok(r) if r.was_active => {
                        warn!(dropped = r.dropped_packets, "stale segmentation lifted");
                        self.audit_log(
                            "stale-segmentation-lifted",
                            None,
                            None,
                            serde_json::json!({"dropped_packets": r.dropped_packets}),
                        );
                    }
                    Ok(_) => {}
                    Err(e) => error!(error = %e, "could not lift stale segmentation"),
                },
                Action::Apply { window, bundle } => {
                    let progress = self.progress_fn();
                    self.inflight = Some(Box::pin(async move { drive::apply(&b, &window, &bundle, progress).await }));
                    // The change may begin to go in from here on: journal Applying before waiting for it.
                    return Some(Event::ApplyStarted);
                }
                driver => {
                    let fut = self.driver(driver);
                    self.inflight = Some(fut);
                }
            }
        }
        None
    }

    fn segmentation_plan(&self, window: &WindowCtx) -> SegmentationPlan {
        let s = &self.settings;
        SegmentationPlan {
            window_id: window.id.clone(),
            server: s.server.as_ref().map(|p| (p.host.clone(), p.port)),
            server_addrs: vec![],
            flows: s.segmentation.allow.clone(),
            probe_targets: s
                .probes
                .iter()
                .filter_map(|p| match &p.target {
                    otpatch_common::policy::ProbeTarget::Tcp { addr } => Some(*addr),
                    otpatch_common::policy::ProbeTarget::Rtu { .. } => None,
                })
                .collect(),
            log_drops: s.segmentation.log_drops,
        }
    }

    /// The future of a driving action, yielding the event that moves the engine on: the function of
    /// [`drive`] for it, with its arguments taken from the settings and the state.
    fn driver(&mut self, action: Action) -> BoxFuture<'static, Event> {
        let b = self.backends.clone();
        let progress = self.progress_fn();
        match action {
            Action::Preflight { .. } => Box::pin(async move { drive::preflight(&b).await }),
            Action::Segment { window } => {
                let plan = self.segmentation_plan(&window);
                let enabled = self.settings.segmentation.enabled;
                let server = self.settings.server.as_ref().map(|s| (s.host.clone(), s.port, s.addresses.clone()));
                let state_dir = self.sysroot.state_dir();
                Box::pin(async move { drive::segment(&b, plan, enabled, server, &state_dir).await })
            }
            Action::Fetch { window } => {
                let avoid = crate::rolled_back::RolledBack::load(&self.rolled_back_path());
                let note = self.skip_note.clone();
                Box::pin(async move {
                    let (event, skipped) = drive::fetch(&b, &window, avoid, progress).await;
                    if let Some(skipped) = skipped {
                        if let Ok(mut n) = note.lock() {
                            *n = Some(skipped);
                        }
                    }
                    event
                })
            }
            Action::Verify { bundle } => {
                let fallback = self.settings.ab.fallback_bundle.clone();
                let window = self.state.window().cloned();
                Box::pin(
                    async move { drive::verify(&b, &bundle, window.as_ref(), fallback.as_deref(), progress).await },
                )
            }
            Action::Checkpoint { window } => Box::pin(async move { drive::checkpoint(&b, &window).await }),
            Action::Reboot { slot } => {
                let limit = self.settings.ab.reboot_timeout;
                let window = self.state.window().map(|w| w.id.clone()).unwrap_or_default();
                self.audit_log("reboot-requested", Some(&window), None, serde_json::json!({"slot": slot}));
                Box::pin(async move { drive::reboot(&b, &window, &slot, limit, progress).await })
            }
            Action::ConfirmBoot { slot, boot_id } => {
                Box::pin(async move { drive::confirm_boot(&b, &slot, &boot_id).await })
            }
            Action::Observe { .. } => {
                let period = self.settings.rollback.observation;
                Box::pin(async move { drive::observe(&b, period, progress).await })
            }
            Action::Rollback { bundle, checkpoint } => {
                let restore = self.committed_before(&bundle);
                Box::pin(async move { drive::rollback(&b, &bundle, &checkpoint, restore, progress).await })
            }
            Action::Lift => {
                // Paced retries: 0 s, then 1, 2, 4 ... up to 30 s between attempts.
                let delay = match self.lift_failures {
                    0 => Duration::ZERO,
                    n => Duration::from_secs(1u64 << (n - 1).min(5)).min(Duration::from_secs(30)),
                };
                let slot = self.last_lift.clone();
                Box::pin(async move {
                    let (event, report) = drive::lift(&b, delay).await;
                    if let Some(r) = report {
                        if let Ok(mut s) = slot.lock() {
                            *s = Some(r);
                        }
                    }
                    event
                })
            }
            Action::Apply { .. } | Action::Commit { .. } | Action::DiscardCheckpoint { .. } | Action::LiftStale => {
                // Handled in run_actions; never a separate driver.
                Box::pin(async { Event::FetchFailed { error: "internal: not a driver".into() } })
            }
        }
    }
}

fn injected_failure(action: &Action, e: String) -> Event {
    match action {
        Action::Preflight { .. } => Event::PreflightFailed { error: e },
        Action::Segment { .. } => Event::SegmentationFailed { error: e },
        Action::Fetch { .. } => Event::FetchFailed { error: e },
        Action::Verify { .. } => Event::VerifyFailed { error: e },
        Action::Checkpoint { .. } => Event::CheckpointFailed { error: e },
        Action::Apply { .. } => Event::ApplyFailed { error: e },
        Action::Observe { .. } => Event::HealthFailed { reason: e },
        Action::Rollback { .. } => Event::RollbackFailed { error: e },
        Action::Reboot { .. } | Action::ConfirmBoot { .. } => Event::RebootFailed { error: e },
        _ => Event::LiftFailed { error: e },
    }
}
