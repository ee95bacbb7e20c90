//! Start-up, before the daemon serves D-Bus: open the state, recover an interrupted window, put committed
//! livepatches back, and observe a staged A/B slot that booted outside a window.

use otpatch_common::audit::AuditEvent;
use std::sync::Arc;
use std::time::Duration;

use otpatch_common::api::StatusSnapshot;
use otpatch_common::policy::Settings;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{error, info, warn};

use super::{engine_config, Command, Handle, Orchestrator, Out, Policy, PolicyLoader, Run, Setup, WindowStore};
use crate::audit::AuditLog;
use crate::backend::Backends;
use crate::engine::{Engine, Event, State, WindowCtx};
use crate::failpoints::Failpoints;
use crate::journal::Journal;
use crate::sysroot::Sysroot;

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
            setup: Setup {
                sysroot: sysroot.clone(),
                store_path,
                loader,
                rebuild: None,
                watchdog: None,
                failpoints,
                default_tz,
            },
            policy: Policy { engine: Engine::new(engine_config(&settings)), settings, backends },
            run: Run {
                state: loaded.state.clone(),
                inflight: None,
                lift_failures: 0,
                segmented: false,
                rebuild_pending: false,
                store,
                last_lift: Arc::new(std::sync::Mutex::new(None)),
                skip_note: Arc::new(std::sync::Mutex::new(None)),
            },
            out: Out {
                journal,
                audit,
                status: Arc::new(status_tx),
                notices: notices.clone(),
                access_group: Arc::new(std::sync::RwLock::new(String::new())),
            },
        };
        me.run.store.schedule.set_recurring(me.policy.settings.windows.clone());
        me.set_access_group();
        me.refresh_rolled_back();
        problems.extend(loaded.problems);
        problems.extend(audit_problems);
        for p in &problems {
            warn!(problem = %p, "state problem found at start");
        }
        me.audit_log(
            None,
            None,
            AuditEvent::DaemonStart {
                version: env!("CARGO_PKG_VERSION").into(),
                journal_state: loaded.state.name().into(),
                problems,
            },
        );
        me.recover().await;
        me.reapply_committed().await;
        me.confirm_staged().await;
        me.confirm_booted().await;
        let handle = Handle { commands: cmd_tx, access_group: me.out.access_group.clone(), status: status_rx, notices };
        Ok((me, handle, cmd_rx))
    }

    pub(super) async fn recover(&mut self) {
        let now = self.now();
        let open = self.run.state.window().is_some_and(|w| w.start <= now && now < w.end);
        let before = self.run.state.clone();
        let (next, actions) = self.policy.engine.recover(&before, open);
        let mut journaled = Ok(());
        if next != before {
            info!(from = before.name(), to = next.name(), window_open = open, "recovering interrupted window");
            journaled = self.enter(next, "recover");
        }
        if before.in_progress() {
            self.audit_log(
                before.window().map(|w| w.id.clone()).as_deref(),
                None,
                AuditEvent::Recovery {
                    journal_state: before.name().into(),
                    resumed_as: self.run.state.name().into(),
                    window_open: open,
                },
            );
        }
        if let Err(error) = journaled {
            // As in feed: no action of a state that is not on disk.
            let stop = Event::JournalFailed { error };
            if matches!(self.policy.engine.step(&self.run.state, &stop), Ok((s, _)) if s != self.run.state) {
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

    /// At start, after recovery and `confirm_staged`: the slot the gateway runs came up, so the bootloader is told
    /// it is good — also when this boot recovers a window (a power cut in a livepatch window, or in an A/B window
    /// before its install: the slot did not change, and leaving it unmarked would leave a one-try bootloader
    /// nothing to boot next time). The boot into a freshly installed slot, or after an install nobody saw end, is
    /// never marked here: the A/B updater refuses those by its install record, so that slot is kept only by its
    /// observation. A failure is reported, not fatal: the bootloader then falls back on the next boot.
    pub(super) async fn confirm_booted(&mut self) {
        match self.policy.backends.ab_updater.confirm_booted().await {
            Ok(Some(slot)) => info!(slot = %slot, "ordinary boot: the booted slot is marked good"),
            Ok(None) => {}
            Err(e) => {
                error!(error = %e, "cannot mark the booted slot good: the bootloader may fall back on the next boot");
                self.out.status.send_modify(|s| s.last_error = format!("marking the booted slot good: {e}"));
            }
        }
    }

    /// At start, with no window in progress: an A/B slot that a window staged (installed, reboot pending) and that
    /// the gateway now runs is observed before it is kept — the same observation, commit and rollback as inside a
    /// window, in a span of its own (`<window>-confirm`, twice the observation period plus ten minutes).
    pub(super) async fn confirm_staged(&mut self) {
        if self.run.state.in_progress() {
            return;
        }
        let bundle = match self.policy.backends.ab_updater.unconfirmed().await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                error!(error = %e, "cannot tell whether a staged A/B update is running");
                self.out.status.send_modify(|s| s.last_error = format!("staged A/B update: {e}"));
                return;
            }
        };
        let now = self.now();
        let span = self.policy.settings.rollback.observation * 2 + Duration::from_secs(600);
        let end = now + jiff::SignedDuration::try_from(span).unwrap_or(jiff::SignedDuration::from_hours(1));
        let id = format!("ab-{}-confirm", bundle.version);
        let window = WindowCtx { id: id.clone(), start: now, end, auto_start: true };
        warn!(window = %id, version = %bundle.version, "running a staged A/B update that was never confirmed: observing it");
        self.audit_log(
            Some(&id),
            None,
            AuditEvent::StagedBoot { version: bundle.version.clone(), digest: bundle.digest.clone() },
        );
        if let Err(e) = self.policy.backends.health.baseline().await {
            // Without a baseline the observation still checks the probes' limits; say what is missing.
            warn!(error = %e, "no health baseline for the staged update's observation");
        }
        self.feed(Event::StagedBooted { window, bundle }).await;
        self.publish();
    }

    /// At start, before the daemon reports READY: every livepatch a window committed is put back if the kernel
    /// does not have it (after a reboot), from its bundle, verified again. A committed change is never applied a
    /// second time while it is in place.
    pub(super) async fn reapply_committed(&mut self) {
        let path = self.setup.sysroot.committed_file();
        let committed = match crate::committed::Committed::load(&path) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "cannot read what was committed; nothing re-applied");
                self.out.status.send_modify(|s| s.last_error = e.clone());
                return;
            }
        };
        let patcher = self.policy.backends.livepatcher.clone();
        for r in crate::committed::reapply_livepatches(&committed, patcher.as_ref(), self.progress_fn()).await {
            if let Some(event) = r.audit_event(None) {
                self.audit_log(None, None, event);
            }
            let (compatible, c) = (r.compatible, r.bundle);
            match r.result {
                Ok(false) => {}
                Ok(true) => info!(version = %c.version, "committed livepatch re-applied at start"),
                Err(e) => {
                    error!(version = %c.version, error = %e, "could not re-apply the committed livepatch");
                    let why = format!("{} ({compatible}): {e}", c.version);
                    self.out.status.send_modify(|s| {
                        s.last_error = format!("re-applying {}: {e}", c.version);
                        s.committed_not_in_place.push(why);
                    });
                }
            }
        }
    }
}
