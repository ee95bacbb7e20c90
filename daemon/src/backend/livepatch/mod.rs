//! The kernel livepatch path: the [`Patcher`](crate::backend::Patcher) that loads a livepatch module from a
//! verified bundle, waits for its transition, and takes it out again.
//!
//! Before anything is loaded the module's `.modinfo` must say `livepatch=Y` and carry the running kernel's
//! vermagic (release and flags, compared with a module of the running kernel when one is there) and, when the
//! bundle pins one, the running kernel's build-id. Then `finit_module`; the patch's
//! `/sys/kernel/livepatch/<name>/transition` must reach 0 within the policy's `rollback.transition_timeout`. A
//! transition that stalls is reverted (`enabled` = 0), with the tasks still in the old code named, unless the
//! policy allows `force`. Rollback: disable, wait until the patch's sysfs directory is gone, `delete_module`.
//! Cumulative (`.replace = true`) patches replace the ones before them; what is applied is always read from
//! the kernel ([`applied`]).
//!
//! A gateway lives through many windows, so the committed patch is never lost on the way:
//! - after a cumulative patch replaced the one before (whose sysfs directory goes, while its module stays loaded),
//!   the replaced module is unloaded, so it can be loaded again later (a second `finit_module` of a loaded module
//!   fails with EEXIST) and replaced modules do not pile up;
//! - a revert is told what was committed before ([`Patcher::revert`]'s `restore`): it loads that module again
//!   first (a cumulative patch replaces the reverted one in one transition, with no moment unpatched), then
//!   unloads the reverted module; when that cannot be done the revert fails, so the window ends
//!   `RollbackFailed`, never "rolled back" without the committed fix;
//! - modules are known by name *and* srcversion (`/sys/module/<name>/srcversion`): another build of the same name
//!   is neither "already applied" nor unloaded by a revert;
//! - a revert first waits for a `finit_module` still running in a blocking task whose apply was dropped (a
//!   deadline or cancel), so a module never finishes loading after "rolled back".
//!
//! Every path goes through the [`Sysroot`], and the two system calls through [`Kernel`], so the logic runs in
//! tests against a fake sysfs tree whose fake kernel plays the transitions.

pub mod modinfo;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use crate::backend::{Applied, BackendError, BackendResult, Patcher, ProgressFn};
use crate::engine::VerifiedBundle;
use crate::sysroot::Sysroot;
pub use modinfo::ModInfo;

/// The two system calls.
pub trait Kernel: Send + Sync {
    /// `finit_module` of the file.
    fn load(&self, ko: &Path) -> std::io::Result<()>;
    /// `delete_module` by name (non-blocking).
    fn unload(&self, name: &str) -> std::io::Result<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealKernel;

impl Kernel for RealKernel {
    fn load(&self, ko: &Path) -> std::io::Result<()> {
        let f = std::fs::File::open(ko)?;
        nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()).map_err(std::io::Error::from)
    }

    fn unload(&self, name: &str) -> std::io::Result<()> {
        let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
        nix::kmod::delete_module(&c, nix::kmod::DeleteModuleFlags::O_NONBLOCK).map_err(std::io::Error::from)
    }
}

/// A livepatch as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedPatch {
    pub name: String,
    pub enabled: bool,
    pub in_transition: bool,
}

/// The patches in `/sys/kernel/livepatch`, sorted by name.
pub fn applied(root: &Sysroot) -> Vec<AppliedPatch> {
    let dir = root.path("/sys/kernel/livepatch");
    let mut v: Vec<AppliedPatch> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| {
                    let p = e.path();
                    AppliedPatch {
                        name: e.file_name().to_string_lossy().into_owned(),
                        enabled: read_flag(&p.join("enabled")),
                        in_transition: read_flag(&p.join("transition")),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn read_flag(p: &Path) -> bool {
    std::fs::read_to_string(p).map(|s| s.trim() == "1").unwrap_or(false)
}

/// The running kernel's release.
pub fn running_release(root: &Sysroot) -> BackendResult<String> {
    let p = root.path("/proc/sys/kernel/osrelease");
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| BackendError::new(format!("cannot read the running kernel's release ({}): {e}", p.display())))
}

/// The vermagic of a module of the running kernel (the reference for the flags), if one is found.
pub fn reference_vermagic(root: &Sysroot, release: &str) -> Option<String> {
    let base = root.path("/lib/modules").join(release).join("kernel");
    // Bounded walk: the first .ko found within 2000 entries.
    let mut stack = vec![base];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.filter_map(Result::ok) {
            seen += 1;
            if seen > 2000 {
                return None;
            }
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                if let Ok(info) = ModInfo::read(&p) {
                    return info.vermagic;
                }
            }
        }
    }
    None
}

