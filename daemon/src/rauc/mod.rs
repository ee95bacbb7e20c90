//! The A/B path: a RAUC bundle goes into the inactive slot through the RAUC service on the system bus, the gateway
//! reboots into it (inside the window, when the policy allows), and the slot is kept only after the health
//! observation passed there.
//!
//! What the updater remembers between boots is one small record, `<state>/ab-install.json`: which window installed
//! which bundle (as verified) into which slot, from which slot. Everything else is asked of RAUC (`BootSlot`, `GetPrimary`,
//! `GetSlotStatus`), so the record and RAUC can disagree only in a way the code checks:
//!
//! - `revert` on the old slot: the installed slot is marked bad and the booted one active again (idempotent, no
//!   reboot); on the new slot: the booted slot is marked bad, the other one active, and the gateway reboots into
//!   it (the journal is in `RollingBack`, so the next start finishes the rollback on the old slot).
//! - `commit` marks the booted slot good, and only when it is the installed one.
//!
//! Boot-attempt counting stays with the bootloader: nothing here marks a slot good before the observation.

pub mod proxy;

use std::collections::HashMap;
use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use zbus::Variant as Value;

use crate::backend::{Applied, BackendError, BackendResult, Patcher, ProgressFn, Rebooter};
use crate::engine::VerifiedBundle;
use proxy::{slot_str, InstallerProxy, RAUC_BUS_NAME};

/// Bounds on every wait for RAUC.
#[derive(Debug, Clone, Copy)]
pub struct RaucLimits {
    /// One method call or property read.
    pub call: Duration,
    /// A whole installation, from `InstallBundle` to `Completed`.
    pub install: Duration,
    /// Waiting for RAUC to be idle (another installation under way) or to appear on the bus at boot.
    pub settle: Duration,
    /// How long the system may take to go down after a rollback asked for a reboot.
    pub reboot: Duration,
}

impl Default for RaucLimits {
    fn default() -> Self {
        RaucLimits {
            call: Duration::from_secs(30),
            install: Duration::from_secs(30 * 60),
            settle: Duration::from_secs(60),
            reboot: Duration::from_secs(300),
        }
    }
}

/// What one installation left, kept across reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub window: String,
    /// The bundle, as verified (the observation of a staged slot booted later needs it whole).
    pub bundle: VerifiedBundle,
    /// The installed slot: its name (`rootfs.1`) and boot name (`B`).
    pub slot: String,
    pub bootname: String,
    /// The boot name of the slot that ran when it was installed.
    pub from: String,
}

/// Which bus RAUC is on: the system bus (`DBUS_SYSTEM_BUS_ADDRESS` moves it, as for the daemon's own service).
#[derive(Clone)]
pub struct RaucUpdater {
    record: PathBuf,
    rebooter: Arc<dyn Rebooter>,
    limits: RaucLimits,
    failpoints: crate::failpoints::Failpoints,
}

impl std::fmt::Debug for RaucUpdater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaucUpdater").field("record", &self.record).field("limits", &self.limits).finish()
    }
}

fn rauc_err(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::new(format!("RAUC {what}: {e}"))
}

async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

/// The key RAUC refused in an "Unsupported key: <key>" error, if that is what the error says.
pub fn unsupported_key(e: &zbus::Error) -> Option<String> {
    let text = e.to_string();
    let at = text.find("Unsupported key")?;
    let rest = text[at + "Unsupported key".len()..].trim_start_matches([':', ' ']);
    let key: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    (!key.is_empty()).then_some(key)
}

impl RaucUpdater {
    /// `state_dir` holds the install record; `rebooter` takes the gateway back to the old slot on a rollback.
    pub fn new(state_dir: PathBuf, rebooter: Arc<dyn Rebooter>, limits: RaucLimits) -> Self {
        RaucUpdater { record: state_dir.join("ab-install.json"), rebooter, limits, failpoints: Default::default() }
    }

    /// Fault injection: `rauc:completed` fires right after RAUC reported the install's end.
    pub fn with_failpoints(mut self, failpoints: crate::failpoints::Failpoints) -> Self {
        self.failpoints = failpoints;
        self
    }

