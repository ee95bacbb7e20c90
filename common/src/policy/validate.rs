//! Validation of the merged policy tree into [`Settings`], by hand, so that every error can name the file, line and
//! key it is about and as many errors as possible are found in one pass.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tree::{join, At, Node, Source, Tree, Val};
use super::*;
use crate::schedule::{weekdays, RecurringWindow};
use crate::units::{format_duration, parse_duration, parse_size};

const DAY: Duration = Duration::from_secs(24 * 3600);
const MS: Duration = Duration::from_millis(1);

static EMPTY: Tree = Tree::new();

/// Turns the merged tree into settings, or every error found.
pub(super) fn settings(sources: &[Source], root: &Tree, opts: &LoadOptions) -> Result<Settings, Vec<PolicyError>> {
    let mut c = Checker { sources, opts, errors: Vec::new() };
    let root = Tbl { path: String::new(), tree: root, at: None, quiet: false };
    c.keys(
        &root,
        &[
            "gateway",
            "server",
            "trust",
            "limits",
            "access",
            "rollback",
            "segmentation",
            "window",
            "process",
            "probe",
            "ab",
        ],
    );
    let gateway = c.gateway(&root);
    let server = c.server(&root);
    let trust = c.trust(&root);
    let (limits, max_window_at) = c.limits(&root);
    let access = c.access(&root);
    let rollback = c.rollback(&root);
    let ab = c.ab(&root);
    let segmentation = c.segmentation(&root);
    let windows = c.windows(&root, limits.max_window, max_window_at);
    let processes = c.processes(&root);
    let probes = c.probes(&root);
    match (gateway, trust) {
        (Some(gateway), Some(trust)) if c.errors.is_empty() => Ok(Settings {
            gateway,
            server,
            trust,
            limits,
            windows,
            segmentation,
            processes,
            probes,
            rollback,
            ab,
            access,
            sources: sources.iter().map(|s| s.name.clone()).collect(),
        }),
        _ => {
            if c.errors.is_empty() {
                // Cannot happen: a section is only left out after an error was recorded for it.
                c.errors.push(PolicyError {
                    file: PathBuf::new(),
                    line: 0,
                    column: 0,
                    key: String::new(),
                    message: "internal error: incomplete policy without a reported error".into(),
                });
            }
            Err(c.errors)
        }
    }
}

/// A table being validated.
#[derive(Debug, Clone)]
struct Tbl<'t> {
    /// Dotted path (`probe.boiler-temp`); empty for the root.
    path: String,
    tree: &'t Tree,
    /// Where the table is written, for errors about the table as a whole; `None` for the fixed sections, whose
    /// missing keys are reported without a position.
    at: Option<At>,
    /// The table was not a table at all (already reported): do not report its keys as missing.
    quiet: bool,
}

impl<'t> Tbl<'t> {
    fn get(&self, key: &str) -> Option<&'t Node> {
        self.tree.get(key)
    }

    fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

/// A value read from a table.
#[derive(Debug)]
enum Got<T> {
    Absent,
    /// Present but wrong (already reported).
    Invalid,
    Ok(T, At),
}

impl<T> Got<T> {
    fn or(self, default: T) -> T {
        match self {
            Got::Ok(v, _) => v,
            _ => default,
        }
    }

    fn value(self) -> Option<T> {
        match self {
            Got::Ok(v, _) => Some(v),
            _ => None,
        }
    }

    fn at(&self) -> Option<At> {
        match self {
            Got::Ok(_, at) => Some(*at),
            _ => None,
        }
    }

    fn is_set(&self) -> bool {
        !matches!(self, Got::Absent)
    }
}

/// Why a value was rejected.
enum Bad {
    /// "expected {0}, found {the value}"
    Expected(String),
    /// The whole message.
    Message(String),
}

fn expected(what: impl Into<String>) -> Bad {
    Bad::Expected(what.into())
}

struct Checker<'a> {
    sources: &'a [Source],
    opts: &'a LoadOptions,
    errors: Vec<PolicyError>,
}

impl<'t> Checker<'_> {
    // ----- reporting -----

    fn error(&mut self, at: At, key: String, message: impl Into<String>) {
        self.errors.push(PolicyError {
            file: self.sources[at.file].name.clone(),
            line: at.line,
            column: at.column,
            key,
            message: message.into(),
        });
    }

    /// `file:line` of a position, for messages that mention a second place.
    fn place(&self, at: At) -> String {
        format!("{}:{}", self.sources[at.file].name.display(), at.line)
    }

    fn missing(&mut self, t: &Tbl, key: &str) {
        if t.quiet {
            return;
        }
        match t.at {
            Some(at) => self.error(at, t.key(key), format!("required key {key:?} is missing from [{}]", t.path)),
            None => {
                let files: Vec<String> = self.sources.iter().map(|s| s.name.display().to_string()).collect();
                let last = self.sources.last().map(|s| s.name.clone()).unwrap_or_default();
                self.errors.push(PolicyError {
                    file: last,
                    line: 0,
                    column: 0,
                    key: t.key(key),
                    message: format!(
                        "required key is missing; it is not set in any of the files read: {}",
                        files.join(", ")
                    ),
                });
            }
        }
    }

    fn required<T>(&mut self, t: &Tbl, key: &str, got: Got<T>) -> Option<T> {
        match got {
            Got::Ok(v, _) => Some(v),
            Got::Invalid => None,
            Got::Absent => {
                self.missing(t, key);
                None
            }
        }
    }

