//! A gateway's life across windows: committed livepatches put back after a reboot, the A/B fallback, rolling v2
//! back to the committed v1, versions rolled back here, and the state directory pruned to what is committed.

use super::*;
use otpatch_common::api::OutcomeKind;

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

/// An A/B update staged in B, observed healthy after the reboot, whose commit fails (in the field: the power went
/// before the slot was marked good and the bootloader fell back): rolled back, never recorded as committed.
#[tokio::test(start_paused = true)]
async fn an_ab_update_whose_commit_fails_is_rolled_back_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let world_file = dir.path().join("world.json");
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let ab = |fail: bool| {
        script(|s| {
            s.kind = crate::engine::PatchKind::Ab;
            s.version = "2.0.0".into();
            if fail {
                s.fail.push("commit".into());
            }
        })
    };
    let policy = || settings("[ab]\nreboot = \"in-window\"\nreboot_timeout = \"10m\"\n");
    let world = FakeWorld::persistent(&world_file, ab(false));
    let r = start(dir.path(), &world, clock.clone(), policy()).await;
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    // Bounded: the window opens 10 minutes after t0; an hour is plenty (the clock is paused, so this is instant).
    for _ in 0..3600 {
        if world.snapshot().reboots > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(world.snapshot().reboots, 1, "{:?}", world.snapshot().calls);
    r.stop().await;
    // The reboot into B, and the observation there passes; the commit does not.
    let mut state: WorldState = serde_json::from_slice(&std::fs::read(&world_file).unwrap()).unwrap();
    state.boot_id = "boot-2".into();
    state.booted_slot = "B".into();
    std::fs::write(&world_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let world = FakeWorld::persistent(&world_file, ab(true));
    let r = start(dir.path(), &world, clock, policy()).await;
    let mut notices = r.handle.notices.subscribe();
    let outcome = r.completed(&mut notices).await;
    assert!(outcome.starts_with("rolled-back: commit failed: fake ab.commit failure"), "{outcome}");
    let w = world.snapshot();
    assert!(w.calls.iter().any(|c| c == "ab.revert 2.0.0"), "{:?}", w.calls);
    assert!(w.committed.is_empty(), "{:?}", w.committed);
    let committed = crate::committed::Committed::load(&dir.path().join("var/lib/otpatch/committed.json")).unwrap();
    assert_eq!(committed.version_for("otpatch-demo", crate::engine::PatchKind::Ab), None);
    let audit = std::fs::read_to_string(dir.path().join("var/lib/otpatch/audit.log")).unwrap();
    assert!(!audit.contains(r#""kind":"commit""#), "{audit}");
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

/// Window 1 commits livepatch 1.0.1; `between` changes the state directory; window 2 brings 1.0.2 and the
/// plant's health fails with it. Returns the world after window 2 and what is committed then.
async fn roll_back_v2(between: impl FnOnce(&Path)) -> (WorldState, crate::committed::Committed) {
    let dir = tempfile::tempdir().unwrap();
    let world_file = dir.path().join("world.json");
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0()));
    let world = FakeWorld::persistent(&world_file, FakeScript::default());
    let r = start(dir.path(), &world, clock.clone(), settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T00:10", "90m").await.unwrap();
    assert_eq!(r.completed(&mut notices).await, "committed 1.0.1");
    r.stop().await;
    between(dir.path());

    let v2 = script(|s| {
        s.version = "1.0.2".into();
        s.health = FakeHealth::Fail;
    });
    let world = FakeWorld::persistent(&world_file, v2);
    let r = start(dir.path(), &world, clock, settings("")).await;
    let mut notices = r.handle.notices.subscribe();
    r.schedule("2026-12-01T02:10", "90m").await.unwrap();
    let outcome = r.completed(&mut notices).await;
    assert_eq!(OutcomeKind::of(&outcome), Some(OutcomeKind::RolledBack), "{outcome}");
    r.stop().await;
    let committed = crate::committed::Committed::load(&dir.path().join("var/lib/otpatch/committed.json")).unwrap();
    (world.snapshot(), committed)
}

#[tokio::test(start_paused = true)]
async fn rolling_back_v2_puts_the_committed_v1_back() {
    let (w, committed) = roll_back_v2(|_| {}).await;
    assert_eq!(w.applied, vec!["1.0.1"], "the committed fix is in place again: {:?}", w.calls);
    let revert = w.calls.iter().position(|c| c == "livepatch.revert 1.0.2").unwrap();
    let restore = w.calls.iter().position(|c| c == "livepatch.restore 1.0.1").unwrap();
    assert!(revert < restore, "{:?}", w.calls);
    assert_eq!(committed.version_for("otpatch-demo", crate::engine::PatchKind::Livepatch), Some("1.0.1"));
}

/// As above, with an A/B image committed between the two windows (its own version series, recorded beside the
/// livepatch): rolling livepatch 1.0.2 back still puts the committed livepatch 1.0.1 back.
#[tokio::test(start_paused = true)]
async fn rolling_back_a_livepatch_after_an_image_commit_puts_the_committed_livepatch_back() {
    let (w, committed) = roll_back_v2(|root| {
        let image = crate::engine::VerifiedBundle {
            path: root.join("var/lib/otpatch/bundles/os-2.1.0.raucb"),
            kind: crate::engine::PatchKind::Ab,
            compatible: "otpatch-demo".into(),
            version: "2.1.0".into(),
            digest: crate::backend::fake::fake_digest("2.1.0"),
            signer: "CN=vendor".into(),
            verified_at: None,
        };
        let after_the_first: jiff::Timestamp = "2026-12-01T01:00:00Z".parse().unwrap();
        let file = root.join("var/lib/otpatch/committed.json");
        crate::committed::Committed::record(&file, &image, after_the_first, None).unwrap();
    })
    .await;
    assert_eq!(w.applied, vec!["1.0.1"], "the committed livepatch is in place again: {:?}", w.calls);
    assert!(w.calls.iter().any(|c| c == "livepatch.restore 1.0.1"), "put back, not only 1.0.2 reverted: {:?}", w.calls);
    assert_eq!(committed.version_for("otpatch-demo", crate::engine::PatchKind::Livepatch), Some("1.0.1"));
    assert_eq!(committed.version_for("otpatch-demo", crate::engine::PatchKind::Ab), Some("2.1.0"));
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
    assert_eq!(OutcomeKind::of(&outcome), Some(OutcomeKind::RolledBack), "{outcome}");
    r.stop().await;
    assert!(bundle.exists() && module.exists(), "the committed bundle and module are kept");
    assert!(!bad.exists() && !bad_module.exists());
    let committed = crate::committed::Committed::load(&state.join("committed.json")).unwrap();
    assert_eq!(committed.get("otpatch-demo", crate::engine::PatchKind::Livepatch).unwrap().path, bundle);
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
