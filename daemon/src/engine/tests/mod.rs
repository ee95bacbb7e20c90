//! The engine's walks, one case at a time; `random_walks` drives random sequences against the invariants.

use super::*;

mod random_walks;

fn window(id: &str) -> WindowCtx {
    WindowCtx {
        id: id.to_string(),
        start: "2026-12-01T01:00:00Z".parse().unwrap(),
        end: "2026-12-01T02:30:00Z".parse().unwrap(),
        auto_start: true,
    }
}

fn bundle_ref(n: u8) -> BundleRef {
    BundleRef { path: format!("/var/lib/otpatch/bundles/b{n}.otb").into(), size: 1000 + n as u64 }
}

fn verified(n: u8) -> VerifiedBundle {
    VerifiedBundle {
        path: format!("/var/lib/otpatch/bundles/b{n}.otb").into(),
        kind: PatchKind::Livepatch,
        compatible: "acme-gw".into(),
        version: format!("1.{n}"),
        digest: format!("digest-{n}"),
        signer: "CN=vendor signing".into(),
        verified_at: None,
    }
}

fn checkpoint(n: u8) -> CheckpointRef {
    CheckpointRef { id: format!("ckpt-{n}"), processes: vec!["softplc".into()] }
}

/// Feeds events in order, returning every (state, actions) after each.
fn run(engine: &Engine, events: &[Event]) -> Vec<(State, Actions)> {
    let mut state = State::Idle;
    let mut out = Vec::new();
    for e in events {
        let (s, a) = engine.step(&state, e).unwrap_or_else(|err| panic!("{err} (after {:?})", out.last()));
        state = s.clone();
        out.push((s, a));
    }
    out
}

fn happy_prefix() -> Vec<Event> {
    vec![
        Event::Schedule { window: window("w1") },
        Event::Start,
        Event::PreflightPassed,
        Event::SegmentationApplied,
        Event::Fetched { bundle: bundle_ref(1) },
        Event::Verified { bundle: verified(1) },
        Event::CheckpointTaken { checkpoint: checkpoint(1) },
        Event::ApplyStarted,
        Event::Applied,
    ]
}

