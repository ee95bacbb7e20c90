//! Runs windows: feeds the engine, journals every transition before its actions run, executes the actions
//! through the backends, and answers the D-Bus service's commands.
//!
//! One task owns all mutable state; the D-Bus service talks to it through [`Command`]s and reads a
//! [`StatusSnapshot`] from a watch channel. At most one driving action is in flight; a deadline, a cancel or an
//! operator rollback preempts it (the future is dropped and the engine decides what comes next).
//!
//! The rooms, each calling only the ones after it (and this file's basics), never back:
//! - this file: the struct, its field groups, the event loop and shutdown;
//! - `startup`: opening the state, recovery, committed livepatches put back, a staged A/B slot confirmed;
//! - `commands`: one method per D-Bus command behind a thin dispatch;
//! - `walk`: events fed to the engine, transitions journaled first, timers and the schedule;
//! - `actions`: the effects of a state run inline, its driving step started;
//! - `drive`: one free function per driving step, over the backends and plain arguments;
//! - `store`: the records beside the journal (windows, rolled-back versions, what was committed, pruning);
//! - `status`: the status snapshot, progress, errors, the audit log and notices.

mod actions;
mod commands;
mod drive;
mod startup;
mod status;
mod store;
mod walk;

use otpatch_common::audit::AuditEvent;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use otpatch_common::api::StatusSnapshot;
use otpatch_common::policy::{DegradedAction, PolicyErrors, RebootPolicy, Settings};
use otpatch_common::schedule::Occurrence;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{error, info};

use crate::audit::AuditLog;
use crate::backend::{Backends, BoxFuture, LiftReport};
use crate::engine::{Engine, EngineConfig, Event, State, WindowCtx};
use crate::failpoints::Failpoints;
use crate::journal::Journal;
use crate::sysroot::Sysroot;

pub use commands::{ApiError, Command, LivepatchInfo};
use store::WindowStore;

/// What the D-Bus service turns into signals: the daemon's signals themselves.
pub use otpatch_common::api::Signal as Notice;

/// Builds the backends for a policy (a reload changes probes, the patch server, the firewall backend...).
pub type BackendFactory = Arc<dyn Fn(Settings) -> BoxFuture<'static, anyhow::Result<Backends>> + Send + Sync>;

/// Reloads the policy from disk.
pub type PolicyLoader = Arc<dyn Fn() -> Result<Settings, PolicyErrors> + Send + Sync>;

/// The orchestrator and the channels to talk to it. Its fields are grouped by how long they hold: what the daemon
/// was started with, the policy in force (replaced on reload), the run (changed by every event), and where it
/// reports.
pub struct Orchestrator {
    setup: Setup,
    policy: Policy,
    run: Run,
    out: Out,
}

/// Fixed for the daemon's life.
struct Setup {
    sysroot: Sysroot,
    /// `windows.json`; the other records are beside it.
    store_path: PathBuf,
    loader: PolicyLoader,
    /// Rebuilds the backends after a reload; None keeps them (tests).
    rebuild: Option<BackendFactory>,
    /// systemd's watchdog: its period and the ping, sent by the loop itself (see [`Orchestrator::with_watchdog`]).
    watchdog: Option<(Duration, Watchdog)>,
    failpoints: Failpoints,
    default_tz: String,
}

/// The policy in force and what is built from it; a reload replaces the settings and the engine, and the
/// backends when no window is under way.
struct Policy {
    settings: Settings,
    engine: Engine,
    backends: Backends,
}

/// What the walk changes.
struct Run {
    state: State,
    /// The driving action under way.
    inflight: Option<BoxFuture<'static, Event>>,
    lift_failures: u32,
    /// Whether this daemon applied segmentation that it has not lifted yet.
    segmented: bool,
    /// A reload came while a window was under way: rebuild when it ends.
    rebuild_pending: bool,
    store: WindowStore,
    /// What the last lift found, for the audit log.
    last_lift: Arc<std::sync::Mutex<Option<LiftReport>>>,
    /// Why the fetch of the window under way installs nothing though the server has a newer bundle (a version
    /// rolled back here): added to the window's `up-to-date` outcome.
    skip_note: Arc<std::sync::Mutex<Option<String>>>,
}

