//! The traits every capability plugs into. The orchestrator only ever talks to these; `main.rs` picks the real
//! implementations, tests and the demo use the call-recording fakes in [`fake`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use otpatch_common::policy::Flow;

use crate::engine::{BundleRef, CheckpointRef, PatchKind, VerifiedBundle, WindowCtx};

pub mod absent;
pub mod criu;
#[cfg(any(test, feature = "fake-backends"))]
pub mod fake;
pub mod fetch;
pub mod firewall;
pub mod health;
pub mod livepatch;
pub mod rauc;
pub mod reboot;
pub mod verify;

/// A backend failure, with a message fit for an operator (it ends up in `LastError` and the audit log), and the
/// kind callers branch on (never the message's text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String, pub ErrorKind);

/// What a caller may do about a [`BackendError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorKind {
    /// Nothing but report it.
    #[default]
    Other,
    /// A livepatch for another kernel (release, vermagic or build id): the policy's A/B bundle may be taken instead.
    KernelMismatch,
    /// The tool a backend runs is not on this gateway (e.g. `iptables` where only nft is installed).
    NotInstalled,
}

impl BackendError {
    pub fn new(msg: impl fmt::Display) -> Self {
        BackendError(msg.to_string(), ErrorKind::Other)
    }

    /// A livepatch for another kernel (release, vermagic or build id).
    pub fn kernel_mismatch(msg: impl fmt::Display) -> Self {
        BackendError(format!("does not fit the running kernel: {msg}"), ErrorKind::KernelMismatch)
    }

    /// A program the backend runs is missing.
    pub fn not_installed(msg: impl fmt::Display) -> Self {
        BackendError(msg.to_string(), ErrorKind::NotInstalled)
    }

    pub fn kind(&self) -> ErrorKind {
        self.1
    }

    pub fn is_kernel_mismatch(&self) -> bool {
        self.1 == ErrorKind::KernelMismatch
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// Reports progress of a long action: percent (-1 unknown) and a message.
pub type ProgressFn = Arc<dyn Fn(i32, String) + Send + Sync>;

/// What segmentation must let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentationPlan {
    pub window_id: String,
    /// The patch server's host and port.
    pub server: Option<(String, u16)>,
    /// Its addresses, resolved once before segmentation ([`crate::firewall::ServerAddresses`]); empty: the
    /// backend resolves the host itself.
    pub server_addrs: Vec<SocketAddr>,
    /// OT flows from the policy.
    pub flows: Vec<Flow>,
    /// Every health-probe target, kept reachable.
    pub probe_targets: Vec<SocketAddr>,
    pub log_drops: bool,
}

/// What lifting found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiftReport {
    /// Whether segmentation was in place.
    pub was_active: bool,
    /// Packets it dropped while it was.
    pub dropped_packets: u64,
}

#[async_trait]
pub trait Firewall: Send + Sync {
    /// Applies the window's segmentation in one transaction. Re-applying replaces it.
    async fn apply(&self, plan: &SegmentationPlan) -> BackendResult<()>;
    /// Lifts it in one transaction. A no-op when nothing is applied.
    async fn lift(&self) -> BackendResult<LiftReport>;
    /// Whether segmentation is in place now.
    async fn active(&self) -> BackendResult<bool>;
    /// What is in place now, for status displays; `None` when nothing is applied.
    async fn inspect(&self) -> BackendResult<Option<FirewallView>> {
        Ok(None)
    }
}

/// Segmentation as it is in place.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FirewallView {
    /// `nftables` or `iptables`.
    pub backend: String,
    /// The ruleset as the tool lists it.
    pub ruleset: String,
    /// Packets dropped so far.
    pub dropped_packets: u64,
}

/// What a fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    Bundle(BundleRef),
    /// The server has nothing newer for this gateway.
    NothingNewer,
    /// The newest bundle the server has for this gateway is a version that was rolled back here: not fetched.
    RolledBack(otpatch_common::api::RolledBackVersion),
}

