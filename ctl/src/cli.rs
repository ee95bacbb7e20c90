//! The command line, as clap reads it. Everything the user can type is declared here, so that `--help`, the man
//! pages and the shell completions all come from one place.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use otpatch_common::units::parse_duration;

/// The exit-code table (from [`otpatch_common::exit::ExitCode`]) and the environment, shown at the end of
/// `otpatchctl --help` and in the man page.
pub fn exit_codes_help() -> String {
    format!(
        "{}\nEnvironment:\n  DBUS_SYSTEM_BUS_ADDRESS   the system bus to use (default unix:path=/var/run/dbus/system_bus_socket)",
        otpatch_common::exit::ExitCode::help_table()
    )
}

/// Command-line client of otpatchd, the OT gateway update daemon.
///
/// Schedules and inspects update windows, starts and rolls back updates, follows a window live, reads and
/// verifies the hash-chained audit log, and checks site policies offline. It talks to otpatchd over the
/// system D-Bus (io.otpatch.Daemon1); mutating commands need root or membership in the policy's access group
/// (otpatch by default).
#[derive(Debug, Parser)]
#[command(name = "otpatchctl", version, after_long_help = exit_codes_help())]
pub struct Cli {
    /// Print machine-readable JSON on stdout (errors too, as {"error": {"name": ..., "message": ...}}).
    #[arg(long, global = true)]
    pub json: bool,

    /// How long to wait for the bus and for each D-Bus call (e.g. 25s, 2m).
    #[arg(long, global = true, value_name = "DURATION", default_value = "25s", value_parser = duration_arg)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon's state: windows, progress, last error and outcome, segmentation, policy files.
    Status,
    /// Show the live health-probe table: each Modbus probe's last value, failures and whether it tripped.
    Health,
    /// Schedule, list and cancel update windows.
    #[command(subcommand)]
    Window(WindowCommand),
    /// Start the update now, inside the window that is open; prints the window's id.
    Apply,
    /// Roll back the active window's change (before it is committed).
    Rollback,
    /// Make the daemon re-read its policy; a bad policy is refused and the running one stays.
    Reload,
    /// Let a version that was rolled back on this gateway be installed again by the next window.
    ///
    /// A window that rolls a version back records it (see "Rolled back" in `otpatchctl status`); later windows
    /// do not install that version again on their own, while newer versions are taken as usual.
    #[command(after_help = "Example:\n  otpatchctl retry 1.0.2")]
    Retry {
        /// The version, as `otpatchctl status` lists it under "Rolled back".
        version: String,
    },
    /// Follow the daemon live: transitions, progress, health verdicts and window outcomes.
    Watch(WatchArgs),
    /// Print the audit log, or verify its hash chain.
    Log(LogArgs),
    /// Work with site policies (offline, no daemon needed).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Kernel livepatches on the gateway.
    #[command(subcommand)]
    Livepatch(LivepatchCommand),
    /// Create and inspect signed update bundles (offline).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: CompletionShell,
    },
    /// Print the man page, or write all man pages into a directory.
    Man {
        /// Write otpatchctl.1 and one page per subcommand into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WindowCommand {
    /// Schedule a one-off update window; prints its id.
    #[command(
        after_help = "Example:\n  otpatchctl window schedule --start 2026-12-01T02:00 --duration 90m --tz Europe/Berlin"
    )]
    Schedule(ScheduleArgs),
    /// List the windows of the coming days (one-off and recurring).
    List {
        /// How many days ahead to list (1 to 366).
        #[arg(long, value_name = "N", default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=366))]
        days: u32,
    },
    /// Cancel a one-off window, or one occurrence of a recurring window.
    Cancel {
        /// The window's id, as `window list` shows it.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Start, local to --tz: YYYY-MM-DDTHH:MM[:SS], or with an explicit offset (…+01:00).
    #[arg(long, value_name = "TIME")]
    pub start: String,
    /// Length of the window (e.g. 90m, 1h30m).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub duration: Duration,
    /// IANA time zone of --start (default: the gateway's zone).
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
    /// Do not start work automatically when the window opens; wait for `otpatchctl apply`.
    #[arg(long)]
    pub manual: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Exit when a window completes: 0 committed or up-to-date, 9 rolled back, 10 failed.
    #[arg(long)]
    pub exit_on_complete: bool,
    /// Give up after this long (exit 11). Default: wait forever.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub max_wait: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// First sequence number to read.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub from: u64,
    /// Verify the hash chain instead of printing the records (exit 7 when broken).
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Subcommand)]
pub enum LivepatchCommand {
    /// The livepatches the kernel has, with the bundle version each came from and its state.
    List,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Build and sign an otpatch bundle (one CMS signature over a manifest that pins every payload).
    // `--version` is the bundle's version here, not otpatchctl's.
    #[command(disable_version_flag = true, after_help = BUNDLE_CREATE_EXAMPLE)]
    Create(Box<BundleCreateArgs>),
    /// Show a bundle's manifest, signer and chain, and whether the gateway's policy would accept it.
    #[command(after_help = BUNDLE_INSPECT_EXAMPLE)]
    Inspect(BundleInspectArgs),
}

