//! The site policy: layered TOML files validated into typed [`Settings`].
//!
//! TODO(policy helper): loading, merging, validation and errors.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::RecurringWindow;

/// The validated policy. Every field holds a value that was checked; invalid states cannot be built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub gateway: Gateway,
    /// The patch server; `None` when the policy names none (then windows have nothing to fetch).
    pub server: Option<PatchServer>,
    pub trust: Trust,
    pub limits: Limits,
    /// Recurring windows from `[window.<name>]`, sorted by name.
    pub windows: Vec<RecurringWindow>,
    pub segmentation: Segmentation,
    /// Critical processes from `[process.<name>]`, sorted by name.
    pub processes: Vec<CriticalProcess>,
    /// Health probes from `[probe.<name>]`, sorted by name.
    pub probes: Vec<Probe>,
    pub rollback: RollbackRules,
    pub access: Access,
    /// The files that made this policy, in the order they were applied.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    pub id: String,
    /// Matched against a bundle's `compatible`.
    pub compatible: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchServer {
    /// `https://host[:port]/path/` (always https, always ends with `/`).
    pub url: String,
    pub host: String,
    pub port: u16,
    /// CA that signs the server's certificate (not the system store).
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// PEM files with the site's trust anchors. Never empty.
    pub anchors: Vec<PathBuf>,
    /// When not empty, the signer's subject common name must be one of these.
    pub allowed_signers: Vec<String>,
    pub allow_downgrade: bool,
    pub crl: Option<PathBuf>,
    pub time_source: TimeSource,
}

/// Which clock signature validity is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeSource {
    /// The system clock.
    System,
    /// The later of the system clock and the newest signing time of a bundle already verified
    /// (for gateways without a battery-backed real-time clock).
    SystemWithFloor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest allowed window.
    pub max_window: Duration,
    /// Largest bundle the daemon downloads, in bytes.
    pub max_download: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segmentation {
    pub enabled: bool,
    pub backend: FirewallBackend,
    /// Log dropped packets (rate-limited).
    pub log_drops: bool,
    /// Extra OT flows that must keep working, from `[segmentation.allow.<name>]`, sorted by name.
    pub allow: Vec<Flow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirewallBackend {
    Auto,
    Nftables,
    Iptables,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Who opens the flow: the gateway (`outbound`), the peer (`inbound`), or either (`both`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Outbound,
    Inbound,
    Both,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriticalProcess {
    pub name: String,
    pub selector: ProcessSelector,
    /// Whether established TCP connections are checkpointed (CRIU `--tcp-established`).
    pub tcp_established: bool,
    /// Pre-dump with memory tracking before the final dump, to shorten the freeze.
    pub pre_dump: bool,
}

/// How a critical process is found. Exactly one per process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessSelector {
    /// A systemd unit; its `MainPID`.
    Unit(String),
    Pidfile(PathBuf),
    /// The process running this executable (exactly one must match).
    Exe(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    pub target: ProbeTarget,
    pub unit_id: u8,
    pub function: RegisterKind,
    pub address: u16,
    /// Registers (or bits) read: derived from `data_type` unless given.
    pub count: u16,
    pub data_type: DataType,
    pub word_order: WordOrder,
    /// value = raw * scale + offset
    pub scale: f64,
    pub offset: f64,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before the probe trips. At least 1.
    pub trip_after: u32,
    pub critical: bool,
    /// At least one check.
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeTarget {
    Tcp { addr: SocketAddr },
    Rtu { device: PathBuf, baud: u32, parity: Parity, stop_bits: u8, data_bits: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegisterKind {
    Holding,
    Input,
    Coils,
    Discrete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WordOrder {
    /// High word first (Modbus convention).
    Big,
    Little,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    Range {
        min: Option<f64>,
        max: Option<f64>,
    },
    Equals {
        value: f64,
    },
    /// The value must change at least this often.
    Heartbeat {
        max_stale: Duration,
    },
    /// Deviation from the baseline taken when the window armed.
    Deviation {
        abs: Option<f64>,
        percent: Option<f64>,
    },
    ResponseTime {
        max: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRules {
    /// How long health is observed after apply before the patch is committed.
    pub observation: Duration,
    pub on_degraded: DegradedAction,
    /// Force used on a livepatch transition that stalls (only if the site allows it).
    pub allow_force: bool,
    /// How long a livepatch transition may take before it is reverted.
    pub transition_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DegradedAction {
    Keep,
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Members of this group may call mutating D-Bus methods (root always may).
    pub group: String,
}
