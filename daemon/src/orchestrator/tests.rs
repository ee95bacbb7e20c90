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
                    if let Ok(Notice::Completed { outcome, .. }) = n {
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
    assert_eq!(committed.version_for("otpatch-demo"), Some("1.0.1"));
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
async fn operator_commands_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::in_memory(FakeScript::default());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let r = start(dir.path(), &world, clock, settings("")).await;
    // Nothing open: apply and rollback are refused with the reason.
    let e = r.call(|reply| Command::Apply { uid: 0, reply }).await.unwrap_err();
    assert_eq!(e.name, errors::INVALID_STATE);
    assert!(e.message.contains("no window is open"), "{e}");
    let e = r.call(|reply| Command::Rollback { uid: 0, reply }).await.unwrap_err();
    assert_eq!(e.name, errors::INVALID_STATE);
    // Bad input is named.
    let e = r.schedule("2026-12-01T00:10", "ninety").await.unwrap_err();
    assert_eq!(e.name, errors::INVALID_ARGS);
    let e = r.schedule("2026-11-30T00:10", "90m").await.unwrap_err();
    assert_eq!(e.name, errors::WINDOW_REFUSED);
    let e = r.schedule("2026-12-01T00:10", "3h").await.unwrap_err();
    assert_eq!(e.name, errors::WINDOW_REFUSED);
    let id = r.schedule("2026-12-02T00:10", "60m").await.unwrap();
    let e = r.schedule("2026-12-02T00:30", "60m").await.unwrap_err();
    assert_eq!(e.name, errors::WINDOW_REFUSED);
    assert!(e.message.contains(&id), "overlap names the other window: {e}");
    let list = r.call(|reply| Command::List { horizon: Duration::from_secs(7 * 86400), reply }).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].status, "scheduled");
    r.call(|reply| Command::Cancel { id: id.clone(), uid: 0, reply }).await.unwrap();
    let e = r.call(|reply| Command::Cancel { id: id.clone(), uid: 0, reply }).await.unwrap_err();
    assert_eq!(e.name, errors::NOT_FOUND);
    let list = r.call(|reply| Command::List { horizon: Duration::from_secs(7 * 86400), reply }).await.unwrap();
    assert!(list.is_empty());
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn scheduled_windows_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::in_memory(FakeScript::default());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    let id = r.schedule("2026-12-03T00:10", "60m").await.unwrap();
    r.stop().await;
    let r = start(dir.path(), &world, clock, settings("")).await;
    let list = r.call(|reply| Command::List { horizon: Duration::from_secs(7 * 86400), reply }).await.unwrap();
    assert_eq!(list.iter().map(|w| w.id.clone()).collect::<Vec<_>>(), vec![id]);
    assert_eq!(r.handle.status.borrow().state, "scheduled");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_mid_window_rolls_back_an_applied_change() {
    let (_dir, world, r, mut notices) = fresh(FakeScript::default(), settings("")).await;
    let id = r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    r.reached(&mut notices, "observing").await;
    r.call(|reply| Command::Cancel { id, uid: 1000, reply }).await.unwrap();
    assert_eq!(r.completed(&mut notices).await, "rolled-back: cancelled by uid 1000");
    assert!(world.snapshot().applied.is_empty());
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn recurring_window_from_the_policy_runs_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::in_memory(FakeScript::default());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    // 2026-12-01 is a Tuesday.
    let policy =
        settings("[window.nightly]\ndays = [\"tue\"]\nstart = \"01:00\"\nduration = \"1h\"\ntimezone = \"UTC\"\n");
    let r = start(dir.path(), &world, clock.clone(), policy).await;
    let mut notices = r.handle.notices.subscribe();
    assert_eq!(r.completed(&mut notices).await, "committed 1.0.1");
    let status = r.handle.status.borrow().clone();
    assert_eq!(status.last_outcome, "committed 1.0.1");
    assert!(clock.now() >= "2026-12-01T01:00:00Z".parse::<Timestamp>().unwrap());
    assert!(transitions(dir.path()).contains(&"committed".to_string()));
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reload_rebuilds_the_backends_between_windows_never_during_one() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::in_memory(FakeScript::default());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let policy = Arc::new(std::sync::Mutex::new(settings("")));
    let p2 = policy.clone();
    let loader: PolicyLoader = Arc::new(move || Ok(p2.lock().unwrap().clone()));
    let built = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let (b2, w2, c2) = (built.clone(), world.clone(), clock.clone());
    let factory: BackendFactory = Arc::new(move |s: Settings| {
        b2.lock().unwrap().push(s.rollback.observation);
        let backends = w2.backends(c2.clone());
        Box::pin(async move { Ok(backends) })
    });
    let (orch, handle, rx) = Orchestrator::start(
        &Sysroot::new(dir.path()),
        settings(""),
        loader,
        world.backends(clock),
        Failpoints::default(),
    )
    .await
    .unwrap();
    let orch = orch.with_rebuild(factory);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(orch.run(rx, async move {
        let _ = stop_rx.await;
    }));
    let r = Running { handle, task, stop: Some(stop_tx) };

    // Between windows: rebuilt at once, from the new policy.
    *policy.lock().unwrap() = settings("").clone_with_observation(Duration::from_secs(60));
    r.call(|reply| Command::Reload { uid: Some(0), reply }).await.unwrap();
    assert_eq!(*built.lock().unwrap(), vec![Duration::from_secs(60)]);

    // During a window: the window keeps its backends; they are rebuilt once it has closed.
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    r.reached(&mut notices, "observing").await;
    *policy.lock().unwrap() = settings("").clone_with_observation(Duration::from_secs(120));
    r.call(|reply| Command::Reload { uid: Some(0), reply }).await.unwrap();
    assert_eq!(built.lock().unwrap().len(), 1, "not rebuilt during the window");
    r.completed(&mut notices).await;
    // The next turn of the loop rebuilds; a status call is served after it.
    r.call(|reply| Command::Status { reply }).await.unwrap();
    assert_eq!(*built.lock().unwrap(), vec![Duration::from_secs(60), Duration::from_secs(120)]);
    r.stop().await;
}

