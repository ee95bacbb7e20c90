//! Whole windows on the fake backends, on tokio's paused clock: hours of window run in milliseconds.

use std::path::{Path, PathBuf};

use otpatch_common::api::errors;
use otpatch_common::policy::{parse_sources, LoadOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::commands::Reply;
use super::*;
use crate::backend::fake::{FakeHealth, FakeScript, FakeWorld, WorldState};
use crate::backend::{Clock, TokioClock};

mod gateway_life;
mod operator;

const POLICY: &str = r#"
[gateway]
id = "gw-test"
compatible = "otpatch-demo"

[trust]
anchors = ["/etc/otpatch/trust/demo-ca.pem"]

[limits]
max_window = "2h"

[rollback]
observation = "10m"

[probe.boiler]
tcp = "127.0.0.1:5020"
address = 1
min = 10
max = 90
"#;

fn settings(extra: &str) -> Settings {
    let text = format!("{POLICY}\n{extra}");
    parse_sources(&[(PathBuf::from("test.toml"), text)], &LoadOptions::default()).expect("test policy is valid")
}

fn t0() -> Timestamp {
    "2026-12-01T00:00:00Z".parse().unwrap()
}

struct Running {
    handle: Handle,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

async fn start(root: &Path, world: &FakeWorld, clock: Arc<dyn Clock>, settings: Settings) -> Running {
    let loader_settings = settings.clone();
    let loader: PolicyLoader = Arc::new(move || Ok(loader_settings.clone()));
    let (orch, handle, rx) =
        Orchestrator::start(&Sysroot::new(root), settings, loader, world.backends(clock), Failpoints::default())
            .await
            .unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(orch.run(rx, async move {
        let _ = stop_rx.await;
    }));
    Running { handle, task, stop: Some(stop_tx) }
}

impl Running {
    async fn schedule(&self, start: &str, duration: &str) -> Result<String, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.handle
            .commands
            .send(Command::Schedule {
                start: start.into(),
                duration: duration.into(),
                timezone: "UTC".into(),
                auto_start: true,
                uid: 0,
                reply,
            })
            .await
            .unwrap();
        rx.await.unwrap()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.handle.commands.send(make(reply)).await.unwrap();
        rx.await.unwrap()
    }

    /// Waits (bounded, on the paused clock) for the window to complete; returns its outcome.
    async fn completed(&self, notices: &mut broadcast::Receiver<Notice>) -> String {
        let deadline = tokio::time::sleep(Duration::from_secs(6 * 3600));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                n = notices.recv() => {
                    if let Ok(Notice::WindowCompleted { outcome, .. }) = n {
                        return outcome;
                    }
                }
                _ = &mut deadline => panic!("window did not complete"),
            }
        }
    }

    async fn reached(&self, notices: &mut broadcast::Receiver<Notice>, state: &str) {
        let deadline = tokio::time::sleep(Duration::from_secs(6 * 3600));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                n = notices.recv() => {
                    if let Ok(Notice::Transition { to, .. }) = n {
                        if to == state {
                            return;
                        }
                    }
                }
                _ = &mut deadline => panic!("never reached {state}"),
            }
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap();
    }
}

