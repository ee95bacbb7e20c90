//! The D-Bus contract of `io.otpatch.Daemon1`, shared by the daemon (which serves it) and `otpatchctl`.
//!
//! The interface as introspected is committed in `daemon/dist/io.otpatch.Daemon1.xml`; a test checks that the
//! live daemon matches it. Times on the wire are Unix seconds (`x`); durations are text (`"90m"`).

use serde::{Deserialize, Serialize};
use zbus::Type;

/// Well-known bus name the daemon owns on the system bus.
pub const BUS_NAME: &str = "io.otpatch.Daemon1";
/// Object path of the daemon's single object.
pub const OBJECT_PATH: &str = "/io/otpatch/Daemon1";
/// Interface name.
pub const INTERFACE: &str = "io.otpatch.Daemon1";

/// Every error the daemon answers a D-Bus call with: its name on the bus (stable: clients match on it), what it
/// means, and the exit code `otpatchctl` ends with for it. Defined once here; [`errors`] are its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonError {
    /// The caller is neither root nor in the policy's access group (or the bus policy refused it).
    AccessDenied,
    /// An argument could not be read (bad time, duration, id...).
    InvalidArgs,
    /// A window was refused (overlap, in the past, too long...).
    WindowRefused,
    /// No such window (or, for `Retry`, no such rolled-back version).
    NotFound,
    /// The request does not fit the daemon's current state (e.g. `Apply` with no open window).
    InvalidState,
    /// A new policy was rejected; the running one stays in force.
    PolicyRejected,
    /// Anything else that went wrong inside the daemon.
    Failed,
}

impl DaemonError {
    pub const ALL: [DaemonError; 7] = [
        DaemonError::AccessDenied,
        DaemonError::InvalidArgs,
        DaemonError::WindowRefused,
        DaemonError::NotFound,
        DaemonError::InvalidState,
        DaemonError::PolicyRejected,
        DaemonError::Failed,
    ];

    /// The error name on the bus.
    pub const fn name(self) -> &'static str {
        match self {
            DaemonError::AccessDenied => "org.freedesktop.DBus.Error.AccessDenied",
            DaemonError::InvalidArgs => "org.freedesktop.DBus.Error.InvalidArgs",
            DaemonError::WindowRefused => "io.otpatch.Error.WindowRefused",
            DaemonError::NotFound => "io.otpatch.Error.NotFound",
            DaemonError::InvalidState => "io.otpatch.Error.InvalidState",
            DaemonError::PolicyRejected => "io.otpatch.Error.PolicyRejected",
            DaemonError::Failed => "io.otpatch.Error.Failed",
        }
    }

    /// The error of this name, if the daemon has one.
    pub fn from_name(name: &str) -> Option<DaemonError> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// What `otpatchctl` exits with when the daemon answers with this error.
    pub const fn exit_code(self) -> crate::exit::ExitCode {
        use crate::exit::ExitCode;
        match self {
            DaemonError::AccessDenied => ExitCode::Denied,
            DaemonError::InvalidArgs
            | DaemonError::WindowRefused
            | DaemonError::InvalidState
            | DaemonError::PolicyRejected => ExitCode::Refused,
            DaemonError::NotFound => ExitCode::NotFound,
            DaemonError::Failed => ExitCode::Failure,
        }
    }
}

/// D-Bus error names the daemon replies with ([`DaemonError::name`]).
pub mod errors {
    use super::DaemonError;
    pub const ACCESS_DENIED: &str = DaemonError::AccessDenied.name();
    pub const INVALID_ARGS: &str = DaemonError::InvalidArgs.name();
    pub const WINDOW_REFUSED: &str = DaemonError::WindowRefused.name();
    pub const NOT_FOUND: &str = DaemonError::NotFound.name();
    pub const INVALID_STATE: &str = DaemonError::InvalidState.name();
    pub const POLICY_REJECTED: &str = DaemonError::PolicyRejected.name();
    pub const FAILED: &str = DaemonError::Failed.name();
}

