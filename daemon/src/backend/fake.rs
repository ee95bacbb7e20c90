//! Call-recording fake backends for unit tests, the fake-backend demo and process-level tests.
//!
//! All fakes share one [`FakeWorld`]: what is "in place" on the pretend gateway (segmentation, applied
//! patches, checkpoints) and every call made, in order. The world can be persisted to a file so that a test
//! that kills and restarts the daemon sees what the previous process left behind. A [`FakeScript`] says which
//! steps fail and how long each takes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    Applied, BackendError, BackendResult, Backends, Checkpointer, Clock, FetchOutcome, Fetcher, Firewall,
    HealthMonitor, LiftReport, Patcher, ProgressFn, Rebooter, SegmentationPlan, Verdict, Verifier,
};
use crate::engine::{BundleRef, CheckpointRef, PatchKind, VerifiedBundle, WindowCtx};

/// The `compatible` of every bundle the fakes make.
pub const FAKE_COMPATIBLE: &str = "otpatch-demo";

/// The digest the fake verifier gives the bundle of `version`: hex SHA-256, as a real manifest digest is.
pub fn fake_digest(version: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("fake bundle {version}")))
}

/// What the fakes should do. Text form (env `OTPATCH_FAKE_SCRIPT`): comma-separated `key=value`:
/// `fail=<step>[:<step>...]` (steps: preflight, segment, fetch, verify, checkpoint, apply, commit, rollback,
/// lift, restore), `health=healthy|degraded|fail`, `health-fail-after=<duration>`, `delay=<duration>` (every step),
/// `nothing-to-fetch=true`, `version=<v>`, `kind=livepatch|ab`, `bundle=<path>` (what the fetcher "downloads"),
/// `kernel-mismatch=true` (the fetched livepatch does not fit the kernel; a bundle fetched by name is a RAUC one).
/// The A/B fake installs into slot `B` and "reboots" by recording the call (the test then restarts the daemon with
/// another boot id and booted slot in the world file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FakeScript {
    pub fail: Vec<String>,
    pub health: FakeHealth,
    pub health_fail_after: Duration,
    pub delay: Duration,
    pub nothing_to_fetch: bool,
    pub version: String,
    pub kind: PatchKind,
    /// The file the fetcher hands on, instead of a made-up path.
    pub bundle: Option<PathBuf>,
    pub kernel_mismatch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FakeHealth {
    Healthy,
    Degraded,
    Fail,
}

impl Default for FakeScript {
    fn default() -> Self {
        FakeScript {
            fail: Vec::new(),
            health: FakeHealth::Healthy,
            health_fail_after: Duration::from_millis(500),
            delay: Duration::from_millis(50),
            nothing_to_fetch: false,
            version: "1.0.1".into(),
            kind: PatchKind::Livepatch,
            bundle: None,
            kernel_mismatch: false,
        }
    }
}

impl FakeScript {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut s = FakeScript::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("fake script: {part:?} is not key=value"))?;
            let dur = |v: &str| otpatch_common::units::parse_duration(v).map_err(|e| format!("fake script {k}: {e}"));
            match k {
                "fail" => s.fail.extend(v.split(':').map(str::to_string)),
                "health" => {
                    s.health = match v {
                        "healthy" => FakeHealth::Healthy,
                        "degraded" => FakeHealth::Degraded,
                        "fail" => FakeHealth::Fail,
                        _ => return Err(format!("fake script: health={v}: expected healthy, degraded or fail")),
                    }
                }
                "health-fail-after" => s.health_fail_after = dur(v)?,
                "delay" => s.delay = dur(v)?,
                "nothing-to-fetch" => s.nothing_to_fetch = v == "true",
                "version" => s.version = v.to_string(),
                "kind" => {
                    s.kind = match v {
                        "livepatch" => PatchKind::Livepatch,
                        "ab" => PatchKind::Ab,
                        _ => return Err(format!("fake script: kind={v}: expected livepatch or ab")),
                    }
                }
                "bundle" => s.bundle = Some(PathBuf::from(v)),
                "kernel-mismatch" => s.kernel_mismatch = v == "true",
                _ => return Err(format!("fake script: unknown key {k:?}")),
            }
        }
        Ok(s)
    }

    fn fails(&self, step: &str) -> bool {
        self.fail.iter().any(|f| f == step)
    }
}

