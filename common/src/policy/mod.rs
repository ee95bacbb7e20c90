//! The site policy: layered TOML files validated into typed [`Settings`].
//!
//! A policy is read from several files, applied in this order (see [`PolicyPaths`]):
//!
//! 1. vendor defaults, `/usr/lib/otpatch/policy.d/*.toml`, sorted by file name;
//! 2. the site file, `/etc/otpatch/policy.toml`, if it exists;
//! 3. site drop-ins, `/etc/otpatch/policy.d/*.toml`, sorted by file name.
//!
//! A later file overrides the KEYS it sets: tables merge key by key (at every depth), anything else (strings,
//! numbers, arrays) replaces the earlier value. The merged tree is then validated by hand, so that every error names
//! the file, line and column and the dotted key it is about (for a key set in several files: the file that set it
//! last), and so that all errors are found in one pass. `policies/README.md` is the reference for the keys.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::RecurringWindow;

mod tree;
mod validate;

#[cfg(test)]
mod tests;

/// Where the policy files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPaths {
    /// Vendor defaults: every `*.toml` in it, sorted by file name, applied first.
    pub vendor_dir: PathBuf,
    /// The site policy, applied after the vendor defaults (optional).
    pub site_file: PathBuf,
    /// Site drop-ins: every `*.toml` in it, sorted by file name, applied last.
    pub site_dir: PathBuf,
}

impl PolicyPaths {
    /// The standard locations under a root prefix ("/" on a gateway, a temp dir in tests).
    pub fn under(root: &Path) -> Self {
        PolicyPaths {
            vendor_dir: root.join("usr/lib/otpatch/policy.d"),
            site_file: root.join("etc/otpatch/policy.toml"),
            site_dir: root.join("etc/otpatch/policy.d"),
        }
    }