    /// Of the keys given (with where they were set), the one set last; the table itself if none was set.
    fn blame(&self, t: &Tbl, keys: &[(&str, Option<At>)]) -> (String, Option<At>) {
        keys.iter()
            .filter_map(|(k, at)| at.map(|at| (at, *k)))
            .max()
            .map(|(at, k)| (t.key(k), Some(at)))
            .unwrap_or_else(|| (t.path.clone(), t.at))
    }

    fn error_at_blamed(&mut self, t: &Tbl, keys: &[(&str, Option<At>)], message: impl Into<String>) {
        let (key, at) = self.blame(t, keys);
        match at {
            Some(at) => self.error(at, key, message),
            // Nothing to point at (only defaults involved): no position.
            None => {
                let file = self.sources.last().map(|s| s.name.clone()).unwrap_or_default();
                self.errors.push(PolicyError { file, line: 0, column: 0, key, message: message.into() });
            }
        }
    }

    // ----- tables -----

    fn keys(&mut self, t: &Tbl, allowed: &[&str]) {
        for (key, node) in t.tree {
            if allowed.contains(&key.as_str()) {
                continue;
            }
            let here = if t.path.is_empty() { "at the top level".to_string() } else { format!("in [{}]", t.path) };
            let message = match suggestion(allowed, key) {
                Some(close) => format!("unknown key {key:?} (did you mean {close:?}?)"),
                None => format!("unknown key {key:?}; the keys allowed {here} are: {}", allowed.join(", ")),
            };
            self.error(node.key_at, t.key(key), message);
        }
    }