/// The daemon's own signals on `io.otpatch.Daemon1`: the daemon emits them from this enum and clients decode them
/// into it ([`Signal::from_message`]), so the member names and argument order are written once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// `Transition(window, from, to, event)`: the engine moved.
    Transition { window: String, from: String, to: String, event: String },
    /// `HealthVerdict(window, verdict, reason)`: healthy, degraded or failed.
    HealthVerdict { window: String, verdict: String, reason: String },
    /// `ProbeResults(window, probes)`: the probe table (JSON) at the time of a verdict.
    ProbeResults { window: String, probes: String },
    /// `WindowCompleted(window, outcome)`: the window ended ([`OutcomeKind::of`] reads the outcome).
    WindowCompleted { window: String, outcome: String },
}

impl Signal {
    /// The member name on the bus.
    pub const fn member(&self) -> &'static str {
        match self {
            Signal::Transition { .. } => "Transition",
            Signal::HealthVerdict { .. } => "HealthVerdict",
            Signal::ProbeResults { .. } => "ProbeResults",
            Signal::WindowCompleted { .. } => "WindowCompleted",
        }
    }

    /// The daemon's signal a message carries; `None` for any other message (or one with the wrong arguments).
    pub fn from_message(msg: &zbus::Message) -> Option<Signal> {
        let header = msg.header();
        if header.interface()?.as_str() != INTERFACE {
            return None;
        }
        let body = msg.body();
        Some(match header.member()?.as_str() {
            "Transition" => {
                let (window, from, to, event) = body.deserialize::<(String, String, String, String)>().ok()?;
                Signal::Transition { window, from, to, event }
            }
            "HealthVerdict" => {
                let (window, verdict, reason) = body.deserialize::<(String, String, String)>().ok()?;
                Signal::HealthVerdict { window, verdict, reason }
            }
            "ProbeResults" => {
                let (window, probes) = body.deserialize::<(String, String)>().ok()?;
                Signal::ProbeResults { window, probes }
            }
            "WindowCompleted" => {
                let (window, outcome) = body.deserialize::<(String, String)>().ok()?;
                Signal::WindowCompleted { window, outcome }
            }
            _ => return None,
        })
    }
}

/// How a window ended, as the first word of its outcome text (`WindowCompleted`'s `outcome`, `last_outcome`):
/// the daemon writes the text with these words, and clients read the kind back with [`OutcomeKind::of`]
/// instead of each matching prefixes of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// `committed VERSION`
    Committed,
    /// `installed VERSION into slot S, reboot pending`
    Staged,
    /// `up-to-date`, possibly with a note after a colon
    UpToDate,
    /// `rolled-back: REASON`
    RolledBack,
    /// `failed: REASON`
    Failed,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 5] = [
        OutcomeKind::Committed,
        OutcomeKind::Staged,
        OutcomeKind::UpToDate,
        OutcomeKind::RolledBack,
        OutcomeKind::Failed,
    ];

    /// The word an outcome of this kind starts with.
    pub const fn word(self) -> &'static str {
        match self {
            OutcomeKind::Committed => "committed",
            OutcomeKind::Staged => "installed",
            OutcomeKind::UpToDate => "up-to-date",
            OutcomeKind::RolledBack => "rolled-back",
            OutcomeKind::Failed => "failed",
        }
    }

    /// The kind of an outcome text, or None for text that is no outcome.
    pub fn of(outcome: &str) -> Option<OutcomeKind> {
        let first = outcome.trim_start().split([' ', ':', ',']).next().unwrap_or_default();
        Self::ALL.into_iter().find(|k| k.word() == first)
    }

    /// What `otpatchctl watch --exit-on-complete` exits with for it.
    pub const fn exit_code(self) -> crate::exit::ExitCode {
        use crate::exit::ExitCode;
        match self {
            OutcomeKind::Committed | OutcomeKind::UpToDate => ExitCode::Ok,
            OutcomeKind::Staged => ExitCode::RebootPending,
            OutcomeKind::RolledBack => ExitCode::RolledBack,
            OutcomeKind::Failed => ExitCode::WindowFailed,
        }
    }
}

/// One window as `ListWindows` returns it: `(id, source, timezone, start, end, auto_start, status)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct WindowInfo {
    pub id: String,
    /// `one-off` or `recurring:<policy name>`.
    pub source: String,
    pub timezone: String,
    /// Unix seconds.
    pub start: i64,
    /// Unix seconds (hard end).
    pub end: i64,
    pub auto_start: bool,
    /// `scheduled`, `open` (open, waiting for `Apply`), `active` (work under way) or `done`.
    pub status: String,
}