#[test]
fn happy_path_walks_every_state_and_lifts() {
    let mut events = happy_prefix();
    events.extend([Event::Healthy, Event::Lifted]);
    let steps = run(&Engine::default(), &events);
    let names: Vec<_> = steps.iter().map(|(s, _)| s.name()).collect();
    assert_eq!(
        names,
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
    assert_eq!(steps[1].1, Actions::drive(Drive::Preflight { window: window("w1") }));
    assert_eq!(steps[4].1, Actions::drive(Drive::Verify { bundle: bundle_ref(1) }));
    assert_eq!(steps[6].1, Actions::drive(Drive::Apply { window: window("w1"), bundle: verified(1) }));
    assert_eq!(
        steps[9].1,
        Actions::then(
            vec![Effect::Commit { bundle: verified(1) }, Effect::DiscardCheckpoint { checkpoint: checkpoint(1) }],
            Drive::Lift
        )
    );
    assert_eq!(
        steps[10].0,
        State::Closed { window: window("w1"), outcome: Outcome::Committed { version: "1.1".into() } }
    );
}

#[test]
fn verify_failure_applies_nothing_and_lifts() {
    let mut events = happy_prefix()[..5].to_vec();
    events.push(Event::VerifyFailed { error: "signer not trusted".into() });
    let steps = run(&Engine::default(), &events);
    let (state, actions) = steps.last().unwrap();
    assert_eq!(state.name(), "failed");
    assert_eq!(actions, &Actions::drive(Drive::Lift));
    assert!(steps.iter().all(|(_, a)| !matches!(a.drive, Some(Drive::Apply { .. }))));
}

#[test]
fn health_failure_rolls_back_and_restores_the_checkpoint() {
    let mut events = happy_prefix();
    events.push(Event::HealthFailed { reason: "probe boiler-temp out of range".into() });
    let steps = run(&Engine::default(), &events);
    let (state, actions) = steps.last().unwrap();
    assert_eq!(state.name(), "rolling-back");
    assert_eq!(actions, &Actions::drive(Drive::Rollback { bundle: verified(1), checkpoint: checkpoint(1) }));
    let engine = Engine::default();
    let (s, a) = engine.step(state, &Event::RolledBack).unwrap();
    assert_eq!(a, Actions::drive(Drive::Lift));
    let (s, _) = engine.step(&s, &Event::Lifted).unwrap();
    assert_eq!(
        s,
        State::Closed {
            window: window("w1"),
            outcome: Outcome::RolledBack { reason: Reason::Health("probe boiler-temp out of range".into()) }
        }
    );
}

#[test]
fn degraded_follows_the_policy() {
    let steps = run(&Engine::default(), &happy_prefix());
    let observing = steps.last().unwrap().0.clone();
    let keep = Engine::new(EngineConfig { rollback_on_degraded: false, allow_reboot: false });
    let roll = Engine::new(EngineConfig { rollback_on_degraded: true, allow_reboot: false });
    let ev = Event::Degraded { reason: "advisory probe slow".into() };
    assert_eq!(keep.step(&observing, &ev).unwrap().0.name(), "committed");
    assert_eq!(roll.step(&observing, &ev).unwrap().0.name(), "rolling-back");
}

#[test]
fn deadline_before_apply_fails_and_after_apply_rolls_back() {
    let engine = Engine::default();
    let prefix = happy_prefix();
    for n in 2..=prefix.len() {
        let steps = run(&engine, &prefix[..n]);
        let state = &steps.last().unwrap().0;
        let (next, actions) = engine.step(state, &Event::Deadline).unwrap();
        if state.change_pending() {
            assert_eq!(next.name(), "rolling-back", "deadline in {}", state.name());
            assert!(actions.effects.is_empty() && matches!(actions.drive, Some(Drive::Rollback { .. })));
        } else {
            assert_eq!(next.name(), "failed", "deadline in {}", state.name());
            assert_eq!(actions.drive, Some(Drive::Lift));
        }
    }
}

#[test]
fn illegal_events_are_errors_not_panics() {
    let engine = Engine::default();
    let err = engine.step(&State::Idle, &Event::Applied).unwrap_err();
    assert_eq!(err, IllegalEvent { state: "idle", event: "applied" });
    let steps = run(&engine, &happy_prefix()[..3]);
    let armed = &steps.last().unwrap().0;
    assert!(engine.step(armed, &Event::Healthy).is_err());
    assert!(engine.step(armed, &Event::Schedule { window: window("w2") }).is_err());
    assert!(engine.step(armed, &Event::RollbackRequested { uid: 0 }).is_err());
}

#[test]
fn failed_lift_is_retried_in_place() {
    let engine = Engine::default();
    let mut events = happy_prefix();
    events.push(Event::Healthy);
    let steps = run(&engine, &events);
    let committed = &steps.last().unwrap().0;
    let (s, a) = engine.step(committed, &Event::LiftFailed { error: "nft: busy".into() }).unwrap();
    assert_eq!(&s, committed);
    assert_eq!(a, Actions::drive(Drive::Lift));
}

#[test]
fn recovery_resumes_before_apply_and_rolls_back_after() {
    let engine = Engine::default();
    let prefix = happy_prefix();
    for n in 1..=prefix.len() {
        let state = run(&engine, &prefix[..n]).last().unwrap().0.clone();
        let (open, open_actions) = engine.recover(&state, true);
        let (closed, _) = engine.recover(&state, false);
        assert!(!matches!(open_actions.drive, Some(Drive::Apply { .. })), "recovery never applies");
        match state.name() {
            "scheduled" => assert_eq!(open_actions, Actions { effects: vec![Effect::LiftStale], drive: None }),
            "arming" => {
                assert_eq!(open, state);
                assert_eq!(open_actions, Engine::entry_actions(&state));
                assert_eq!(closed.name(), "failed");
            }
            "armed" | "segmented" | "fetched" | "verified" => {
                assert_eq!(open.name(), "armed");
                assert_eq!(open_actions, Actions::drive(Drive::Segment { window: window("w1") }));
                assert_eq!(closed.name(), "failed");
                assert_eq!(engine.recover(&state, false).1, Actions::drive(Drive::Lift));
            }
            "checkpointed" | "applying" | "observing" => {
                assert_eq!(open.name(), "rolling-back");
                assert_eq!(closed.name(), "rolling-back");
                assert_eq!(
                    open_actions,
                    Actions::drive(Drive::Rollback { bundle: verified(1), checkpoint: checkpoint(1) })
                );
            }
            other => panic!("unexpected state {other}"),
        }
    }
}

#[test]
fn recovery_of_a_committed_window_records_the_commit_again_and_lifts() {
    let engine = Engine::default();
    let mut events = happy_prefix();
    events.push(Event::Healthy);
    let committed = run(&engine, &events).last().unwrap().0.clone();
    let (s, a) = engine.recover(&committed, false);
    assert_eq!(s, committed);
    assert_eq!(a.drive, Some(Drive::Lift));
    assert!(!matches!(a.drive, Some(Drive::Apply { .. })));
}

#[test]
fn every_action_list_has_at_most_one_driver_and_it_is_last() {
    let engine = Engine::default();
    let mut events = happy_prefix();
    events.extend([Event::Healthy, Event::Lifted]);
    // The rule is the type now: a list is its effects, then at most one driving step, which runs last.
    for (_, actions) in run(&engine, &events) {
        let Actions { effects, drive } = actions;
        let _: (Vec<Effect>, Option<Drive>) = (effects, drive);
    }
}

#[test]
fn ab_update_reboots_inside_the_window_and_is_kept_after_observation_on_the_new_slot() {
    let engine = Engine::new(EngineConfig { rollback_on_degraded: false, allow_reboot: true });
    let mut events = happy_prefix();
    assert_eq!(events.pop(), Some(Event::Applied));
    events.push(Event::Installed { slot: "B".into(), boot_id: "boot-1".into() });
    let steps = run(&engine, &events);
    let (rebooting, actions) = steps.last().unwrap().clone();
    assert_eq!(rebooting.name(), "rebooting");
    assert_eq!(actions, Actions::drive(Drive::Reboot { slot: "B".into() }));
    // The daemon comes back after the reboot: recovery asks which slot booted, and never reboots again by itself.
    let (same, actions) = engine.recover(&rebooting, true);
    assert_eq!(same, rebooting);
    assert_eq!(actions, Actions::drive(Drive::ConfirmBoot { slot: "B".into(), boot_id: "boot-1".into() }));
    let (observing, actions) = engine
        .step(&rebooting, &Event::Booted { slot: "B".into(), boot_id: "boot-2".into(), running: String::new() })
        .unwrap();
    // Health failing on the new slot rolls back (the A/B updater marks it bad and boots the old one).
    observed_then_kept_or_rolled_back(&engine, &observing, actions);
}

/// `observing` observes, keeps `verified(1)` when healthy and rolls it back when health fails.
fn observed_then_kept_or_rolled_back(engine: &Engine, observing: &State, actions: Actions) {
    assert_eq!(observing.name(), "observing");
    assert!(actions.effects.is_empty() && matches!(actions.drive, Some(Drive::Observe { .. })));
    let (committed, actions) = engine.step(observing, &Event::Healthy).unwrap();
    assert_eq!(committed.name(), "committed");
    assert!(actions.effects.contains(&Effect::Commit { bundle: verified(1) }));
    let (rolling, actions) = engine.step(observing, &Event::HealthFailed { reason: "r".into() }).unwrap();
    assert_eq!(rolling.name(), "rolling-back");
    assert!(actions.effects.is_empty());
    assert!(matches!(&actions.drive, Some(Drive::Rollback { bundle, .. }) if *bundle == verified(1)));
}

#[test]
fn ab_boot_on_the_old_slot_or_no_reboot_at_all_rolls_back() {
    let engine = Engine::new(EngineConfig { rollback_on_degraded: false, allow_reboot: true });
    let mut events = happy_prefix();
    assert_eq!(events.pop(), Some(Event::Applied));
    events.push(Event::Installed { slot: "B".into(), boot_id: "boot-1".into() });
    let rebooting = run(&engine, &events).last().unwrap().0.clone();
    let (s, _) = engine
        .step(&rebooting, &Event::Booted { slot: "A".into(), boot_id: "boot-2".into(), running: String::new() })
        .unwrap();
    assert!(matches!(&s, State::RollingBack { reason: Reason::BootFallback(slot), .. } if slot == "A"), "{s:?}");
    // The image says its version: the rollback names what runs and what did not come up.
    let back = Event::Booted { slot: "A".into(), boot_id: "boot-2".into(), running: "1.0.0".into() };
    let (s, _) = engine.step(&rebooting, &back).unwrap();
    let State::RollingBack { reason, bundle, .. } = &s else { panic!("{s:?}") };
    assert_eq!(
        reason.to_string(),
        format!("the gateway came back on slot A, which runs image 1.0.0, not the updated {}", bundle.version)
    );
    // Restarted without the reboot having happened (same boot): nobody observed slot B.
    let (s, _) = engine
        .step(&rebooting, &Event::Booted { slot: "A".into(), boot_id: "boot-1".into(), running: String::new() })
        .unwrap();
    assert!(matches!(&s, State::RollingBack { reason: Reason::Interrupted, .. }), "{s:?}");
    let (s, _) = engine.step(&rebooting, &Event::RebootFailed { error: "logind said no".into() }).unwrap();
    assert!(matches!(&s, State::RollingBack { reason: Reason::Apply(m), .. } if m.contains("logind said no")));
    let (s, _) = engine.step(&rebooting, &Event::Deadline).unwrap();
    assert!(matches!(&s, State::RollingBack { reason: Reason::DeadlineExpired, .. }), "{s:?}");
}

#[test]
fn ab_update_without_reboot_permission_is_staged_and_the_window_ends() {
    let engine = Engine::default();
    let mut events = happy_prefix();
    assert_eq!(events.pop(), Some(Event::Applied));
    events.extend([Event::Installed { slot: "B".into(), boot_id: "boot-1".into() }]);
    let steps = run(&engine, &events);
    let (staged, actions) = steps.last().unwrap().clone();
    assert_eq!(staged.name(), "staged");
    assert_eq!(actions, Actions::then(vec![Effect::DiscardCheckpoint { checkpoint: checkpoint(1) }], Drive::Lift));
    assert!(!matches!(actions.drive, Some(Drive::Reboot { .. })));
    assert!(!actions.effects.iter().any(|a| matches!(a, Effect::Commit { .. })));
    let (closed, _) = engine.step(&staged, &Event::Lifted).unwrap();
    let State::Closed { outcome, .. } = &closed else { panic!("{closed:?}") };
    assert_eq!(outcome.to_string(), "installed 1.1 into slot B, reboot pending");
}

#[test]
fn a_staged_slot_running_after_a_reboot_is_observed_then_kept_or_given_up() {
    let engine = Engine::default();
    let closed =
        State::Closed { window: window("w1"), outcome: Outcome::Staged { version: "1.1".into(), slot: "B".into() } };
    let ev = Event::StagedBooted { window: window("w1-confirm"), bundle: verified(1) };
    let (observing, actions) = engine.step(&closed, &ev).unwrap();
    observed_then_kept_or_rolled_back(&engine, &observing, actions);
    // Never in the middle of a window.
    let mut events = happy_prefix();
    events.truncate(3);
    let arming = run(&engine, &events).last().unwrap().0.clone();
    assert!(engine.step(&arming, &ev).is_err());
}

#[test]
fn states_round_trip_through_json() {
    let mut events = happy_prefix();
    events.push(Event::HealthFailed { reason: "x".into() });
    for (s, _) in run(&Engine::default(), &events) {
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), s);
    }
}

