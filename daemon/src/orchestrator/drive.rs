//! One function per driving action: each runs it through the backends and returns the event that moves the engine
//! on. They take the backends and plain arguments, never the orchestrator, so each can be run against the fakes
//! alone; the orchestrator ([`super::actions`]) gathers the arguments from its settings and state.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use crate::backend::{
    Applied, BackendError, Backends, FetchOutcome, LiftReport, ProgressFn, SegmentationPlan, Verdict,
};
use crate::engine::{BundleRef, CheckpointRef, Event, PatchKind, VerifiedBundle, WindowCtx};
use crate::rolled_back::RolledBack;

/// `Preflight`: the firewall backend, the checkpointer and the health baseline.
pub async fn preflight(b: &Backends) -> Event {
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
}

/// `Segment`: puts `plan` up, with the patch server's addresses (`server`: host, port, pinned addresses) resolved
/// once for the window and recorded under `state_dir`. Nothing is done when segmentation is not `enabled`.
pub async fn segment(
    b: &Backends,
    mut plan: SegmentationPlan,
    enabled: bool,
    server: Option<(String, u16, Vec<IpAddr>)>,
    state_dir: &Path,
) -> Event {
    if !enabled {
        return Event::SegmentationApplied;
    }
    // Resolved once, before the rules go up, and recorded: the rules and the fetcher use exactly
    // these, and a restart in this window uses them again.
    if let Some((host, port, pinned)) = server {
        match crate::firewall::ServerAddresses::for_window(state_dir, &plan.window_id, &host, port, &pinned).await {
            Ok(addrs) => plan.server_addrs = addrs,
            Err(e) => return Event::SegmentationFailed { error: e.to_string() },
        }
    }
    match b.firewall.apply(&plan).await {
        Ok(()) => Event::SegmentationApplied,
        Err(e) => Event::SegmentationFailed { error: e.to_string() },
    }
}

/// `Fetch`: the newest bundle, leaving out the versions in `avoid` (rolled back here; an error when that record
/// cannot be read). With the event, the note for the window's outcome when the newest bundle was left out.
pub async fn fetch(
    b: &Backends,
    window: &WindowCtx,
    avoid: Result<RolledBack, String>,
    progress: ProgressFn,
) -> (Event, Option<String>) {
    let avoid = match avoid {
        Ok(a) => a,
        Err(e) => return (Event::FetchFailed { error: e }, None),
    };
    match b.fetcher.fetch(window, &avoid, progress).await {
        Ok(FetchOutcome::Bundle(bundle)) => (Event::Fetched { bundle }, None),
        Ok(FetchOutcome::NothingNewer) => (Event::NothingToFetch, None),
        Ok(FetchOutcome::RolledBack(r)) => {
            info!(window = %window.id, version = %r.version, "newest bundle was rolled back here; not installed again");
            (Event::NothingToFetch, Some(r.skip_note()))
        }
        Err(e) => (Event::FetchFailed { error: e.to_string() }, None),
    }
}

/// `Verify`: the downloaded bundle; a livepatch for another kernel is replaced by the policy's A/B `fallback`
/// bundle when there is one (and a window to fetch it in).
pub async fn verify(
    b: &Backends,
    bundle: &BundleRef,
    window: Option<&WindowCtx>,
    fallback: Option<&str>,
    progress: ProgressFn,
) -> Event {
    match b.verifier.verify(bundle).await {
        Ok(v) => Event::Verified { bundle: v },
        Err(e) => match (e.is_kernel_mismatch(), fallback, window) {
            (true, Some(file), Some(window)) => ab_fallback(b, window, file, e, progress).await,
            _ => Event::VerifyFailed { error: e.to_string() },
        },
    }
}