/// Progress as `(percent, message)`; percent is -1 when unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Progress {
    pub percent: i32,
    pub message: String,
}

/// Everything `otpatchctl status` shows, as one read (`GetStatus` returns it as JSON text, so that a SCADA
/// integration that only wants a snapshot gets it in one call; the properties carry the same facts one by one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusSnapshot {
    pub version: String,
    pub gateway_id: String,
    /// The engine state, e.g. `observing`.
    pub state: String,
    pub active_window: String,
    /// End of the active window (Unix seconds), 0 when none.
    pub active_window_end: i64,
    pub next_window: String,
    /// Start of the next window (Unix seconds), 0 when none.
    pub next_window_start: i64,
    pub last_error: String,
    pub progress_percent: i32,
    pub progress_message: String,
    /// Outcome of the last window that closed (`committed`, `rolled-back: ...`, `failed: ...`, `up-to-date`).
    pub last_outcome: String,
    pub policy_sources: Vec<String>,
    /// Whether the daemon has window segmentation applied right now.
    pub segmentation_active: bool,
    /// `nftables` or `iptables` while segmentation is applied.
    #[serde(default)]
    pub segmentation_backend: String,
    /// Packets the segmentation dropped: live while applied, then the total of the last window.
    #[serde(default)]
    pub segmentation_dropped: u64,
    /// The ruleset in place, as the firewall tool lists it (empty when none).
    #[serde(default)]
    pub segmentation_ruleset: String,
    /// Committed fixes this gateway does not carry now, each `<version>: <why>` (a committed livepatch that could
    /// not be put back at start, e.g. because an A/B update changed the kernel). Empty: every committed fix is
    /// in place.
    #[serde(default)]
    pub committed_not_in_place: Vec<String>,
    /// Versions rolled back on this gateway: a window does not install them again on its own
    /// (`otpatchctl retry VERSION` allows it).
    #[serde(default)]
    pub rolled_back: Vec<RolledBackVersion>,
    /// The boot name of the A/B slot this gateway runs from, as RAUC told otpatchd this boot (`A`, `B`); empty on
    /// a gateway without slots, or before otpatchd asked.
    #[serde(default)]
    pub booted_slot: String,
}

/// A version a window rolled back on this gateway, as `<state>/rolled-back.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBackVersion {
    pub compatible: String,
    pub version: String,
    /// The bundle's digest (as `committed.json` names bundles).
    pub digest: String,
    pub rolled_back_at: jiff::Timestamp,
    /// Why the window rolled it back (its outcome's reason, e.g. `health failed: ...`).
    pub why: String,
}

impl RolledBackVersion {
    /// How a window that skips this version says so.
    pub fn skip_note(&self) -> String {
        format!(
            "{} was rolled back on {} ({}); `otpatchctl retry {}` to try it again",
            self.version,
            self.rolled_back_at.strftime("%Y-%m-%d %H:%M UTC"),
            self.why,
            self.version
        )
    }
}

