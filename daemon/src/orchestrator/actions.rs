//! Runs the actions of a state: the effects inline, the driving action as the future in flight.

use std::time::Duration;

use tracing::{error, info, warn};

use super::Orchestrator;
use crate::backend::{Applied, BoxFuture, FetchOutcome, ProgressFn, SegmentationPlan, Verdict};
use crate::engine::{Action, Event, PatchKind, WindowCtx};

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
                    let patcher = b.patcher(bundle.kind);
                    let progress = self.progress_fn();
                    self.inflight = Some(Box::pin(async move {
                        match patcher.apply(&window.id, &bundle, progress).await {
                            Ok(Applied::InPlace) => Event::Applied,
                            Ok(Applied::Installed { slot }) => match b.rebooter.boot_id() {
                                Ok(boot_id) => Event::Installed { slot, boot_id },
                                // Without the boot id a reboot could not be told from a restart: do not reboot.
                                Err(e) => Event::ApplyFailed { error: format!("installed into {slot}, but {e}") },
                            },
                            Err(e) => Event::ApplyFailed { error: e.to_string() },
                        }
                    }));
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

    /// The future of a driving action, yielding the event that moves the engine on.
    fn driver(&mut self, action: Action) -> BoxFuture<'static, Event> {
        let b = self.backends.clone();
        let progress = self.progress_fn();
        match action {
            Action::Preflight { .. } => Box::pin(async move {
                if let Err(e) = b.firewall.active().await {
                    return Event::PreflightFailed { error: format!("firewall backend unusable: {e}") };
                }
                if let Err(e) = b.checkpointer.preflight().await {
                    return Event::PreflightFailed { error: format!("checkpoint preflight: {e}") };
                }
                if let Err(e) = b.health.baseline().await {
                    return Event::PreflightFailed { error: format!("health baseline: {e}") };
                }
                Event::PreflightPassed
            }),
            Action::Segment { window } => {
                let mut plan = self.segmentation_plan(&window);
                let enabled = self.settings.segmentation.enabled;
                let server = self.settings.server.as_ref().map(|s| (s.host.clone(), s.port, s.addresses.clone()));
                let state_dir = self.sysroot.state_dir();
                Box::pin(async move {
                    if !enabled {
                        return Event::SegmentationApplied;
                    }
                    // Resolved once, before the rules go up, and recorded: the rules and the fetcher use exactly
                    // these, and a restart in this window uses them again.
                    if let Some((host, port, pinned)) = server {
                        match crate::firewall::ServerAddresses::for_window(
                            &state_dir,
                            &plan.window_id,
                            &host,
                            port,
                            &pinned,
                        )
                        .await
                        {
                            Ok(addrs) => plan.server_addrs = addrs,
                            Err(e) => return Event::SegmentationFailed { error: e.to_string() },
                        }
                    }
                    match b.firewall.apply(&plan).await {
                        Ok(()) => Event::SegmentationApplied,
                        Err(e) => Event::SegmentationFailed { error: e.to_string() },
                    }
                })
            }
            Action::Fetch { window } => {
                let avoid = crate::rolled_back::RolledBack::load(&self.rolled_back_path());
                let note = self.skip_note.clone();
                Box::pin(async move {
                    let avoid = match avoid {
                        Ok(a) => a,
                        Err(e) => return Event::FetchFailed { error: e },
                    };
                    match b.fetcher.fetch(&window, &avoid, progress).await {
                        Ok(FetchOutcome::Bundle(bundle)) => Event::Fetched { bundle },
                        Ok(FetchOutcome::NothingNewer) => Event::NothingToFetch,
                        Ok(FetchOutcome::RolledBack(r)) => {
                            info!(window = %window.id, version = %r.version, "newest bundle was rolled back here; not installed again");
                            if let Ok(mut n) = note.lock() {
                                *n = Some(r.skip_note());
                            }
                            Event::NothingToFetch
                        }
                        Err(e) => Event::FetchFailed { error: e.to_string() },
                    }
                })
            }
            Action::Verify { bundle } => {
                let fallback = self.settings.ab.fallback_bundle.clone();
                let window = self.state.window().cloned();
                Box::pin(async move {
                    match b.verifier.verify(&bundle).await {
                        Ok(v) => Event::Verified { bundle: v },
                        Err(e) => match (e.is_kernel_mismatch(), fallback, window) {
                            (true, Some(file), Some(window)) => ab_fallback(&b, &window, &file, e, progress).await,
                            _ => Event::VerifyFailed { error: e.to_string() },
                        },
                    }
                })
            }
            Action::Checkpoint { window } => Box::pin(async move {
                match b.checkpointer.checkpoint(&window).await {
                    Ok(checkpoint) => Event::CheckpointTaken { checkpoint },
                    Err(e) => Event::CheckpointFailed { error: e.to_string() },
                }
            }),
            Action::Reboot { slot } => {
                let limit = self.settings.ab.reboot_timeout;
                let window = self.state.window().map(|w| w.id.clone()).unwrap_or_default();
                self.audit_log("reboot-requested", Some(&window), None, serde_json::json!({"slot": slot}));
                Box::pin(async move {
                    progress(-1, format!("rebooting into slot {slot}"));
                    let why = format!("otpatch window {window}: boot slot {slot}");
                    Event::RebootFailed { error: b.rebooter.reboot_and_wait(&why, limit).await.to_string() }
                })
            }
            Action::ConfirmBoot { slot, boot_id } => Box::pin(async move {
                let now = match b.rebooter.boot_id() {
                    Ok(id) => id,
                    Err(e) => {
                        return Event::RebootFailed { error: format!("cannot tell this boot from the last: {e}") }
                    }
                };
                match b.ab_updater.booted_slot().await {
                    Ok(booted) => {
                        info!(expected = %slot, booted = %booted, new_boot = now != boot_id, "boot after the update's reboot");
                        Event::Booted { slot: booted, boot_id: now }
                    }
                    Err(e) => Event::RebootFailed { error: format!("cannot tell which slot booted: {e}") },
                }
            }),
            Action::Observe { .. } => {
                let period = self.settings.rollback.observation;
                Box::pin(async move {
                    progress(
                        -1,
                        format!("observing plant health for {}", otpatch_common::units::format_duration(period)),
                    );
                    match b.health.observe(period).await {
                        Verdict::Healthy => Event::Healthy,
                        Verdict::Degraded(reason) => Event::Degraded { reason },
                        Verdict::Failed(reason) => Event::HealthFailed { reason },
                    }
                })
            }
            Action::Rollback { bundle, checkpoint } => {
                let restore = self.committed_before(&bundle);
                Box::pin(async move {
                    let patcher = b.patcher(bundle.kind);
                    progress(-1, format!("rolling back {}", bundle.version));
                    let restore_ref = restore.as_ref().ok().and_then(Option::as_ref);
                    if let Err(e) = patcher.revert(&bundle, restore_ref).await {
                        return Event::RollbackFailed { error: format!("revert {}: {e}", bundle.version) };
                    }
                    if let Err(e) = restore {
                        // Reverted, but what was committed before is unknown: the gateway may be less patched.
                        return Event::RollbackFailed { error: format!("revert {}: {e}", bundle.version) };
                    }
                    if let Err(e) = b.checkpointer.restore(&checkpoint).await {
                        return Event::RollbackFailed { error: format!("restore {}: {e}", checkpoint.id) };
                    }
                    Event::RolledBack
                })
            }
            Action::Lift => {
                // Paced retries: 0 s, then 1, 2, 4 ... up to 30 s between attempts.
                let delay = match self.lift_failures {
                    0 => Duration::ZERO,
                    n => Duration::from_secs(1u64 << (n - 1).min(5)).min(Duration::from_secs(30)),
                };
                let slot = self.last_lift.clone();
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    match b.firewall.lift().await {
                        Ok(r) => {
                            if let Ok(mut s) = slot.lock() {
                                *s = Some(r);
                            }
                            Event::Lifted
                        }
                        Err(e) => Event::LiftFailed { error: e.to_string() },
                    }
                })
            }
            Action::Apply { .. } | Action::Commit { .. } | Action::DiscardCheckpoint { .. } | Action::LiftStale => {
                // Handled in run_actions; never a separate driver.
                Box::pin(async { Event::FetchFailed { error: "internal: not a driver".into() } })
            }
        }
    }
}

/// A livepatch that does not fit the running kernel, with `[ab] fallback_bundle` set: that RAUC bundle, from the
/// signed index, verified like any other, takes its place in the window.
async fn ab_fallback(
    b: &crate::backend::Backends,
    window: &WindowCtx,
    file: &str,
    why: crate::backend::BackendError,
    progress: ProgressFn,
) -> Event {
    warn!(window = %window.id, fallback = %file, reason = %why, "livepatch does not fit this kernel: A/B fallback");
    progress(-1, format!("livepatch does not fit this kernel; fetching the A/B fallback {file}"));
    let refused = |e: String| Event::VerifyFailed { error: format!("{why}; A/B fallback {file}: {e}") };
    let bundle = match b.fetcher.fetch_named(window, file, progress).await {
        Ok(r) => r,
        Err(e) => return refused(e.to_string()),
    };
    match b.verifier.verify(&bundle).await {
        Ok(v) if v.kind == PatchKind::Ab => {
            info!(window = %window.id, version = %v.version, "A/B fallback bundle verified");
            Event::Verified { bundle: v }
        }
        Ok(v) => refused(format!("is a {} bundle, not a RAUC bundle", v.kind)),
        Err(e) => refused(e.to_string()),
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