const BUNDLE_CREATE_EXAMPLE: &str = "Example:
  otpatchctl bundle create --kind livepatch --compatible acme-gw-x86 --version 1.3.0 --kernel-release 6.1.0-28-amd64 --payload fix.ko --signer-cert signer.pem --signer-key signer.key --chain intermediate.pem --out fix-1.3.0.otb";

const BUNDLE_INSPECT_EXAMPLE: &str = "Examples:
  otpatchctl bundle inspect fix-1.3.0.otb
  otpatchctl bundle inspect --root /mnt/image --json update.raucb";

#[derive(Debug, Args)]
pub struct BundleCreateArgs {
    /// What the bundle carries.
    #[arg(long, value_parser = ["livepatch", "app"])]
    pub kind: String,
    /// The gateways it is for (matched against the policy's gateway.compatible).
    #[arg(long)]
    pub compatible: String,
    /// Its version (dotted numbers; gateways refuse older versions than the one they committed).
    #[arg(long)]
    pub version: String,
    /// A kernel release the livepatch is for (repeatable).
    #[arg(long, value_name = "RELEASE")]
    pub kernel_release: Vec<String>,
    /// Pin the kernel's GNU build-id (hex).
    #[arg(long, value_name = "HEX")]
    pub build_id: Option<String>,
    /// When the manifest stops being accepted (RFC 3339; default: 180 days from now).
    #[arg(long, value_name = "TIME")]
    pub expires: Option<jiff::Timestamp>,
    /// A payload file (repeatable; stored in this order under its file name).
    #[arg(long = "payload", value_name = "FILE", required = true)]
    pub payloads: Vec<PathBuf>,
    /// The signer's certificate (PEM, with the codeSigning extended key usage).
    #[arg(long, value_name = "PEM")]
    pub signer_cert: PathBuf,
    /// The signer's private key (PEM PKCS#8, as `openssl genpkey` writes it).
    #[arg(long, value_name = "PEM")]
    pub signer_key: PathBuf,
    /// An intermediate CA certificate to carry in the signature (repeatable).
    #[arg(long = "chain", value_name = "PEM")]
    pub chain: Vec<PathBuf>,
    /// Where to write the bundle.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct BundleInspectArgs {
    /// The bundle (otpatch or RAUC).
    pub file: PathBuf,
    /// Root of the gateway whose policy (and committed versions, running kernel) the verdict is given against.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Only show what the bundle says; check nothing against a policy.
    #[arg(long)]
    pub no_policy: bool,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files offline, the way the daemon would load them.
    #[command(after_help = "Examples:\n  otpatchctl policy check\n  otpatchctl policy check --root /mnt/image\n  \
                            otpatchctl policy check site.toml line-3.toml --no-files")]
    Check(PolicyCheckArgs),
}

#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    /// Policy files to check, applied in this order. Default: the standard layered locations under --root.
    #[arg(value_name = "FILES")]
    pub files: Vec<PathBuf>,
    /// Root directory for the standard locations and for the files the policy names (anchors, certificates...).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Do not check that the files the policy names exist.
    #[arg(long)]
    pub no_files: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(s: CompletionShell) -> Self {
        match s {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn reads_a_schedule_command() {
        let cli = Cli::try_parse_from([
            "otpatchctl",
            "window",
            "schedule",
            "--start",
            "2026-12-01T02:00",
            "--duration",
            "1h30m",
            "--tz",
            "Europe/Berlin",
            "--manual",
            "--json",
        ])
        .expect("valid command line");
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_secs(25));
        let Command::Window(WindowCommand::Schedule(a)) = cli.command else { panic!("not a schedule command") };
        assert_eq!(a.start, "2026-12-01T02:00");
        assert_eq!(a.duration, Duration::from_secs(5400));
        assert_eq!(a.tz.as_deref(), Some("Europe/Berlin"));
        assert!(a.manual);
    }

    #[test]
    fn bad_durations_are_usage_errors() {
        let err = Cli::try_parse_from(["otpatchctl", "watch", "--max-wait", "soon"]).expect_err("must fail");
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["otpatchctl", "--timeout", "5 weeks", "status"]).expect_err("must fail");
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["otpatchctl", "log", "--from", "0"]).expect_err("must fail");
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["otpatchctl", "window", "list", "--days", "400"]).expect_err("must fail");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("11  watch --max-wait"), "{help}");
        assert!(help.contains("DBUS_SYSTEM_BUS_ADDRESS"), "{help}");
    }
}