/// The proxy `otpatchctl` and tests use.
#[zbus::proxy(
    interface = "io.otpatch.Daemon1",
    default_service = "io.otpatch.Daemon1",
    default_path = "/io/otpatch/Daemon1"
)]
pub trait Daemon1 {
    /// Schedules a one-off window. `start` is `YYYY-MM-DDTHH:MM[:SS]` local to `timezone` (empty: the
    /// gateway's zone) or with an offset; `duration` like `90m`. Returns the new window's id.
    fn schedule_window(&self, start: &str, duration: &str, timezone: &str, auto_start: bool) -> zbus::Result<String>;
    /// Cancels a one-off window, or one occurrence of a recurring window, by id.
    fn cancel_window(&self, id: &str) -> zbus::Result<()>;
    /// Windows from now to `horizon_days` ahead (the open one included).
    fn list_windows(&self, horizon_days: u32) -> zbus::Result<Vec<WindowInfo>>;
    /// Starts work now inside the window that is open. Returns its id.
    fn apply(&self) -> zbus::Result<String>;
    /// Rolls back the active window's change (before it is committed).
    fn rollback(&self) -> zbus::Result<()>;
    /// Re-reads the policy; a bad policy is refused with its errors and the running one stays.
    fn reload(&self) -> zbus::Result<()>;
    /// Lets a version that was rolled back on this gateway be installed again by the next window.
    fn retry(&self, version: &str) -> zbus::Result<()>;
    /// A status snapshot as JSON (see [`StatusSnapshot`]).
    fn get_status(&self) -> zbus::Result<String>;
    /// Livepatches as the kernel shows them, with the committed bundle each came from (JSON list).
    fn list_livepatches(&self) -> zbus::Result<String>;
    /// The live health-probe table as JSON (a list of [`ProbeReport`]).
    fn get_health(&self) -> zbus::Result<String>;
    /// Audit records as JSON lines, starting at sequence number `from_seq`, at most `max` of them.
    fn get_audit_log(&self, from_seq: u64, max: u32) -> zbus::Result<Vec<String>>;

    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_window(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String)>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// A state transition of the engine.
    #[zbus(signal)]
    fn transition(&self, window: &str, from: &str, to: &str, event: &str) -> zbus::Result<()>;
    /// A health verdict (`healthy`, `degraded`, `failed`) with its reason.
    #[zbus(signal)]
    fn health_verdict(&self, window: &str, verdict: &str, reason: &str) -> zbus::Result<()>;
    /// Per-probe results (JSON, as `get_health`) when a verdict is reached.
    #[zbus(signal)]
    fn probe_results(&self, window: &str, probes: &str) -> zbus::Result<()>;
    /// A window closed with its outcome.
    #[zbus(signal)]
    fn window_completed(&self, window: &str, outcome: &str) -> zbus::Result<()>;
}

/// One livepatch as `ListLivepatches` returns it (a JSON array of these) and `otpatchctl livepatch list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivepatchInfo {
    pub name: String,
    pub enabled: bool,
    pub in_transition: bool,
    /// From the committed record; empty when the patch did not come from a committed window.
    pub compatible: String,
    pub version: String,
    pub committed_at: String,
}

/// One health probe as the live table shows it (`GetHealth`, `otpatchctl health`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct ProbeReport {
    /// The probe's policy name (`[probe.<name>]`).
    pub name: String,
    /// Where and what it reads, e.g. `tcp 10.0.5.10:502 unit 1 holding 100 (f32)`.
    pub target: String,
    pub critical: bool,
    /// The last value read, after scaling, as text; empty before the first good read.
    pub last_value: String,
    /// Why the last read or check failed; empty when it passed.
    pub last_error: String,
    pub consecutive_failures: u32,
    /// Consecutive failures that trip the probe (`trip_after`).
    pub trip_after: u32,
    /// Reads since the baseline (successful or not).
    pub reads: u64,
    /// Reads that failed or failed a check, since the baseline.
    pub failures: u64,
    /// Whether the probe tripped during the current (or last) observation.
    pub tripped: bool,
    /// Response time of the last answered read, in microseconds; 0 before the first.
    pub last_response_us: u64,
}

#[cfg(test)]
mod tests {
    use super::DaemonError;

    #[test]
    fn every_daemon_error_is_named_once_and_in_the_readme_with_its_exit_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for e in DaemonError::ALL {
            assert_eq!(DaemonError::from_name(e.name()), Some(e));
            let row = format!("| `{}` | {} |", e.name(), e.exit_code().code());
            assert!(readme.contains(&row), "README.md's error table lacks {row}");
        }
        assert_eq!(DaemonError::from_name("io.otpatch.Error.Nonsense"), None);
    }

    #[test]
    fn outcome_kinds_are_read_back_from_their_words() {
        use super::OutcomeKind;
        for k in OutcomeKind::ALL {
            assert_eq!(OutcomeKind::of(&format!("{} whatever follows", k.word())), Some(k));
        }
        assert_eq!(OutcomeKind::of("up-to-date: 1.0.2 was rolled back on 2026-11-01"), Some(OutcomeKind::UpToDate));
        assert_eq!(OutcomeKind::of("rolled-back: probe out of range"), Some(OutcomeKind::RolledBack));
        assert_eq!(OutcomeKind::of("committedness"), None);
        assert_eq!(OutcomeKind::of(""), None);
    }
}