    async fn proxy(&self) -> BackendResult<InstallerProxy<'static>> {
        let conn = tokio::time::timeout(self.limits.call, zbus::Connection::system())
            .await
            .map_err(|_| rauc_err("connection", "the system bus did not answer in time"))?
            .map_err(|e| rauc_err("connection to the system bus", e))?;
        InstallerProxy::new(&conn).await.map_err(|e| rauc_err("proxy", e))
    }

    /// One bounded call.
    async fn call<T>(&self, what: &str, fut: impl std::future::Future<Output = zbus::Result<T>>) -> BackendResult<T> {
        match tokio::time::timeout(self.limits.call, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(rauc_err(what, e)),
            Err(_) => Err(rauc_err(what, format!("no answer within {:?}", self.limits.call))),
        }
    }

    /// Waits (bounded) until RAUC is idle; returns it with the boot name of the slot the system runs from.
    async fn settled_booted(&self) -> BackendResult<(InstallerProxy<'static>, String)> {
        let p = self.settled().await?;
        let booted = self.call("BootSlot", p.boot_slot()).await?;
        Ok((p, booted))
    }

    /// The slot the bootloader boots next: its name and, if it has one, its boot name.
    async fn primary(&self, p: &InstallerProxy<'static>) -> BackendResult<(String, Option<String>)> {
        let primary = self.call("GetPrimary", p.get_primary()).await?;
        let slots = self.call("GetSlotStatus", p.get_slot_status()).await?;
        let bootname = slots.iter().find(|s| s.0 == primary).and_then(|s| slot_str(s, "bootname"));
        Ok((primary, bootname))
    }

    /// Waits (bounded) until RAUC is on the bus and idle.
    async fn settled(&self) -> BackendResult<InstallerProxy<'static>> {
        let deadline = tokio::time::Instant::now() + self.limits.settle;
        // Bounded by the deadline; one attempt every 500 ms.
        loop {
            let last = match self.proxy().await {
                Ok(p) => match self.call("Operation", p.operation()).await {
                    Ok(op) if op == "idle" => return Ok(p),
                    Ok(op) => format!("RAUC is busy ({op})"),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::new(format!(
                    "RAUC did not become ready within {:?}: {last}",
                    self.limits.settle
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn load_record(&self) -> BackendResult<Option<InstallRecord>> {
        match std::fs::read(&self.record) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| BackendError::new(format!("{}: {e}", self.record.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::new(format!("{}: {e}", self.record.display()))),
        }
    }

    fn save_record(&self, r: &InstallRecord) -> BackendResult<()> {
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| BackendError::new(e.to_string()))?;
        crate::fsutil::write_atomic(&self.record, &bytes)
            .map_err(|e| BackendError::new(format!("{}: {e}", self.record.display())))
    }

    fn remove_record(&self) -> BackendResult<()> {
        match std::fs::remove_file(&self.record) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::new(format!("{}: {e}", self.record.display()))),
        }
    }

    /// Starts the installation, leaving out the `args` keys this RAUC version does not know.
    async fn start_install(
        &self,
        p: &InstallerProxy<'static>,
        path: &str,
        window: &str,
        digest: &str,
    ) -> BackendResult<()> {
        let mut keys: Vec<(&str, &str)> = vec![("transaction-id", window), ("require-manifest-hash", digest)];
        // At most one retry per optional key.
        for _ in 0..=keys.len() {
            let args: HashMap<&str, Value<'_>> = keys.iter().map(|(k, v)| (*k, Value::from(*v))).collect();
            match tokio::time::timeout(self.limits.call, p.install_bundle(path, args)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => match unsupported_key(&e) {
                    Some(k) if keys.iter().any(|(n, _)| *n == k) => {
                        debug!(key = %k, "this RAUC does not know the install option; installing without it");
                        keys.retain(|(n, _)| *n != k);
                    }
                    _ => return Err(rauc_err("InstallBundle", e)),
                },
                Err(_) => return Err(rauc_err("InstallBundle", "no answer")),
            }
        }
        Err(BackendError::new("RAUC refused every combination of install options"))
    }

    async fn mark(&self, p: &InstallerProxy<'static>, state: &str, slot: &str) -> BackendResult<String> {
        let (name, msg) = self.call(&format!("Mark({state}, {slot})"), p.mark(state, slot)).await?;
        info!(state, slot = %name, message = %msg, "RAUC slot marked");
        Ok(name)
    }
}

#[async_trait]
impl Patcher for RaucUpdater {
    async fn apply(&self, window: &str, bundle: &VerifiedBundle, progress: ProgressFn) -> BackendResult<Applied> {
        let (p, booted) = self.settled_booted().await?;
        // Subscribed before the call, so that neither the end nor RAUC leaving the bus can be missed.
        let mut completed = p.receive_completed().await.map_err(|e| rauc_err("Completed signal", e))?;
        let mut changes = p.receive_progress_changed().await;
        let mut owner = p.inner().receive_owner_changed().await.map_err(|e| rauc_err("owner changes", e))?;
        let path = bundle.path.to_string_lossy().to_string();
        progress(0, format!("RAUC: installing {} into the inactive slot", bundle.version));
        self.start_install(&p, &path, window, &bundle.digest).await?;
        let deadline = tokio::time::sleep(self.limits.install);
        tokio::pin!(deadline);
        // Bounded by the install limit; every branch either returns or waits for the next message.
        let result = loop {
            tokio::select! {
                c = next(&mut completed) => {
                    let Some(c) = c else { return Err(BackendError::new("RAUC: the bus connection closed during the install")) };
                    let r = c.args().map_err(|e| rauc_err("Completed", e))?.result;
                    break r;
                }
                ch = next(&mut changes) => {
                    if let Some(ch) = ch {
                        if let Ok((pct, msg, _depth)) = ch.get().await {
                            progress(pct, format!("RAUC: {msg}"));
                        }
                    }
                }
                o = next(&mut owner) => {
                    if matches!(o, None | Some(None)) {
                        return Err(BackendError::new(format!(
                            "the RAUC service ({RAUC_BUS_NAME}) left the bus during the install of {}", bundle.version
                        )));
                    }
                }
                _ = &mut deadline => {
                    return Err(BackendError::new(format!(
                        "RAUC did not finish installing {} within {:?}", bundle.version, self.limits.install
                    )));
                }
            }
        };
        info!(version = %bundle.version, result, "RAUC Completed");
        if let Err(e) = self.failpoints.hit("rauc:completed") {
            return Err(BackendError::new(e));
        }
        if result != 0 {
            let last = self.call("LastError", p.last_error()).await.unwrap_or_default();
            return Err(BackendError::new(format!(
                "RAUC refused to install {} (result {result}): {last}",
                bundle.version
            )));
        }
        let (primary, bootname) = self.primary(&p).await?;
        let Some(bootname) = bootname else {
            return Err(BackendError::new(format!("RAUC installed, but its primary slot {primary} has no boot name")));
        };
        if bootname == booted {
            return Err(BackendError::new(format!(
                "RAUC installed, but the slot to boot next ({primary}) is the one running: nothing to switch to"
            )));
        }
        self.save_record(&InstallRecord {
            window: window.to_string(),
            bundle: bundle.clone(),
            slot: primary.clone(),
            bootname: bootname.clone(),
            from: booted,
        })?;
        progress(100, format!("RAUC: {} installed into {primary} ({bootname})", bundle.version));
        Ok(Applied::Installed { slot: bootname })
    }

    async fn revert(&self, bundle: &VerifiedBundle) -> BackendResult<()> {
        // An install still running (a restart during it) must end before the slots are touched.
        let (p, booted) = self.settled_booted().await?;
        let Some(r) = self.load_record()? else {
            // Nothing of ours was installed (the install failed before it finished): make sure the running slot
            // stays the one to boot.
            if self.primary(&p).await?.1.as_deref() != Some(booted.as_str()) {
                self.mark(&p, "active", "booted").await?;
            }
            return Ok(());
        };
        let version = &r.bundle.version;
        if r.bundle.digest != bundle.digest {
            warn!(recorded = %version, reverting = %bundle.version, "the install record names another bundle");
        }
        if booted == r.bootname {
            // Running the update: take it out of service, then go back to the slot it came from.
            self.mark(&p, "bad", "booted").await?;
            self.mark(&p, "active", "other").await?;
            let why = format!("rolling back {version}: back to slot {}", r.from);
            return Err(self.rebooter.reboot_and_wait(&why, self.limits.reboot).await);
        }
        // On the old slot (never rebooted, or came back): the installed slot must not boot again.
        self.mark(&p, "bad", &r.slot).await?;
        self.mark(&p, "active", "booted").await?;
        info!(version = %version, slot = %r.slot, running = %booted, "A/B update rolled back");
        self.remove_record()
    }

    async fn commit(&self, bundle: &VerifiedBundle) -> BackendResult<()> {
        let (p, booted) = self.settled_booted().await?;
        match self.load_record()? {
            Some(r) if r.bootname == booted => {
                self.mark(&p, "good", "booted").await?;
                info!(version = %bundle.version, slot = %r.slot, "A/B update kept: booted slot marked good");
                self.remove_record()
            }
            Some(r) => Err(BackendError::new(format!(
                "not committing {}: the gateway runs slot {booted}, not the updated {}",
                bundle.version, r.bootname
            ))),
            None => Err(BackendError::new(format!("not committing {}: no record of its install", bundle.version))),
        }
    }

    async fn unconfirmed(&self) -> BackendResult<Option<VerifiedBundle>> {
        let Some(r) = self.load_record()? else { return Ok(None) };
        Ok((self.booted_slot().await? == r.bootname).then_some(r.bundle))
    }

    async fn booted_slot(&self) -> BackendResult<String> {
        // At boot RAUC may still be starting (or be bus-activated by this call): it is waited for.
        Ok(self.settled_booted().await?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_keys_are_read_from_rauc_errors() {
        let e = zbus::Error::Failure("Unsupported key: transaction-id".into());
        assert_eq!(unsupported_key(&e).as_deref(), Some("transaction-id"));
        let e = zbus::Error::Failure("Unsupported key: require-manifest-hash".into());
        assert_eq!(unsupported_key(&e).as_deref(), Some("require-manifest-hash"));
        let e = zbus::Error::Failure("Already processing a different method".into());
        assert_eq!(unsupported_key(&e), None);
    }
}