trait WithObservation {
    fn clone_with_observation(self, d: Duration) -> Settings;
}

impl WithObservation for Settings {
    fn clone_with_observation(mut self, d: Duration) -> Settings {
        self.rollback.observation = d;
        self
    }
}

#[tokio::test(start_paused = true)]
async fn a_committed_livepatch_is_reapplied_after_a_reboot_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let world_file = dir.path().join("world.json");
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let world = FakeWorld::persistent(&world_file, FakeScript::default());
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    assert_eq!(r.completed(&mut notices).await, "committed 1.0.1");
    r.stop().await;

    // A daemon restart: the patch is still in the kernel, nothing is applied again.
    let world = FakeWorld::persistent(&world_file, FakeScript::default());
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    assert_eq!(world.snapshot().counts["livepatch.apply"], 1);
    r.stop().await;

    // A reboot: the kernel forgot the patch; the daemon puts the committed one back before it serves.
    let mut state: WorldState = serde_json::from_slice(&std::fs::read(&world_file).unwrap()).unwrap();
    state.applied.clear();
    std::fs::write(&world_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let world = FakeWorld::persistent(&world_file, FakeScript::default());
    let r = start(dir.path(), &world, clock, settings("")).await;
    let w = world.snapshot();
    assert_eq!(w.counts["livepatch.apply"], 2);
    assert_eq!(w.applied, vec!["1.0.1"]);
    let audit = std::fs::read_to_string(dir.path().join("var/lib/otpatch/audit.log")).unwrap();
    assert!(audit.contains(r#""kind":"boot-reapply""#), "{audit}");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_livepatch_for_another_kernel_falls_back_to_the_policys_ab_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let world = FakeWorld::in_memory(script(|s| s.kernel_mismatch = true));
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let policy = settings("[ab]\nfallback_bundle = \"gateway-os-2.1.raucb\"\n");
    let r = start(dir.path(), &world, clock, policy).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    // No reboot allowed by the policy: the RAUC bundle is installed and waits for one.
    assert_eq!(r.completed(&mut notices).await, "installed 1.0.1 into slot B, reboot pending");
    let w = world.snapshot();
    let calls: Vec<&str> = w.calls.iter().map(String::as_str).collect();
    assert!(calls.contains(&"fetch-named w-20261201-0010 gateway-os-2.1.raucb"), "{calls:?}");
    assert!(calls.contains(&"ab.apply 1.0.1"), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("livepatch.apply")), "{calls:?}");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_fallback_a_livepatch_for_another_kernel_is_refused() {
    let (_dir, world, r, mut notices) = fresh(script(|s| s.kernel_mismatch = true), settings("")).await;
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    let outcome = r.completed(&mut notices).await;
    assert!(outcome.starts_with("failed: bundle rejected: does not fit the running kernel"), "{outcome}");
    let w = world.snapshot();
    assert!(
        !w.calls.iter().any(|c| ["fetch-named", "livepatch.apply", "ab.apply"].iter().any(|p| c.starts_with(p))),
        "{:?}",
        w.calls
    );
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rolling_back_v2_puts_the_committed_v1_back() {
    let dir = tempfile::tempdir().unwrap();
    let world_file = dir.path().join("world.json");
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let world = FakeWorld::persistent(&world_file, FakeScript::default());
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    assert_eq!(r.completed(&mut notices).await, "committed 1.0.1");
    r.stop().await;

    // The next window brings 1.0.2, and the plant's health fails with it.
    let v2 = script(|s| {
        s.version = "1.0.2".into();
        s.health = FakeHealth::Fail;
    });
    let world = FakeWorld::persistent(&world_file, v2);
    let r = start(dir.path(), &world, clock, settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T02:10", "90m").await.unwrap();
    let outcome = r.completed(&mut notices).await;
    assert!(outcome.starts_with("rolled-back"), "{outcome}");
    let w = world.snapshot();
    assert_eq!(w.applied, vec!["1.0.1"], "the committed fix is in place again: {:?}", w.calls);
    let revert = w.calls.iter().position(|c| c == "livepatch.revert 1.0.2").unwrap();
    let restore = w.calls.iter().position(|c| c == "livepatch.restore 1.0.1").unwrap();
    assert!(revert < restore, "{:?}", w.calls);
    let committed = crate::committed::Committed::load(&dir.path().join("var/lib/otpatch/committed.json")).unwrap();
    assert_eq!(committed.version_for("otpatch-demo"), Some("1.0.1"));
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_committed_fix_that_cannot_be_put_back_is_shown_as_not_carried() {
    let dir = tempfile::tempdir().unwrap();
    let world_file = dir.path().join("world.json");
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let world = FakeWorld::persistent(&world_file, FakeScript::default());
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    assert_eq!(r.completed(&mut notices).await, "committed 1.0.1");
    assert!(r.handle.status.borrow().committed_not_in_place.is_empty());
    r.stop().await;

    // A reboot into a kernel the committed module does not fit: the load is refused.
    let mut state: WorldState = serde_json::from_slice(&std::fs::read(&world_file).unwrap()).unwrap();
    state.applied.clear();
    std::fs::write(&world_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let world = FakeWorld::persistent(&world_file, script(|s| s.fail = vec!["apply".into()]));
    let r = start(dir.path(), &world, clock, settings("")).await;
    let status = r.handle.status.borrow().clone();
    assert_eq!(status.committed_not_in_place.len(), 1, "{status:?}");
    assert!(status.committed_not_in_place[0].starts_with("1.0.1 (otpatch-demo): "), "{status:?}");
    let audit = std::fs::read_to_string(dir.path().join("var/lib/otpatch/audit.log")).unwrap();
    assert!(audit.contains(r#""kind":"boot-reapply-failed""#), "{audit}");
    r.stop().await;
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

#[tokio::test(start_paused = true)]
async fn a_rolled_back_version_is_not_installed_again_until_an_operator_retries_it() {
    let dir = tempfile::tempdir().unwrap();
    let world_file = dir.path().join("world.json");
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    // 1.0.2 goes in and the plant's health fails with it.
    let bad = script(|s| {
        s.version = "1.0.2".into();
        s.health = FakeHealth::Fail;
    });
    let world = FakeWorld::persistent(&world_file, bad);
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    let first = r.completed(&mut notices).await;
    assert!(first.starts_with("rolled-back: health failed"), "{first}");
    r.stop().await;

    // The next window is offered the same 1.0.2 (the plant would be healthy now): it is not applied.
    let same = script(|s| s.version = "1.0.2".into());
    let world = FakeWorld::persistent(&world_file, same.clone());
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T02:10", "90m").await.unwrap();
    let second = r.completed(&mut notices).await;
    assert!(second.starts_with("up-to-date: 1.0.2 was rolled back on 2026-12-01"), "{second}");
    assert!(second.contains("health failed") && second.contains("otpatchctl retry 1.0.2"), "{second}");
    let w = world.snapshot();
    assert_eq!(w.counts.get("livepatch.apply"), Some(&1), "1.0.2 applied only once: {:?}", w.calls);
    assert!(w.committed.is_empty());
    let status = r.handle.status.borrow().clone();
    assert_eq!(status.rolled_back.len(), 1, "{status:?}");
    assert_eq!(status.rolled_back[0].version, "1.0.2");
    assert_eq!(status.rolled_back[0].compatible, "otpatch-demo");
    assert_eq!(status.rolled_back[0].digest, crate::backend::fake::fake_digest("1.0.2"));
    assert!(status.rolled_back[0].why.starts_with("health failed"), "{status:?}");
    let record = std::fs::read_to_string(dir.path().join("var/lib/otpatch/rolled-back.json")).unwrap();
    assert!(record.contains("1.0.2"), "{record}");

    // An operator allows it again; the next window installs it.
    let e = r.call(|reply| Command::Retry { version: "9.9".into(), uid: 1000, reply }).await.unwrap_err();
    assert_eq!(e.name, errors::NOT_FOUND, "{e}");
    assert!(e.message.contains("1.0.2"), "names what was rolled back: {e}");
    r.call(|reply| Command::Retry { version: "1.0.2".into(), uid: 1000, reply }).await.unwrap();
    assert!(r.handle.status.borrow().rolled_back.is_empty());
    let audit = std::fs::read_to_string(dir.path().join("var/lib/otpatch/audit.log")).unwrap();
    let retry = audit.lines().find(|l| l.contains(r#""action":"retry""#)).expect("retry audited");
    assert!(retry.contains(r#""actor_uid":1000"#), "{retry}");
    assert!(retry.contains(&crate::backend::fake::fake_digest("1.0.2")), "{retry}");
    r.schedule("2026-12-01T04:10", "90m").await.unwrap();
    assert_eq!(r.completed(&mut notices).await, "committed 1.0.2");
    assert_eq!(world.snapshot().committed, vec!["1.0.2"]);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_rolled_back_record_fails_the_fetch_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var/lib/otpatch");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("rolled-back.json"), b"{ torn").unwrap();
    let world = FakeWorld::in_memory(FakeScript::default());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let r = start(dir.path(), &world, clock, settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    let outcome = r.completed(&mut notices).await;
    assert!(outcome.starts_with("failed: download failed: ") && outcome.contains("refusing to guess"), "{outcome}");
    assert!(world.snapshot().applied.is_empty());
    r.stop().await;
}

/// Puts what a window of `version` leaves on the gateway: its bundle in `bundles/` and its extracted module in
/// `livepatch/` (named as the verifier names it), plus leftovers of a cut download. Returns the bundle's path.
fn leave_bundle_files(state: &Path, version: &str) -> (PathBuf, PathBuf) {
    let bundle = state.join(format!("bundles/fake-{version}.otb"));
    let digest = crate::backend::fake::fake_digest(version);
    let module = state.join(format!("livepatch/{}-fix-{}.ko", &digest[..16], version.replace('.', "_")));
    for (p, text) in [(&bundle, "bundle"), (&module, "module")] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{text} {version}")).unwrap();
    }
    std::fs::create_dir_all(state.join("downloads")).unwrap();
    std::fs::write(state.join(format!("downloads/other-{version}.raucb.part")), b"cut").unwrap();
    (bundle, module)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn bundles_and_modules_are_pruned_to_the_committed_one_at_the_end_of_each_window() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var/lib/otpatch");
    let world_file = dir.path().join("world.json");
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let mut kept = (PathBuf::new(), PathBuf::new());
    for (i, v) in ["1.0.1", "1.0.2", "1.0.3"].into_iter().enumerate() {
        let (bundle, module) = leave_bundle_files(&state, v);
        let s = script(|s| {
            s.version = v.into();
            s.bundle = Some(bundle.clone());
        });
        let world = FakeWorld::persistent(&world_file, s);
        let r = start(dir.path(), &world, clock.clone(), settings("")).await;
        let mut notices = r.handle.notices.subscribe();
        r.schedule(&format!("2026-12-01T0{}:10", 2 * i), "90m").await.unwrap();
        assert_eq!(r.completed(&mut notices).await, format!("committed {v}"));
        r.stop().await;
        kept = (bundle, module);
    }
    let (bundle, module) = kept;
    assert_eq!(names(&state.join("bundles")), vec![bundle.file_name().unwrap().to_string_lossy().into_owned()]);
    assert_eq!(names(&state.join("livepatch")), vec![module.file_name().unwrap().to_string_lossy().into_owned()]);
    assert!(names(&state.join("downloads")).is_empty(), "{:?}", names(&state.join("downloads")));

    // 1.0.4 fails the plant and is rolled back: never pruned during the window, and the committed 1.0.3 (which a
    // reboot re-applies from its bundle) stays; 1.0.4's files go.
    let (bad, bad_module) = leave_bundle_files(&state, "1.0.4");
    let s = script(|s| {
        s.version = "1.0.4".into();
        s.bundle = Some(bad.clone());
        s.health = FakeHealth::Fail;
    });
    let world = FakeWorld::persistent(&world_file, s);
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T08:10", "90m").await.unwrap();
    r.reached(&mut notices, "observing").await;
    assert!(bad.exists() && bad_module.exists() && bundle.exists(), "nothing pruned during the window");
    assert!(!names(&state.join("downloads")).is_empty());
    let outcome = r.completed(&mut notices).await;
    assert!(outcome.starts_with("rolled-back"), "{outcome}");
    r.stop().await;
    assert!(bundle.exists() && module.exists(), "the committed bundle and module are kept");
    assert!(!bad.exists() && !bad_module.exists());
    let committed = crate::committed::Committed::load(&state.join("committed.json")).unwrap();
    assert_eq!(committed.bundles["otpatch-demo"].path, bundle);
    let audit = std::fs::read_to_string(state.join("audit.log")).unwrap();
    assert!(audit.contains(r#""kind":"state-pruned""#), "{audit}");
}

#[tokio::test(start_paused = true)]
async fn nothing_is_pruned_when_committed_json_cannot_be_read() {
    let (dir, _world, r, mut notices) = fresh(script(|s| s.nothing_to_fetch = true), settings("")).await;
    let state = dir.path().join("var/lib/otpatch");
    let (bundle, module) = leave_bundle_files(&state, "1.0.1");
    std::fs::write(state.join("committed.json"), b"{ torn").unwrap();
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    assert_eq!(r.completed(&mut notices).await, "up-to-date");
    assert!(bundle.exists() && module.exists(), "what is committed is unknown: nothing deleted");
    r.stop().await;
}