    /// A sub-table, if present. A value that is not a table is reported.
    fn table(&mut self, parent: &Tbl<'t>, key: &str) -> Got<Tbl<'t>> {
        let Some(node) = parent.get(key) else { return Got::Absent };
        match &node.val {
            Val::Table(tree) => Got::Ok(Tbl { path: parent.key(key), tree, at: Some(node.at), quiet: false }, node.at),
            other => {
                let found = describe(other);
                self.error(
                    node.at,
                    parent.key(key),
                    format!("expected a table ([{}]), found {found}", parent.key(key)),
                );
                Got::Invalid
            }
        }
    }

    /// A fixed section such as `[limits]`: an empty table when absent.
    fn section(&mut self, parent: &Tbl<'t>, key: &str) -> Tbl<'t> {
        let (tree, quiet) = match self.table(parent, key) {
            Got::Ok(t, _) => (t.tree, false),
            Got::Invalid => (&EMPTY, true),
            Got::Absent => (&EMPTY, false),
        };
        Tbl { path: parent.key(key), tree, at: None, quiet }
    }

    /// The tables of `[<key>.<name>]`, sorted by name.
    fn named(&mut self, parent: &Tbl<'t>, key: &str) -> Vec<(String, Tbl<'t>)> {
        let Got::Ok(t, _) = self.table(parent, key) else { return Vec::new() };
        let mut out = Vec::new();
        for (name, node) in t.tree {
            if !valid_name(name) {
                self.error(
                    node.key_at,
                    t.key(name),
                    format!("invalid name {name:?}: names may contain only letters, digits, \"_\" and \"-\""),
                );
                continue;
            }
            if let Got::Ok(sub, _) = self.table(&t, name) {
                out.push((name.clone(), sub));
            }
        }
        out
    }

    // ----- values -----

    fn value<T>(&mut self, t: &Tbl, key: &str, check: impl FnOnce(&Val) -> Result<T, Bad>) -> Got<T> {
        let Some(node) = t.get(key) else { return Got::Absent };
        self.node(node, t.key(key), check)
    }

    fn node<T>(&mut self, node: &Node, key: String, check: impl FnOnce(&Val) -> Result<T, Bad>) -> Got<T> {
        match check(&node.val) {
            Ok(v) => Got::Ok(v, node.at),
            Err(bad) => {
                let message = match bad {
                    Bad::Expected(what) => format!("expected {what}, found {}", describe(&node.val)),
                    Bad::Message(m) => m,
                };
                self.error(node.at, key, message);
                Got::Invalid
            }
        }
    }

    fn boolean(&mut self, t: &Tbl, key: &str) -> Got<bool> {
        self.value(t, key, |v| match v {
            Val::Bool(b) => Ok(*b),
            _ => Err(expected("true or false")),
        })
    }

    fn string(&mut self, t: &Tbl, key: &str) -> Got<String> {
        self.value(t, key, |v| match v {
            Val::Str(s) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(expected("a non-empty string")),
        })
    }

    fn integer(&mut self, t: &Tbl, key: &str, min: i64, max: i64) -> Got<i64> {
        self.value(t, key, |v| match v {
            Val::Int(i) if (min..=max).contains(i) => Ok(*i),
            _ => Err(expected(format!("an integer from {min} to {max}"))),
        })
    }

    fn number(&mut self, t: &Tbl, key: &str) -> Got<f64> {
        self.value(t, key, |v| match v {
            Val::Int(i) => Ok(*i as f64),
            Val::Float(f) if f.is_finite() => Ok(*f),
            _ => Err(expected("a finite number")),
        })
    }

    fn choice<T: Copy>(&mut self, t: &Tbl, key: &str, options: &[(&str, T)]) -> Got<T> {
        let names: Vec<String> = options.iter().map(|(name, _)| format!("{name:?}")).collect();
        let what = format!("one of {}", names.join(", "));
        self.value(t, key, |v| match v {
            Val::Str(s) => options.iter().find(|(name, _)| name == s).map(|(_, v)| *v).ok_or_else(|| expected(what)),
            _ => Err(expected(what)),
        })
    }

    fn duration(&mut self, t: &Tbl, key: &str, min: Duration) -> Got<Duration> {
        self.duration_within(t, key, min, None)
    }

    fn duration_within(&mut self, t: &Tbl, key: &str, min: Duration, max: Option<Duration>) -> Got<Duration> {
        self.value(t, key, |v| {
            let Val::Str(s) = v else { return Err(expected("a duration like \"90m\" or \"500ms\"")) };
            let d = parse_duration(s).map_err(|_| expected("a duration like \"90m\" or \"500ms\""))?;
            if d < min {
                return Err(if min == MS {
                    expected("a duration greater than 0")
                } else {
                    expected(format!("a duration of at least {}", format_duration(min)))
                });
            }
            if let Some(max) = max.filter(|max| d > *max) {
                return Err(expected(format!("a duration of at most {}", format_duration(max))));
            }
            Ok(d)
        })
    }

    fn size(&mut self, t: &Tbl, key: &str) -> Got<u64> {
        self.value(t, key, |v| {
            let n = match v {
                Val::Str(s) => parse_size(s).ok(),
                Val::Int(i) => u64::try_from(*i).ok(),
                _ => None,
            };
            match n {
                Some(n) if n > 0 => Ok(n),
                _ => Err(expected("a size greater than 0 like \"512MiB\" or \"1GiB\"")),
            }
        })
    }

    fn abs_path(&mut self, t: &Tbl, key: &str) -> Got<PathBuf> {
        let Some(node) = t.get(key) else { return Got::Absent };
        self.path_node(node, t.key(key))
    }

    fn path_node(&mut self, node: &Node, key: String) -> Got<PathBuf> {
        let got = self.node(node, key.clone(), |v| match v {
            Val::Str(s) if s.starts_with('/') && !s.contains('\0') => Ok(PathBuf::from(s)),
            _ => Err(expected("an absolute path")),
        });
        if let Got::Ok(path, at) = &got {
            self.check_file(*at, key, path);
        }
        got
    }

    fn array(&mut self, t: &Tbl<'t>, key: &str) -> Got<&'t [Node]> {
        let Some(node) = t.get(key) else { return Got::Absent };
        match &node.val {
            Val::Array(items) => Got::Ok(items, node.at),
            other => {
                let found = describe(other);
                self.error(node.at, t.key(key), format!("expected an array, found {found}"));
                Got::Invalid
            }
        }
    }

    /// With `check_files`, that a file the policy names can be opened (under `file_root`).
    fn check_file(&mut self, at: At, key: String, path: &Path) {
        if !self.opts.check_files {
            return;
        }
        let root = if self.opts.file_root.as_os_str().is_empty() { Path::new("/") } else { &self.opts.file_root };
        let full = root.join(path.strip_prefix("/").unwrap_or(path));
        let shown = if full == path {
            format!("{:?}", path.display().to_string())
        } else {
            format!("{:?} (looked up as {:?})", path.display().to_string(), full.display().to_string())
        };
        match std::fs::File::open(&full).and_then(|f| f.metadata()) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => self.error(at, key, format!("{shown} is not a regular file")),
            Err(e) => self.error(at, key, format!("cannot read {shown}: {e}")),
        }
    }

    /// With `check_files`, the CRL is read as the verifier will read it, so that one it could not use (not a CRL,
    /// a broken signature, issued by a CA that is neither an anchor nor the named `crl_issuer`) is refused at policy
    /// load and not at the first window. Its expiry is not checked here: that is a matter of time, checked at every
    /// verification (an expired CRL refuses bundles until the plant renews it).
    fn check_crl(&mut self, at: At, key: String, anchors: &[PathBuf], crl: &Path, crl_issuer: Option<&Path>) {
        if !self.opts.check_files {
            return;
        }
        let root = if self.opts.file_root.as_os_str().is_empty() { Path::new("/") } else { &self.opts.file_root };
        let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let files: Vec<PathBuf> = anchors.iter().map(|p| under(p)).collect();
        let (crl, issuer) = (under(crl), crl_issuer.map(under));
        // A file that is missing was reported already.
        if !files.iter().chain([&crl]).chain(issuer.iter()).all(|f| f.is_file()) {
            return;
        }
        // Without the bundle feature (a build that verifies nothing) there is no verifier to read it as.
        #[cfg(feature = "bundle")]
        if let Err(e) = crate::bundle::TrustStore::from_trust_files(&files, &[], Some(&crl), issuer.as_deref()) {
            self.error(at, key, format!("the CRL cannot be used: {e}"));
        }
        #[cfg(not(feature = "bundle"))]
        let _ = (at, key, files, crl, issuer);
    }

    // ----- sections -----

    fn gateway(&mut self, root: &Tbl<'t>) -> Option<Gateway> {
        let t = self.section(root, "gateway");
        self.keys(&t, &["id", "compatible"]);
        let id = self.value(&t, "id", |v| match v {
            Val::Str(s) if valid_id(s) => Ok(s.clone()),
            _ => Err(expected("a gateway id made of letters, digits, \".\", \"_\" and \"-\"")),
        });
        let id = self.required(&t, "id", id);
        let compatible = self.string(&t, "compatible");
        let compatible = self.required(&t, "compatible", compatible);
        Some(Gateway { id: id?, compatible: compatible? })
    }

    fn server(&mut self, root: &Tbl<'t>) -> Option<PatchServer> {
        let Got::Ok(t, _) = self.table(root, "server") else { return None };
        self.keys(&t, &["url", "ca", "client_cert", "client_key", "addresses"]);
        let url = self.value(&t, "url", |v| match v {
            Val::Str(s) => parse_https_url(s).map_err(Bad::Message),
            _ => Err(expected("an https:// URL")),
        });
        let url = self.required(&t, "url", url);
        let ca = self.abs_path(&t, "ca");
        let ca = self.required(&t, "ca", ca);
        let cert = self.abs_path(&t, "client_cert");
        let cert = self.required(&t, "client_cert", cert);
        let key = self.abs_path(&t, "client_key");
        let key = self.required(&t, "client_key", key);
        let addresses = match self.array(&t, "addresses") {
            Got::Ok(items, _) => items
                .iter()
                .filter_map(|n| {
                    self.node(n, t.key("addresses"), |v| match v {
                        Val::Str(s) => s.parse::<IpAddr>().map_err(|_| expected("an IP address like \"10.0.5.20\"")),
                        _ => Err(expected("an IP address like \"10.0.5.20\"")),
                    })
                    .value()
                })
                .collect(),
            _ => Vec::new(),
        };
        let (url, host, port) = url?;
        Some(PatchServer { url, host, port, ca: ca?, client_cert: cert?, client_key: key?, addresses })
    }

    fn trust(&mut self, root: &Tbl<'t>) -> Option<Trust> {
        let t = self.section(root, "trust");
        self.keys(&t, &["anchors", "allowed_signers", "allow_downgrade", "crl", "crl_issuer", "time_source"]);
        let anchors = match self.array(&t, "anchors") {
            Got::Ok(items, at) => {
                if items.is_empty() {
                    self.error(at, t.key("anchors"), "expected at least one trust anchor, found an empty array");
                    None
                } else {
                    let paths: Vec<Option<PathBuf>> =
                        items.iter().map(|n| self.path_node(n, t.key("anchors")).value()).collect();
                    paths.into_iter().collect::<Option<Vec<_>>>()
                }
            }
            Got::Invalid => None,
            Got::Absent => {
                self.missing(&t, "anchors");
                None
            }
        };
        let allowed_signers = match self.array(&t, "allowed_signers") {
            Got::Ok(items, _) => items
                .iter()
                .filter_map(|n| {
                    self.node(n, t.key("allowed_signers"), |v| match v {
                        Val::Str(s) if !s.trim().is_empty() => Ok(s.clone()),
                        _ => Err(expected("a signer's common name (a non-empty string)")),
                    })
                    .value()
                })
                .collect(),
            _ => Vec::new(),
        };
        let allow_downgrade = self.boolean(&t, "allow_downgrade").or(false);
        let crl = match self.abs_path(&t, "crl") {
            Got::Ok(path, at) => Some((path, at)),
            _ => None,
        };
        let crl_issuer = match self.abs_path(&t, "crl_issuer") {
            Got::Ok(path, at) => Some((path, at)),
            _ => None,
        };
        if let (Some((_, at)), None) = (&crl_issuer, &crl) {
            self.error(*at, t.key("crl_issuer"), "names the issuer of a CRL, but [trust] has no crl");
        }
        if let (Some(anchors), Some((crl, at))) = (&anchors, &crl) {
            self.check_crl(*at, t.key("crl"), anchors, crl, crl_issuer.as_ref().map(|(p, _)| p.as_path()));
        }
        let crl_issuer = crl_issuer.map(|(p, _)| p);
        let crl = crl.map(|(p, _)| p);
        let time_source = self
            .choice(
                &t,
                "time_source",
                &[("system", TimeSource::System), ("system-with-floor", TimeSource::SystemWithFloor)],
            )
            .or(TimeSource::SystemWithFloor);
        Some(Trust { anchors: anchors?, allowed_signers, allow_downgrade, crl, crl_issuer, time_source })
    }

    /// The limits, and where `max_window` was set: `Some(None)` for the default, `None` when it is invalid.
    fn limits(&mut self, root: &Tbl<'t>) -> (Limits, Option<Option<At>>) {
        let t = self.section(root, "limits");
        self.keys(&t, &["max_window", "max_download"]);
        let max_window = self.duration_within(&t, "max_window", MS, Some(DAY));
        let at = match max_window {
            Got::Ok(_, at) => Some(Some(at)),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let max_window = max_window.or(Duration::from_secs(4 * 3600));
        let max_download = self.size(&t, "max_download").or(1 << 30);
        (Limits { max_window, max_download }, at)
    }

    fn access(&mut self, root: &Tbl<'t>) -> Access {
        let t = self.section(root, "access");
        self.keys(&t, &["group"]);
        let group = self.value(&t, "group", |v| match v {
            Val::Str(s) if valid_group(s) => Ok(s.clone()),
            _ => Err(expected(
                "a group name (a letter or \"_\", then letters, digits, \"_\", \".\" or \"-\"; at most 32 characters)",
            )),
        });
        Access { group: group.value().unwrap_or_else(|| "otpatch".to_string()) }
    }

    fn rollback(&mut self, root: &Tbl<'t>) -> RollbackRules {
        let t = self.section(root, "rollback");
        self.keys(&t, &["observation", "on_degraded", "allow_force", "transition_timeout"]);
        RollbackRules {
            observation: self.duration(&t, "observation", MS).or(Duration::from_secs(300)),
            on_degraded: self
                .choice(&t, "on_degraded", &[("keep", DegradedAction::Keep), ("rollback", DegradedAction::Rollback)])
                .or(DegradedAction::Keep),
            allow_force: self.boolean(&t, "allow_force").or(false),
            transition_timeout: self.duration(&t, "transition_timeout", MS).or(Duration::from_secs(60)),
        }
    }

    fn ab(&mut self, root: &Tbl<'t>) -> AbRules {
        let t = self.section(root, "ab");
        self.keys(&t, &["reboot", "reboot_timeout", "fallback_bundle"]);
        let fallback_bundle = self.value(&t, "fallback_bundle", |v| match v {
            Val::Str(s)
                if s.ends_with(".raucb")
                    && !s.starts_with('.')
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)) =>
            {
                Ok(s.clone())
            }
            _ => Err(expected("a RAUC bundle's file name on the patch server, like \"gateway-os-2.1.raucb\"")),
        });
        AbRules {
            reboot: self
                .choice(&t, "reboot", &[("never", RebootPolicy::Never), ("in-window", RebootPolicy::InWindow)])
                .or(RebootPolicy::Never),
            reboot_timeout: self.duration(&t, "reboot_timeout", MS).or(Duration::from_secs(300)),
            fallback_bundle: fallback_bundle.value(),
        }
    }

    fn segmentation(&mut self, root: &Tbl<'t>) -> Segmentation {
        let t = self.section(root, "segmentation");
        self.keys(&t, &["enabled", "backend", "log_drops", "allow"]);
        let enabled = self.boolean(&t, "enabled").or(true);
        let backend = self
            .choice(
                &t,
                "backend",
                &[
                    ("auto", FirewallBackend::Auto),
                    ("nftables", FirewallBackend::Nftables),
                    ("iptables", FirewallBackend::Iptables),
                ],
            )
            .or(FirewallBackend::Auto);
        let log_drops = self.boolean(&t, "log_drops").or(false);
        let mut allow = Vec::new();
        for (name, f) in self.named(&t, "allow") {
            self.keys(&f, &["address", "port", "protocol", "direction", "routed"]);
            let address = self.value(&f, "address", |v| match v {
                Val::Str(s) => s.parse::<IpAddr>().map_err(|_| expected("an IP address like \"10.0.5.20\"")),
                _ => Err(expected("an IP address like \"10.0.5.20\"")),
            });
            let address = self.required(&f, "address", address);
            let port = self.integer(&f, "port", 1, 65535);
            let port = self.required(&f, "port", port);
            let protocol =
                self.choice(&f, "protocol", &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)]).or(Protocol::Tcp);
            let direction = self
                .choice(
                    &f,
                    "direction",
                    &[("outbound", Direction::Outbound), ("inbound", Direction::Inbound), ("both", Direction::Both)],
                )
                .or(Direction::Outbound);
            let routed = self.boolean(&f, "routed").or(false);
            if let (Some(address), Some(port)) = (address, port) {
                allow.push(Flow { name, address, port: port as u16, protocol, direction, routed });
            }
        }
        Segmentation { enabled, backend, log_drops, allow }
    }

    /// `max_window_at` as returned by [`Checker::limits`].
    fn windows(
        &mut self,
        root: &Tbl<'t>,
        max_window: Duration,
        max_window_at: Option<Option<At>>,
    ) -> Vec<RecurringWindow> {
        let mut out = Vec::new();
        for (name, w) in self.named(root, "window") {
            self.keys(&w, &["days", "start", "duration", "timezone", "auto_start"]);
            let days = match self.array(&w, "days") {
                Got::Ok(items, at) => self.days(&w, items, at),
                Got::Invalid => None,
                Got::Absent => {
                    self.missing(&w, "days");
                    None
                }
            };
            let start =
                self.value(&w, "start", |v| parse_start(v).ok_or_else(|| expected("a local time like \"02:00\"")));
            let start = self.required(&w, "start", start);
            let duration = self.duration(&w, "duration", MS);
            let duration_at = duration.at();
            let duration = self.required(&w, "duration", duration);
            if let (Some(d), Some(d_at), Some(max_window_at)) = (duration, duration_at, max_window_at) {
                if d > max_window {
                    match max_window_at {
                        Some(m_at) if m_at > d_at => self.error(
                            m_at,
                            "limits.max_window".into(),
                            format!(
                                "{} is shorter than window {name:?}, which lasts {} (set at {})",
                                format_duration(max_window),
                                format_duration(d),
                                self.place(d_at)
                            ),
                        ),
                        _ => {
                            let limit = match max_window_at {
                                Some(m_at) => format!("{}, set at {}", format_duration(max_window), self.place(m_at)),
                                None => format!("{}, the default", format_duration(max_window)),
                            };
                            self.error(
                                d_at,
                                w.key("duration"),
                                format!("window lasts {}, longer than limits.max_window ({limit})", format_duration(d)),
                            )
                        }
                    }
                }
            }
            let timezone = self.value(&w, "timezone", |v| match v {
                Val::Str(s) if jiff::tz::TimeZone::get(s).is_ok() => Ok(s.clone()),
                Val::Str(s) => Err(Bad::Message(format!(
                    "unknown time zone {s:?}: expected an IANA time zone name like \"Europe/Berlin\""
                ))),
                _ => Err(expected("an IANA time zone name like \"Europe/Berlin\"")),
            });
            let timezone = self.required(&w, "timezone", timezone);
            let auto_start = self.boolean(&w, "auto_start").or(true);
            if let (Some(days), Some(start), Some(duration), Some(timezone)) = (days, start, duration, timezone) {
                out.push(RecurringWindow { name, days, start, duration, timezone, auto_start });
            }
        }
        out
    }

    fn days(&mut self, w: &Tbl, items: &[Node], at: At) -> Option<Vec<jiff::civil::Weekday>> {
        if items.is_empty() {
            self.error(at, w.key("days"), "expected at least one day like \"sun\", found an empty array");
            return None;
        }
        let mut days = Vec::new();
        let mut ok = true;
        for item in items {
            let day = self.node(item, w.key("days"), |v| match v {
                Val::Str(s) => weekdays::parse(s).ok_or_else(|| expected("a day of the week (\"mon\" .. \"sun\")")),
                _ => Err(expected("a day of the week (\"mon\" .. \"sun\")")),
            });
            match day {
                Got::Ok(day, at) if days.contains(&day) => {
                    self.error(at, w.key("days"), format!("{:?} is listed twice", weekdays::name(day)));
                    ok = false;
                }
                Got::Ok(day, _) => days.push(day),
                _ => ok = false,
            }
        }
        ok.then_some(days)
    }

    fn processes(&mut self, root: &Tbl<'t>) -> Vec<CriticalProcess> {
        let mut out = Vec::new();
        for (name, p) in self.named(root, "process") {
            self.keys(&p, &["unit", "pidfile", "exe", "user", "tcp_established", "pre_dump"]);
            let unit = self.value(&p, "unit", |v| match v {
                Val::Str(s) if valid_service(s) => Ok(ProcessSelector::Unit(s.clone())),
                _ => Err(expected("a systemd service unit like \"softplc.service\"")),
            });
            let pidfile = self.abs_path(&p, "pidfile");
            let exe = self.abs_path(&p, "exe");
            let set: Vec<(&str, Option<At>)> =
                [("unit", unit.is_set()), ("pidfile", pidfile.is_set()), ("exe", exe.is_set())]
                    .into_iter()
                    .filter(|(_, set)| *set)
                    .map(|(k, _)| (k, p.get(k).map(|n| n.at)))
                    .collect();
            let selector = match set.len() {
                0 => {
                    if let Some(at) = p.at {
                        self.error(at, p.path.clone(), "expected exactly one of unit, pidfile or exe, found none");
                    }
                    None
                }
                1 => unit
                    .value()
                    .or(pidfile.value().map(ProcessSelector::Pidfile))
                    .or(exe.value().map(ProcessSelector::Exe)),
                _ => {
                    let names: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
                    self.error_at_blamed(
                        &p,
                        &set,
                        format!("expected exactly one of unit, pidfile or exe, found {}", names.join(" and ")),
                    );
                    None
                }
            };
            let tcp_established = self.boolean(&p, "tcp_established").or(false);
            let pre_dump = self.boolean(&p, "pre_dump").or(false);
            let is_exe = matches!(selector, Some(ProcessSelector::Exe(_)));
            let user = self.value(&p, "user", |v| match v {
                Val::Str(_) if !is_exe => Err(Bad::Message(
                    "user applies to an exe selector only (a unit or pidfile names one process)".into(),
                )),
                Val::Str(s) if valid_user(s) => Ok(s.clone()),
                _ => Err(expected("a user name or a numeric uid, like \"plc\" or \"1000\"")),
            });
            if let Some(selector) = selector {
                out.push(CriticalProcess { name, selector, tcp_established, pre_dump, user: user.value() });
            }
        }
        out
    }

    fn probes(&mut self, root: &Tbl<'t>) -> Vec<Probe> {
        let mut out = Vec::new();
        for (name, p) in self.named(root, "probe") {
            if let Some(probe) = self.probe(name, &p) {
                out.push(probe);
            }
        }
        out
    }

    fn probe(&mut self, name: String, p: &Tbl<'t>) -> Option<Probe> {
        const SERIAL: [&str; 4] = ["baud", "parity", "stop_bits", "data_bits"];
        self.keys(
            p,
            &[
                "tcp",
                "rtu",
                "baud",
                "parity",
                "stop_bits",
                "data_bits",
                "unit_id",
                "function",
                "address",
                "type",
                "count",
                "word_order",
                "scale",
                "offset",
                "interval",
                "timeout",
                "trip_after",
                "critical",
                "min",
                "max",
                "equals",
                "heartbeat",
                "deviation",
                "deviation_percent",
                "max_response",
            ],
        );
        let at_of = |key: &str| p.get(key).map(|n| n.at);

        // Where: Modbus TCP or RTU.
        let tcp = self.value(p, "tcp", |v| match v {
            Val::Str(s) => parse_modbus_tcp(s)
                .ok_or_else(|| expected("an IP address with an optional port like \"10.0.5.10:502\"")),
            _ => Err(expected("an IP address with an optional port like \"10.0.5.10:502\"")),
        });
        let rtu = self.abs_path(p, "rtu");
        let target = match (tcp.is_set(), rtu.is_set()) {
            (true, true) => {
                self.error_at_blamed(
                    p,
                    &[("tcp", at_of("tcp")), ("rtu", at_of("rtu"))],
                    "expected exactly one of tcp or rtu, found both",
                );
                None
            }
            (false, false) => {
                if let Some(at) = p.at {
                    self.error(
                        at,
                        p.path.clone(),
                        "expected exactly one of tcp (Modbus TCP) or rtu (Modbus RTU), found none",
                    );
                }
                None
            }
            (true, false) => {
                for key in SERIAL {
                    if let Some(node) = p.get(key) {
                        self.error(node.key_at, p.key(key), format!("{key} is only valid with rtu, not with tcp"));
                    }
                }
                tcp.value().map(|addr| ProbeTarget::Tcp { addr })
            }
            (false, true) => {
                let baud = self.integer(p, "baud", 1, i64::from(u32::MAX)).or(19200) as u32;
                let parity = self
                    .choice(p, "parity", &[("none", Parity::None), ("even", Parity::Even), ("odd", Parity::Odd)])
                    .or(Parity::Even);
                let stop_bits = self.integer(p, "stop_bits", 1, 2).or(1) as u8;
                let data_bits = self.integer(p, "data_bits", 7, 8).or(8) as u8;
                rtu.value().map(|device| ProbeTarget::Rtu { device, baud, parity, stop_bits, data_bits })
            }
        };

        // What: register kind, address, type.
        let unit_id = self.integer(p, "unit_id", 0, 247).or(1) as u8;
        let function = self.choice(
            p,
            "function",
            &[
                ("holding", RegisterKind::Holding),
                ("input", RegisterKind::Input),
                ("coils", RegisterKind::Coils),
                ("discrete", RegisterKind::Discrete),
            ],
        );
        let function_at = function.at();
        let function_valid = !matches!(function, Got::Invalid);
        let function = function.or(RegisterKind::Holding);
        let bits = matches!(function, RegisterKind::Coils | RegisterKind::Discrete);
        let address = self.integer(p, "address", 0, 65535);
        let address = self.required(p, "address", address).map(|a| a as u16);
        let data_type = self.choice(p, "type", &DataType::ALL.map(|t| (t.name(), t)));
        let type_at = data_type.at();
        let type_valid = !matches!(data_type, Got::Invalid);
        let data_type = data_type.or(if bits { DataType::Bool } else { DataType::U16 });
        let mut ok = true;
        if type_valid && function_valid && bits != (data_type == DataType::Bool) {
            let message = if bits {
                format!(
                    "coils and discrete inputs are single bits: expected type \"bool\", found \"{}\"",
                    data_type.name()
                )
            } else {
                "type \"bool\" is only for coils and discrete inputs (function = \"coils\" or \"discrete\")".to_string()
            };
            self.error_at_blamed(p, &[("function", function_at), ("type", type_at)], message);
            ok = false;
        }
        let words: u16 = match data_type {
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            _ => 1,
        };
        let count = match self.integer(p, "count", 1, 125) {
            Got::Ok(count, at) => {
                let count = count as u16;
                if type_valid && count < words {
                    self.error_at_blamed(
                        p,
                        &[("count", Some(at)), ("type", type_at)],
                        format!("count {count} is too small for type \"{}\", which needs {words}", data_type.name()),
                    );
                    ok = false;
                }
                count
            }
            _ => words,
        };
        let word_order =
            self.choice(p, "word_order", &[("big", WordOrder::Big), ("little", WordOrder::Little)]).or(WordOrder::Big);
        let scale = self.value(p, "scale", |v| match v {
            Val::Int(i) if *i != 0 => Ok(*i as f64),
            Val::Float(f) if f.is_finite() && *f != 0.0 => Ok(*f),
            _ => Err(expected("a finite, non-zero number")),
        });
        let scale = scale.or(1.0);
        let offset = self.number(p, "offset").or(0.0);

        // When: polling.
        let interval = self.duration(p, "interval", Duration::from_millis(10));
        let interval_at = interval.at();
        let interval_valid = !matches!(interval, Got::Invalid);
        let interval = interval.or(Duration::from_secs(1));
        let timeout = self.duration(p, "timeout", MS).or(Duration::from_secs(1));
        let trip_after = self.integer(p, "trip_after", 1, i64::from(u32::MAX)).or(3) as u32;
        let critical = self.boolean(p, "critical").or(true);

        // Checks.
        let mut checks = Vec::new();
        let min = self.number(p, "min");
        let max = self.number(p, "max");
        let any_check = ["min", "max", "equals", "heartbeat", "deviation", "deviation_percent", "max_response"]
            .iter()
            .any(|k| p.get(k).is_some());
        if let (Got::Ok(lo, lo_at), Got::Ok(hi, hi_at)) = (&min, &max) {
            if lo > hi {
                self.error_at_blamed(
                    p,
                    &[("min", Some(*lo_at)), ("max", Some(*hi_at))],
                    format!("min ({lo}) is greater than max ({hi})"),
                );
                ok = false;
            }
        }
        if min.is_set() || max.is_set() {
            checks.push(Check::Range { min: min.value(), max: max.value() });
        }
        if let Some(value) = self.number(p, "equals").value() {
            checks.push(Check::Equals { value });
        }
        if let Got::Ok(max_stale, at) = self.duration(p, "heartbeat", MS) {
            if interval_valid && max_stale <= interval {
                self.error_at_blamed(
                    p,
                    &[("heartbeat", Some(at)), ("interval", interval_at)],
                    format!(
                        "heartbeat ({}) must be longer than the probe's interval ({})",
                        format_duration(max_stale),
                        format_duration(interval)
                    ),
                );
                ok = false;
            }
            checks.push(Check::Heartbeat { max_stale });
        }
        let non_negative = |v: &Val| match v {
            Val::Int(i) if *i >= 0 => Ok(*i as f64),
            Val::Float(f) if f.is_finite() && *f >= 0.0 => Ok(*f),
            _ => Err(expected("a finite number >= 0")),
        };
        let abs = self.value(p, "deviation", non_negative);
        let percent = self.value(p, "deviation_percent", non_negative);
        if abs.is_set() || percent.is_set() {
            checks.push(Check::Deviation { abs: abs.value(), percent: percent.value() });
        }
        if let Some(max) = self.duration(p, "max_response", MS).value() {
            checks.push(Check::ResponseTime { max });
        }
        if !any_check {
            if let Some(at) = p.at {
                self.error(
                    at,
                    p.path.clone(),
                    "expected at least one check (min, max, equals, heartbeat, deviation, deviation_percent or max_response), found none",
                );
            }
            ok = false;
        }

        if !ok {
            return None;
        }
        Some(Probe {
            name,
            target: target?,
            unit_id,
            function,
            address: address?,
            count,
            data_type,
            word_order,
            scale,
            offset,
            interval,
            timeout,
            trip_after,
            critical,
            checks,
        })
    }
}

