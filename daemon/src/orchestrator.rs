//! Runs windows: feeds the engine, journals every transition before its actions run, executes the actions
//! through the backends, and answers the D-Bus service's commands.
//!
//! One task owns all mutable state; the D-Bus service talks to it through [`Command`]s and reads a
//! [`StatusSnapshot`] from a watch channel. At most one driving action is in flight; a deadline, a cancel or an
//! operator rollback preempts it (the future is dropped and the engine decides what comes next).

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use otpatch_common::api::{errors, StatusSnapshot, WindowInfo};
use otpatch_common::policy::{DegradedAction, PolicyErrors, RebootPolicy, Settings};
use otpatch_common::schedule::{Occurrence, OneOffRequest, OneOffWindow, Schedule, WindowSource};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::audit::AuditLog;
use crate::backend::{Applied, Backends, BoxFuture, FetchOutcome, LiftReport, ProgressFn, SegmentationPlan, Verdict};
use crate::engine::{Action, Engine, EngineConfig, Event, Outcome, PatchKind, State, WindowCtx};
use crate::failpoints::Failpoints;
use crate::fsutil::write_atomic;
use crate::journal::Journal;
use crate::sysroot::Sysroot;

/// An error for a D-Bus caller: a stable error name from [`errors`] and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub name: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(name: &'static str, message: impl Into<String>) -> Self {
        ApiError { name, message: message.into() }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Requests from the D-Bus service (already authorized) and from signals.
#[derive(Debug)]
pub enum Command {
    Schedule {
        start: String,
        duration: String,
        timezone: String,
        auto_start: bool,
        uid: u32,
        reply: Reply<String>,
    },
    Cancel {
        id: String,
        uid: u32,
        reply: Reply<()>,
    },
    List {
        horizon: Duration,
        reply: Reply<Vec<WindowInfo>>,
    },
    Apply {
        uid: u32,
        reply: Reply<String>,
    },
    Rollback {
        uid: u32,
        reply: Reply<()>,
    },
    /// `uid` is `None` for SIGHUP.
    Reload {
        uid: Option<u32>,
        reply: Reply<()>,
    },
    AuditLog {
        from_seq: u64,
        max: u32,
        reply: Reply<Vec<String>>,
    },
    /// Livepatches as the kernel shows them, with what was committed.
    Livepatches {
        reply: Reply<Vec<LivepatchInfo>>,
    },
    /// The live health-probe table.
    Health {
        reply: Reply<Vec<otpatch_common::api::ProbeReport>>,
    },
    /// The status snapshot, with the segmentation in place read live from the firewall.
    Status {
        reply: Reply<StatusSnapshot>,
    },
    /// Lets a version that was rolled back here be installed again by the next window.
    Retry {
        version: String,
        uid: u32,
        reply: Reply<()>,
    },
}

/// One livepatch for `ListLivepatches` / `otpatchctl livepatch list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivepatchInfo {
    pub name: String,
    pub enabled: bool,
    pub in_transition: bool,
    /// From the committed record; empty when the patch did not come from a committed window.
    pub compatible: String,
    pub version: String,
    pub committed_at: String,
}

/// What the D-Bus service turns into signals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Transition {
        window: String,
        from: String,
        to: String,
        event: String,
    },
    Health {
        window: String,
        verdict: String,
        reason: String,
    },
    /// The probe table (JSON) at the time of a verdict.
    Probes {
        window: String,
        probes: String,
    },
    Completed {
        window: String,
        outcome: String,
    },
}

/// Builds the backends for a policy (a reload changes probes, the patch server, the firewall backend...).
pub type BackendFactory = Arc<dyn Fn(Settings) -> BoxFuture<'static, anyhow::Result<Backends>> + Send + Sync>;

/// Reloads the policy from disk.
pub type PolicyLoader = Arc<dyn Fn() -> Result<Settings, PolicyErrors> + Send + Sync>;

/// Windows the operator scheduled and windows already done, persisted in `windows.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WindowStore {
    schedule: Schedule,
    /// Occurrence ids whose work is over (so an early finish does not start the same window again).
    done: BTreeSet<String>,
}

/// The orchestrator and the channels to talk to it.
pub struct Orchestrator {
    engine: Engine,
    state: State,
    journal: Journal,
    audit: AuditLog,
    store: WindowStore,
    store_path: PathBuf,
    settings: Settings,
    loader: PolicyLoader,
    backends: Backends,
    failpoints: Failpoints,
    status: Arc<watch::Sender<StatusSnapshot>>,
    notices: broadcast::Sender<Notice>,
    inflight: Option<BoxFuture<'static, Event>>,
    lift_failures: u32,
    /// Whether this daemon applied segmentation that it has not lifted yet.
    segmented: bool,
    default_tz: String,
    access_group: Arc<std::sync::RwLock<String>>,
    /// What the last lift found, for the audit log.
    last_lift: Arc<std::sync::Mutex<Option<LiftReport>>>,
    /// Why the fetch of the window under way installs nothing though the server has a newer bundle (a version
    /// rolled back here): added to the window's `up-to-date` outcome.
    skip_note: Arc<std::sync::Mutex<Option<String>>>,
    /// Rebuilds the backends after a reload; None keeps them (tests).
    rebuild: Option<BackendFactory>,
    /// A reload came while a window was under way: rebuild when it ends.
    rebuild_pending: bool,
    sysroot: Sysroot,
    /// systemd's watchdog: its period and the ping, sent by the loop itself (see [`Self::with_watchdog`]).
    watchdog: Option<(Duration, Watchdog)>,
}