/// Whether a module may be loaded into the running kernel (livepatch, vermagic, pinned build-id). Used when a
/// bundle is verified, so that a module for another kernel fails the window before anything is applied, and
/// again right before loading.
pub fn check_module(root: &Sysroot, ko: &Path, pinned_build_id: Option<&str>) -> BackendResult<ModInfo> {
    let info = ModInfo::read(ko).map_err(|e| BackendError::new(format!("{}: {e}", ko.display())))?;
    let release = running_release(root)?;
    let reference = reference_vermagic(root, &release);
    let build_id = match pinned_build_id {
        Some(_) => Some(
            modinfo::kernel_build_id(&root.path("/sys/kernel/notes"))
                .map_err(|e| BackendError::new(format!("cannot read the running kernel's build-id: {e}")))?,
        ),
        None => None,
    };
    info.check_against(&release, reference.as_deref(), pinned_build_id, build_id.as_deref())
        .map_err(|e| BackendError::kernel_mismatch(format!("{}: {e}", ko.display())))?;
    Ok(info)
}

/// How the livepatcher behaves.
#[derive(Debug, Clone)]
pub struct LivepatchConfig {
    pub transition_timeout: Duration,
    pub allow_force: bool,
    /// How often sysfs is polled.
    pub poll: Duration,
    /// A build-id the module must be for (from the bundle's manifest), hex.
    pub pinned_build_id: Option<String>,
}

/// The module file of a verified bundle, and the kernel build-id its manifest pins, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    pub path: PathBuf,
    pub pinned_build_id: Option<String>,
}

/// Finds the module file of a verified bundle (extracting it from the bundle if needed).
pub type ModuleSource = Arc<dyn Fn(&VerifiedBundle) -> BackendResult<ModuleFile> + Send + Sync>;

pub struct SysfsLivepatcher {
    root: Sysroot,
    kernel: Arc<dyn Kernel>,
    config: LivepatchConfig,
    module_for: ModuleSource,
    /// `finit_module` calls started and not finished (they outlive a dropped apply future).
    loads_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// How long a revert waits for a load still running in the kernel.
const LOAD_SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Whether the kernel's module named like `info` is this very build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// Not loaded.
    Absent,
    /// Loaded, and the srcversion matches (or neither side has one to compare).
    Ours,
    /// Loaded, but another build of the same name.
    Other,
}