#[async_trait]
pub trait Fetcher: Send + Sync {
    /// The newest bundle newer than what is committed, leaving out the versions in `avoid` (rolled back here).
    async fn fetch(
        &self,
        window: &WindowCtx,
        avoid: &crate::rolled_back::RolledBack,
        progress: ProgressFn,
    ) -> BackendResult<FetchOutcome>;
    /// Downloads the bundle the server's signed index lists under file name `file` (the policy's A/B fallback).
    async fn fetch_named(&self, _window: &WindowCtx, file: &str, _progress: ProgressFn) -> BackendResult<BundleRef> {
        Err(BackendError::new(format!("this fetcher cannot fetch {file} by name")))
    }
}

#[async_trait]
pub trait Verifier: Send + Sync {
    /// Verifies signature, chain, compatibility, expiry and anti-rollback. Changes nothing.
    async fn verify(&self, bundle: &BundleRef) -> BackendResult<VerifiedBundle>;
}

#[async_trait]
pub trait Checkpointer: Send + Sync {
    /// Can every critical process be checkpointed? Called when the window arms.
    async fn preflight(&self) -> BackendResult<()>;
    /// Dumps every critical process, leaving it running.
    async fn checkpoint(&self, window: &WindowCtx) -> BackendResult<CheckpointRef>;
    /// Replaces the running processes with the checkpointed ones.
    async fn restore(&self, checkpoint: &CheckpointRef) -> BackendResult<()>;
    /// Removes the images.
    async fn discard(&self, checkpoint: &CheckpointRef) -> BackendResult<()>;
}

/// Where an apply left the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// In place and running (a livepatch after its transition).
    InPlace,
    /// Written to the inactive slot (named by its boot name); it runs after a reboot into it.
    Installed { slot: String },
}

/// Applies a change and takes it back: the livepatch path and the A/B (RAUC) path each implement it.
#[async_trait]
pub trait Patcher: Send + Sync {
    /// Applies for the window `window` (its id; "boot" when a committed change is put back at start); returns
    /// once the change is fully in place (e.g. the livepatch transition finished) or installed for a reboot.
    async fn apply(&self, window: &str, bundle: &VerifiedBundle, progress: ProgressFn) -> BackendResult<Applied>;
    /// Takes the change out, and puts back `restore`, the change committed before it (if any), so a rollback
    /// leaves the gateway as patched as the last committed window left it. A no-op for what is not in place.
    /// An error when the committed change cannot be put back: the rollback then failed.
    async fn revert(&self, bundle: &VerifiedBundle, restore: Option<&VerifiedBundle>) -> BackendResult<()>;
    /// Makes a change that passed observation permanent (re-applied at boot, slot marked good).
    async fn commit(&self, bundle: &VerifiedBundle) -> BackendResult<()>;
    /// Whether the change is in place now (so a committed change is re-applied at boot only when it is not).
    async fn is_applied(&self, _bundle: &VerifiedBundle) -> BackendResult<bool> {
        Ok(false)
    }
    /// The change running now that was installed but never confirmed (an A/B slot staged in a window, booted
    /// later): it must be observed before it is kept.
    async fn unconfirmed(&self) -> BackendResult<Option<VerifiedBundle>> {
        Ok(None)
    }
    /// At every start, after recovery: tells the bootloader that the slot the system runs from came up, so that a
    /// bootloader giving each boot one try (RAUC's GRUB scheme) or a few does not fall back on the next plain
    /// reboot. Never for the boot into a slot an update installed (only its observation keeps it) or after an
    /// install whose end nobody saw (only a rollback settles it). Returns the boot name of the slot marked good,
    /// `None` when there is nothing to mark (no slots, no A/B updater on this gateway, or one of those two).
    async fn confirm_booted(&self) -> BackendResult<Option<String>> {
        Ok(None)
    }
    /// The boot name of the slot the system runs from (A/B updaters only).
    async fn booted_slot(&self) -> BackendResult<String> {
        Err(BackendError::new("this patcher has no slots"))
    }
    /// The boot name of the booted slot as far as this patcher learned it this boot, without asking anyone (for
    /// the status); `None` before it asked, or without slots.
    fn booted_slot_seen(&self) -> Option<String> {
        None
    }
}

/// Reboots the gateway and tells boots apart.
#[async_trait]
pub trait Rebooter: Send + Sync {
    /// Asks for a reboot (through systemd, which stops the services first). Returns once it was accepted.
    async fn reboot(&self, why: &str) -> BackendResult<()>;
    /// This boot's id (`/proc/sys/kernel/random/boot_id`): it changes with every boot.
    fn boot_id(&self) -> BackendResult<String>;