/// Runs a window of `duration` until the engine reaches `state`, then kills the orchestrator without its shutdown
/// path (a crash). The fake world is kept in `world.json` under `root`.
async fn crash_at(root: &Path, clock: Arc<dyn Clock>, duration: &str, state: &str) -> FakeWorld {
    let world = FakeWorld::persistent(&root.join("world.json"), FakeScript::default());
    let r = start(root, &world, clock, settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", duration).await.unwrap();
    r.reached(&mut notices, state).await;
    r.task.abort();
    let _ = r.task.await;
    world
}

/// Starts a new orchestrator on what the crashed one left and returns the outcome of the window it recovers.
async fn restart_and_finish(root: &Path, clock: Arc<dyn Clock>) -> (String, WorldState) {
    let world = FakeWorld::persistent(&root.join("world.json"), FakeScript::default());
    let r = start(root, &world, clock, settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    let outcome = r.completed(&mut notices).await;
    r.stop().await;
    (outcome, world.snapshot())
}

/// A fresh gateway root and fake world with `script`, an orchestrator on them under `settings` (clock at
/// [`t0`]), and a subscription to its notices.
async fn fresh(
    script: FakeScript,
    settings: Settings,
) -> (tempfile::TempDir, FakeWorld, Running, broadcast::Receiver<Notice>) {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::in_memory(script);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let r = start(dir.path(), &world, clock, settings).await;
    let notices = r.handle.notices.subscribe();
    (dir, world, r, notices)
}

fn script(f: impl FnOnce(&mut FakeScript)) -> FakeScript {
    let mut s = FakeScript::default();
    f(&mut s);
    s
}

fn transitions(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("var/lib/otpatch/audit.log")).unwrap();
    let recs = otpatch_common::audit::parse_lines(text.lines()).unwrap();
    otpatch_common::audit::verify_chain(&recs, otpatch_common::audit::GENESIS).unwrap();
    recs.iter().filter(|r| r.kind == "transition").map(|r| r.detail["to"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn happy_path_commits_and_lifts() {
    let (dir, world, r, mut notices) = fresh(FakeScript::default(), settings("")).await;
    let id = r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    assert_eq!(id, "w-20261201-0010");
    assert_eq!(r.completed(&mut notices).await, "committed 1.0.1");
    let w = world.snapshot();
    assert_eq!(w.applied, vec!["1.0.1"]);
    assert_eq!(w.committed, vec!["1.0.1"]);
    assert!(!w.segmentation_active);
    assert!(w.checkpoints.is_empty(), "checkpoint images removed after commit");
    let order: Vec<&str> = w.calls.iter().map(|c| c.split_whitespace().next().unwrap()).collect();
    let pos = |name: &str| order.iter().position(|c| *c == name).unwrap_or_else(|| panic!("{name} not called"));
    assert!(pos("firewall.apply") < pos("fetch"));
    assert!(pos("verify") < pos("checkpoint.dump"));
    assert!(pos("checkpoint.dump") < pos("livepatch.apply"));
    assert!(pos("livepatch.apply") < pos("livepatch.commit"));
    // The plant is watched from the baseline through the apply; observation takes over, then it stops.
    assert!(pos("health.baseline") < pos("health.watch"));
    assert!(pos("health.watch") < pos("firewall.apply"));
    assert!(pos("health.watch") < pos("livepatch.apply"));
    assert!(!w.health_watch, "not watched after the window");
    assert_eq!(order.last(), Some(&"firewall.lift"));
    let committed = crate::committed::Committed::load(&dir.path().join("var/lib/otpatch/committed.json")).unwrap();
    assert_eq!(committed.version_for("otpatch-demo", crate::engine::PatchKind::Livepatch), Some("1.0.1"));
    assert_eq!(
        transitions(dir.path()),
        [
            "scheduled",
            "arming",
            "armed",
            "segmented",
            "fetched",
            "verified",
            "checkpointed",
            "applying",
            "observing",
            "committed",
            "closed"
        ]
    );
    // Committed work is not re-applied when the same window runs again.
    let again = r.call(|reply| Command::Apply { uid: 0, reply }).await.unwrap();
    assert_eq!(again, id);
    assert_eq!(r.completed(&mut notices).await, "up-to-date");
    assert_eq!(world.snapshot().counts["livepatch.apply"], 1);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn verify_failure_applies_nothing() {
    let (_dir, world, r, mut notices) = fresh(script(|s| s.fail = vec!["verify".into()]), settings("")).await;
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    let outcome = r.completed(&mut notices).await;
    assert!(outcome.starts_with("failed: bundle rejected: fake verify failure"), "{outcome}");
    let w = world.snapshot();
    assert!(w.applied.is_empty());
    assert!(!w.counts.contains_key("checkpoint.dump"));
    assert!(!w.segmentation_active);
    let status = r.handle.status.borrow().clone();
    assert!(status.last_error.contains("verify"), "{status:?}");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_failure_rolls_back_and_restores() {
    let (_dir, world, r, mut notices) = fresh(script(|s| s.health = FakeHealth::Fail), settings("")).await;
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    let outcome = r.completed(&mut notices).await;
    assert!(outcome.starts_with("rolled-back: health failed: critical probe"), "{outcome}");
    let w = world.snapshot();
    assert!(w.applied.is_empty(), "patch reverted");
    assert!(w.committed.is_empty());
    assert_eq!(w.restored, vec!["ckpt-w-20261201-0010"]);
    assert!(w.checkpoints.contains(&"ckpt-w-20261201-0010".to_string()), "images kept for diagnosis");
    // Watched again while the change comes out, then no more.
    let observe = w.calls.iter().position(|c| c == "health.observe").unwrap();
    let rewatch = w.calls.iter().rposition(|c| c == "health.watch").unwrap();
    let revert = w.calls.iter().position(|c| c.starts_with("livepatch.revert")).unwrap();
    assert!(observe < rewatch && rewatch < revert, "{:?}", w.calls);
    assert!(!w.health_watch);
    assert!(!w.segmentation_active);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deadline_during_observation_rolls_back_at_the_hard_end() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::in_memory(FakeScript::default());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    // The observation (10m) cannot finish inside a 5-minute window.
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", "5m").await.unwrap();
    let outcome = r.completed(&mut notices).await;
    assert_eq!(outcome, "rolled-back: window ended before the change was committed");
    let end: Timestamp = "2026-12-01T00:15:00Z".parse().unwrap();
    let now = clock.now();
    assert!(now >= end && now < end + jiff::SignedDuration::from_secs(5), "rolled back at the hard end, not at {now}");
    assert!(world.snapshot().applied.is_empty());
    assert!(!world.snapshot().segmentation_active);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn crash_while_observing_rolls_back_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let world = crash_at(dir.path(), clock.clone(), "90m", "observing").await;
    assert_eq!(world.snapshot().applied, vec!["1.0.1"]);
    assert!(world.snapshot().segmentation_active);
    let (outcome, w) = restart_and_finish(dir.path(), clock).await;
    assert_eq!(outcome, "rolled-back: daemon restarted while the change was in place");
    assert!(w.applied.is_empty());
    assert!(w.committed.is_empty());
    assert!(!w.segmentation_active);
    assert_eq!(w.restored, vec!["ckpt-w-20261201-0010"]);
}

#[tokio::test(start_paused = true)]
async fn crash_before_apply_resumes_the_open_window() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    crash_at(dir.path(), clock.clone(), "90m", "fetched").await;
    let (outcome, w) = restart_and_finish(dir.path(), clock).await;
    assert_eq!(outcome, "committed 1.0.1");
    assert_eq!(w.counts["firewall.apply"], 2, "segmentation re-applied on restart");
    assert_eq!(w.counts["livepatch.apply"], 1);
    assert!(!w.segmentation_active);
}

#[tokio::test(start_paused = true)]
async fn restart_after_the_window_ended_lifts_and_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let world = crash_at(dir.path(), clock.clone(), "30m", "segmented").await;
    assert!(world.snapshot().segmentation_active);
    // The daemon stays down past the window's end.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let (outcome, w) = restart_and_finish(dir.path(), clock).await;
    assert_eq!(outcome, "failed: window ended before the change was committed");
    assert!(!w.segmentation_active);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lifts_segmentation() {
    let (_dir, world, r, mut notices) = fresh(FakeScript::default(), settings("")).await;
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    r.reached(&mut notices, "observing").await;
    assert!(world.snapshot().segmentation_active);
    r.stop().await;
    assert!(!world.snapshot().segmentation_active);
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_is_pinged_by_the_loop_and_only_while_it_turns() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::in_memory(FakeScript::default());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let loader: PolicyLoader = Arc::new(|| Ok(settings("")));
    let root = Sysroot::new(dir.path());
    let (orch, _handle, commands) =
        Orchestrator::start(&root, settings(""), loader, world.backends(clock), Failpoints::default()).await.unwrap();
    let pings = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let p = pings.clone();
    let orch = orch.with_watchdog(
        Duration::from_secs(2),
        Arc::new(move || {
            p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }),
    );
    let run = orch.run(commands, std::future::pending());
    tokio::pin!(run);
    // The loop turns for 10 s: about one ping a second.
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut run).await;
    let turning = pings.load(std::sync::atomic::Ordering::SeqCst);
    assert!((8..=12).contains(&turning), "{turning} pings in 10 s with a 2 s watchdog");
    // The loop is wedged (nobody polls it) for 10 s: no ping at all, so systemd would restart the daemon.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pings.load(std::sync::atomic::Ordering::SeqCst), turning);
}

/// A journal write that fails (ENOSPC, a read-only remount) stops the window before the driving action of the
/// state it could not record: before the checkpoint the window fails, from it on it rolls back.
#[cfg(feature = "failpoints")]
#[tokio::test(start_paused = true)]
async fn a_failed_journal_write_stops_the_window_before_its_next_driving_action() {
    // (state whose journal write fails, the call that must not happen, how the window ends)
    let cases = [
        ("armed", "firewall.apply", "failed: journal"),
        ("segmented", "fetch", "failed: journal"),
        ("fetched", "verify", "failed: journal"),
        ("verified", "checkpoint.dump", "failed: journal"),
        ("checkpointed", "livepatch.apply", "rolled-back: journal"),
        ("observing", "health.observe", "rolled-back: journal"),
        ("committed", "livepatch.commit", "rolled-back: journal"),
    ];
    for (state, never, outcome) in cases {
        let dir = tempfile::tempdir().unwrap();
        let world = FakeWorld::in_memory(FakeScript::default());
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
        let loader: PolicyLoader = Arc::new(|| Ok(settings("")));
        let failpoints = Failpoints::parse(&format!("journal-write:{state}=error")).unwrap();
        let (orch, handle, rx) =
            Orchestrator::start(&Sysroot::new(dir.path()), settings(""), loader, world.backends(clock), failpoints)
                .await
                .unwrap();
        let task = tokio::spawn(orch.run(rx, std::future::pending()));
        let r = Running { handle, task, stop: None };
        let mut notices = r.handle.notices.subscribe();
        r.schedule("2026-12-01T00:10", "90m").await.unwrap();
        let got = r.completed(&mut notices).await;
        assert!(got.starts_with(outcome), "{state}: {got}");
        let w = world.snapshot();
        assert!(!w.calls.iter().any(|c| c.starts_with(never)), "{state}: {never} ran: {:?}", w.calls);
        assert!(!w.segmentation_active, "{state}: lifted");
        assert!(w.committed.is_empty() && w.applied.is_empty(), "{state}: nothing kept: {w:?}");
        r.task.abort();
    }
}