/// The pretend gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldState {
    pub segmentation_active: bool,
    /// Whether the health probes are being watched outside an observation.
    #[serde(default)]
    pub health_watch: bool,
    /// Versions of patches in place.
    pub applied: Vec<String>,
    /// Versions made permanent.
    pub committed: Vec<String>,
    /// Checkpoint ids whose images exist.
    pub checkpoints: Vec<String>,
    /// Checkpoint ids restored.
    pub restored: Vec<String>,
    /// Every call, in order: `firewall.apply w-1`, `livepatch.apply 1.0.1`, ...
    pub calls: Vec<String>,
    /// Per-step call counts.
    pub counts: BTreeMap<String, u32>,
    /// The pretend boot: its id, and the slot it runs from (A/B fake).
    #[serde(default = "first_boot")]
    pub boot_id: String,
    #[serde(default = "slot_a")]
    pub booted_slot: String,
    /// Reboots asked for.
    #[serde(default)]
    pub reboots: u32,
}

fn first_boot() -> String {
    "boot-1".into()
}

fn slot_a() -> String {
    "A".into()
}

impl Default for WorldState {
    fn default() -> Self {
        WorldState {
            segmentation_active: false,
            health_watch: false,
            applied: Vec::new(),
            committed: Vec::new(),
            checkpoints: Vec::new(),
            restored: Vec::new(),
            calls: Vec::new(),
            counts: BTreeMap::new(),
            boot_id: first_boot(),
            booted_slot: slot_a(),
            reboots: 0,
        }
    }
}

/// Shared state of all fakes, optionally persisted as JSON after every change.
#[derive(Debug, Clone)]
pub struct FakeWorld {
    inner: Arc<Mutex<WorldState>>,
    file: Option<PathBuf>,
    pub script: FakeScript,
}

impl FakeWorld {
    pub fn in_memory(script: FakeScript) -> Self {
        FakeWorld { inner: Arc::new(Mutex::new(WorldState::default())), file: None, script }
    }

    /// A world kept in `file` (loaded if it exists).
    pub fn persistent(file: &Path, script: FakeScript) -> Self {
        let state = std::fs::read(file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        FakeWorld { inner: Arc::new(Mutex::new(state)), file: Some(file.to_path_buf()), script }
    }

    pub fn snapshot(&self) -> WorldState {
        self.inner.lock().expect("fake world lock").clone()
    }

    fn record(&self, call: String, change: impl FnOnce(&mut WorldState)) {
        let mut w = self.inner.lock().expect("fake world lock");
        let step = call.split_whitespace().next().unwrap_or_default().to_string();
        *w.counts.entry(step).or_default() += 1;
        w.calls.push(call);
        change(&mut w);
        if let Some(f) = &self.file {
            if let Ok(text) = serde_json::to_vec_pretty(&*w) {
                // Best effort: the fake world is test scaffolding, not daemon state.
                let _ = crate::fsutil::write_atomic(f, &text);
            }
        }
    }

    async fn step(&self, step: &str) -> BackendResult<()> {
        tokio::time::sleep(self.script.delay).await;
        if self.script.fails(step) {
            return Err(BackendError::new(format!("fake {step} failure (scripted)")));
        }
        Ok(())
    }

    /// Every fake, sharing this world, with `clock`.
    pub fn backends(&self, clock: Arc<dyn Clock>) -> Backends {
        let me = Arc::new(self.clone());
        Backends {
            firewall: me.clone(),
            fetcher: me.clone(),
            verifier: me.clone(),
            checkpointer: me.clone(),
            livepatcher: Arc::new(FakePatcher { world: self.clone(), name: "livepatch" }),
            ab_updater: Arc::new(FakePatcher { world: self.clone(), name: "ab" }),
            rebooter: me.clone(),
            health: me,
            clock,
        }
    }
}

#[async_trait]
impl Firewall for FakeWorld {
    async fn apply(&self, plan: &SegmentationPlan) -> BackendResult<()> {
        self.step("segment").await?;
        self.record(format!("firewall.apply {}", plan.window_id), |w| w.segmentation_active = true);
        Ok(())
    }

    async fn lift(&self) -> BackendResult<LiftReport> {
        self.step("lift").await?;
        let mut was = false;
        self.record("firewall.lift".into(), |w| {
            was = w.segmentation_active;
            w.segmentation_active = false;
        });
        Ok(LiftReport { was_active: was, dropped_packets: if was { 42 } else { 0 } })
    }

    async fn active(&self) -> BackendResult<bool> {
        Ok(self.snapshot().segmentation_active)
    }