/// How often the status snapshot's segmentation view (drop counters) is refreshed while segmented.
const SEGMENTATION_VIEW_EVERY: Duration = Duration::from_secs(5);

/// Tells systemd the daemon is alive (`WATCHDOG=1`).
pub type Watchdog = Arc<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator").field("state", &self.state.name()).finish_non_exhaustive()
    }
}

/// What the rest of the daemon holds to reach the orchestrator.
#[derive(Debug, Clone)]
pub struct Handle {
    pub commands: mpsc::Sender<Command>,
    /// The policy's access group (D-Bus authorization), updated on reload.
    pub access_group: Arc<std::sync::RwLock<String>>,
    pub status: watch::Receiver<StatusSnapshot>,
    pub notices: broadcast::Sender<Notice>,
}

fn engine_config(settings: &Settings) -> EngineConfig {
    EngineConfig {
        rollback_on_degraded: settings.rollback.on_degraded == DegradedAction::Rollback,
        allow_reboot: settings.ab.reboot == RebootPolicy::InWindow,
    }
}

fn occurrence_ctx(o: &Occurrence) -> WindowCtx {
    WindowCtx { id: o.id.clone(), start: o.start, end: o.end, auto_start: o.auto_start }
}

fn source_text(s: &WindowSource) -> String {
    match s {
        WindowSource::OneOff => "one-off".into(),
        WindowSource::Recurring(name) => format!("recurring:{name}"),
    }
}

