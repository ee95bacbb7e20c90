//! The D-Bus face of the daemon: `io.otpatch.Daemon1` at `/io/otpatch/Daemon1` on the system bus.
//!
//! Every mutating method checks the caller itself (root, or a member of the policy's access group) on top of
//! the bus policy file, so a permissive bus configuration does not open the daemon up. Reads are open to all.
//! State changes go out as `PropertiesChanged` and as the `Transition`, `HealthVerdict` and `WindowCompleted`
//! signals.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use otpatch_common::api::{DaemonError, WindowInfo, OBJECT_PATH};
use tokio::sync::{broadcast, oneshot};
use tracing::{info, warn};
use zbus::message::Header;
use zbus::names::ErrorName;
use zbus::object_server::SignalEmitter;
use zbus::Connection;

use crate::orchestrator::{ApiError, Command, Handle, Notice};
use crate::sysroot::Sysroot;

impl zbus::DBusError for ApiError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<zbus::message::Message> {
        zbus::message::Message::error(call, self.name()).build(&(self.message.as_str(),))
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(self.name)
    }

    fn description(&self) -> Option<&str> {
        Some(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<zbus::Error> for ApiError {
    fn from(e: zbus::Error) -> Self {
        ApiError::new(DaemonError::Failed, e.to_string())
    }
}

/// The most records one `GetAuditLog` call returns (`otpatchctl log` pages by 500).
pub const MAX_AUDIT_PAGE: usize = 10_000;

/// Who may call mutating methods: root, and members of this group.
#[derive(Debug, Clone)]
pub struct Access {
    pub group: Arc<RwLock<String>>,
    pub sysroot: Sysroot,
}

impl Access {
    /// Decides for a caller with `uid` and supplementary groups `gids` (as the bus reports them).
    pub fn check(&self, uid: u32, gids: &[u32], method: &str) -> Result<(), ApiError> {
        if uid == 0 {
            return Ok(());
        }
        let group = self.group.read().map(|g| g.clone()).unwrap_or_default();
        let etc_group = std::fs::read_to_string(self.sysroot.path("/etc/group")).unwrap_or_default();
        let etc_passwd = std::fs::read_to_string(self.sysroot.path("/etc/passwd")).unwrap_or_default();
        if let Some((gid, members)) = find_group(&etc_group, &group) {
            let user = find_user(&etc_passwd, uid);
            let allowed = gids.contains(&gid)
                || user.as_ref().is_some_and(|(name, primary)| *primary == gid || members.iter().any(|m| m == name));
            if allowed {
                return Ok(());
            }
        }
        Err(ApiError::new(
            DaemonError::AccessDenied,
            format!("uid {uid} may not call {method}: the caller must be root or a member of group {group:?}"),
        ))
    }
}

/// `(gid, members)` of a group in `/etc/group` text.
fn find_group(text: &str, name: &str) -> Option<(u32, Vec<String>)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            let members = f[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect();
            f[2].parse().ok().map(|gid| (gid, members))
        } else {
            None
        }
    })
}

/// `(name, primary gid)` of a uid in `/etc/passwd` text.
fn find_user(text: &str, uid: u32) -> Option<(String, u32)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[2].parse() == Ok(uid) {
            f[3].parse().ok().map(|gid| (f[0].to_string(), gid))
        } else {
            None
        }
    })
}

/// The object served at [`OBJECT_PATH`].
#[derive(Debug)]
pub struct DaemonIface {
    handle: Handle,
    access: Access,
}

impl DaemonIface {
    pub fn new(handle: Handle, access: Access) -> Self {
        DaemonIface { handle, access }
    }

    async fn authorize(&self, conn: &Connection, hdr: &Header<'_>, method: &str) -> Result<u32, ApiError> {
        let sender = hdr.sender().ok_or_else(|| ApiError::new(DaemonError::AccessDenied, "caller has no bus name"))?;
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let creds = dbus
            .get_connection_credentials(sender.clone().into())
            .await
            .map_err(|e| ApiError::new(DaemonError::AccessDenied, format!("cannot learn who is calling: {e}")))?;
        let uid = creds
            .unix_user_id()
            .ok_or_else(|| ApiError::new(DaemonError::AccessDenied, "the bus did not say which uid is calling"))?;
        let gids = creds.unix_group_ids().cloned().unwrap_or_default();
        match self.access.check(uid, &gids, method) {
            Ok(()) => Ok(uid),
            Err(e) => {
                warn!(uid, method, "refused: not authorized");
                Err(e)
            }
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command) -> Result<T, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.handle
            .commands
            .send(make(reply))
            .await
            .map_err(|_| ApiError::new(DaemonError::Failed, "the daemon is shutting down"))?;
        rx.await.map_err(|_| ApiError::new(DaemonError::Failed, "the daemon is shutting down"))?
    }
}

