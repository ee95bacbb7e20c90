//! The CRIU checkpointer: dumps the policy's critical processes before a change (leaving them running) and
//! puts them back from the images when the window rolls back.
//!
//! # The `criu` command line, not the RPC interface
//!
//! CRIU offers both a command line and an RPC interface (`criu swrk` over a socketpair, protobuf messages;
//! the rust-criu crate wraps it). This backend runs the command line, one `criu` process per action:
//!
//! - **CRIU's own log is the diagnosis.** Every action writes `-o <action>.log -v4` into the image directory;
//!   a failure carries the log's `Error` lines and its tail (the RPC answer carries one `cr_errmsg` line at
//!   best), and the log stays next to the images for whoever investigates.
//! - **No generated protobuf code or extra dependency** in a daemon that must stay small and auditable; the
//!   one CRIU image it reads (`stats-dump`, for the freeze time) is decoded by a few lines of its own.
//! - **Bounded and isolated.** Each action is a child process with a deadline (killed on expiry; the kernel
//!   releases the traced tasks when their tracer dies); a CRIU crash cannot take an RPC session, or the
//!   daemon, down with it. A `criu swrk` worker would be the same process model with a protocol in between.
//! - **The same commands an operator types** (`criu dump -t PID -D DIR ...`), so a failure can be reproduced
//!   by hand, and the benchmark compares the backend against exactly those commands.
//!
//! The price: a fork and exec per action (a few ms against dumps of hundreds of ms) and options assembled
//! as strings, checked by the unit tests against a fake `criu`.
//!
//! # What it does
//!
//! - **Preflight** (window arming): `criu check`, `criu check --feature mem_dirty_track` when a process
//!   pre-dumps, then each process is resolved (systemd unit's `MainPID` over D-Bus, a pidfile only root or
//!   the process's user can write, or the one process running an executable as the policy's user) and
//!   inspected in `/proc`: alive, no terminal held or controlling, its
//!   session and process group led from inside its tree, the daemon in the same mount and pid namespace.
//!   Established TCP connections are listed: with `tcp_established = true` CRIU checkpoints them
//!   (`--tcp-established`), otherwise they are dumped closed (`--tcp-close`) and the peers reconnect after a
//!   restore (a Modbus master does).
//! - **Checkpoint** (before the apply): the older windows' image sets are removed, the free space of the
//!   images' file system is checked against the trees' resident memory, then each process is dumped with
//!   `--leave-running` (after a `pre-dump --track-mem` when the policy asks, so the final freeze copies only
//!   the pages dirtied since) into `<state>/checkpoints/<window>/<process>/`, and `manifest.json` records
//!   the pid and its start time, the executable, the boot id, CRIU's freeze times and every image file's size
//!   and hash.
//! - **Restore** (rollback): every set is validated first (manifest, files, sizes, hashes); only then is each
//!   process stopped, and only while its pid has the recorded start time and executable: each task is opened
//!   as a pidfd, its start time checked again, and SIGKILL goes through the pidfd (a pid reused in between
//!   is never signalled). Then a bounded wait for its pids to be free, and it is restored detached with the
//!   same pid (`criu restore -d`), then confirmed alive running the same executable. A set from another boot
//!   (an A/B reboot happened) is not restored: the boot restarted the processes.
//! - **Discard** (after a commit): the window's set is removed.

pub mod cli;
pub mod images;
pub mod procfs;
mod stop;
#[cfg(test)]
mod tests;
mod units;

use self::units::open_pidfd;
pub use self::units::{OpenFn, Pidfd, SystemdUnits, UnitResolver};

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use otpatch_common::policy::CriticalProcess;
use tracing::{info, warn};

use crate::backend::{BackendError, BackendResult, Checkpointer};
use crate::engine::{CheckpointRef, WindowCtx};
use crate::sysroot::Sysroot;

use self::cli::Criu;
use self::images::{dir_name, Manifest, PRE_DIR};
use self::procfs::{Procfs, Tree};