    /// Asks for the reboot, then waits for the system to go down (systemd stops the daemon on the way). Returns
    /// only when it did not: the refusal, or still running after `limit`.
    async fn reboot_and_wait(&self, why: &str, limit: Duration) -> BackendError {
        if let Err(e) = self.reboot(why).await {
            return e;
        }
        tokio::time::sleep(limit).await;
        BackendError::new(format!(
            "asked for a reboot ({why}), but the system did not go down within {}",
            otpatch_common::units::format_duration(limit)
        ))
    }
}

/// The plant's verdict after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Advisory probes failing.
    Degraded(String),
    /// A critical probe tripped.
    Failed(String),
}

#[async_trait]
pub trait HealthMonitor: Send + Sync {
    /// Reads every probe once and keeps the values as the baseline. Called when the window arms.
    async fn baseline(&self) -> BackendResult<()>;
    /// Watches the probes for `period`; returns early with `Failed` when a critical probe trips.
    async fn observe(&self, period: Duration) -> Verdict;
    /// Keeps reading (and recording) the probes outside the observation period — while the change goes in and
    /// while it comes out — until [`stop_watch`](Self::stop_watch), so the plant is never unwatched during a
    /// window. Idempotent. `observe` pauses it for its own period.
    async fn start_watch(&self) {}
    /// Stops what [`start_watch`](Self::start_watch) started. Idempotent.
    async fn stop_watch(&self) {}
    /// The live per-probe table (last value, last error, consecutive failures...), for `otpatchctl health`.
    /// Backends without probes have none.
    fn probes(&self) -> Vec<otpatch_common::api::ProbeReport> {
        Vec::new()
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Wall-clock time and sleeping, so tests can run windows on tokio's paused clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    /// Sleeps until `until` (returns at once if it has passed).
    fn sleep_until(&self, until: Timestamp) -> BoxFuture<'_, ()>;
}

/// The system clock. Sleeps in slices of at most 30 s so that a clock step (NTP) is noticed.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, until: Timestamp) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Bounded: each slice is at most 30 s and the target only gets closer as the clock runs.
            loop {
                let left = until.duration_since(Timestamp::now());
                if left.is_negative() || left.is_zero() {
                    return;
                }
                let slice = Duration::try_from(left).unwrap_or(Duration::ZERO).min(Duration::from_secs(30));
                tokio::time::sleep(slice.max(Duration::from_millis(1))).await;
            }
        })
    }
}

/// A clock that starts at a given wall time and runs with tokio's clock: with `start_paused` tests, hours of
/// window pass in milliseconds, deterministically.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: Timestamp,
    started: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base: Timestamp) -> Self {
        TokioClock { base, started: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.started.elapsed();
        self.base + jiff::SignedDuration::try_from(elapsed).unwrap_or(jiff::SignedDuration::ZERO)
    }

    fn sleep_until(&self, until: Timestamp) -> BoxFuture<'_, ()> {
        let left = until.duration_since(self.now());
        let d = Duration::try_from(left).unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(d))
    }
}

/// The set of backends a daemon runs with.
#[derive(Clone)]
pub struct Backends {
    pub firewall: Arc<dyn Firewall>,
    pub fetcher: Arc<dyn Fetcher>,
    pub verifier: Arc<dyn Verifier>,
    pub checkpointer: Arc<dyn Checkpointer>,
    pub livepatcher: Arc<dyn Patcher>,
    pub ab_updater: Arc<dyn Patcher>,
    pub rebooter: Arc<dyn Rebooter>,
    pub health: Arc<dyn HealthMonitor>,
    pub clock: Arc<dyn Clock>,
}

impl Backends {
    /// The patcher that applies, commits and reverts a bundle of `kind`.
    pub fn patcher(&self, kind: PatchKind) -> Arc<dyn Patcher> {
        match kind {
            PatchKind::Livepatch => self.livepatcher.clone(),
            PatchKind::Ab => self.ab_updater.clone(),
            // No backend applies app bundles yet: the verifier refuses them before a checkpoint or an apply, so
            // none reaches a patcher. Were one to, it would go where it always went: to the livepatcher.
            PatchKind::App => self.livepatcher.clone(),
        }
    }
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Backends { .. }")
    }
}