/// A livepatch that does not fit the running kernel, with `[ab] fallback_bundle` set: that RAUC bundle, from the
/// signed index, verified like any other, takes its place in the window.
async fn ab_fallback(b: &Backends, window: &WindowCtx, file: &str, why: BackendError, progress: ProgressFn) -> Event {
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

/// `Checkpoint`: dumps the critical processes.
pub async fn checkpoint(b: &Backends, window: &WindowCtx) -> Event {
    match b.checkpointer.checkpoint(window).await {
        Ok(checkpoint) => Event::CheckpointTaken { checkpoint },
        Err(e) => Event::CheckpointFailed { error: e.to_string() },
    }
}

/// `Apply`: through the bundle's patcher; an A/B install says which slot it went into and in which boot.
pub async fn apply(b: &Backends, window: &WindowCtx, bundle: &VerifiedBundle, progress: ProgressFn) -> Event {
    match b.patcher(bundle.kind).apply(&window.id, bundle, progress).await {
        Ok(Applied::InPlace) => Event::Applied,
        Ok(Applied::Installed { slot }) => match b.rebooter.boot_id() {
            Ok(boot_id) => Event::Installed { slot, boot_id },
            // Without the boot id a reboot could not be told from a restart: do not reboot.
            Err(e) => Event::ApplyFailed { error: format!("installed into {slot}, but {e}") },
        },
        Err(e) => Event::ApplyFailed { error: e.to_string() },
    }
}

/// `Reboot`: asks for the reboot into `slot` for window `window`; returns only when it did not happen in `limit`.
pub async fn reboot(b: &Backends, window: &str, slot: &str, limit: Duration, progress: ProgressFn) -> Event {
    progress(-1, format!("rebooting into slot {slot}"));
    let why = format!("otpatch window {window}: boot slot {slot}");
    Event::RebootFailed { error: b.rebooter.reboot_and_wait(&why, limit).await.to_string() }
}

/// `ConfirmBoot`: which slot runs, in which boot (the reboot into `slot` was asked for in boot `boot_id`), and
/// the version of the image that runs (`running`, os-release's; empty when unknown).
pub async fn confirm_boot(b: &Backends, slot: &str, boot_id: &str, running: Option<String>) -> Event {
    let now = match b.rebooter.boot_id() {
        Ok(id) => id,
        Err(e) => return Event::RebootFailed { error: format!("cannot tell this boot from the last: {e}") },
    };
    match b.ab_updater.booted_slot().await {
        Ok(booted) => {
            let running = running.unwrap_or_default();
            info!(expected = %slot, booted = %booted, image = %running, new_boot = now != boot_id, "boot after the update's reboot");
            Event::Booted { slot: booted, boot_id: now, running }
        }
        Err(e) => Event::RebootFailed { error: format!("cannot tell which slot booted: {e}") },
    }
}

/// `Observe`: the plant's health for `period`.
pub async fn observe(b: &Backends, period: Duration, progress: ProgressFn) -> Event {
    progress(-1, format!("observing plant health for {}", otpatch_common::units::format_duration(period)));
    match b.health.observe(period).await {
        Verdict::Healthy => Event::Healthy,
        Verdict::Degraded(reason) => Event::Degraded { reason },
        Verdict::Failed(reason) => Event::HealthFailed { reason },
    }
}

/// `Rollback`: reverts `bundle`, putting back `restore` (the change committed before it; an error when that is
/// unknown), then restores the checkpoint.
pub async fn rollback(
    b: &Backends,
    bundle: &VerifiedBundle,
    checkpoint: &CheckpointRef,
    restore: Result<Option<VerifiedBundle>, String>,
    progress: ProgressFn,
) -> Event {
    let patcher = b.patcher(bundle.kind);
    progress(-1, format!("rolling back {}", bundle.version));
    let restore_ref = restore.as_ref().ok().and_then(Option::as_ref);
    if let Err(e) = patcher.revert(bundle, restore_ref).await {
        return Event::RollbackFailed { error: format!("revert {}: {e}", bundle.version) };
    }
    if let Err(e) = restore {
        // Reverted, but what was committed before is unknown: the gateway may be less patched.
        return Event::RollbackFailed { error: format!("revert {}: {e}", bundle.version) };
    }
    if let Err(e) = b.checkpointer.restore(checkpoint).await {
        return Event::RollbackFailed { error: format!("restore {}: {e}", checkpoint.id) };
    }
    Event::RolledBack
}

/// `Lift`: after `delay` (retries are paced), lifts segmentation; with the event, what the lift found.
pub async fn lift(b: &Backends, delay: Duration) -> (Event, Option<LiftReport>) {
    tokio::time::sleep(delay).await;
    match b.firewall.lift().await {
        Ok(r) => (Event::Lifted, Some(r)),
        Err(e) => (Event::LiftFailed { error: e.to_string() }, None),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::fake::{FakeScript, FakeWorld};
    use crate::backend::SystemClock;

    fn world() -> (FakeWorld, Backends) {
        let world = FakeWorld::in_memory(FakeScript::default());
        let b = world.backends(Arc::new(SystemClock));
        (world, b)
    }

    fn quiet() -> ProgressFn {
        Arc::new(|_, _| {})
    }

    fn window() -> WindowCtx {
        let start: jiff::Timestamp = "2026-12-01T00:10:00Z".parse().unwrap();
        WindowCtx { id: "w1".into(), start, end: start + jiff::SignedDuration::from_hours(1), auto_start: true }
    }

    fn bundle(kind: PatchKind) -> VerifiedBundle {
        VerifiedBundle {
            path: "/var/lib/otpatch/bundles/b.otb".into(),
            kind,
            compatible: "otpatch-demo".into(),
            version: "1.0.1".into(),
            digest: "d".into(),
            signer: "CN=s".into(),
            verified_at: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn apply_goes_to_the_bundles_patcher_and_an_install_names_its_slot_and_boot() {
        let (world, b) = world();
        assert_eq!(apply(&b, &window(), &bundle(PatchKind::Livepatch), quiet()).await, Event::Applied);
        assert_eq!(
            apply(&b, &window(), &bundle(PatchKind::Ab), quiet()).await,
            Event::Installed { slot: "B".into(), boot_id: "boot-1".into() }
        );
        assert_eq!(world.snapshot().calls, vec!["livepatch.apply 1.0.1", "ab.apply 1.0.1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rollback_that_cannot_tell_what_was_committed_before_reverts_and_fails() {
        let (world, b) = world();
        let checkpoint = CheckpointRef { id: "ckpt-w1".into(), processes: vec![] };
        let unknown = Err("committed.json: unreadable".to_string());
        let ev = rollback(&b, &bundle(PatchKind::Livepatch), &checkpoint, unknown, quiet()).await;
        assert_eq!(ev, Event::RollbackFailed { error: "revert 1.0.1: committed.json: unreadable".into() });
        assert_eq!(world.snapshot().calls, vec!["livepatch.revert 1.0.1"]);
        let ev = rollback(&b, &bundle(PatchKind::Livepatch), &checkpoint, Ok(None), quiet()).await;
        assert_eq!(ev, Event::RolledBack);
        assert_eq!(world.snapshot().restored, vec!["ckpt-w1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn segment_then_lift_hands_back_what_the_lift_found() {
        let (world, b) = world();
        let dir = tempfile::tempdir().unwrap();
        let plan = SegmentationPlan {
            window_id: "w1".into(),
            server: None,
            server_addrs: vec![],
            flows: vec![],
            probe_targets: vec![],
            log_drops: false,
        };
        assert_eq!(segment(&b, plan.clone(), false, None, dir.path()).await, Event::SegmentationApplied);
        assert!(world.snapshot().calls.is_empty(), "segmentation disabled: nothing applied");
        assert_eq!(segment(&b, plan, true, None, dir.path()).await, Event::SegmentationApplied);
        let (ev, report) = lift(&b, Duration::ZERO).await;
        assert_eq!(ev, Event::Lifted);
        assert_eq!(report, Some(LiftReport { was_active: true, dropped_packets: 42 }));
        assert!(!world.snapshot().segmentation_active);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_rolled_back_record_fails_the_fetch_before_the_server_is_asked() {
        let (world, b) = world();
        let (ev, note) = fetch(&b, &window(), Err("rolled-back.json: unreadable".into()), quiet()).await;
        assert_eq!(ev, Event::FetchFailed { error: "rolled-back.json: unreadable".into() });
        assert_eq!(note, None);
        assert!(world.snapshot().calls.is_empty());
    }
}