const MIB: u64 = 1024 * 1024;
/// Room for CRIU's metadata images and logs beside the pages, per process.
const SPACE_MARGIN: u64 = 16 * MIB;

/// Free bytes for images in a directory.
pub type SpaceFn = Arc<dyn Fn(&Path) -> io::Result<u64> + Send + Sync>;
/// How the checkpointer reaches CRIU, the images and the processes.
#[derive(Clone)]
pub struct CriuConfig {
    /// The `criu` binary (found on `PATH` when it is a bare name).
    pub criu: PathBuf,
    /// Where image sets go: `<state>/checkpoints`.
    pub images: PathBuf,
    /// Longest one `criu` command may take.
    pub timeout: Duration,
    /// Longest wait for a stopped process's pid to be free (its parent must reap it).
    pub stop_timeout: Duration,
    pub units: Arc<dyn UnitResolver>,
    pub space: SpaceFn,
    /// How the processes a restore replaces are opened to be signalled.
    pub open: OpenFn,
}

impl fmt::Debug for CriuConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CriuConfig")
            .field("criu", &self.criu)
            .field("images", &self.images)
            .field("timeout", &self.timeout)
            .field("stop_timeout", &self.stop_timeout)
            .finish_non_exhaustive()
    }
}

impl CriuConfig {
    /// The production set-up: `criu` on `PATH`, images under the state directory, systemd over D-Bus,
    /// statvfs, pidfds.
    pub fn new(root: &Sysroot) -> Self {
        CriuConfig {
            criu: PathBuf::from("criu"),
            images: root.state_dir().join("checkpoints"),
            timeout: Duration::from_secs(300),
            stop_timeout: Duration::from_secs(10),
            units: Arc::new(SystemdUnits),
            space: Arc::new(images::available_space),
            open: Arc::new(open_pidfd),
        }
    }
}

/// The real [`Checkpointer`].
#[derive(Debug)]
pub struct CriuCheckpointer {
    procfs: Procfs,
    processes: Vec<CriticalProcess>,
    cfg: CriuConfig,
    criu: Criu,
    /// `--network-lock nftables` when `criu check` says it can (needed by `tcp_established`; CRIU's default
    /// locks the network with iptables-restore, which an nftables-only gateway lacks). Learnt at preflight.
    nft_lock: Mutex<Option<bool>>,
}

