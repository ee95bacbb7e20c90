//! The A/B path: a RAUC bundle goes into the inactive slot through the RAUC service on the system bus, the gateway
//! reboots into it (inside the window, when the policy allows), and the slot is kept only after the health
//! observation passed there.
//!
//! One piece (about 620 lines): every method reads and writes the same install record and the same RAUC slot
//! states, and each step (install, reboot, confirm, mark good, revert) is only safe in the light of the others;
//! the D-Bus proxy is apart in `proxy.rs`, the tests against the real RAUC service in `tests/rauc.rs`.
//!
//! What the updater remembers between boots is one small record, `<state>/ab-install.json`: which window installs
//! which bundle (as verified) into which slot, from which slot, and whether RAUC was seen to finish. It is written
//! *before* `InstallBundle` (`finished: false`) and again once RAUC reported the install complete and the slot
//! primary (`finished: true`), so no crash or power loss leaves a slot RAUC may have written without a record of
//! it. Everything else is asked of RAUC (`BootSlot`, `GetPrimary`, `GetSlotStatus`), so the record and RAUC can
//! disagree only in a way the code checks:
//!
//! - An install is never abandoned while RAUC runs it: it runs in a task of its own, which a deadline or cancel
//!   (dropping the window's apply) does not stop; `revert` waits for it (bounded by the install limit), and for
//!   RAUC to be idle, before it touches the slots.
//! - The bundle is verified again (signature, and the digest compared with the one verified in the window) right
//!   before `InstallBundle`: RAUC gets the path only once the file there is still the verified bundle.
//! - `revert` on the old slot: the installed slot is marked bad and the booted one active again (idempotent, no
//!   reboot); on the new slot: the booted slot is marked bad, the other one active, and the gateway reboots into
//!   it (the journal is in `RollingBack`, so the next start finishes the rollback on the old slot).
//! - `commit` marks the booted slot good, and only when it is the installed one.
//!
//! Boot-attempt counting stays with the bootloader: nothing here marks a freshly installed slot good before the
//! observation. On every other start (no window in progress, no staged slot running unconfirmed) the booted slot
//! is marked good (`confirm_booted`): RAUC's GRUB scheme gives each boot one try, and a slot nobody marks good
//! after a plain reboot is skipped on the next one. otpatchd is the one that marks good, so that the boot into
//! an update is never confirmed by anything but its observation.

pub mod proxy;

use std::collections::HashMap;
use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};
use zbus::Variant as Value;

use crate::backend::{Applied, BackendError, BackendResult, Patcher, ProgressFn, Rebooter};
use crate::engine::VerifiedBundle;
use crate::failpoints::Failpoints;
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
    /// RAUC reported the install complete (and the slot primary). `false` from just before `InstallBundle` until
    /// then: the slot may have been written, or made primary, by an install nobody saw end. A record without the
    /// field was written by an older otpatchd, after the install.
    #[serde(default = "finished_default")]
    pub finished: bool,
}

fn finished_default() -> bool {
    true
}

/// Verifies a bundle again right before it is installed: the file at its path must still be the bundle verified
/// (same digest), with a valid signature.
pub type BundleCheck = Arc<dyn Fn(&VerifiedBundle) -> BackendResult<()> + Send + Sync>;

/// The outcome of the install under way, once there is one.
type InstallResult = watch::Receiver<Option<BackendResult<Applied>>>;