    async fn inspect(&self) -> BackendResult<Option<super::FirewallView>> {
        Ok(self.snapshot().segmentation_active.then(|| super::FirewallView {
            backend: "fake".into(),
            ruleset: "fake ruleset: patch server, probe targets, drop the rest".into(),
            dropped_packets: 42,
        }))
    }
}

#[async_trait]
impl Fetcher for FakeWorld {
    async fn fetch(
        &self,
        window: &WindowCtx,
        avoid: &crate::rolled_back::RolledBack,
        progress: ProgressFn,
    ) -> BackendResult<FetchOutcome> {
        for pct in [25, 50, 75, 100] {
            tokio::time::sleep(self.script.delay / 4).await;
            progress(pct, format!("downloading bundle {}", self.script.version));
        }
        self.step("fetch").await?;
        self.record(format!("fetch {}", window.id), |_| {});
        if self.script.nothing_to_fetch || self.snapshot().committed.contains(&self.script.version) {
            return Ok(FetchOutcome::NothingNewer);
        }
        if let Some(r) = avoid.find(FAKE_COMPATIBLE, &self.script.version) {
            return Ok(FetchOutcome::RolledBack(r.clone()));
        }
        let path = match &self.script.bundle {
            Some(p) => p.clone(),
            None => PathBuf::from(format!("/var/lib/otpatch/bundles/fake-{}.otb", self.script.version)),
        };
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(4096);
        Ok(FetchOutcome::Bundle(BundleRef { path, size }))
    }

    async fn fetch_named(&self, window: &WindowCtx, file: &str, _progress: ProgressFn) -> BackendResult<BundleRef> {
        self.step("fetch").await?;
        self.record(format!("fetch-named {} {file}", window.id), |_| {});
        Ok(BundleRef { path: PathBuf::from(format!("/var/lib/otpatch/bundles/{file}")), size: 4096 })
    }
}

#[async_trait]
impl Verifier for FakeWorld {
    async fn verify(&self, bundle: &BundleRef) -> BackendResult<VerifiedBundle> {
        self.step("verify").await?;
        self.record(format!("verify {}", bundle.path.display()), |_| {});
        let named_ab = bundle.path.extension().is_some_and(|e| e == "raucb");
        if self.script.kernel_mismatch && !named_ab {
            return Err(BackendError::kernel_mismatch(format!(
                "{}: vermagic 6.1.0-99-amd64 (fake)",
                bundle.path.display()
            )));
        }
        Ok(VerifiedBundle {
            path: bundle.path.clone(),
            kind: if named_ab { PatchKind::Ab } else { self.script.kind },
            compatible: FAKE_COMPATIBLE.into(),
            version: self.script.version.clone(),
            digest: fake_digest(&self.script.version),
            signer: "CN=otpatch demo signer".into(),
            verified_at: None,
        })
    }
}

#[async_trait]
impl Checkpointer for FakeWorld {
    async fn preflight(&self) -> BackendResult<()> {
        self.step("preflight").await?;
        self.record("checkpoint.preflight".into(), |_| {});
        Ok(())
    }

    async fn checkpoint(&self, window: &WindowCtx) -> BackendResult<CheckpointRef> {
        self.step("checkpoint").await?;
        let id = format!("ckpt-{}", window.id);
        let c = CheckpointRef { id: id.clone(), processes: vec!["softplc".into()] };
        self.record(format!("checkpoint.dump {id}"), |w| w.checkpoints.push(id.clone()));
        Ok(c)
    }

    async fn restore(&self, checkpoint: &CheckpointRef) -> BackendResult<()> {
        self.step("restore").await?;
        let id = checkpoint.id.clone();
        self.record(format!("checkpoint.restore {id}"), |w| w.restored.push(id.clone()));
        Ok(())
    }

    async fn discard(&self, checkpoint: &CheckpointRef) -> BackendResult<()> {
        let id = checkpoint.id.clone();
        self.record(format!("checkpoint.discard {id}"), |w| w.checkpoints.retain(|c| c != &id));
        Ok(())
    }
}

#[async_trait]
impl HealthMonitor for FakeWorld {
    async fn baseline(&self) -> BackendResult<()> {
        self.record("health.baseline".into(), |_| {});
        Ok(())
    }

    async fn start_watch(&self) {
        if !self.snapshot().health_watch {
            self.record("health.watch".into(), |w| w.health_watch = true);
        }
    }

    async fn stop_watch(&self) {
        if self.snapshot().health_watch {
            self.record("health.unwatch".into(), |w| w.health_watch = false);
        }
    }

    fn probes(&self) -> Vec<otpatch_common::api::ProbeReport> {
        let observed = self.snapshot().counts.get("health.observe").copied().unwrap_or(0) > 0;
        let failing = observed && self.script.health == FakeHealth::Fail;
        vec![otpatch_common::api::ProbeReport {
            name: "fake-critical".into(),
            target: "fake plc".into(),
            critical: true,
            last_value: if failing { "0".into() } else { "72".into() },
            last_error: if failing { "value 0 below min 50".into() } else { String::new() },
            consecutive_failures: if failing { 3 } else { 0 },
            trip_after: 3,
            reads: if observed { 10 } else { 1 },
            failures: if failing { 3 } else { 0 },
            tripped: failing,
            last_response_us: 800,
        }]
    }

