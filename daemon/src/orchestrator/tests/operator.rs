//! Operator commands, schedules that outlive a restart, and reloads.

use super::*;

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