impl std::fmt::Debug for SysfsLivepatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysfsLivepatcher")
            .field("root", &self.root)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SysfsLivepatcher {
    pub fn new(root: Sysroot, kernel: Arc<dyn Kernel>, config: LivepatchConfig, module_for: ModuleSource) -> Self {
        SysfsLivepatcher { root, kernel, config, module_for, loads_in_flight: Arc::default() }
    }

    /// Whether the module `info` names is loaded, and whether it is this build.
    fn identity(&self, info: &ModInfo) -> Identity {
        let module = self.root.path("/sys/module").join(&info.name);
        if !module.exists() && !self.patch_dir(&info.name).exists() {
            return Identity::Absent;
        }
        let loaded = std::fs::read_to_string(module.join("srcversion")).ok().map(|s| s.trim().to_string());
        match (&info.srcversion, loaded) {
            (Some(want), Some(have)) if *want != have => Identity::Other,
            _ => Identity::Ours,
        }
    }

    fn loaded_srcversion(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.path("/sys/module").join(name).join("srcversion"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    }

    /// Waits (bounded) until no `finit_module` of ours is running any more.
    async fn loads_settled(&self) -> BackendResult<()> {
        let n = self.loads_in_flight.clone();
        if self.wait(LOAD_SETTLE_LIMIT, || n.load(std::sync::atomic::Ordering::SeqCst) == 0).await {
            Ok(())
        } else {
            Err(BackendError::new(format!("a livepatch module load did not finish within {LOAD_SETTLE_LIMIT:?}")))
        }
    }

    /// `finit_module`, counted while it runs (the count is dropped by the blocking task itself).
    async fn load(&self, ko: &Path, name: &str) -> BackendResult<()> {
        let kernel = self.kernel.clone();
        let path = ko.to_path_buf();
        let count = self.loads_in_flight.clone();
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let task = tokio::task::spawn_blocking(move || {
            let r = kernel.load(&path);
            count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            r
        });
        task.await
            .map_err(|e| BackendError::new(format!("loading {name}: {e}")))?
            .map_err(|e| BackendError::new(format!("the kernel refused livepatch module {name}: {e}")))
    }

    /// Loads a checked module and waits for its transition (forcing it only when the policy allows); a patch that
    /// does not settle is taken back out. Modules of patches it replaced are unloaded.
    async fn load_and_settle(&self, ko: &Path, name: &str, version: &str, progress: &ProgressFn) -> BackendResult<()> {
        let before: Vec<String> = applied(&self.root).into_iter().map(|p| p.name).filter(|n| n != name).collect();
        progress(-1, format!("loading livepatch {name} ({version})"));
        self.load(ko, name).await?;
        let dir = self.patch_dir(name);
        if !self.wait(Duration::from_secs(5), || dir.exists()).await {
            let _ = self.disable_and_unload(name).await;
            return Err(BackendError::new(format!(
                "module {name} loaded but no /sys/kernel/livepatch/{name} appeared"
            )));
        }
        progress(-1, format!("livepatch {name}: waiting for the transition"));
        let transition = dir.join("transition");
        let limit = self.config.transition_timeout;
        let mut settled = self.wait(limit, || !read_flag(&transition)).await;
        let stuck = if settled { Vec::new() } else { self.stragglers(1) };
        let who = if stuck.is_empty() { "none reported".to_string() } else { stuck.join(", ") };
        if !settled && self.config.allow_force {
            tracing::warn!(patch = %name, tasks = %who, "transition stalled; forcing it (allowed by the policy)");
            std::fs::write(dir.join("force"), "1").map_err(|e| BackendError::new(format!("forcing {name}: {e}")))?;
            settled = self.wait(limit, || !read_flag(&transition)).await;
        }
        if settled {
            self.unload_replaced(&before).await;
            return Ok(());
        }
        // Take it back out before reporting: a half-transitioned patch must not stay.
        let revert = self.disable_and_unload(name).await;
        let mut msg = format!("livepatch {name} did not finish its transition within {limit:?}; tasks still in the old code: {who}; reverted");
        if let Err(e) = revert {
            msg.push_str(&format!(" (revert failed: {e})"));
        }
        Err(BackendError::new(msg))
    }

    /// Unloads the modules of patches an atomic replace released (their sysfs directory went, the module stays).
    async fn unload_replaced(&self, before: &[String]) {
        for name in before.iter().filter(|n| !self.patch_dir(n).exists()) {
            match self.unload(name).await {
                Ok(()) => tracing::info!(module = %name, "unloaded the module of a replaced livepatch"),
                Err(e) => tracing::warn!(module = %name, error = %e, "could not unload a replaced livepatch module"),
            }
        }
    }

    /// `delete_module`; a module that is not loaded is no error.
    async fn unload(&self, name: &str) -> BackendResult<()> {
        let kernel = self.kernel.clone();
        let n = name.to_string();
        match tokio::task::spawn_blocking(move || kernel.unload(&n)).await {
            Ok(Ok(())) => Ok(()),
            // Not loaded (any more): the goal is reached.
            Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(()),
            Ok(Err(e)) => Err(BackendError::new(format!("unloading livepatch module {name}: {e}"))),
            Err(e) => Err(BackendError::new(format!("unloading livepatch module {name}: {e}"))),
        }
    }

    /// The checked module of a bundle.
    fn module(&self, bundle: &VerifiedBundle) -> BackendResult<(PathBuf, ModInfo)> {
        let module = (self.module_for)(bundle)?;
        let info = self.check(&module.path, module.pinned_build_id.as_deref())?;
        Ok((module.path, info))
    }

    /// Puts the committed `prev` back in place (unless it is), then takes out `current` if it is still there.
    async fn restore(&self, current: Option<&ModInfo>, prev: &VerifiedBundle) -> BackendResult<()> {
        let (ko, info) = self.module(prev)?;
        let prev_in_place = applied(&self.root).iter().any(|p| p.name == info.name && p.enabled && !p.in_transition)
            && self.identity(&info) == Identity::Ours;
        let same_name = current.is_some_and(|c| c.name == info.name);
        if same_name {
            // One name, two builds: the reverted one must go before the committed one can be loaded.
            if let Some(c) = current {
                self.disable_and_unload(&c.name).await?;
            }
        }
        if !prev_in_place || same_name {
            let progress: ProgressFn = Arc::new(|_, _| {});
            self.load_and_settle(&ko, &info.name, &prev.version, &progress).await?;
        }
        // A cumulative patch replaced `current` (its module was unloaded with the replaced ones); one that stacked
        // on top leaves it to be disabled.
        if let Some(c) = current.filter(|c| c.name != info.name && self.identity(c) == Identity::Ours) {
            self.disable_and_unload(&c.name).await?;
        }
        Ok(())
    }

    fn patch_dir(&self, name: &str) -> PathBuf {
        self.root.path("/sys/kernel/livepatch").join(name)
    }

    /// Checks a module against the running kernel before anything is loaded.
    pub fn check(&self, ko: &Path, pinned_build_id: Option<&str>) -> BackendResult<ModInfo> {
        check_module(&self.root, ko, pinned_build_id.or(self.config.pinned_build_id.as_deref()))
    }

    /// Waits (bounded) until `cond` holds, polling.
    async fn wait(&self, limit: Duration, cond: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        loop {
            if cond() {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(self.config.poll).await;
        }
    }

    /// Tasks the kernel still shows in the old code (`/proc/<pid>/patch_state` not at the target), up to 10.
    pub fn stragglers(&self, target: i32) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.root.path("/proc")) else { return out };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let state =
                std::fs::read_to_string(e.path().join("patch_state")).ok().and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(s) = state {
                if s != -1 && s != target {
                    let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                    out.push(format!("{} ({})", name, comm.trim()));
                    if out.len() >= 10 {
                        break;
                    }
                }
            }
        }
        out
    }

    async fn disable_and_unload(&self, name: &str) -> BackendResult<()> {
        let dir = self.patch_dir(name);
        if dir.exists() {
            let enabled = dir.join("enabled");
            if read_flag(&enabled) {
                std::fs::write(&enabled, "0")
                    .map_err(|e| BackendError::new(format!("disabling livepatch {name}: {e}")))?;
            }
            let limit = self.config.transition_timeout;
            if !self.wait(limit, || !dir.exists()).await {
                let stuck = self.stragglers(0);
                return Err(BackendError::new(format!(
                    "livepatch {name} did not finish disabling within {limit:?}; tasks still in the patched code: {}",
                    if stuck.is_empty() { "none reported".to_string() } else { stuck.join(", ") }
                )));
            }
        }
        self.unload(name).await
    }
}