/// Which bus RAUC is on: the system bus (`DBUS_SYSTEM_BUS_ADDRESS` moves it, as for the daemon's own service).
#[derive(Clone)]
pub struct RaucUpdater {
    record: PathBuf,
    rebooter: Arc<dyn Rebooter>,
    limits: RaucLimits,
    check: Option<BundleCheck>,
    failpoints: Failpoints,
    /// The install task started last (it outlives the window's apply future).
    running: Arc<Mutex<Option<InstallResult>>>,
    /// The booted slot's boot name, once RAUC said it (for the status).
    booted: Arc<std::sync::Mutex<Option<String>>>,
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
        RaucUpdater {
            record: state_dir.join("ab-install.json"),
            rebooter,
            limits,
            check: None,
            failpoints: Failpoints::default(),
            running: Arc::new(Mutex::new(None)),
            booted: Arc::default(),
        }
    }

    /// Every bundle is checked with `check` right before `InstallBundle`; a refusal ends the apply.
    pub fn with_check(mut self, check: BundleCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// Fault injection: `rauc:completed` fires right after RAUC reported the install's end.
    pub fn with_failpoints(mut self, failpoints: Failpoints) -> Self {
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
        let booted = self.boot_slot(&p).await?;
        Ok((p, booted))
    }

    /// RAUC's `BootSlot`, remembered for the status.
    async fn boot_slot(&self, p: &InstallerProxy<'static>) -> BackendResult<String> {
        let booted = self.call("BootSlot", p.boot_slot()).await?;
        if let Ok(mut seen) = self.booted.lock() {
            *seen = Some(booted.clone());
        }
        Ok(booted)
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
        self.settled_within(self.limits.settle).await
    }

    /// Waits until RAUC is on the bus and idle, at most `limit`.
    async fn settled_within(&self, limit: Duration) -> BackendResult<InstallerProxy<'static>> {
        let deadline = tokio::time::Instant::now() + limit;
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
                return Err(BackendError::new(format!("RAUC did not become ready within {limit:?}: {last}")));
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

impl RaucUpdater {
    /// The slot RAUC will install into: the other slot with a boot name in the booted slot's class.
    async fn target_slot(&self, p: &InstallerProxy<'static>, booted: &str) -> BackendResult<(String, String)> {
        let slots = self.call("GetSlotStatus", p.get_slot_status()).await?;
        let class = slots
            .iter()
            .find(|s| slot_str(s, "bootname").as_deref() == Some(booted))
            .and_then(|s| slot_str(s, "class"))
            .ok_or_else(|| BackendError::new(format!("RAUC lists no slot with the booted boot name {booted}")))?;
        let others: Vec<(String, String)> = slots
            .iter()
            .filter(|s| slot_str(s, "class").as_deref() == Some(class.as_str()))
            .filter_map(|s| Some((s.0.clone(), slot_str(s, "bootname")?)))
            .filter(|(_, bootname)| bootname != booted)
            .collect();
        match others.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(BackendError::new(format!(
                "cannot tell which {class} slot RAUC installs into (candidates: {others:?}); not installing"
            ))),
        }
    }

    /// The bundle check, off the runtime (it hashes the whole file).
    async fn check_again(&self, bundle: &VerifiedBundle) -> BackendResult<()> {
        let Some(check) = self.check.clone() else { return Ok(()) };
        let b = bundle.clone();
        tokio::task::spawn_blocking(move || check(&b))
            .await
            .map_err(|e| BackendError::new(format!("bundle check task: {e}")))?
    }

    /// One whole installation: record, `InstallBundle`, `Completed`, record again. Bounded by the install limit.
    async fn install(&self, window: &str, bundle: &VerifiedBundle, progress: ProgressFn) -> BackendResult<Applied> {
        let (p, booted) = self.settled_booted().await?;
        let (target, target_boot) = self.target_slot(&p, &booted).await?;
        // The file RAUC is handed must still be the bundle verified in the window.
        self.check_again(bundle).await.map_err(|e| {
            BackendError::new(format!("not installing {}: re-verified before the install: {e}", bundle.version))
        })?;
        // Subscribed before the call, so that neither the end nor RAUC leaving the bus can be missed.
        let mut completed = p.receive_completed().await.map_err(|e| rauc_err("Completed signal", e))?;
        let mut changes = p.receive_progress_changed().await;
        let mut owner = p.inner().receive_owner_changed().await.map_err(|e| rauc_err("owner changes", e))?;
        let path = bundle.path.to_string_lossy().to_string();
        let mut record = InstallRecord {
            window: window.to_string(),
            bundle: bundle.clone(),
            slot: target.clone(),
            bootname: target_boot.clone(),
            from: booted.clone(),
            finished: false,
        };
        // From the call on, RAUC may write the slot and make it primary: the record says so first.
        self.save_record(&record)?;
        progress(0, format!("RAUC: installing {} into slot {target} ({target_boot})", bundle.version));
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
        info!(version = %bundle.version, slot = %target, result, "RAUC Completed");
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
        if primary != target {
            return Err(BackendError::new(format!(
                "RAUC installed, but the slot to boot next is {primary}, not {target} that it was to install into"
            )));
        }
        record.finished = true;
        self.save_record(&record)?;
        progress(100, format!("RAUC: {} installed into {primary} ({bootname})", bundle.version));
        Ok(Applied::Installed { slot: bootname })
    }

    /// Waits for the install task started last, if it still runs (bounded by the install limit).
    async fn install_ended(&self) {
        let rx = self.running.lock().ok().and_then(|r| r.clone());
        let Some(mut rx) = rx else { return };
        if rx.borrow().is_some() {
            return;
        }
        warn!("an install is under way: waiting for RAUC to finish it before the slots are touched");
        let limit = self.limits.install + self.limits.call;
        let ended = match tokio::time::timeout(limit, rx.wait_for(|r| r.is_some())).await {
            Ok(Ok(r)) => Ok((*r).clone()),
            Ok(Err(_)) => Err("the install task went away"),
            Err(_) => Err("the install under way did not end within the install limit"),
        };
        match ended {
            Ok(Some(Ok(_))) => info!("the install under way ended: RAUC installed the bundle"),
            Ok(Some(Err(e))) => info!(error = %e, "the install under way ended without installing"),
            Ok(None) => {}
            Err(e) => error!(limit = ?limit, "{e}"),
        }
    }
}

