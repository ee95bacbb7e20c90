//! Runs the actions of a state: the effects inline, the driving action as the future in flight.

use otpatch_common::audit::AuditEvent;
use std::time::Duration;

use tracing::{error, warn};

use super::{drive, Orchestrator};
use crate::backend::{BoxFuture, SegmentationPlan};
use crate::engine::{Actions, Drive, Effect, Event, WindowCtx};

impl Orchestrator {
    /// Runs the effects inline, then starts the driving step. Returns an event to feed at once, if any.
    pub(super) async fn run_actions(&mut self, actions: Actions) -> Option<Event> {
        for effect in actions.effects {
            if let Err(e) = self.setup.failpoints.hit(&format!("action:{}", effect.name())) {
                warn!(error = %e, "failpoint");
                continue;
            }
            if let Some(event) = self.run_effect(effect).await {
                // The rest (discarding the checkpoint, lifting) is not this state's any more: the event decides.
                return Some(event);
            }
        }
        let drive = actions.drive?;
        if let Err(e) = self.setup.failpoints.hit(&format!("action:{}", drive.name())) {
            return Some(injected_failure(&drive, e));
        }
        let applies = matches!(drive, Drive::Apply { .. });
        let fut = self.driver(drive);
        self.run.inflight = Some(fut);
        // The change may begin to go in from here on: journal Applying before waiting for it.
        applies.then_some(Event::ApplyStarted)
    }

    /// Runs one effect; an event to feed instead of going on when the effect says the state no longer holds.
    async fn run_effect(&mut self, effect: Effect) -> Option<Event> {
        let b = self.policy.backends.clone();
        match effect {
            Effect::Commit { bundle } => {
                let patcher = b.patcher(bundle.kind);
                if let Err(e) = patcher.commit(&bundle).await {
                    if bundle.kind == crate::engine::PatchKind::Ab {
                        // The slot it went into does not run (the power went before it was marked good, and
                        // the bootloader fell back): recording it as committed would say the gateway carries
                        // an update it does not. Rolled back instead (the slot is marked bad).
                        error!(error = %e, version = %bundle.version, "commit failed; the A/B update is not kept");
                        return Some(Event::CommitFailed { error: e.to_string() });
                    }
                    error!(error = %e, version = %bundle.version, "commit failed; the change stays for this boot");
                    self.out.status.send_modify(|s| s.last_error = format!("commit: {e}"));
                }
                let committed = self.setup.sysroot.committed_file();
                if let Err(e) = crate::committed::Committed::record(&committed, &bundle, self.now(), None) {
                    error!(error = %e, "could not record the committed bundle");
                    self.out.status.send_modify(|s| s.last_error = format!("recording the commit: {e}"));
                }
                self.audit_log(
                    self.run.state.window().map(|w| w.id.clone()).as_deref(),
                    None,
                    AuditEvent::Commit {
                        version: bundle.version.clone(),
                        kind: bundle.kind.to_string(),
                        digest: bundle.digest.clone(),
                        signer: bundle.signer.clone(),
                    },
                );
            }
            Effect::DiscardCheckpoint { checkpoint } => {
                if let Err(e) = b.checkpointer.discard(&checkpoint).await {
                    warn!(error = %e, checkpoint = %checkpoint.id, "could not remove checkpoint images");
                }
            }
            Effect::LiftStale => match b.firewall.lift().await {
                Ok(r) if r.was_active => {
                    warn!(dropped = r.dropped_packets, "stale segmentation lifted");
                    self.audit_log(
                        None,
                        None,
                        AuditEvent::StaleSegmentationLifted { dropped_packets: r.dropped_packets },
                    );
                }
                Ok(_) => {}
                Err(e) => error!(error = %e, "could not lift stale segmentation"),
            },
        }
        None
    }

    fn segmentation_plan(&self, window: &WindowCtx) -> SegmentationPlan {
        let s = &self.policy.settings;
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
    fn driver(&mut self, drive: Drive) -> BoxFuture<'static, Event> {
        let b = self.policy.backends.clone();
        let progress = self.progress_fn();
        match drive {
            Drive::Preflight { .. } => Box::pin(async move { drive::preflight(&b).await }),
            Drive::Segment { window } => {
                let plan = self.segmentation_plan(&window);
                let enabled = self.policy.settings.segmentation.enabled;
                let server =
                    self.policy.settings.server.as_ref().map(|s| (s.host.clone(), s.port, s.addresses.clone()));
                let state_dir = self.setup.sysroot.state_dir();
                Box::pin(async move { drive::segment(&b, plan, enabled, server, &state_dir).await })
            }
            Drive::Fetch { window } => {
                let avoid = crate::rolled_back::RolledBack::load(&self.rolled_back_path());
                let note = self.run.skip_note.clone();
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
            Drive::Verify { bundle } => {
                let fallback = self.policy.settings.ab.fallback_bundle.clone();
                let window = self.run.state.window().cloned();
                Box::pin(
                    async move { drive::verify(&b, &bundle, window.as_ref(), fallback.as_deref(), progress).await },
                )
            }
            Drive::Checkpoint { window } => Box::pin(async move { drive::checkpoint(&b, &window).await }),
            Drive::Reboot { slot } => {
                let limit = self.policy.settings.ab.reboot_timeout;
                let window = self.run.state.window().map(|w| w.id.clone()).unwrap_or_default();
                self.audit_log(Some(&window), None, AuditEvent::RebootRequested { slot: slot.clone() });
                Box::pin(async move { drive::reboot(&b, &window, &slot, limit, progress).await })
            }
            Drive::ConfirmBoot { slot, boot_id } => {
                let running = self.setup.sysroot.image_version();
                Box::pin(async move { drive::confirm_boot(&b, &slot, &boot_id, running).await })
            }
            Drive::Observe { .. } => {
                let period = self.policy.settings.rollback.observation;
                Box::pin(async move { drive::observe(&b, period, progress).await })
            }
            Drive::Rollback { bundle, checkpoint } => {
                let restore = self.committed_before(&bundle);
                Box::pin(async move { drive::rollback(&b, &bundle, &checkpoint, restore, progress).await })
            }
            Drive::Lift => {
                // Paced retries: 0 s, then 1, 2, 4 ... up to 30 s between attempts.
                let delay = match self.run.lift_failures {
                    0 => Duration::ZERO,
                    n => Duration::from_secs(1u64 << (n - 1).min(5)).min(Duration::from_secs(30)),
                };
                let slot = self.run.last_lift.clone();
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
            Drive::Apply { window, bundle } => {
                Box::pin(async move { drive::apply(&b, &window, &bundle, progress).await })
            }
        }
    }
}

fn injected_failure(drive: &Drive, e: String) -> Event {
    match drive {
        Drive::Preflight { .. } => Event::PreflightFailed { error: e },
        Drive::Segment { .. } => Event::SegmentationFailed { error: e },
        Drive::Fetch { .. } => Event::FetchFailed { error: e },
        Drive::Verify { .. } => Event::VerifyFailed { error: e },
        Drive::Checkpoint { .. } => Event::CheckpointFailed { error: e },
        Drive::Apply { .. } => Event::ApplyFailed { error: e },
        Drive::Observe { .. } => Event::HealthFailed { reason: e },
        Drive::Rollback { .. } => Event::RollbackFailed { error: e },
        Drive::Reboot { .. } | Drive::ConfirmBoot { .. } => Event::RebootFailed { error: e },
        Drive::Lift => Event::LiftFailed { error: e },
    }
}