    async fn observe(&self, period: Duration) -> Verdict {
        // Like the real monitor: the observation pauses the watch and resumes it when it is over.
        let was_watching = self.snapshot().health_watch;
        self.record("health.observe".into(), |w| w.health_watch = false);
        let verdict = match self.script.health {
            FakeHealth::Healthy => {
                tokio::time::sleep(period).await;
                Verdict::Healthy
            }
            FakeHealth::Degraded => {
                tokio::time::sleep(period).await;
                Verdict::Degraded("advisory probe fake-advisory out of range".into())
            }
            FakeHealth::Fail => {
                tokio::time::sleep(self.script.health_fail_after.min(period)).await;
                Verdict::Failed("critical probe fake-critical tripped: value 0 below min 50".into())
            }
        };
        if was_watching {
            self.start_watch().await;
        }
        verdict
    }
}

#[async_trait]
impl Rebooter for FakeWorld {
    async fn reboot(&self, why: &str) -> BackendResult<()> {
        self.step("reboot").await?;
        self.record(format!("reboot {why}"), |w| w.reboots += 1);
        Ok(())
    }

    fn boot_id(&self) -> BackendResult<String> {
        Ok(self.snapshot().boot_id)
    }
}

/// The livepatch or A/B fake.
#[derive(Debug, Clone)]
pub struct FakePatcher {
    world: FakeWorld,
    name: &'static str,
}

#[async_trait]
impl Patcher for FakePatcher {
    async fn apply(&self, _window: &str, bundle: &VerifiedBundle, progress: ProgressFn) -> BackendResult<Applied> {
        progress(-1, format!("{} {}: applying", self.name, bundle.version));
        // The change goes in before a scripted failure, as a half-finished apply would leave it.
        let v = bundle.version.clone();
        self.world.record(format!("{}.apply {}", self.name, bundle.version), |w| w.applied.push(v));
        self.world.step("apply").await?;
        Ok(if self.name == "ab" { Applied::Installed { slot: "B".into() } } else { Applied::InPlace })
    }

    async fn booted_slot(&self) -> BackendResult<String> {
        Ok(self.world.snapshot().booted_slot)
    }

    async fn revert(&self, bundle: &VerifiedBundle, restore: Option<&VerifiedBundle>) -> BackendResult<()> {
        self.world.step("rollback").await?;
        let v = bundle.version.clone();
        self.world.record(format!("{}.revert {}", self.name, bundle.version), |w| w.applied.retain(|a| a != &v));
        if let Some(prev) = restore.filter(|p| p.version != bundle.version) {
            let p = prev.version.clone();
            self.world.record(format!("{}.restore {}", self.name, prev.version), |w| {
                if !w.applied.contains(&p) {
                    w.applied.push(p)
                }
            });
        }
        Ok(())
    }

    async fn is_applied(&self, bundle: &VerifiedBundle) -> BackendResult<bool> {
        Ok(self.world.snapshot().applied.contains(&bundle.version))
    }

    async fn commit(&self, bundle: &VerifiedBundle) -> BackendResult<()> {
        if self.world.script.fails("commit") {
            return Err(BackendError::new(format!("fake {}.commit failure (scripted)", self.name)));
        }
        let v = bundle.version.clone();
        self.world.record(format!("{}.commit {}", self.name, bundle.version), |w| {
            if !w.committed.contains(&v) {
                w.committed.push(v)
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_text_is_read_and_bad_keys_named() {
        let s = FakeScript::parse("fail=verify:lift, health=fail, delay=10ms, version=2.0").unwrap();
        assert_eq!(s.fail, vec!["verify", "lift"]);
        assert_eq!(s.health, FakeHealth::Fail);
        assert_eq!(s.delay, Duration::from_millis(10));
        assert_eq!(s.version, "2.0");
        assert!(FakeScript::parse("colour=blue").unwrap_err().contains("colour"));
        assert!(FakeScript::parse("health=maybe").unwrap_err().contains("healthy, degraded or fail"));
    }

    #[test]
    fn persistent_world_survives_a_new_process() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("world.json");
        let w = FakeWorld::persistent(&f, FakeScript::default());
        w.record("firewall.apply w1".into(), |s| s.segmentation_active = true);
        let again = FakeWorld::persistent(&f, FakeScript::default());
        assert!(again.snapshot().segmentation_active);
        assert_eq!(again.snapshot().calls, vec!["firewall.apply w1"]);
    }
}