#[async_trait]
impl Patcher for RaucUpdater {
    async fn apply(&self, window: &str, bundle: &VerifiedBundle, progress: ProgressFn) -> BackendResult<Applied> {
        // The install runs in a task of its own: a deadline or cancel drops this future, never RAUC's install
        // half-watched. `revert` waits for the task.
        let (tx, mut rx) = watch::channel(None);
        if let Ok(mut r) = self.running.lock() {
            *r = Some(rx.clone());
        }
        let me = self.clone();
        let (window, bundle) = (window.to_string(), bundle.clone());
        tokio::spawn(async move {
            let r = me.install(&window, &bundle, progress).await;
            if let Err(e) = &r {
                warn!(version = %bundle.version, error = %e, "A/B install did not complete");
            }
            let _ = tx.send(Some(r));
        });
        let result = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => (*r).clone(),
            Err(_) => None,
        };
        result.unwrap_or_else(|| Err(BackendError::new("the install task ended without a result")))
    }

    /// `restore` needs nothing here: marking the installed slot bad keeps the committed slot, and with it the
    /// committed image, the one that boots.
    async fn revert(&self, bundle: &VerifiedBundle, _restore: Option<&VerifiedBundle>) -> BackendResult<()> {
        // An install still running (a deadline or cancel during it, or a restart during it) must end before the
        // slots are touched: this daemon's install task first, then RAUC itself, each within the install limit.
        self.install_ended().await;
        let p = self.settled_within(self.limits.install).await?;
        let booted = self.boot_slot(&p).await?;
        let Some(r) = self.load_record()? else {
            // Nothing of ours was handed to RAUC (the apply failed before InstallBundle): make sure the running
            // slot stays the one to boot.
            if self.primary(&p).await?.1.as_deref() != Some(booted.as_str()) {
                self.mark(&p, "active", "booted").await?;
            }
            return Ok(());
        };
        let version = &r.bundle.version;
        if r.bundle.digest != bundle.digest {
            warn!(recorded = %version, reverting = %bundle.version, "the install record names another bundle");
        }
        if !r.finished {
            // Handed to RAUC, its end never seen (a crash or power loss after InstallBundle, RAUC refusing, or
            // leaving the bus): the slot may have been written or made primary. Whatever RAUC says now, it must
            // never boot: it is marked bad below, like an installed slot.
            let (primary, _) = self.primary(&p).await?;
            let slots = self.call("GetSlotStatus", p.get_slot_status()).await?;
            let target = slots.iter().find(|s| s.0 == r.slot);
            let status = target.and_then(|s| slot_str(s, "boot-status")).unwrap_or_default();
            let installed = target.and_then(|s| slot_str(s, "bundle.version")).unwrap_or_default();
            warn!(
                window = %r.window,
                version = %version,
                slot = %r.slot,
                primary = %primary,
                boot_status = %status,
                slot_bundle_version = %installed,
                "the install into this slot was started and never seen to finish: marking the slot bad"
            );
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
        info!(
            version = %version,
            slot = %r.slot,
            running = %booted,
            finished = r.finished,
            "A/B update rolled back: slot {} marked bad",
            r.slot
        );
        self.remove_record()
    }

    async fn commit(&self, bundle: &VerifiedBundle) -> BackendResult<()> {
        let (p, booted) = self.settled_booted().await?;
        match self.load_record()? {
            Some(r) if r.bootname == booted && r.finished => {
                self.mark(&p, "good", "booted").await?;
                info!(version = %bundle.version, slot = %r.slot, "A/B update kept: booted slot marked good");
                self.remove_record()
            }
            Some(r) if !r.finished => Err(BackendError::new(format!(
                "not committing {}: its install into slot {} was never seen to finish",
                bundle.version, r.bootname
            ))),
            Some(r) => Err(BackendError::new(format!(
                "not committing {}: the gateway runs slot {booted}, not the updated {}",
                bundle.version, r.bootname
            ))),
            None => Err(BackendError::new(format!("not committing {}: no record of its install", bundle.version))),
        }
    }

    async fn unconfirmed(&self) -> BackendResult<Option<VerifiedBundle>> {
        let Some(r) = self.load_record()? else { return Ok(None) };
        if !r.finished {
            // Only a window's rollback settles an install nobody saw end; it is never observed and kept.
            return Err(BackendError::new(format!(
                "the install of {} into slot {} (window {}) was never seen to finish and is not rolled back yet",
                r.bundle.version, r.bootname, r.window
            )));
        }
        Ok((self.booted_slot().await? == r.bootname).then_some(r.bundle))
    }

    async fn confirm_booted(&self) -> BackendResult<Option<String>> {
        if let Some(r) = self.load_record()? {
            if !r.finished {
                return Ok(None);
            }
        }
        // Only on a gateway with RAUC: without it on the bus or activatable there are no slots to mark (and
        // waiting for it would only delay the start).
        let conn = tokio::time::timeout(self.limits.call, zbus::Connection::system())
            .await
            .map_err(|_| rauc_err("connection", "the system bus did not answer in time"))?
            .map_err(|e| rauc_err("connection to the system bus", e))?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.map_err(|e| rauc_err("bus proxy", e))?;
        let name = zbus::names::BusName::try_from(RAUC_BUS_NAME).map_err(|e| rauc_err("bus name", e))?;
        let owned = self
            .call("NameHasOwner", async { dbus.name_has_owner(name.clone()).await.map_err(zbus::Error::from) })
            .await?;
        if !owned {
            let activatable = self
                .call("ListActivatableNames", async { dbus.list_activatable_names().await.map_err(zbus::Error::from) })
                .await?;
            if !activatable.iter().any(|n| n.as_str() == RAUC_BUS_NAME) {
                debug!("RAUC is not on this gateway: no slot to mark good");
                return Ok(None);
            }
        }
        let (p, booted) = self.settled_booted().await?;
        if let Some(r) = self.load_record()? {
            if r.bootname == booted {
                // The installed slot, never confirmed: only its observation may keep it.
                return Ok(None);
            }
        }
        self.mark(&p, "good", "booted").await?;
        Ok(Some(booted))
    }

    async fn booted_slot(&self) -> BackendResult<String> {
        // At boot RAUC may still be starting (or be bus-activated by this call): it is waited for.
        Ok(self.settled_booted().await?.1)
    }

    fn booted_slot_seen(&self) -> Option<String> {
        self.booted.lock().ok().and_then(|s| s.clone())
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

    /// A record written by an older otpatchd (only ever after RAUC's Completed) has no `finished`: it was.
    #[test]
    fn records_without_finished_were_written_after_the_install() {
        let old = r#"{"window":"w1","bundle":{"path":"/b.raucb","kind":"ab","compatible":"c","version":"2.1.0",
            "digest":"d","signer":"s"},"slot":"rootfs.1","bootname":"B","from":"A"}"#;
        let r: InstallRecord = serde_json::from_str(old).unwrap();
        assert!(r.finished);
        let started = InstallRecord { finished: false, ..r };
        let back: InstallRecord = serde_json::from_str(&serde_json::to_string(&started).unwrap()).unwrap();
        assert!(!back.finished);
    }
}