#[test]
fn an_update_that_cannot_be_kept_is_rolled_back_not_committed() {
    // The power went between journaling `committed` and RAUC marking the slot good; the bootloader fell back, so
    // recovery's commit finds the gateway on the old slot: the window must end rolled back, never "committed".
    let engine = Engine::default();
    let mut events = happy_prefix();
    events.push(Event::Healthy);
    let committed = run(&engine, &events).last().unwrap().0.clone();
    assert_eq!(committed.name(), "committed");
    let (recovered, actions) = engine.recover(&committed, true);
    assert_eq!(recovered, committed, "recovery commits again");
    assert!(matches!(actions.effects.first(), Some(Effect::Commit { .. })), "{actions:?}");
    let failed = Event::CommitFailed { error: "the gateway runs slot A, not the updated B".into() };
    let (s, actions) = engine.step(&committed, &failed).unwrap();
    let State::RollingBack { reason, checkpoint: kept, .. } = &s else { panic!("{s:?}") };
    assert_eq!(reason.to_string(), "commit failed: the gateway runs slot A, not the updated B");
    assert_eq!(kept, &checkpoint(1), "kept for the rollback");
    assert!(matches!(actions.drive, Some(Drive::Rollback { .. })), "{actions:?}");
    // Anywhere else it does not fit.
    let observing = run(&engine, &happy_prefix()).last().unwrap().0.clone();
    assert!(engine.step(&observing, &failed).is_err());
}