/// Where the orchestrator reports: the write-ahead journal, the audit log, and what the D-Bus service reads.
struct Out {
    journal: Journal,
    audit: AuditLog,
    status: Arc<watch::Sender<StatusSnapshot>>,
    notices: broadcast::Sender<Notice>,
    access_group: Arc<std::sync::RwLock<String>>,
}

/// How often the status snapshot's segmentation view (drop counters) is refreshed while segmented.
const SEGMENTATION_VIEW_EVERY: Duration = Duration::from_secs(5);

/// Tells systemd the daemon is alive (`WATCHDOG=1`).
pub type Watchdog = Arc<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator").field("state", &self.run.state.name()).finish_non_exhaustive()
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

impl Orchestrator {
    fn now(&self) -> Timestamp {
        self.policy.backends.clock.now()
    }

    /// The next window whose work is not done, within the horizon the status and the schedule look at.
    fn next_occurrence(&self, now: Timestamp) -> Option<Occurrence> {
        let horizon = Duration::from_secs(8 * 86_400) + self.policy.settings.limits.max_window;
        self.run.store.schedule.upcoming(now, horizon).into_iter().find(|o| !self.run.store.done.contains(&o.id))
    }

    /// Backends are rebuilt from the new policy on reload (immediately, or when the window under way ends).
    pub fn with_rebuild(mut self, factory: BackendFactory) -> Self {
        self.setup.rebuild = Some(factory);
        self
    }

    /// Pings systemd's watchdog from the event loop, every half `period`: only a loop that still turns pings, so a
    /// wedged loop (a handler that never returns) gets the daemon restarted by systemd. Every wait of the loop
    /// is bounded, and blocking work runs off it, so a healthy loop always comes round in time.
    pub fn with_watchdog(mut self, period: Duration, ping: Watchdog) -> Self {
        self.setup.watchdog = Some((period, ping));
        self
    }

    async fn rebuild_backends(&mut self) {
        let Some(factory) = self.setup.rebuild.clone() else { return };
        self.run.rebuild_pending = false;
        match factory(self.policy.settings.clone()).await {
            Ok(b) => {
                self.policy.backends = b;
                info!("backends rebuilt from the reloaded policy");
            }
            Err(e) => {
                error!(error = %e, "could not rebuild the backends from the reloaded policy; keeping the old ones");
                self.out.status.send_modify(|s| s.last_error = format!("reload: backends not rebuilt: {e}"));
            }
        }
    }

    pub fn state(&self) -> &State {
        &self.run.state
    }

    /// Runs until `shutdown` resolves; then lifts segmentation (the unit's stop path) and returns.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut dog = self.setup.watchdog.clone().map(|(period, ping)| {
            let mut tick = tokio::time::interval((period / 2).max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (tick, ping)
        });
        let mut view_tick = tokio::time::interval(SEGMENTATION_VIEW_EVERY);
        view_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Each turn handles one thing; every wait is bounded by a timer, a command or an action finishing.
        loop {
            if self.run.rebuild_pending && !self.run.state.in_progress() {
                self.rebuild_backends().await;
            }
            self.sync_schedule().await;
            self.publish();
            let timer = self.next_timer();
            let clock = self.policy.backends.clock.clone();
            let sleep = async {
                match timer {
                    Some((at, _)) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let inflight = async {
                match self.run.inflight.as_mut() {
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
                _ = view_tick.tick(), if self.run.segmented => self.refresh_segmentation_view().await,
                ev = inflight => {
                    self.run.inflight = None;
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
        self.run.inflight = None;
        let health = self.policy.backends.health.clone();
        health.stop_watch().await;
        self.run.segmented = false;
        // Segmentation never outlives the daemon: on restart, recovery segments again if the window is open.
        match self.policy.backends.firewall.lift().await {
            Ok(r) if r.was_active => {
                info!(dropped = r.dropped_packets, "segmentation lifted on shutdown");
                self.audit_log(
                    None,
                    None,
                    AuditEvent::Shutdown { lifted: true, dropped_packets: Some(r.dropped_packets) },
                );
            }
            Ok(_) => self.audit_log(None, None, AuditEvent::Shutdown { lifted: false, dropped_packets: None }),
            Err(e) => error!(error = %e, "could not lift segmentation on shutdown"),
        }
    }
}

#[cfg(test)]
mod tests;