    /// The files that exist, in the order they apply.
    pub fn files(&self) -> io::Result<Vec<PathBuf>> {
        self.find().map_err(|(path, e)| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn find(&self) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
        let mut files = toml_files_in(&self.vendor_dir)?;
        match std::fs::metadata(&self.site_file) {
            Ok(_) => files.push(self.site_file.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err((self.site_file.clone(), e)),
        }
        files.extend(toml_files_in(&self.site_dir)?);
        Ok(files)
    }
}

/// The `*.toml` files of a directory (not hidden ones, not directories), sorted by file name. A missing directory
/// has none.
fn toml_files_in(dir: &Path) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err((dir.to_path_buf(), e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| (dir.to_path_buf(), e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// How a policy is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Check that files the policy names (CA, client cert/key, trust anchors, CRL) exist and are readable;
    /// they are looked up under `file_root` (so "/etc/otpatch/ca.pem" with file_root "/tmp/x" is "/tmp/x/etc/otpatch/ca.pem").
    pub check_files: bool,
    /// Prefix for `check_files`; empty means "/".
    pub file_root: PathBuf,
}

/// Loads the policy from the standard files.
pub fn load(paths: &PolicyPaths, opts: &LoadOptions) -> Result<Settings, PolicyErrors> {
    let files =
        paths.find().map_err(|(path, e)| PolicyErrors(vec![PolicyError::file(path, format!("cannot read: {e}"))]))?;
    if files.is_empty() {
        return Err(PolicyErrors(vec![PolicyError::file(
            PathBuf::new(),
            format!(
                "no policy files found in {}, {} or {}",
                paths.vendor_dir.display(),
                paths.site_file.display(),
                paths.site_dir.display()
            ),
        )]));
    }
    load_files(&files, opts)
}

/// Loads the policy from these files, in this order.
pub fn load_files(files: &[PathBuf], opts: &LoadOptions) -> Result<Settings, PolicyErrors> {
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => sources.push((file.clone(), text)),
            Err(e) => errors.push(PolicyError::file(file.clone(), format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        return parse_sources(&sources, opts);
    }
    // Still report what is wrong in the files that could be read, but do not validate a policy with a file missing.
    let sources: Vec<tree::Source> = sources.into_iter().map(|(name, text)| tree::Source::new(name, text)).collect();
    if let Err(more) = tree::parse_all(&sources) {
        errors.extend(more);
    }
    Err(PolicyErrors::sorted(errors, files))
}

/// For tests and `policy check` on text: (name shown in errors, TOML text) in the order they apply.
pub fn parse_sources(sources: &[(PathBuf, String)], opts: &LoadOptions) -> Result<Settings, PolicyErrors> {
    if sources.is_empty() {
        return Err(PolicyErrors(vec![PolicyError::file(PathBuf::new(), "no policy files given".into())]));
    }
    let order: Vec<PathBuf> = sources.iter().map(|(name, _)| name.clone()).collect();
    let sources: Vec<tree::Source> =
        sources.iter().map(|(name, text)| tree::Source::new(name.clone(), text.clone())).collect();
    let trees = tree::parse_all(&sources).map_err(|e| PolicyErrors::sorted(e, &order))?;
    let mut merged = tree::Tree::new();
    for t in trees {
        tree::merge(&mut merged, t);
    }
    validate::settings(&sources, &merged, opts).map_err(|e| PolicyErrors::sorted(e, &order))
}

/// One thing wrong with the policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyError {
    /// The file (as given); empty when the error is about no file in particular.
    pub file: PathBuf,
    /// 1-based; 0 when the error has no position (a required key missing from every file, an unreadable file).
    pub line: usize,
    /// 1-based, in characters; 0 with `line`.
    pub column: usize,
    /// The dotted key path (`probe.boiler-temp.interval`); empty for errors in the TOML syntax or about a file.
    pub key: String,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl PolicyError {
    fn file(file: PathBuf, message: String) -> Self {
        PolicyError { file, line: 0, column: 0, key: String::new(), message }
    }
}

/// `{file}:{line}:{column}: {key}: {message}`; `:{line}:{column}` is left out when there is no position, and the
/// file or key part when it is empty.
impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.as_os_str().is_empty() {
            write!(f, "{}", self.file.display())?;
            if self.line != 0 {
                write!(f, ":{}:{}", self.line, self.column)?;
            }
            f.write_str(": ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Everything wrong with a policy, sorted by file (in the order applied), then line and column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    fn sorted(mut errors: Vec<PolicyError>, order: &[PathBuf]) -> Self {
        let rank = |file: &Path| order.iter().position(|f| f == file).unwrap_or(usize::MAX);
        errors.sort_by_key(|e| (rank(&e.file), e.line, e.column));
        errors.dedup();
        PolicyErrors(errors)
    }
}

/// One error per line.
impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

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
    /// The A/B (RAUC) path, from `[ab]`.
    pub ab: AbRules,
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
    /// The server's addresses, pinned by the policy (no name resolution at all); empty: the host is resolved once
    /// per window, before segmentation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// PEM files with the site's trust anchors. Never empty.
    pub anchors: Vec<PathBuf>,
    /// When not empty, the signer's subject common name must be one of these.
    pub allowed_signers: Vec<String>,
    pub allow_downgrade: bool,
    pub crl: Option<PathBuf>,
    /// The certificate of the CA that issued `crl`, when that is not one of the anchors (an intermediate CA an
    /// anchor issued); checked at policy load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_issuer: Option<PathBuf>,
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
    /// The flow passes *through* the gateway (forwarded between its networks) instead of ending on it: only such
    /// flows get forwarding rules during a window.
    #[serde(default)]
    pub routed: bool,
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
    /// With an `exe` selector: the user (name or numeric uid) the process runs as; copies of the executable
    /// run by other users are ignored. `None`: root.
    #[serde(default)]
    pub user: Option<String>,
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

impl DataType {
    pub const ALL: [DataType; 6] =
        [DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::F32, DataType::Bool];

    /// The name a policy's `type` key uses.
    pub fn name(self) -> &'static str {
        match self {
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
            DataType::Bool => "bool",
        }
    }
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

/// The A/B path (`[ab]`): a RAUC bundle goes into the inactive slot and runs after a reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbRules {
    /// Whether the daemon may reboot the gateway into the new slot (only ever inside the window).
    pub reboot: RebootPolicy,
    /// How long the system may take to go down once a reboot was asked for, before it counts as failed.
    pub reboot_timeout: Duration,
    /// A RAUC bundle on the patch server to install instead when a livepatch does not fit the running kernel.
    pub fallback_bundle: Option<String>,
}

impl Default for AbRules {
    fn default() -> Self {
        AbRules { reboot: RebootPolicy::Never, reboot_timeout: Duration::from_secs(300), fallback_bundle: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootPolicy {
    /// Install into the inactive slot and stop there: "installed, reboot pending".
    Never,
    /// Reboot into the new slot inside the window, observe health there, keep it or go back.
    InWindow,
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