impl Orchestrator {
    /// Opens the journal, audit log and window store under the sysroot's state directory and recovers: an
    /// interrupted window is resumed or rolled back, stale segmentation is lifted. Returns once the recovery
    /// decision is journaled and its effects ran; its driving action (a rollback, say) runs in [`Self::run`].
    pub async fn start(
        sysroot: &Sysroot,
        settings: Settings,
        loader: PolicyLoader,
        backends: Backends,
        failpoints: Failpoints,
    ) -> anyhow::Result<(Orchestrator, Handle, mpsc::Receiver<Command>)> {
        let state_dir = sysroot.state_dir();
        let (journal, loaded) = Journal::open(&state_dir.join("journal"))?;
        let (audit, audit_problems) = AuditLog::open(&state_dir.join("audit.log"))?;
        let store_path = state_dir.join("windows.json");
        let mut problems = Vec::new();
        let store = match std::fs::read(&store_path) {
            Ok(bytes) => match serde_json::from_slice::<WindowStore>(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    let aside = store_path.with_extension("json.unreadable");
                    std::fs::rename(&store_path, &aside)?;
                    problems.push(format!(
                        "{}: unreadable ({e}); moved to {}, one-off windows must be scheduled again",
                        store_path.display(),
                        aside.display()
                    ));
                    WindowStore::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => WindowStore::default(),
            Err(e) => return Err(e.into()),
        };
        let mut initial = StatusSnapshot::default();
        if let State::Closed { outcome, .. } = &loaded.state {
            initial.last_outcome = outcome.to_string();
        }
        let (status_tx, status_rx) = watch::channel(initial);
        let (notices, _) = broadcast::channel(64);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let default_tz = jiff::tz::TimeZone::system().iana_name().unwrap_or("UTC").to_string();
        let mut me = Orchestrator {
            engine: Engine::new(engine_config(&settings)),
            state: loaded.state.clone(),
            journal,
            audit,
            store,
            store_path,
            settings,
            loader,
            backends,
            failpoints,
            status: Arc::new(status_tx),
            notices: notices.clone(),
            inflight: None,
            lift_failures: 0,
            segmented: false,
            default_tz,
            access_group: Arc::new(std::sync::RwLock::new(String::new())),
            last_lift: Arc::new(std::sync::Mutex::new(None)),
            skip_note: Arc::new(std::sync::Mutex::new(None)),
            rebuild: None,
            rebuild_pending: false,
            sysroot: sysroot.clone(),
            watchdog: None,
        };
        me.store.schedule.set_recurring(me.settings.windows.clone());
        me.set_access_group();
        me.refresh_rolled_back();
        problems.extend(loaded.problems);
        problems.extend(audit_problems);
        for p in &problems {
            warn!(problem = %p, "state problem found at start");
        }
        me.audit_log(
            "daemon-start",
            None,
            None,
            serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "journal_state": loaded.state.name(), "problems": problems}),
        );
        me.recover().await;
        me.reapply_committed().await;
        me.confirm_staged().await;
        me.confirm_booted().await;
        let handle = Handle { commands: cmd_tx, access_group: me.access_group.clone(), status: status_rx, notices };
        Ok((me, handle, cmd_rx))
    }

    fn now(&self) -> Timestamp {
        self.backends.clock.now()
    }

    /// Backends are rebuilt from the new policy on reload (immediately, or when the window under way ends).
    pub fn with_rebuild(mut self, factory: BackendFactory) -> Self {
        self.rebuild = Some(factory);
        self
    }

    /// Pings systemd's watchdog from the event loop, every half `period`: only a loop that still turns pings, so a
    /// wedged loop (a handler that never returns) gets the daemon restarted by systemd. Every wait of the loop
    /// is bounded, and blocking work runs off it, so a healthy loop always comes round in time.
    pub fn with_watchdog(mut self, period: Duration, ping: Watchdog) -> Self {
        self.watchdog = Some((period, ping));
        self
    }

    async fn rebuild_backends(&mut self) {
        let Some(factory) = self.rebuild.clone() else { return };
        self.rebuild_pending = false;
        match factory(self.settings.clone()).await {
            Ok(b) => {
                self.backends = b;
                info!("backends rebuilt from the reloaded policy");
            }
            Err(e) => {
                error!(error = %e, "could not rebuild the backends from the reloaded policy; keeping the old ones");
                self.status.send_modify(|s| s.last_error = format!("reload: backends not rebuilt: {e}"));
            }
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    async fn recover(&mut self) {
        let now = self.now();
        let open = self.state.window().is_some_and(|w| w.start <= now && now < w.end);
        let before = self.state.clone();
        let (next, actions) = self.engine.recover(&before, open);
        let mut journaled = Ok(());
        if next != before {
            info!(from = before.name(), to = next.name(), window_open = open, "recovering interrupted window");
            journaled = self.enter(next, "recover");
        }
        if before.in_progress() {
            self.audit_log(
                "recovery",
                before.window().map(|w| w.id.clone()).as_deref(),
                None,
                serde_json::json!({"journal_state": before.name(), "resumed_as": self.state.name(), "window_open": open}),
            );
        }
        if let Err(error) = journaled {
            // As in feed: no action of a state that is not on disk.
            let stop = Event::JournalFailed { error };
            if matches!(self.engine.step(&self.state, &stop), Ok((s, _)) if s != self.state) {
                self.feed(stop).await;
                self.publish();
                return;
            }
        }
        if let Some(ev) = self.run_actions(actions).await {
            self.feed(ev).await;
        }
        self.publish();
    }

    /// At start, with no window in progress: an A/B slot that a window staged (installed, reboot pending) and that
    /// the gateway now runs is observed before it is kept — the same observation, commit and rollback as inside a
    /// window, in a span of its own (`<window>-confirm`, twice the observation period plus ten minutes).
    async fn confirm_staged(&mut self) {
        if self.state.in_progress() {
            return;
        }
        let bundle = match self.backends.ab_updater.unconfirmed().await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                error!(error = %e, "cannot tell whether a staged A/B update is running");
                self.status.send_modify(|s| s.last_error = format!("staged A/B update: {e}"));
                return;
            }
        };
        let now = self.now();
        let span = self.settings.rollback.observation * 2 + Duration::from_secs(600);
        let end = now + jiff::SignedDuration::try_from(span).unwrap_or(jiff::SignedDuration::from_hours(1));
        let id = format!("ab-{}-confirm", bundle.version);
        let window = WindowCtx { id: id.clone(), start: now, end, auto_start: true };
        warn!(window = %id, version = %bundle.version, "running a staged A/B update that was never confirmed: observing it");
        self.audit_log(
            "staged-boot",
            Some(&id),
            None,
            serde_json::json!({"version": bundle.version, "digest": bundle.digest}),
        );
        if let Err(e) = self.backends.health.baseline().await {
            // Without a baseline the observation still checks the probes' limits; say what is missing.
            warn!(error = %e, "no health baseline for the staged update's observation");
        }
        self.feed(Event::StagedBooted { window, bundle }).await;
        self.publish();
    }

    /// At start, after recovery and `confirm_staged`, with no window in progress: the slot the gateway runs came up
    /// on an ordinary boot, so the bootloader is told it is good (the boot into an update is confirmed by its
    /// observation only). A failure is reported, not fatal: the bootloader then falls back on the next boot.
    async fn confirm_booted(&mut self) {
        if self.state.in_progress() {
            return;
        }
        match self.backends.ab_updater.confirm_booted().await {
            Ok(Some(slot)) => info!(slot = %slot, "ordinary boot: the booted slot is marked good"),
            Ok(None) => {}
            Err(e) => {
                error!(error = %e, "cannot mark the booted slot good: the bootloader may fall back on the next boot");
                self.status.send_modify(|s| s.last_error = format!("marking the booted slot good: {e}"));
            }
        }
    }

    /// The livepatch committed before `bundle` for its compatible, which a rollback of `bundle` puts back. An error
    /// when `committed.json` cannot be read: a rollback must then say it may not have restored the committed fix.
    fn committed_before(
        &self,
        bundle: &crate::engine::VerifiedBundle,
    ) -> Result<Option<crate::engine::VerifiedBundle>, String> {
        if bundle.kind != PatchKind::Livepatch {
            return Ok(None);
        }
        let path = self.store_path.with_file_name("committed.json");
        let committed = crate::committed::Committed::load(&path)
            .map_err(|e| format!("cannot tell which livepatch was committed before, to put it back: {e}"))?;
        Ok(committed
            .bundles
            .get(&bundle.compatible)
            .filter(|c| c.kind == PatchKind::Livepatch && c.digest != bundle.digest)
            .map(|c| c.to_verified(&bundle.compatible)))
    }

    /// At start, before the daemon reports READY: every livepatch a window committed is put back if the kernel
    /// does not have it (after a reboot), from its bundle, verified again. A committed change is never applied a
    /// second time while it is in place.
    async fn reapply_committed(&mut self) {
        let path = self.store_path.with_file_name("committed.json");
        let committed = match crate::committed::Committed::load(&path) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "cannot read what was committed; nothing re-applied");
                self.status.send_modify(|s| s.last_error = e.clone());
                return;
            }
        };
        for (compatible, c) in committed.bundles {
            if c.kind != PatchKind::Livepatch {
                continue;
            }
            let bundle = c.to_verified(&compatible);
            let patcher = self.backends.livepatcher.clone();
            let result = match patcher.is_applied(&bundle).await {
                Ok(true) => continue,
                Ok(false) => patcher.apply("boot", &bundle, self.progress_fn()).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    info!(version = %c.version, "committed livepatch re-applied at start");
                    self.audit_log(
                        "boot-reapply",
                        None,
                        None,
                        serde_json::json!({"version": c.version, "digest": c.digest}),
                    );
                }
                Err(e) => {
                    error!(version = %c.version, error = %e, "could not re-apply the committed livepatch");
                    self.audit_log(
                        "boot-reapply-failed",
                        None,
                        None,
                        serde_json::json!({"version": c.version, "error": e.to_string()}),
                    );
                    let why = format!("{} ({compatible}): {e}", c.version);
                    self.status.send_modify(|s| {
                        s.last_error = format!("re-applying {}: {e}", c.version);
                        s.committed_not_in_place.push(why);
                    });
                }
            }
        }
    }

    /// Runs until `shutdown` resolves; then lifts segmentation (the unit's stop path) and returns.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut dog = self.watchdog.clone().map(|(period, ping)| {
            let mut tick = tokio::time::interval((period / 2).max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (tick, ping)
        });
        let mut view_tick = tokio::time::interval(SEGMENTATION_VIEW_EVERY);
        view_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Each turn handles one thing; every wait is bounded by a timer, a command or an action finishing.
        loop {
            if self.rebuild_pending && !self.state.in_progress() {
                self.rebuild_backends().await;
            }
            self.sync_schedule().await;
            self.publish();
            let timer = self.next_timer();
            let clock = self.backends.clock.clone();
            let sleep = async {
                match timer {
                    Some((at, _)) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let inflight = async {
                match self.inflight.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            let bark = async {
                match dog.as_mut() {
                    Some((tick, _)) => {
                        tick.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = bark => {
                    if let Some((_, ping)) = &dog {
                        ping();
                    }
                }
                _ = view_tick.tick(), if self.segmented => self.refresh_segmentation_view().await,
                ev = inflight => {
                    self.inflight = None;
                    self.feed(ev).await;
                }
                _ = sleep => {
                    if let Some((_, ev)) = timer {
                        self.feed(ev).await;
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        self.inflight = None;
        let health = self.backends.health.clone();
        health.stop_watch().await;
        self.segmented = false;
        // Segmentation never outlives the daemon: on restart, recovery segments again if the window is open.
        match self.backends.firewall.lift().await {
            Ok(r) if r.was_active => {
                info!(dropped = r.dropped_packets, "segmentation lifted on shutdown");
                self.audit_log(
                    "shutdown",
                    None,
                    None,
                    serde_json::json!({"lifted": true, "dropped_packets": r.dropped_packets}),
                );
            }
            Ok(_) => self.audit_log("shutdown", None, None, serde_json::json!({"lifted": false})),
            Err(e) => error!(error = %e, "could not lift segmentation on shutdown"),
        }
    }

    /// Puts what the firewall has in place (backend, ruleset, drops) into the status snapshot: when segmentation
    /// goes up and every few seconds while it is, so status readers never make the loop ask the firewall.
    async fn refresh_segmentation_view(&mut self) {
        if !self.segmented {
            self.status.send_if_modified(|s| !std::mem::take(&mut s.segmentation_ruleset).is_empty());
            return;
        }
        let view = self.backends.firewall.inspect().await;
        self.status.send_modify(|s| match view {
            Ok(Some(v)) => {
                s.segmentation_backend = v.backend;
                s.segmentation_dropped = v.dropped_packets;
                s.segmentation_ruleset = v.ruleset;
            }
            Ok(None) => {}
            Err(e) => s.segmentation_ruleset = format!("(cannot read the ruleset: {e})"),
        });
    }

    /// The probes keep being read from the baseline on, while the change goes in and while it comes out (the
    /// observation reads them itself); they stop when the window is decided.
    async fn sync_health_watch(&mut self) {
        let watch = matches!(
            self.state,
            State::Armed { .. }
                | State::Segmented { .. }
                | State::Fetched { .. }
                | State::Verified { .. }
                | State::Checkpointed { .. }
                | State::Applying { .. }
                | State::RollingBack { .. }
        );
        let observing = matches!(self.state, State::Observing { .. });
        // Not borrowing self across the await: the orchestrator's future must stay Send.
        let health = self.backends.health.clone();
        if watch {
            health.start_watch().await;
        } else if !observing {
            health.stop_watch().await;
        }
    }

    /// The next timer: the window opening (auto-start) or its hard end.
    fn next_timer(&self) -> Option<(Timestamp, Event)> {
        match &self.state {
            State::Scheduled { window } if window.auto_start => Some((window.start, Event::Start)),
            State::Scheduled { window } => Some((window.end, Event::Deadline)),
            s if s.deadline_applies() => s.window().map(|w| (w.end, Event::Deadline)),
            _ => None,
        }
    }

    /// With no window in progress, make the engine's next window match the schedule.
    async fn sync_schedule(&mut self) {
        if self.state.in_progress() {
            return;
        }
        let now = self.now();
        let next = self.next_occurrence(now);
        let current = match &self.state {
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

    fn next_occurrence(&self, now: Timestamp) -> Option<Occurrence> {
        let horizon = Duration::from_secs(8 * 86_400) + self.settings.limits.max_window;
        self.store.schedule.upcoming(now, horizon).into_iter().find(|o| !self.store.done.contains(&o.id))
    }

    /// Feeds an event and everything that follows from it synchronously (e.g. `ApplyStarted`).
    async fn feed(&mut self, event: Event) {
        let mut pending = Some(event);
        let mut rounds = 0;
        while let Some(ev) = pending.take() {
            rounds += 1;
            if rounds > 16 {
                error!("event chain did not settle; stopping it");
                return;
            }
            let (next, actions) = match self.engine.step(&self.state, &ev) {
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
            if next != self.state {
                let journaled = self.enter(next, ev.name());
                self.sync_health_watch().await;
                if let Err(error) = journaled {
                    // Write-ahead is a rule: the state's actions do not run without its transition on disk. The
                    // engine says where that leads (failed before the checkpoint, rolling back from it on); a
                    // finishing state goes on with its own actions.
                    let stop = Event::JournalFailed { error };
                    if matches!(self.engine.step(&self.state, &stop), Ok((s, _)) if s != self.state) {
                        pending = Some(stop);
                        continue;
                    }
                }
            }
            pending = self.run_actions(actions).await;
        }
    }

    /// Records what an event says that the state does not keep (errors, verdicts).
    fn note_event(&mut self, ev: &Event) {
        let window = self.state.window().map(|w| w.id.clone()).unwrap_or_default();
        let error = match ev {
            Event::PreflightFailed { error }
            | Event::SegmentationFailed { error }
            | Event::FetchFailed { error }
            | Event::VerifyFailed { error }
            | Event::CheckpointFailed { error }
            | Event::ApplyFailed { error }
            | Event::RollbackFailed { error }
            | Event::LiftFailed { error } => Some(error.clone()),
            _ => None,
        };
        if let Some(e) = error {
            self.status.send_modify(|s| s.last_error = format!("{}: {e}", ev.name()));
        }
        match ev {
            Event::SegmentationApplied => self.segmented = self.settings.segmentation.enabled,
            Event::Lifted => {
                self.segmented = false;
                self.lift_failures = 0;
                let report = self.last_lift.lock().ok().and_then(|mut r| r.take());
                if let Some(r) = report {
                    if r.was_active {
                        info!(window = %window, dropped = r.dropped_packets, "segmentation lifted");
                        self.audit_log(
                            "segmentation-lifted",
                            Some(&window),
                            None,
                            serde_json::json!({"dropped_packets": r.dropped_packets}),
                        );
                        self.status.send_modify(|s| s.segmentation_dropped = r.dropped_packets);
                    }
                }
            }
            Event::LiftFailed { .. } => self.lift_failures = self.lift_failures.saturating_add(1),
            _ => {}
        }
        let verdict = match ev {
            Event::Healthy => Some(("healthy", String::new())),
            Event::Degraded { reason } => Some(("degraded", reason.clone())),
            Event::HealthFailed { reason } => Some(("failed", reason.clone())),
            _ => None,
        };
        if let Some((verdict, reason)) = verdict {
            info!(window = %window, verdict, reason = %reason, "health verdict");
            let probes = self.backends.health.probes();
            self.audit_log(
                "verdict",
                Some(&window),
                None,
                serde_json::json!({"verdict": verdict, "reason": reason, "probes": probes}),
            );
            let table = serde_json::to_string(&probes).unwrap_or_default();
            let _ = self.notices.send(Notice::Probes { window: window.clone(), probes: table });
            let _ = self.notices.send(Notice::Health { window, verdict: verdict.into(), reason });
        }
    }

    /// Moves to `next`: journal first (write-ahead), then audit, notify, and drop what the old state waited for.
    /// `Err` (with the reason) when the journal could not record it: the caller must not run its actions.
    fn enter(&mut self, next: State, event: &str) -> Result<(), String> {
        let now = self.now();
        // Before the journal says rolled-back: a crash in between rolls back again on restart and records it then.
        if let (State::RollingBack { bundle, .. }, State::RolledBack { reason, .. }) = (&self.state, &next) {
            let bundle = bundle.clone();
            self.record_rolled_back(&bundle, &reason.to_string(), now);
        }
        let journaled = match self.failpoints.hit(&format!("journal-write:{}", next.name())) {
            Err(e) => Err(e),
            Ok(()) => self.journal.record(&next, now).map(|_| ()).map_err(|e| e.to_string()),
        };
        if let Err(e) = &journaled {
            // Without the journal a crash could lose track of the change: say so loudly, and stop (see feed).
            error!(error = %e, state = next.name(), "journal write failed");
            self.status.send_modify(|s| s.last_error = format!("journal write failed: {e}"));
        }
        let prev = std::mem::replace(&mut self.state, next);
        let window = self.state.window().map(|w| w.id.clone()).unwrap_or_default();
        info!(window = %window, from = prev.name(), to = self.state.name(), event, "transition");

        self.audit_log(
            "transition",
            Some(&window),
            None,
            serde_json::json!({"from": prev.name(), "to": self.state.name(), "event": event}),
        );
        let _ = self.notices.send(Notice::Transition {
            window: window.clone(),
            from: prev.name().into(),
            to: self.state.name().into(),
            event: event.into(),
        });
        // The apply already under way continues into Applying; anything else in flight is for the old state.
        let keeps_inflight = matches!((&prev, &self.state), (State::Checkpointed { .. }, State::Applying { .. }));
        if !keeps_inflight {
            self.inflight = None;
        }
        if let State::Closed { window: w, outcome } = self.state.clone() {
            let note = self.skip_note.lock().ok().and_then(|mut n| n.take());
            let outcome_text = match (&outcome, note) {
                (Outcome::UpToDate, Some(note)) => format!("{outcome}: {note}"),
                _ => outcome.to_string(),
            };
            self.store.done.insert(w.id.clone());
            self.save_store();
            self.status.send_modify(|s| s.last_outcome = outcome_text.clone());
            self.audit_log("window-closed", Some(&w.id), None, serde_json::json!({"outcome": outcome_text}));
            let _ = self.notices.send(Notice::Completed { window: w.id.clone(), outcome: outcome_text });
            if matches!(outcome, Outcome::Committed { .. } | Outcome::UpToDate) {
                self.status.send_modify(|s| s.last_error.clear());
            }
            // A staged A/B update still needs its bundle until the boot into it is confirmed.
            if !matches!(outcome, Outcome::Staged { .. }) {
                self.prune_state(&w.id);
            }
        }
        if let State::Arming { .. } = self.state {
            self.status.send_modify(|s| s.last_error.clear());
            if let Ok(mut n) = self.skip_note.lock() {
                *n = None;
            }
        }
        // Each state starts with its own progress; backends refine it while they work.
        let (percent, message) = (self.state.percent(), self.state.doing().to_string());
        self.status.send_modify(|s| {
            s.progress_percent = percent;
            s.progress_message = message;
        });
        if let Err(e) = self.failpoints.hit(&format!("journal:{}", self.state.name())) {
            warn!(error = %e, "failpoint");
        }
        self.publish();
        journaled
    }

    /// Runs effects inline and starts the driving action. Returns an event to feed at once, if any.
    async fn run_actions(&mut self, actions: Vec<Action>) -> Option<Event> {
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
                    let patcher = if bundle.kind == PatchKind::Ab { b.ab_updater } else { b.livepatcher };
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
                    let patcher = if bundle.kind == PatchKind::Ab { b.ab_updater } else { b.livepatcher };
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

    fn progress_fn(&self) -> ProgressFn {
        let status = self.status.clone();
        Arc::new(move |percent, message| {
            status.send_modify(|s| {
                s.progress_percent = percent;
                s.progress_message = message;
            })
        })
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
                    let patcher = if bundle.kind == PatchKind::Ab { b.ab_updater } else { b.livepatcher };
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

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Schedule { start, duration, timezone, auto_start, uid, reply } => {
                let r = self.schedule(start, duration, timezone, auto_start, uid);
                let _ = reply.send(r);
            }
            Command::Cancel { id, uid, reply } => {
                let r = self.cancel(&id, uid).await;
                let _ = reply.send(r);
            }
            Command::List { horizon, reply } => {
                let _ = reply.send(Ok(self.list(horizon)));
            }
            Command::Apply { uid, reply } => {
                let r = self.apply(uid).await;
                let _ = reply.send(r);
            }
            Command::Rollback { uid, reply } => {
                let r = if self.state.change_pending() {
                    self.audit_log(
                        "operator",
                        self.state.window().map(|w| w.id.clone()).as_deref(),
                        Some(uid),
                        serde_json::json!({"action": "rollback"}),
                    );
                    self.feed(Event::RollbackRequested { uid }).await;
                    Ok(())
                } else {
                    Err(ApiError::new(
                        errors::INVALID_STATE,
                        format!("nothing to roll back: the engine is {} (rollback is possible while a change is being applied or observed)", self.state.name()),
                    ))
                };
                let _ = reply.send(r);
            }
            Command::Reload { uid, reply } => {
                let r = self.reload(uid);
                if r.is_ok() && self.rebuild.is_some() {
                    if self.state.in_progress() {
                        // The window under way keeps the backends it started with.
                        self.rebuild_pending = true;
                    } else {
                        self.rebuild_backends().await;
                    }
                }
                let _ = reply.send(r);
            }
            Command::Livepatches { reply } => {
                let _ = reply.send(Ok(self.livepatches()));
            }
            Command::Health { reply } => {
                let _ = reply.send(Ok(self.backends.health.probes()));
            }
            Command::Status { reply } => {
                let _ = reply.send(Ok(self.status.borrow().clone()));
            }
            Command::Retry { version, uid, reply } => {
                let r = self.retry(&version, uid);
                let _ = reply.send(r);
            }
            Command::AuditLog { from_seq, max, reply } => {
                let r = self
                    .audit
                    .read(from_seq, max.min(10_000) as usize)
                    .map_err(|e| ApiError::new(errors::FAILED, format!("reading the audit log: {e}")));
                let _ = reply.send(r);
            }
        }
    }

    fn schedule(
        &mut self,
        start: String,
        duration: String,
        tz: String,
        auto_start: bool,
        uid: u32,
    ) -> Result<String, ApiError> {
        let now = self.now();
        let duration = otpatch_common::units::parse_duration(&duration)
            .map_err(|e| ApiError::new(errors::INVALID_ARGS, format!("duration: {e}")))?;
        let req = OneOffRequest { start, duration, timezone: (!tz.is_empty()).then_some(tz), auto_start };
        let zone = req.timezone.clone().unwrap_or_else(|| self.default_tz.clone());
        // The id is derived from the start, so parse once to learn it, then build the window with it.
        let probe = OneOffWindow::from_request(
            &req,
            &self.default_tz,
            now,
            self.settings.limits.max_window,
            String::new(),
            Some(uid),
        )
        .map_err(|e| ApiError::new(errors::WINDOW_REFUSED, e.to_string()))?;
        // Ids of windows that already ran (or were cancelled) are never reused: a reused one would count as done.
        let done = &self.store.done;
        let id = self.store.schedule.new_id(probe.start, &zone, &|id| done.contains(id));
        let w = OneOffWindow { id: id.clone(), ..probe };
        let occ = self.store.schedule.add(w, now).map_err(|e| ApiError::new(errors::WINDOW_REFUSED, e.to_string()))?;
        self.save_store();
        info!(window = %id, start = %occ.start, end = %occ.end, uid, "window scheduled");
        self.audit_log(
            "operator",
            Some(&id),
            Some(uid),
            serde_json::json!({"action": "schedule", "start": occ.start.to_string(), "end": occ.end.to_string(), "auto_start": auto_start}),
        );
        Ok(id)
    }

    async fn cancel(&mut self, id: &str, uid: u32) -> Result<(), ApiError> {
        let now = self.now();
        let active = self.state.in_progress() && self.state.window().is_some_and(|w| w.id == id);
        if active {
            self.audit_log(
                "operator",
                Some(id),
                Some(uid),
                serde_json::json!({"action": "cancel", "while": self.state.name()}),
            );
            let before = self.state.clone();
            self.feed(Event::Cancel { uid }).await;
            if self.state == before {
                return Err(ApiError::new(
                    errors::INVALID_STATE,
                    format!("window {id} is already finishing ({}); it cannot be cancelled now", before.name()),
                ));
            }
            return Ok(());
        }
        self.store.schedule.cancel(id, now).map_err(|e| ApiError::new(errors::NOT_FOUND, e.to_string()))?;
        self.save_store();
        self.audit_log("operator", Some(id), Some(uid), serde_json::json!({"action": "cancel"}));
        Ok(())
    }

    fn list(&self, horizon: Duration) -> Vec<WindowInfo> {
        let now = self.now();
        let active_id = self.state.window().filter(|_| self.state.in_progress()).map(|w| w.id.clone());
        self.store
            .schedule
            .upcoming(now, horizon)
            .into_iter()
            .map(|o| {
                let status = if Some(&o.id) == active_id.as_ref() {
                    "active"
                } else if self.store.done.contains(&o.id) {
                    "done"
                } else if o.start <= now {
                    "open"
                } else {
                    "scheduled"
                };
                WindowInfo {
                    id: o.id.clone(),
                    source: source_text(&o.source),
                    timezone: o.timezone.clone(),
                    start: o.start.as_second(),
                    end: o.end.as_second(),
                    auto_start: o.auto_start,
                    status: status.into(),
                }
            })
            .collect()
    }

    async fn apply(&mut self, uid: u32) -> Result<String, ApiError> {
        let now = self.now();
        if self.state.in_progress() {
            let w = self.state.window().map(|w| w.id.clone()).unwrap_or_default();
            return Err(ApiError::new(
                errors::INVALID_STATE,
                format!("window {w} is already under way ({})", self.state.name()),
            ));
        }
        let Some(open) = self.store.schedule.current(now) else {
            let next = self
                .next_occurrence(now)
                .map(|o| format!("; the next window {} opens at {}", o.id, o.start))
                .unwrap_or_default();
            return Err(ApiError::new(errors::INVALID_STATE, format!("no window is open now{next}")));
        };
        // Running a window again (e.g. a new bundle appeared after it finished) is allowed while it is open.
        self.store.done.remove(&open.id);
        self.audit_log("operator", Some(&open.id), Some(uid), serde_json::json!({"action": "apply"}));
        let window = occurrence_ctx(&open);
        if !matches!(&self.state, State::Scheduled { window: w } if *w == window) {
            self.feed(Event::Schedule { window }).await;
        }
        self.feed(Event::Start).await;
        Ok(open.id)
    }

    fn reload(&mut self, uid: Option<u32>) -> Result<(), ApiError> {
        let settings = (self.loader)().map_err(|errs| {
            warn!(errors = %errs, "new policy rejected; the running one stays");
            self.audit_log("policy-rejected", None, uid, serde_json::json!({"errors": errs.to_string()}));
            ApiError::new(
                errors::POLICY_REJECTED,
                format!("policy rejected, the running policy stays in force:\n{errs}"),
            )
        })?;
        Schedule::check_recurring(&settings.windows, self.now()).map_err(|e| {
            ApiError::new(errors::POLICY_REJECTED, format!("policy rejected, the running policy stays in force: {e}"))
        })?;
        self.engine = Engine::new(engine_config(&settings));
        self.store.schedule.set_recurring(settings.windows.clone());
        let sources: Vec<String> = settings.sources.iter().map(|p| p.display().to_string()).collect();
        self.settings = settings;
        self.set_access_group();
        info!(files = sources.len(), "policy reloaded");
        self.audit_log("policy-reloaded", None, uid, serde_json::json!({"sources": sources}));
        Ok(())
    }

    /// The kernel's livepatches, each matched with the committed bundle it came from (by the module name of the
    /// bundle's extracted module).
    fn livepatches(&self) -> Vec<LivepatchInfo> {
        let state = self.sysroot.state_dir();
        let committed = crate::committed::Committed::load(&state.join("committed.json")).unwrap_or_default();
        let modules: Vec<(String, String)> = std::fs::read_dir(state.join("livepatch"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let info = crate::livepatch::ModInfo::read(&e.path()).ok()?;
                        Some((name, info.name))
                    })
                    .collect()
            })
            .unwrap_or_default();
        crate::livepatch::applied(&self.sysroot)
            .into_iter()
            .map(|p| {
                let origin = committed.bundles.iter().find(|(_, b)| {
                    let prefix = &b.digest[..16.min(b.digest.len())];
                    modules.iter().any(|(file, module)| file.starts_with(prefix) && *module == p.name)
                });
                LivepatchInfo {
                    name: p.name,
                    enabled: p.enabled,
                    in_transition: p.in_transition,
                    compatible: origin.map(|(c, _)| c.clone()).unwrap_or_default(),
                    version: origin.map(|(_, b)| b.version.clone()).unwrap_or_default(),
                    committed_at: origin.map(|(_, b)| b.committed_at.to_string()).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// At the end of a window: `downloads/`, `bundles/` and `livepatch/` keep only what is committed. Nothing is
    /// deleted when `committed.json` cannot be read.
    fn prune_state(&mut self, window: &str) {
        let committed = match crate::committed::Committed::load(&self.store_path.with_file_name("committed.json")) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "not pruning the state directory: what is committed is unknown");
                return;
            }
        };
        let (removed, problems) = crate::prune::prune(&self.sysroot.state_dir(), &committed);
        for p in &problems {
            warn!(problem = %p, "could not prune");
        }
        if !removed.is_empty() || !problems.is_empty() {
            let removed: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
            info!(window, files = removed.len(), "state directory pruned to what is committed");
            self.audit_log(
                "state-pruned",
                Some(window),
                None,
                serde_json::json!({"removed": removed, "problems": problems}),
            );
        }
    }

    fn rolled_back_path(&self) -> PathBuf {
        self.store_path.with_file_name("rolled-back.json")
    }

    /// Remembers that a window rolled `bundle` back, so the next one does not install it again on its own.
    fn record_rolled_back(&mut self, bundle: &crate::engine::VerifiedBundle, why: &str, now: Timestamp) {
        let rec = otpatch_common::api::RolledBackVersion {
            compatible: bundle.compatible.clone(),
            version: bundle.version.clone(),
            digest: bundle.digest.clone(),
            rolled_back_at: now,
            why: why.to_string(),
        };
        if let Err(e) = crate::rolled_back::RolledBack::record(&self.rolled_back_path(), rec) {
            error!(error = %e, version = %bundle.version, "could not record the rolled-back version");
            self.status.send_modify(|s| s.last_error = format!("recording the rollback of {}: {e}", bundle.version));
        }
        self.refresh_rolled_back();
    }

    /// Shows the rolled-back versions in the status (an unreadable record as the last error).
    fn refresh_rolled_back(&self) {
        match crate::rolled_back::RolledBack::load(&self.rolled_back_path()) {
            Ok(r) => self.status.send_modify(|s| s.rolled_back = r.versions),
            Err(e) => self.status.send_modify(|s| s.last_error = e),
        }
    }

    /// `otpatchctl retry VERSION`: the next window may install `version` again.
    fn retry(&mut self, version: &str, uid: u32) -> Result<(), ApiError> {
        let path = self.rolled_back_path();
        let gone =
            crate::rolled_back::RolledBack::forget(&path, version).map_err(|e| ApiError::new(errors::FAILED, e))?;
        if gone.is_empty() {
            let known = crate::rolled_back::RolledBack::load(&path).map(|r| r.versions).unwrap_or_default();
            let list = if known.is_empty() {
                "none is".to_string()
            } else {
                known.iter().map(|r| r.version.as_str()).collect::<Vec<_>>().join(", ") + " are"
            };
            return Err(ApiError::new(
                errors::NOT_FOUND,
                format!("{version} was not rolled back on this gateway (recorded as rolled back: {list})"),
            ));
        }
        info!(version, uid, "rolled-back version allowed again");
        for r in &gone {
            self.audit_log(
                "operator",
                None,
                Some(uid),
                serde_json::json!({"action": "retry", "compatible": r.compatible, "version": r.version, "digest": r.digest, "rolled_back_at": r.rolled_back_at.to_string(), "why": r.why}),
            );
        }
        self.refresh_rolled_back();
        Ok(())
    }

    fn set_access_group(&self) {
        if let Ok(mut g) = self.access_group.write() {
            *g = self.settings.access.group.clone();
        }
    }

    fn save_store(&mut self) {
        let now = self.now();
        self.store.schedule.prune(now);
        let text = serde_json::to_vec_pretty(&self.store).expect("window store serializes");
        if let Err(e) = write_atomic(&self.store_path, &text) {
            error!(error = %e, path = %self.store_path.display(), "could not save windows");
            self.status.send_modify(|s| s.last_error = format!("saving windows: {e}"));
        }
    }

    fn audit_log(&mut self, kind: &str, window: Option<&str>, uid: Option<u32>, detail: serde_json::Value) {
        let now = self.now();
        if let Err(e) = self.audit.append(now, kind, window, uid, detail) {
            error!(error = %e, kind, "audit log write failed");
        }
    }

    /// Publishes the status snapshot (only what changed wakes the watchers).
    fn publish(&self) {
        let now = self.now();
        let next = self.next_occurrence(now);
        let st = &self.state;
        let (active, active_end) = match st.window() {
            Some(w) if st.in_progress() => (w.id.clone(), w.end.as_second()),
            _ => (String::new(), 0),
        };
        let sources: Vec<String> = self.settings.sources.iter().map(|p| p.display().to_string()).collect();
        let gateway = self.settings.gateway.id.clone();
        self.status.send_if_modified(|s| {
            let mut n = s.clone();
            n.version = env!("CARGO_PKG_VERSION").into();
            n.gateway_id = gateway;
            n.state = st.name().into();
            n.active_window = active;
            n.active_window_end = active_end;
            n.next_window = next.as_ref().map(|o| o.id.clone()).unwrap_or_default();
            n.next_window_start = next.as_ref().map(|o| o.start.as_second()).unwrap_or(0);
            n.policy_sources = sources;
            n.segmentation_active = self.segmented;
            if n != *s {
                *s = n;
                true
            } else {
                false
            }
        });
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

#[cfg(test)]
mod tests;