#[async_trait]
impl Patcher for SysfsLivepatcher {
    async fn apply(&self, _window: &str, bundle: &VerifiedBundle, progress: ProgressFn) -> BackendResult<Applied> {
        let (ko, info) = self.module(bundle)?;
        let name = info.name.clone();
        match self.identity(&info) {
            Identity::Ours if applied(&self.root).iter().any(|p| p.name == name && p.enabled && !p.in_transition) => {
                // Already in (a restart after the load, or a re-apply that raced a window): nothing to do.
                return Ok(Applied::InPlace);
            }
            Identity::Other => {
                return Err(BackendError::new(format!(
                    "another build of livepatch module {name} is loaded (srcversion {}, the bundle's is {}); \
                     refusing to take it for {} or to replace it",
                    self.loaded_srcversion(&name),
                    info.srcversion.as_deref().unwrap_or("unknown"),
                    bundle.version
                )));
            }
            _ => {}
        }
        self.load_and_settle(&ko, &name, &bundle.version, &progress).await?;
        Ok(Applied::InPlace)
    }

    async fn revert(&self, bundle: &VerifiedBundle, restore: Option<&VerifiedBundle>) -> BackendResult<()> {
        // A load whose apply was dropped may still be running: decide only once it finished.
        self.loads_settled().await?;
        let ko = (self.module_for)(bundle)?.path;
        let info = ModInfo::read(&ko).map_err(|e| BackendError::new(format!("{}: {e}", ko.display())))?;
        let ours = self.identity(&info) == Identity::Ours;
        if !ours && self.identity(&info) == Identity::Other {
            tracing::warn!(module = %info.name, "another build of the module is loaded; the revert leaves it alone");
        }
        match restore.filter(|prev| prev.digest != bundle.digest) {
            Some(prev) => self.restore(ours.then_some(&info), prev).await.map_err(|e| {
                BackendError::new(format!(
                    "{} could not be reverted to the committed {}: {e}",
                    bundle.version, prev.version
                ))
            }),
            None if ours => self.disable_and_unload(&info.name).await,
            None => Ok(()),
        }
    }

    async fn is_applied(&self, bundle: &VerifiedBundle) -> BackendResult<bool> {
        let ko = (self.module_for)(bundle)?.path;
        let info = ModInfo::read(&ko).map_err(|e| BackendError::new(format!("{}: {e}", ko.display())))?;
        Ok(self.identity(&info) == Identity::Ours
            && applied(&self.root).iter().any(|p| p.name == info.name && p.enabled))
    }

    async fn commit(&self, bundle: &VerifiedBundle) -> BackendResult<()> {
        // The committed record (committed.json) is what boot re-applies from; here we only confirm the kernel
        // agrees that the patch is in.
        let ko = (self.module_for)(bundle)?.path;
        let info = ModInfo::read(&ko).map_err(|e| BackendError::new(format!("{}: {e}", ko.display())))?;
        match applied(&self.root).into_iter().find(|p| p.name == info.name) {
            Some(p) if p.enabled && !p.in_transition && self.identity(&info) == Identity::Ours => Ok(()),
            Some(p) => {
                Err(BackendError::new(format!("livepatch {} is not settled or not this build: {p:?}", info.name)))
            }
            None => Err(BackendError::new(format!("livepatch {} is no longer applied", info.name))),
        }
    }
}

#[cfg(test)]
mod tests;
