//! `otpatchd`: the otpatch daemon. See the crate documentation and the README.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use otpatch_common::api::BUS_NAME;
use otpatch_common::policy::{self, LoadOptions, PolicyPaths};
use otpatch_common::policy::{FirewallBackend, Settings};
use otpatchd::backend::absent::{FetchNotConfigured, NoCriticalProcesses};
use otpatchd::backend::{BackendError, Backends, Checkpointer, Clock, Fetcher, Firewall, Rebooter, SystemClock};
use otpatchd::failpoints::Failpoints;
use otpatchd::fetch::{tls::client_config, Channel, ChannelLimits, HttpsFetcher};
use otpatchd::firewall::{self, iptables::IptablesFirewall, nft::NftFirewall};
use otpatchd::health::ModbusHealth;
use otpatchd::livepatch::{LivepatchConfig, ModuleFile, ModuleSource, RealKernel, SysfsLivepatcher};
use otpatchd::orchestrator::{BackendFactory, Command, Orchestrator, PolicyLoader};
use otpatchd::rauc::{BundleCheck, RaucLimits, RaucUpdater};
use otpatchd::reboot::SystemdRebooter;
use otpatchd::service::{self, Access};
use otpatchd::sysroot::Sysroot;
use otpatchd::verify::BundleVerifier;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    /// The backends built into this binary (capabilities not built in refuse to start a window).
    Real,
    /// Call-recording fakes (demo and tests; only in builds with the `fake-backends` feature).
    #[cfg(feature = "fake-backends")]
    Fake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// journald under systemd, text otherwise.
    Auto,
    Journald,
    Text,
}