/// Runs blocking file work (hashing, removing image sets, scanning `/proc`) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> BackendResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BackendError::new(format!("checkpoint worker failed: {e}")))
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl CriuCheckpointer {
    pub fn new(root: Sysroot, processes: Vec<CriticalProcess>, cfg: CriuConfig) -> Self {
        let criu = Criu { program: cfg.criu.clone(), timeout: cfg.timeout };
        CriuCheckpointer { procfs: Procfs::new(root), processes, cfg, criu, nft_lock: Mutex::new(None) }
    }

    /// The directory of a window's image set.
    pub fn set_dir(&self, checkpoint_id: &str) -> PathBuf {
        self.cfg.images.join(dir_name(checkpoint_id))
    }

    /// Resolves a process and inspects its tree (off the runtime: it scans `/proc`).
    async fn find(&self, p: &CriticalProcess) -> Result<(i32, Tree), String> {
        let pid = self.procfs.resolve(p, self.cfg.units.as_ref()).await.map_err(|r| r.0)?;
        let (procfs, name) = (self.procfs.clone(), p.name.clone());
        blocking(move || procfs.inspect(&name, pid)).await.map_err(|e| e.0)?.map(|t| (pid, t)).map_err(|r| r.0)
    }

    /// The daemon must see the process's mounts and pids as CRIU will restore them: a private mount
    /// namespace (systemd's PrivateTmp/ProtectSystem) would make CRIU dump and restore the process into it.
    fn same_namespaces(&self, name: &str, pid: i32) -> Result<(), String> {
        for ns in ["mnt", "pid"] {
            let (mine, theirs) = (self.procfs.namespace("self", ns), self.procfs.namespace(&pid.to_string(), ns));
            if let (Some(mine), Some(theirs)) = (mine, theirs) {
                if mine != theirs {
                    return Err(format!(
                        "process {name} (pid {pid}) is in another {ns} namespace ({theirs}) than otpatchd \
                         ({mine}); CRIU would restore it into otpatchd's: run otpatchd without a private \
                         {ns} namespace (PrivateTmp=, ProtectSystem=, ProtectHome= in its unit)"
                    ));
                }
            }
        }
        Ok(())
    }

    fn tcp_args(&self, p: &CriticalProcess) -> Vec<OsString> {
        if !p.tcp_established {
            return os(&["--tcp-close"]);
        }
        let mut a = os(&["--tcp-established"]);
        if self.nft_lock.lock().map(|g| *g == Some(true)).unwrap_or(false) {
            a.extend(os(&["--network-lock", "nftables"]));
        }
        a
    }

    /// pre-dump (optional) and dump of one process into `dir`; writes the manifest last.
    async fn dump_one(
        &self,
        window: &str,
        p: &CriticalProcess,
        pid: i32,
        tree: &Tree,
        dir: &Path,
    ) -> BackendResult<Manifest> {
        let who = format!("process {} (pid {pid})", p.name);
        std::fs::create_dir_all(dir).map_err(|e| BackendError::new(format!("{}: {e}", dir.display())))?;
        let pid_s = pid.to_string();
        let (mut pre_dump_ms, mut pre_stats) = (0, None);
        if p.pre_dump {
            let pre = dir.join(PRE_DIR);
            std::fs::create_dir_all(&pre).map_err(|e| BackendError::new(format!("{}: {e}", pre.display())))?;
            let mut args = os(&["pre-dump", "-t", &pid_s, "--track-mem", "-o", "pre-dump.log", "-v4", "-D"]);
            args.push(pre.clone().into_os_string());
            let t = Instant::now();
            self.criu.run(&args, Some(&pre.join("pre-dump.log")), &format!("pre-dump of {who}")).await?;
            pre_dump_ms = ms(t.elapsed());
            pre_stats = std::fs::read(pre.join("stats-dump")).ok().and_then(|b| images::parse_stats_dump(&b));
        }
        let mut args = os(&["dump", "-t", &pid_s, "--leave-running", "-o", "dump.log", "-v4", "-D"]);
        args.push(dir.as_os_str().to_owned());
        if p.pre_dump {
            args.extend(os(&["--track-mem", "--prev-images-dir", PRE_DIR]));
        }
        args.extend(self.tcp_args(p));
        let t = Instant::now();
        self.criu.run(&args, Some(&dir.join("dump.log")), &format!("dump of {who}")).await?;
        let dump_ms = ms(t.elapsed());
        let stats = std::fs::read(dir.join("stats-dump")).ok().and_then(|b| images::parse_stats_dump(&b));
        let d = dir.to_path_buf();
        let files = blocking(move || images::list_images(&d))
            .await?
            .map_err(|e| BackendError::new(format!("listing the images of {who}: {e}")))?;
        let m = Manifest {
            format: 1,
            window: window.to_string(),
            process: p.name.clone(),
            pid,
            start_time: Some(tree.root.starttime),
            pids: tree.pids.clone(),
            exe: tree.exe.clone(),
            boot_id: self.procfs.boot_id().unwrap_or_default(),
            taken_at: jiff::Timestamp::now().to_string(),
            pre_dump: p.pre_dump,
            tcp_established: p.tcp_established,
            rss: tree.rss,
            pre_dump_ms,
            dump_ms,
            stats,
            pre_stats,
            files,
        };
        m.save(dir).map_err(|e| BackendError::new(format!("{}: {e}", dir.join(images::MANIFEST).display())))?;
        let frozen = stats.map(|s| s.frozen_us / 1000);
        info!(process = %p.name, pid, rss_mib = tree.rss / MIB, pre_dump_ms, dump_ms, frozen_ms = ?frozen,
            dir = %dir.display(), "process checkpointed");
        Ok(m)
    }

    async fn restore_one(
        &self,
        name: &str,
        p: Option<&CriticalProcess>,
        dir: &Path,
        m: &Manifest,
    ) -> BackendResult<()> {
        let who = format!("process {name} (pid {})", m.pid);
        self.stop_for_restore(name, m).await?;
        let mut args = os(&["restore", "-d", "-o", "restore.log", "-v4", "-D"]);
        args.push(dir.as_os_str().to_owned());
        match p {
            Some(p) => args.extend(self.tcp_args(p)),
            None if m.tcp_established => args.extend(os(&["--tcp-established"])),
            None => args.extend(os(&["--tcp-close"])),
        }
        let t = Instant::now();
        self.criu
            .run(
                &args,
                Some(&dir.join("restore.log")),
                &format!("restore of {who} (it was stopped and is not running)"),
            )
            .await?;
        let restore_ms = ms(t.elapsed());
        // `restore -d` returns once the tasks run; confirm from /proc (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.procfs.alive(m.pid) && self.procfs.exe(m.pid).as_deref() == Some(m.exe.as_path()) {
                info!(process = %name, pid = m.pid, restore_ms, "process restored from its checkpoint");
                return Ok(());
            }
            if Instant::now() >= deadline {
                let now = match (self.procfs.stat(m.pid), self.procfs.exe(m.pid)) {
                    (Some(s), exe) => format!("state {} running {:?}", s.state, exe),
                    (None, _) => "no such process".into(),
                };
                return Err(BackendError::new(format!(
                    "{who}: criu restore succeeded but the pid is not running {} ({now})",
                    m.exe.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl Checkpointer for CriuCheckpointer {
    async fn preflight(&self) -> BackendResult<()> {
        self.criu.run(&os(&["check"]), None, "criu check (can CRIU work on this kernel?)").await?;
        if self.processes.iter().any(|p| p.pre_dump) {
            self.criu
                .run(
                    &os(&["check", "--feature", "mem_dirty_track"]),
                    None,
                    "criu check --feature mem_dirty_track (pre-dump)",
                )
                .await?;
        }
        if self.processes.iter().any(|p| p.tcp_established) {
            let nft = self.criu.run(&os(&["check", "--feature", "network_lock_nftables"]), None, "").await.is_ok();
            if let Ok(mut g) = self.nft_lock.lock() {
                *g = Some(nft);
            }
        }
        let mut refusals = Vec::new();
        for p in &self.processes {
            match self.find(p).await {
                Ok((pid, tree)) => {
                    if let Err(e) = self.same_namespaces(&p.name, pid) {
                        refusals.push(e);
                    } else if !tree.tcp.is_empty() {
                        let conns: Vec<String> = tree.tcp.iter().map(ToString::to_string).collect();
                        if p.tcp_established {
                            info!(process = %p.name, pid, connections = %conns.join("; "),
                                "TCP connections will be checkpointed (tcp_established)");
                        } else {
                            warn!(process = %p.name, pid, connections = %conns.join("; "),
                                "TCP connections are not checkpointed (tcp_established = false): a restore brings \
                                 them back closed and the peers must reconnect");
                        }
                    }
                }
                Err(e) => refusals.push(e),
            }
        }
        if !refusals.is_empty() {
            return Err(BackendError::new(refusals.join("; ")));
        }
        let images = self.cfg.images.clone();
        blocking(move || std::fs::create_dir_all(&images).map_err(|e| format!("{}: {e}", images.display())))
            .await?
            .map_err(BackendError::new)
    }

    async fn checkpoint(&self, window: &WindowCtx) -> BackendResult<CheckpointRef> {
        let id = dir_name(&window.id);
        let set = self.set_dir(&id);
        let (images, keep, s2) = (self.cfg.images.clone(), id.clone(), set.clone());
        let removed = blocking(move || -> io::Result<Vec<PathBuf>> {
            std::fs::create_dir_all(&images)?;
            let removed = images::remove_other_sets(&images, &keep)?;
            // A set of this window from before a restart is incomplete: start it again.
            if s2.exists() {
                std::fs::remove_dir_all(&s2)?;
            }
            std::fs::create_dir_all(&s2)?;
            Ok(removed)
        })
        .await?
        .map_err(|e| BackendError::new(format!("preparing {}: {e}", set.display())))?;
        if !removed.is_empty() {
            info!(removed = ?removed, "removed the image sets of earlier windows");
        }

        let mut found = Vec::new();
        for p in &self.processes {
            found.push(self.find(p).await.map_err(BackendError::new)?);
        }
        let need: Vec<u64> = found.iter().map(|(_, t)| t.rss + t.rss / 5 + SPACE_MARGIN).collect();
        let total: u64 = need.iter().sum();
        let avail =
            (self.cfg.space)(&set).map_err(|e| BackendError::new(format!("free space of {}: {e}", set.display())))?;
        if total > avail {
            let parts: Vec<String> = self
                .processes
                .iter()
                .zip(&found)
                .map(|(p, (pid, t))| format!("{} (pid {pid}) {} MiB resident", p.name, t.rss.div_ceil(MIB)))
                .collect();
            let _ = std::fs::remove_dir_all(&set);
            return Err(BackendError::new(format!(
                "not enough space for the checkpoint images in {}: need about {} MiB ({}; resident memory + 20 % \
                 + {} MiB per process), {} MiB available",
                self.cfg.images.display(),
                total.div_ceil(MIB),
                parts.join(", "),
                SPACE_MARGIN / MIB,
                avail / MIB
            )));
        }

        for (p, (pid, tree)) in self.processes.iter().zip(&found) {
            let dir = set.join(dir_name(&p.name));
            if let Err(e) = self.dump_one(&window.id, p, *pid, tree, &dir).await {
                // Keep the failed dump's log for diagnosis, drop its images (they may fill the disk).
                let s2 = set.clone();
                let _ = blocking(move || drop_images(&s2)).await;
                return Err(e);
            }
        }
        Ok(CheckpointRef { id, processes: self.processes.iter().map(|p| p.name.clone()).collect() })
    }

    async fn restore(&self, checkpoint: &CheckpointRef) -> BackendResult<()> {
        let set = self.set_dir(&checkpoint.id);
        // Every set is checked before anything is stopped: a damaged one leaves every process running.
        let mut sets = Vec::new();
        for name in &checkpoint.processes {
            let dir = set.join(dir_name(name));
            let d2 = dir.clone();
            let m = blocking(move || images::validate(&d2)).await?.map_err(|e| {
                BackendError::new(format!(
                    "the checkpoint of process {name} cannot be restored ({e}); nothing was stopped, the running \
                     process was left as it is"
                ))
            })?;
            sets.push((name, dir, m));
        }
        let boot = self.procfs.boot_id();
        for (name, dir, m) in sets {
            if boot.as_deref() != Some(m.boot_id.as_str()) {
                info!(process = %name, checkpoint_boot = %m.boot_id, boot = ?boot,
                    "not restored: the checkpoint is from an earlier boot; the reboot restarted the process");
                continue;
            }
            let policy = self.processes.iter().find(|p| &p.name == name);
            self.restore_one(name, policy, &dir, &m).await?;
        }
        Ok(())
    }

    async fn discard(&self, checkpoint: &CheckpointRef) -> BackendResult<()> {
        let set = self.set_dir(&checkpoint.id);
        let s2 = set.clone();
        blocking(move || match std::fs::remove_dir_all(&s2) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await?
        .map_err(|e| BackendError::new(format!("removing {}: {e}", set.display())))?;
        info!(checkpoint = %checkpoint.id, "checkpoint images removed");
        Ok(())
    }
}

/// Removes the image files of a failed checkpoint, keeping CRIU's logs.
fn drop_images(set: &Path) {
    let Ok(procs) = std::fs::read_dir(set) else { return };
    for p in procs.flatten() {
        for dir in [p.path(), p.path().join(PRE_DIR)] {
            let Ok(files) = std::fs::read_dir(&dir) else { continue };
            for f in files.flatten() {
                if f.file_name().to_string_lossy().ends_with(".img") || f.file_name() == "stats-dump" {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }
}
