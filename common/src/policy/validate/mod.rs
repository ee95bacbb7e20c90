//! Validation of the merged policy tree into [`Settings`], by hand, so that every error can name the file, line and
//! key it is about and as many errors as possible are found in one pass.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tree::{join, At, Node, Source, Tree, Val};
use super::*;
use crate::schedule::{weekdays, RecurringWindow};
use crate::units::{format_duration, parse_duration, parse_size};

mod checks;
mod probes;
mod sections;

use checks::*;

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

    /// Where a path the policy names is looked up: under `file_root` (empty: "/").
    fn under_root(&self, path: &Path) -> PathBuf {
        let root = if self.opts.file_root.as_os_str().is_empty() { Path::new("/") } else { &self.opts.file_root };
        root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// With `check_files`, that a file the policy names can be opened (under `file_root`).
    fn check_file(&mut self, at: At, key: String, path: &Path) {
        if !self.opts.check_files {
            return;
        }
        let full = self.under_root(path);
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
        let files: Vec<PathBuf> = anchors.iter().map(|p| self.under_root(p)).collect();
        let (crl, issuer) = (self.under_root(crl), crl_issuer.map(|p| self.under_root(p)));
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
}
