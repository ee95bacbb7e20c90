//! Answers the D-Bus service's commands: [`Orchestrator::handle`] dispatches, one small method per command.

use otpatch_common::audit::{AuditEvent, OperatorAction};
use std::time::Duration;

use otpatch_common::api::{DaemonError, StatusSnapshot, WindowInfo};
use otpatch_common::schedule::{OneOffRequest, OneOffWindow, Schedule, WindowSource};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{engine_config, occurrence_ctx, Orchestrator};
use crate::engine::{Engine, Event, State};

/// An error for a D-Bus caller: a stable error name from [`errors`] and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: DaemonError,
    /// `kind`'s name on the bus.
    pub name: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: DaemonError, message: impl Into<String>) -> Self {
        ApiError { kind, name: kind.name(), message: message.into() }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

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

pub use otpatch_common::api::LivepatchInfo;

impl Orchestrator {
    /// Answers one command: each has its method; the reply is sent whatever it returns.
    pub(super) async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Schedule { start, duration, timezone, auto_start, uid, reply } => {
                let _ = reply.send(self.schedule(start, duration, timezone, auto_start, uid));
            }
            Command::Cancel { id, uid, reply } => {
                let _ = reply.send(self.cancel(&id, uid).await);
            }
            Command::List { horizon, reply } => {
                let _ = reply.send(Ok(self.list(horizon)));
            }
            Command::Apply { uid, reply } => {
                let _ = reply.send(self.apply(uid).await);
            }
            Command::Rollback { uid, reply } => {
                let _ = reply.send(self.rollback(uid).await);
            }
            Command::Reload { uid, reply } => {
                let _ = reply.send(self.reload_and_rebuild(uid).await);
            }
            Command::Livepatches { reply } => {
                let _ = reply.send(Ok(self.livepatches()));
            }
            Command::Health { reply } => {
                let _ = reply.send(Ok(self.policy.backends.health.probes()));
            }
            Command::Status { reply } => {
                let _ = reply.send(Ok(self.out.status.borrow().clone()));
            }
            Command::Retry { version, uid, reply } => {
                let _ = reply.send(self.retry(&version, uid));
            }
            Command::AuditLog { from_seq, max, reply } => {
                let _ = reply.send(self.audit_records(from_seq, max));
            }
        }
    }

    /// `otpatchctl rollback`: while a change is being applied or observed.
    async fn rollback(&mut self, uid: u32) -> Result<(), ApiError> {
        if self.run.state.change_pending() {
            self.audit_log(
                self.run.state.window().map(|w| w.id.clone()).as_deref(),
                Some(uid),
                AuditEvent::Operator(OperatorAction::Rollback),
            );
            self.feed(Event::RollbackRequested { uid }).await;
            Ok(())
        } else {
            Err(ApiError::new(
                DaemonError::InvalidState,
                format!("nothing to roll back: the engine is {} (rollback is possible while a change is being applied or observed)", self.run.state.name()),
            ))
        }
    }

    /// `otpatchctl reload` and SIGHUP: the policy now, the backends now or when the window under way ends.
    async fn reload_and_rebuild(&mut self, uid: Option<u32>) -> Result<(), ApiError> {
        let r = self.reload(uid);
        if r.is_ok() && self.setup.rebuild.is_some() {
            if self.run.state.in_progress() {
                // The window under way keeps the backends it started with.
                self.run.rebuild_pending = true;
            } else {
                self.rebuild_backends().await;
            }
        }
        r
    }

    /// `otpatchctl log`: up to `max` (at most 10,000) audit records from `from_seq` on.
    fn audit_records(&self, from_seq: u64, max: u32) -> Result<Vec<String>, ApiError> {
        self.out
            .audit
            .read(from_seq, max.min(10_000) as usize)
            .map_err(|e| ApiError::new(DaemonError::Failed, format!("reading the audit log: {e}")))
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
            .map_err(|e| ApiError::new(DaemonError::InvalidArgs, format!("duration: {e}")))?;
        let req = OneOffRequest { start, duration, timezone: (!tz.is_empty()).then_some(tz), auto_start };
        let zone = req.timezone.clone().unwrap_or_else(|| self.setup.default_tz.clone());
        // The id is derived from the start, so parse once to learn it, then build the window with it.
        let probe = OneOffWindow::from_request(
            &req,
            &self.setup.default_tz,
            now,
            self.policy.settings.limits.max_window,
            String::new(),
            Some(uid),
        )
        .map_err(|e| ApiError::new(DaemonError::WindowRefused, e.to_string()))?;
        // Ids of windows that already ran (or were cancelled) are never reused: a reused one would count as done.
        let done = &self.run.store.done;
        let id = self.run.store.schedule.new_id(probe.start, &zone, &|id| done.contains(id));
        let w = OneOffWindow { id: id.clone(), ..probe };
        let occ = self
            .run
            .store
            .schedule
            .add(w, now)
            .map_err(|e| ApiError::new(DaemonError::WindowRefused, e.to_string()))?;
        self.save_store();
        info!(window = %id, start = %occ.start, end = %occ.end, uid, "window scheduled");
        self.audit_log(
            Some(&id),
            Some(uid),
            AuditEvent::Operator(OperatorAction::Schedule {
                start: occ.start.to_string(),
                end: occ.end.to_string(),
                auto_start,
            }),
        );
        Ok(id)
    }

    async fn cancel(&mut self, id: &str, uid: u32) -> Result<(), ApiError> {
        let now = self.now();
        let active = self.run.state.in_progress() && self.run.state.window().is_some_and(|w| w.id == id);
        if active {
            self.audit_log(
                Some(id),
                Some(uid),
                AuditEvent::Operator(OperatorAction::Cancel { while_state: Some(self.run.state.name().to_string()) }),
            );
            let before = self.run.state.clone();
            self.feed(Event::Cancel { uid }).await;
            if self.run.state == before {
                return Err(ApiError::new(
                    DaemonError::InvalidState,
                    format!("window {id} is already finishing ({}); it cannot be cancelled now", before.name()),
                ));
            }
            return Ok(());
        }
        self.run.store.schedule.cancel(id, now).map_err(|e| ApiError::new(DaemonError::NotFound, e.to_string()))?;
        self.save_store();
        self.audit_log(Some(id), Some(uid), AuditEvent::Operator(OperatorAction::Cancel { while_state: None }));
        Ok(())
    }

    fn list(&self, horizon: Duration) -> Vec<WindowInfo> {
        let now = self.now();
        let active_id = self.run.state.window().filter(|_| self.run.state.in_progress()).map(|w| w.id.clone());
        self.run
            .store
            .schedule
            .upcoming(now, horizon)
            .into_iter()
            .map(|o| {
                let status = if Some(&o.id) == active_id.as_ref() {
                    "active"
                } else if self.run.store.done.contains(&o.id) {
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
        if self.run.state.in_progress() {
            let w = self.run.state.window().map(|w| w.id.clone()).unwrap_or_default();
            return Err(ApiError::new(
                DaemonError::InvalidState,
                format!("window {w} is already under way ({})", self.run.state.name()),
            ));
        }
        let Some(open) = self.run.store.schedule.current(now) else {
            let next = self
                .next_occurrence(now)
                .map(|o| format!("; the next window {} opens at {}", o.id, o.start))
                .unwrap_or_default();
            return Err(ApiError::new(DaemonError::InvalidState, format!("no window is open now{next}")));
        };
        // Running a window again (e.g. a new bundle appeared after it finished) is allowed while it is open.
        self.run.store.done.remove(&open.id);
        self.audit_log(Some(&open.id), Some(uid), AuditEvent::Operator(OperatorAction::Apply));
        let window = occurrence_ctx(&open);
        if !matches!(&self.run.state, State::Scheduled { window: w } if *w == window) {
            self.feed(Event::Schedule { window }).await;
        }
        self.feed(Event::Start).await;
        Ok(open.id)
    }

    fn reload(&mut self, uid: Option<u32>) -> Result<(), ApiError> {
        let settings = (self.setup.loader)().map_err(|errs| {
            warn!(errors = %errs, "new policy rejected; the running one stays");
            self.audit_log(None, uid, AuditEvent::PolicyRejected { errors: errs.to_string() });
            ApiError::new(
                DaemonError::PolicyRejected,
                format!("policy rejected, the running policy stays in force:\n{errs}"),
            )
        })?;
        Schedule::check_recurring(&settings.windows, self.now()).map_err(|e| {
            ApiError::new(
                DaemonError::PolicyRejected,
                format!("policy rejected, the running policy stays in force: {e}"),
            )
        })?;
        self.policy.engine = Engine::new(engine_config(&settings));
        self.run.store.schedule.set_recurring(settings.windows.clone());
        let sources: Vec<String> = settings.sources.iter().map(|p| p.display().to_string()).collect();
        self.policy.settings = settings;
        self.set_access_group();
        info!(files = sources.len(), "policy reloaded");
        self.audit_log(None, uid, AuditEvent::PolicyReloaded { sources });
        Ok(())
    }

    /// The kernel's livepatches, each matched with the committed bundle it came from (by the module name of the
    /// bundle's extracted module).
    fn livepatches(&self) -> Vec<LivepatchInfo> {
        let state = self.setup.sysroot.state_dir();
        let committed = crate::committed::Committed::load(&self.setup.sysroot.committed_file()).unwrap_or_default();
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
        crate::livepatch::applied(&self.setup.sysroot)
            .into_iter()
            .map(|p| {
                let origin = committed.records().find(|(_, b)| {
                    let prefix = &b.digest[..16.min(b.digest.len())];
                    modules.iter().any(|(file, module)| file.starts_with(prefix) && *module == p.name)
                });
                LivepatchInfo {
                    name: p.name,
                    enabled: p.enabled,
                    in_transition: p.in_transition,
                    compatible: origin.map(|(c, _)| c.to_string()).unwrap_or_default(),
                    version: origin.map(|(_, b)| b.version.clone()).unwrap_or_default(),
                    committed_at: origin.map(|(_, b)| b.committed_at.to_string()).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// `otpatchctl retry VERSION`: the next window may install `version` again.
    fn retry(&mut self, version: &str, uid: u32) -> Result<(), ApiError> {
        let path = self.rolled_back_path();
        let gone = crate::rolled_back::RolledBack::forget(&path, version)
            .map_err(|e| ApiError::new(DaemonError::Failed, e))?;
        if gone.is_empty() {
            let known = crate::rolled_back::RolledBack::load(&path).map(|r| r.versions).unwrap_or_default();
            let list = if known.is_empty() {
                "none is".to_string()
            } else {
                known.iter().map(|r| r.version.as_str()).collect::<Vec<_>>().join(", ") + " are"
            };
            return Err(ApiError::new(
                DaemonError::NotFound,
                format!("{version} was not rolled back on this gateway (recorded as rolled back: {list})"),
            ));
        }
        info!(version, uid, "rolled-back version allowed again");
        for r in &gone {
            self.audit_log(
                None,
                Some(uid),
                AuditEvent::Operator(OperatorAction::Retry {
                    compatible: r.compatible.clone(),
                    version: r.version.clone(),
                    digest: r.digest.clone(),
                    rolled_back_at: r.rolled_back_at.to_string(),
                    why: r.why.clone(),
                }),
            );
        }
        self.refresh_rolled_back();
        Ok(())
    }
}

fn source_text(s: &WindowSource) -> String {
    match s {
        WindowSource::OneOff => "one-off".into(),
        WindowSource::Recurring(name) => format!("recurring:{name}"),
    }
}