/// How a value is shown in "found ..." (strings quoted, as written in TOML).
fn describe(v: &Val) -> String {
    match v {
        Val::Str(s) => format!("{s:?}"),
        Val::Int(i) => format!("integer {i}"),
        Val::Float(f) => format!("float {f}"),
        Val::Bool(b) => format!("boolean {b}"),
        Val::Datetime(d) => format!("date-time {d}"),
        Val::Array(items) if items.is_empty() => "an empty array".to_string(),
        Val::Array(_) => "an array".to_string(),
        Val::Table(_) => "a table".to_string(),
    }
}

/// Names of `[window.<name>]`, `[probe.<name>]` and the like.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A portable group name: a letter or `_`, then letters, digits, `_`, `.` or `-`; at most 32 characters.
fn valid_group(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `<name>.service`, where the name has no `/` or white space.
fn valid_service(unit: &str) -> bool {
    unit.strip_suffix(".service")
        .is_some_and(|stem| !stem.is_empty() && !stem.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control()))
}

/// A user name as useradd takes it (letters, digits, `_`, `-`, `.`, not starting with `-`), or a numeric uid.
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The allowed key an unknown key was probably meant to be: a close spelling, or one it abbreviates.
fn suggestion<'a>(allowed: &[&'a str], key: &str) -> Option<&'a str> {
    let tolerance = (key.chars().count() / 4).max(1);
    allowed
        .iter()
        .map(|a| (edit_distance(a, key), *a))
        .filter(|(d, a)| *d <= tolerance || (key.len() >= 3 && a.starts_with(key)))
        .min()
        .map(|(_, a)| a)
}