/// The otpatch daemon: runs update windows on an OT gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Root prefix for every host path (/etc, /var/lib, /run, /sys, /proc).
    #[arg(long, default_value = "/", env = "OTPATCH_ROOT")]
    root: PathBuf,
    /// Policy files to use instead of the layered locations (in order).
    #[arg(long = "policy")]
    policy: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "real")]
    backends: BackendChoice,
    #[arg(long, value_enum, default_value = "auto")]
    log: LogFormat,
    /// Validate the policy and exit (0 valid, 1 invalid).
    #[arg(long)]
    check_policy: bool,
    /// Lift whatever segmentation either backend left (nftables table, iptables chains) and exit; needs no
    /// policy. The unit's ExecStopPost= runs it, so no stop path leaves the gateway segmented.
    #[arg(long)]
    lift_segmentation: bool,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("OTPATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zbus=warn"));
    let journald = match format {
        LogFormat::Journald => true,
        LogFormat::Text => false,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    if journald {
        if let Ok(layer) = tracing_journald::layer() {
            tracing_subscriber::registry().with(filter).with(layer.with_syslog_identifier("otpatchd".into())).init();
            return;
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

fn policy_loader(root: &Sysroot, files: &[PathBuf]) -> PolicyLoader {
    let root = root.root().to_path_buf();
    let files = files.to_vec();
    Arc::new(move || {
        let opts = LoadOptions { check_files: true, file_root: root.clone() };
        if files.is_empty() {
            policy::load(&PolicyPaths::under(&root), &opts)
        } else {
            policy::load_files(&files, &opts)
        }
    })
}

async fn firewall(settings: &Settings) -> Arc<dyn Firewall> {
    let nft = vec!["nft".to_string()];
    match firewall::detect(settings.segmentation.backend, &nft).await {
        FirewallBackend::Iptables => {
            info!("segmentation backend: iptables");
            Arc::new(IptablesFirewall::new(Vec::new(), "iptables", "ip6tables"))
        }
        _ => {
            info!("segmentation backend: nftables");
            Arc::new(NftFirewall::new(nft))
        }
    }
}

/// The patch channel of the policy's `[server]`, with the server CA and client certificate under the sysroot.
fn fetcher(
    settings: &Settings,
    root: &Sysroot,
    verifier: Arc<BundleVerifier>,
    clock: Arc<dyn Clock>,
) -> Arc<dyn Fetcher> {
    let Some(server) = settings.server.clone() else {
        return Arc::new(FetchNotConfigured("the policy names no patch server ([server])".into()));
    };
    let tls =
        match client_config(&root.path(&server.ca), &root.path(&server.client_cert), &root.path(&server.client_key)) {
            Ok(t) => t,
            Err(e) => return Arc::new(FetchNotConfigured(format!("the patch channel cannot be set up: {e}"))),
        };
    let committed = root.committed_file();
    let compatible = settings.gateway.compatible.clone();
    let c2 = compatible.clone();
    Arc::new(HttpsFetcher {
        channel: Channel::new(server, tls, ChannelLimits::default()),
        compatible,
        max_download: settings.limits.max_download,
        state_dir: root.state_dir(),
        verifier,
        installed: Arc::new(move || {
            // Unreadable: nothing is skipped here; the verifier then refuses, reading the same file.
            otpatchd::committed::Committed::load(&committed).map(|c| c.versions_for(&c2)).unwrap_or_default()
        }),
        clock,
    })
}

/// The livepatcher: modules come out of their (re-verified) bundle into `<state>/livepatch/`.
fn livepatcher(settings: &Settings, root: &Sysroot, verifier: Arc<BundleVerifier>) -> SysfsLivepatcher {
    let config = LivepatchConfig {
        transition_timeout: settings.rollback.transition_timeout,
        allow_force: settings.rollback.allow_force,
        poll: Duration::from_millis(100),
        pinned_build_id: None,
    };
    let dir = root.state_dir().join("livepatch");
    let module_for: ModuleSource = Arc::new(move |b| {
        // Verified again right before loading: the file on disk is the one that was signed.
        let v = verifier.verify_path_at(&b.path, true, b.verified_at)?;
        if v.digest != b.digest {
            return Err(BackendError::new(format!("{} changed since it was verified", b.path.display())));
        }
        let path = verifier.extract_payload(&v, &b.path, ".ko", &dir)?;
        Ok(ModuleFile { path, pinned_build_id: v.manifest.build_id.clone() })
    });
    SysfsLivepatcher::new(root.clone(), Arc::new(RealKernel), config, module_for)
}

/// The A/B updater: RAUC on the system bus, rebooting through `rebooter` within the policy's limit. Each bundle
/// is verified again right before RAUC is handed its path.
fn ab_updater(
    settings: &Settings,
    root: &Sysroot,
    rebooter: Arc<dyn Rebooter>,
    verifier: Arc<BundleVerifier>,
) -> Arc<RaucUpdater> {
    let limits = RaucLimits { reboot: settings.ab.reboot_timeout, ..RaucLimits::default() };
    let check: BundleCheck = Arc::new(move |b| {
        let v = verifier.verify_path(&b.path, true)?;
        if v.digest != b.digest {
            return Err(BackendError::new(format!(
                "{} changed since it was verified: digest mismatch (now {}, verified {})",
                b.path.display(),
                v.digest,
                b.digest
            )));
        }
        Ok(())
    });
    // An invalid OTPATCH_FAILPOINTS stops the daemon at start (read again there); here it only means none.
    let failpoints = Failpoints::from_env().unwrap_or_default();
    Arc::new(RaucUpdater::new(root.state_dir(), rebooter, limits).with_check(check).with_failpoints(failpoints))
}

async fn backends(
    choice: BackendChoice,
    settings: &Settings,
    _root: &Sysroot,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Backends> {
    Ok(match choice {
        BackendChoice::Real => {
            let verifier = Arc::new(BundleVerifier::new(settings, _root, clock.clone()));
            let checkpointer: Arc<dyn Checkpointer> = if settings.processes.is_empty() {
                Arc::new(NoCriticalProcesses)
            } else {
                use otpatchd::criu::{CriuCheckpointer, CriuConfig};
                Arc::new(CriuCheckpointer::new(_root.clone(), settings.processes.clone(), CriuConfig::new(_root)))
            };
            let rebooter: Arc<dyn Rebooter> = Arc::new(SystemdRebooter { root: _root.clone() });
            Backends {
                firewall: firewall(settings).await,
                fetcher: fetcher(settings, _root, verifier.clone(), clock.clone()),
                verifier: verifier.clone(),
                checkpointer,
                livepatcher: Arc::new(livepatcher(settings, _root, verifier.clone())),
                ab_updater: ab_updater(settings, _root, rebooter.clone(), verifier.clone()),
                rebooter,
                health: Arc::new(ModbusHealth::new(settings.probes.clone())),
                clock,
            }
        }
        #[cfg(feature = "fake-backends")]
        BackendChoice::Fake => {
            use otpatchd::backend::fake::{FakeScript, FakeWorld};
            let text = std::env::var("OTPATCH_FAKE_SCRIPT").unwrap_or_default();
            let script = FakeScript::parse(&text).map_err(anyhow::Error::msg)?;
            let mut b = FakeWorld::persistent(&_root.path("/run/otpatch-fake/world.json"), script).backends(clock);
            // Process tests of one real capability at a time: OTPATCH_REAL_FIREWALL=1 (segmentation), or
            // OTPATCH_REAL_AB=1 (the bundle verifier and RAUC on the bus; reboots stay fake: the test boots).
            if std::env::var_os("OTPATCH_REAL_FIREWALL").is_some() {
                warn!(script = %text, "running with FAKE backends except the firewall");
                b.firewall = firewall(settings).await;
            } else if std::env::var_os("OTPATCH_REAL_AB").is_some() {
                warn!(script = %text, "running with FAKE backends except the verifier and RAUC");
                let verifier = Arc::new(BundleVerifier::new(settings, _root, b.clock.clone()));
                b.verifier = verifier.clone();
                b.ab_updater = ab_updater(settings, _root, b.rebooter.clone(), verifier);
            } else {
                warn!(script = %text, "running with FAKE backends: nothing on this machine is changed");
            }
            b
        }
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(args.log);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("otpatchd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("otpatchd: {e:#}");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!("failed: {e:#}"))]);
            std::process::ExitCode::FAILURE
        }
    }
}

/// The policy in force is invalid: re-applies the committed livepatches with a livepatcher made from the last
/// good policy (see [`otpatchd::last_good`]). Returns what it did, for the error message.
async fn reapply_under_last_good(root: &Sysroot, choice: BackendChoice) -> String {
    let state = root.state_dir();
    let settings = match otpatchd::last_good::load(&state) {
        Ok(Some(s)) => s,
        Ok(None) => return "no policy was in force here before: nothing could be re-applied".into(),
        Err(e) => return format!("nothing re-applied: {e}"),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let patcher: Arc<dyn otpatchd::backend::Patcher> = match choice {
        BackendChoice::Real => {
            let verifier = Arc::new(BundleVerifier::new(&settings, root, clock.clone()));
            Arc::new(livepatcher(&settings, root, verifier))
        }
        #[cfg(feature = "fake-backends")]
        BackendChoice::Fake => match backends(choice, &settings, root, clock.clone()).await {
            Ok(b) => b.livepatcher,
            Err(e) => return format!("nothing re-applied: {e:#}"),
        },
    };
    otpatchd::last_good::reapply_under_invalid_policy(&state, patcher, clock.as_ref()).await
}

/// Whether this daemon drives the real netfilter (production, or the process tests of segmentation).
fn real_firewall(choice: BackendChoice) -> bool {
    choice == BackendChoice::Real || std::env::var_os("OTPATCH_REAL_FIREWALL").is_some()
}

/// Lifts the leftovers of every backend but `keep`, logging what it found.
async fn lift_leftovers(keep: Option<FirewallBackend>) -> bool {
    let (done, errors) = firewall::lift_leftovers(keep).await;
    for d in &done {
        info!("stale segmentation: {d}");
    }
    for e in &errors {
        error!("stale segmentation could not be lifted: {e}");
    }
    errors.is_empty()
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.lift_segmentation {
        return match lift_leftovers(None).await {
            true => Ok(()),
            false => anyhow::bail!("segmentation could not be lifted everywhere (see above)"),
        };
    }
    let root = Sysroot::new(&args.root);
    let loader = policy_loader(&root, &args.policy);
    let settings = match loader() {
        Ok(s) => s,
        Err(errs) => {
            // A policy edited into something invalid mid-window must not leave the gateway segmented: whatever a
            // crashed daemon left is lifted before this start gives up.
            if !args.check_policy && real_firewall(args.backends) {
                lift_leftovers(None).await;
            }
            // Nor less patched: what was committed is put back under the policy it was committed under.
            let reapplied = if args.check_policy {
                String::new()
            } else {
                format!("\n({})", reapply_under_last_good(&root, args.backends).await)
            };
            anyhow::bail!("the policy is invalid; fix it and start again:\n{errs}{reapplied}")
        }
    };
    if args.check_policy {
        println!("policy OK: {} files", settings.sources.len());
        return Ok(());
    }
    if let Err(e) = otpatchd::last_good::save(&root.state_dir(), &settings) {
        warn!(error = %e, "cannot record the policy as the last good one");
    }
    let in_use = if real_firewall(args.backends) {
        Some(firewall::detect(settings.segmentation.backend, &["nft".to_string()]).await)
    } else {
        None
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let initial = backends(args.backends, &settings, &root, clock.clone()).await?;
    let choice = args.backends;
    let factory_root = root.clone();
    let factory: BackendFactory = Arc::new(move |settings| {
        let (root, clock) = (factory_root.clone(), clock.clone());
        Box::pin(async move { backends(choice, &settings, &root, clock).await })
    });
    let failpoints = Failpoints::from_env().map_err(anyhow::Error::msg)?;
    let gateway = settings.gateway.id.clone();

    // Recover before serving: the journal decides what an interrupted window becomes. The backend this daemon
    // drives is recovered by the journal; the other one's leftovers are always stale.
    if let Some(backend) = in_use {
        lift_leftovers(Some(backend)).await;
    }
    let (orch, handle, commands) = match Orchestrator::start(&root, settings, loader, initial, failpoints).await {
        Ok(started) => started,
        Err(e) => {
            if in_use.is_some() {
                lift_leftovers(None).await;
            }
            return Err(e.context("recovering state"));
        }
    };
    let orch = orch.with_rebuild(factory);
    info!(gateway = %gateway, state = orch.state().name(), "state recovered");

    let conn = zbus::connection::Builder::system()
        .build()
        .await
        .context("connecting to the system bus (set DBUS_SYSTEM_BUS_ADDRESS to use another one)")?;
    service::serve(&conn, handle.clone(), Access { group: handle.access_group.clone(), sysroot: root.clone() })
        .await
        .context("serving io.otpatch.Daemon1")?;
    conn.request_name(BUS_NAME).await.with_context(|| format!("owning the bus name {BUS_NAME}"))?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
    };
    let reload_tx = handle.commands.clone();
    tokio::spawn(async move {
        // One reload at a time; each waits for its answer.
        while hup.recv().await.is_some() {
            let (reply, rx) = tokio::sync::oneshot::channel();
            if reload_tx.send(Command::Reload { uid: None, reply }).await.is_err() {
                break;
            }
            match rx.await {
                Ok(Ok(())) => info!("SIGHUP: policy reloaded"),
                Ok(Err(e)) => warn!(error = %e.message, "SIGHUP: policy rejected, the running one stays"),
                Err(_) => break,
            }
        }
    });

    let mut status = handle.status.clone();
    tokio::spawn(async move {
        loop {
            let line = {
                let s = status.borrow_and_update();
                format!("{} {} {}", s.state, s.active_window, s.progress_message).trim().to_string()
            };
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
            if status.changed().await.is_err() {
                break;
            }
        }
    });
    // The watchdog is pinged by the orchestrator's loop itself (not a task of its own that would ping whatever
    // the loop does).
    let orch = match sd_notify::watchdog_enabled() {
        Some(period) => orch.with_watchdog(
            period,
            Arc::new(|| {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }),
        ),
        None => orch,
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!(bus_name = BUS_NAME, "ready");
    orch.run(commands, shutdown).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Give queued signals a moment to leave.
    tokio::time::sleep(Duration::from_millis(50)).await;
    info!("stopped");
    Ok(())
}