#[zbus::interface(name = "io.otpatch.Daemon1")]
impl DaemonIface {
    /// Schedules a one-off window; returns its id.
    async fn schedule_window(
        &self,
        start: String,
        duration: String,
        timezone: String,
        auto_start: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, ApiError> {
        let uid = self.authorize(conn, &hdr, "ScheduleWindow").await?;
        self.ask(|reply| Command::Schedule { start, duration, timezone, auto_start, uid, reply }).await
    }

    /// Cancels a window (or the work under way in it) by id.
    async fn cancel_window(
        &self,
        id: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), ApiError> {
        let uid = self.authorize(conn, &hdr, "CancelWindow").await?;
        self.ask(|reply| Command::Cancel { id, uid, reply }).await
    }

    /// Windows from now to `horizon_days` ahead.
    async fn list_windows(&self, horizon_days: u32) -> Result<Vec<WindowInfo>, ApiError> {
        if horizon_days == 0 || horizon_days > 366 {
            return Err(ApiError::new(
                DaemonError::InvalidArgs,
                format!("horizon_days {horizon_days}: expected 1 to 366"),
            ));
        }
        let horizon = Duration::from_secs(u64::from(horizon_days) * 86_400);
        self.ask(|reply| Command::List { horizon, reply }).await
    }

    /// Starts work now in the open window; returns its id.
    async fn apply(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, ApiError> {
        let uid = self.authorize(conn, &hdr, "Apply").await?;
        self.ask(|reply| Command::Apply { uid, reply }).await
    }

    /// Rolls back the change of the window under way.
    async fn rollback(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), ApiError> {
        let uid = self.authorize(conn, &hdr, "Rollback").await?;
        self.ask(|reply| Command::Rollback { uid, reply }).await
    }

    /// Re-reads the policy; a bad one is refused and the running one stays.
    async fn reload(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), ApiError> {
        let uid = self.authorize(conn, &hdr, "Reload").await?;
        self.ask(|reply| Command::Reload { uid: Some(uid), reply }).await
    }

    /// Lets a version that was rolled back on this gateway be installed again by the next window.
    async fn retry(
        &self,
        version: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), ApiError> {
        let uid = self.authorize(conn, &hdr, "Retry").await?;
        if version.trim().is_empty() {
            return Err(ApiError::new(DaemonError::InvalidArgs, "version is empty"));
        }
        self.ask(|reply| Command::Retry { version, uid, reply }).await
    }

    /// The status snapshot as JSON.
    async fn get_status(&self) -> Result<String, ApiError> {
        // From the snapshot the loop keeps (segmentation view included): any number of readers of any uid never
        // wait for, or make work for, the window's loop.
        let snap = self.handle.status.borrow().clone();
        serde_json::to_string(&snap).map_err(|e| ApiError::new(DaemonError::Failed, e.to_string()))
    }

    /// Livepatches as the kernel shows them, with the committed bundle each came from, as JSON.
    async fn list_livepatches(&self) -> Result<String, ApiError> {
        let list = self.ask(|reply| Command::Livepatches { reply }).await?;
        serde_json::to_string(&list).map_err(|e| ApiError::new(DaemonError::Failed, e.to_string()))
    }

    /// The live health-probe table as JSON (name, target, last value and error, failures, tripped...).
    async fn get_health(&self) -> Result<String, ApiError> {
        let table = self.ask(|reply| Command::Health { reply }).await?;
        serde_json::to_string(&table).map_err(|e| ApiError::new(DaemonError::Failed, e.to_string()))
    }

    /// Audit records (JSON lines) from `from_seq`, at most `max`.
    async fn get_audit_log(&self, from_seq: u64, max: u32) -> Result<Vec<String>, ApiError> {
        if max == 0 {
            return Err(ApiError::new(DaemonError::InvalidArgs, "max must be at least 1"));
        }
        // Read off the loop (and off the runtime), at most MAX_AUDIT_PAGE records a call.
        let path = self.access.sysroot.state_dir().join("audit.log");
        let max = (max as usize).min(MAX_AUDIT_PAGE);
        tokio::task::spawn_blocking(move || crate::audit::read_file(&path, from_seq, max))
            .await
            .map_err(|e| ApiError::new(DaemonError::Failed, format!("reading the audit log: {e}")))?
            .map_err(|e| ApiError::new(DaemonError::Failed, format!("reading the audit log: {e}")))
    }

    /// Engine state, e.g. `observing`.
    #[zbus(property)]
    async fn state(&self) -> String {
        self.handle.status.borrow().state.clone()
    }

    /// Id of the window under way, empty when none.
    #[zbus(property)]
    async fn active_window(&self) -> String {
        self.handle.status.borrow().active_window.clone()
    }

    /// Last error, empty when the last window went well.
    #[zbus(property)]
    async fn last_error(&self) -> String {
        self.handle.status.borrow().last_error.clone()
    }

    /// `(percent, message)`; percent is -1 when unknown.
    #[zbus(property)]
    async fn progress(&self) -> (i32, String) {
        let s = self.handle.status.borrow();
        (s.progress_percent, s.progress_message.clone())
    }

    /// Daemon version.
    #[zbus(property)]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// A state transition.
    #[zbus(signal)]
    async fn transition(
        emitter: &SignalEmitter<'_>,
        window: &str,
        from: &str,
        to: &str,
        event: &str,
    ) -> zbus::Result<()>;

    /// A health verdict: `healthy`, `degraded` or `failed`, with the reason.
    #[zbus(signal)]
    async fn health_verdict(emitter: &SignalEmitter<'_>, window: &str, verdict: &str, reason: &str)
        -> zbus::Result<()>;

    /// Per-probe results (JSON, as `GetHealth`) when a verdict is reached; sent just before `HealthVerdict`.
    #[zbus(signal)]
    async fn probe_results(emitter: &SignalEmitter<'_>, window: &str, probes: &str) -> zbus::Result<()>;

    /// A window closed with its outcome (`committed 1.2`, `rolled-back: ...`, `failed: ...`, `up-to-date`).
    #[zbus(signal)]
    async fn window_completed(emitter: &SignalEmitter<'_>, window: &str, outcome: &str) -> zbus::Result<()>;
}

/// Serves the interface on `conn` (name already requested by the caller) and forwards the orchestrator's
/// notices and status changes as signals until the connection closes.
pub async fn serve(conn: &Connection, handle: Handle, access: Access) -> zbus::Result<()> {
    let iface = DaemonIface::new(handle.clone(), access);
    conn.object_server().at(OBJECT_PATH, iface).await?;
    let iref = conn.object_server().interface::<_, DaemonIface>(OBJECT_PATH).await?;

    let mut notices = handle.notices.subscribe();
    let signals = iref.clone();
    tokio::spawn(async move {
        loop {
            let n = match notices.recv().await {
                Ok(n) => n,
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    warn!(missed = k, "signal forwarding lagged");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            let em = signals.signal_emitter();
            let r = match &n {
                Notice::Transition { window, from, to, event } => {
                    DaemonIface::transition(em, window, from, to, event).await
                }
                Notice::HealthVerdict { window, verdict, reason } => {
                    DaemonIface::health_verdict(em, window, verdict, reason).await
                }
                Notice::WindowCompleted { window, outcome } => DaemonIface::window_completed(em, window, outcome).await,
                Notice::ProbeResults { window, probes } => DaemonIface::probe_results(em, window, probes).await,
            };
            if let Err(e) = r {
                warn!(error = %e, "could not emit signal");
            }
        }
    });

    let mut status = handle.status.clone();
    tokio::spawn(async move {
        let mut last = status.borrow().clone();
        while status.changed().await.is_ok() {
            let now = status.borrow_and_update().clone();
            let iface = iref.get().await;
            let em = iref.signal_emitter();
            let mut r = Ok(());
            if now.state != last.state {
                r = r.and(iface.state_changed(em).await);
            }
            if now.active_window != last.active_window {
                r = r.and(iface.active_window_changed(em).await);
            }
            if now.last_error != last.last_error {
                r = r.and(iface.last_error_changed(em).await);
            }
            if (now.progress_percent, &now.progress_message) != (last.progress_percent, &last.progress_message) {
                r = r.and(iface.progress_changed(em).await);
            }
            if let Err(e) = r {
                warn!(error = %e, "could not emit property change");
            }
            last = now;
        }
    });
    info!(path = OBJECT_PATH, "D-Bus interface served");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn access(dir: &Path) -> Access {
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/group"), "root:x:0:\notpatch:x:977:alice\nstaff:x:50:\n").unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:977::/:/bin/sh\ncarol:x:1002:1002::/:/bin/sh\n",
        )
        .unwrap();
        Access { group: Arc::new(RwLock::new("otpatch".into())), sysroot: Sysroot::new(dir) }
    }

    #[test]
    fn root_and_group_members_may_mutate_others_may_not() {
        let d = tempfile::tempdir().unwrap();
        let a = access(d.path());
        assert!(a.check(0, &[], "Apply").is_ok());
        assert!(a.check(1000, &[], "Apply").is_ok(), "listed member");
        assert!(a.check(1001, &[], "Apply").is_ok(), "primary group");
        assert!(a.check(1002, &[977], "Apply").is_ok(), "supplementary gid from the bus");
        let e = a.check(1002, &[50], "Apply").unwrap_err();
        assert_eq!(e.name, DaemonError::AccessDenied.name());
        assert!(e.message.contains("uid 1002") && e.message.contains("otpatch"), "{e}");
        let e = a.check(65534, &[], "Reload").unwrap_err();
        assert!(e.message.contains("Reload"));
    }

    #[test]
    fn a_missing_group_denies_everyone_but_root() {
        let d = tempfile::tempdir().unwrap();
        let a = access(d.path());
        *a.group.write().unwrap() = "nosuchgroup".into();
        assert!(a.check(1000, &[977], "Apply").is_err());
        assert!(a.check(0, &[], "Apply").is_ok());
    }
}