/// Levenshtein distance, for "did you mean" hints on unknown keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb { diagonal } else { 1 + diagonal.min(above).min(row[j]) };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `HH:MM` or `HH:MM:SS` (a string), or a TOML local time (`02:00:00`).
fn parse_start(v: &Val) -> Option<jiff::civil::Time> {
    match v {
        Val::Str(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            if !(2..=3).contains(&parts.len())
                || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                return None;
            }
            let num = |i: usize| parts.get(i).map_or(Some(0), |p| p.parse::<i8>().ok());
            jiff::civil::Time::new(num(0)?, num(1)?, num(2)?, 0).ok()
        }
        Val::Datetime(d) if d.date.is_none() && d.offset.is_none() => {
            let t = d.time?;
            let second = i8::try_from(t.second.unwrap_or(0)).ok()?;
            let nanos = i32::try_from(t.nanosecond.unwrap_or(0)).ok()?;
            jiff::civil::Time::new(i8::try_from(t.hour).ok()?, i8::try_from(t.minute).ok()?, second.min(59), nanos).ok()
        }
        _ => None,
    }
}

/// `ip:port` or a bare `ip` (port 502); IPv6 with a port in brackets.
fn parse_modbus_tcp(s: &str) -> Option<SocketAddr> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let ip = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
            SocketAddr::new(ip.parse::<IpAddr>().ok()?, 502)
        }
    };
    (addr.port() != 0).then_some(addr)
}

/// Checks and normalises the patch server URL: `(url, host, port)`.
fn parse_https_url(s: &str) -> Result<(String, String, u16), String> {
    let bad = |why: &str| {
        format!("expected an https:// URL like \"https://patch.example.net/otpatch/\", found {s:?} ({why})")
    };
    let rest = match s.get(..8) {
        Some(scheme) if scheme.eq_ignore_ascii_case("https://") => &s[8..],
        _ => return Err(bad("only https:// is allowed")),
    };
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("white space is not allowed"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("a query or fragment is not allowed"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(bad("user information is not allowed"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| bad("unclosed '['"))?;
        let ip: Ipv6Addr = v6[..end].parse().map_err(|_| bad("invalid IPv6 address"))?;
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("unexpected text after the host")),
        };
        (ip.to_string(), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    if !host.contains(':') && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        return Err(bad("invalid host name"));
    }
    let port = match port {
        None => 443,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(bad("invalid port")),
        },
    };
    let mut path = path.to_string();
    if !path.ends_with('/') {
        path.push('/');
    }
    let shown_host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let url =
        if port == 443 { format!("https://{shown_host}{path}") } else { format!("https://{shown_host}:{port}{path}") };
    Ok((url, host, port))
}
