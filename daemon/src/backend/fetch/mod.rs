//! The patch channel: the [`Fetcher`](crate::backend::Fetcher) that learns what to install from the patch
//! server's signed index and downloads it over mutual TLS.
//!
//! Downloads go to `<state>/downloads/<file>.part` (the whole file name, extension included), resume with an HTTP
//! `Range` after a cut, are bounded by the policy's size limit, and are renamed into `<state>/bundles/` only when
//! complete with the size and SHA-256 the signed index states. Every network wait has a timeout; retries are
//! bounded, with backoff. At the end of each window the orchestrator prunes `downloads/` and `bundles/` to the
//! committed bundles ([`crate::prune`]).
//!
//! ## The index
//!
//! `GET <server url>index.json` and its detached CMS signature `index.json.sig` (DER, made with
//! `openssl cms -sign -binary -outform DER -in index.json -signer ... -inkey ... [-certfile chain]`, verified
//! against the site's trust anchors like a bundle). `index.json`:
//!
//! ```json
//! { "format": 1, "issued": "2026-11-20T00:00:00Z", "expires": "2026-12-20T00:00:00Z",
//!   "bundles": [ { "compatible": "acme-gw-x86", "version": "1.0.2", "kind": "livepatch",
//!                  "file": "acme-lp-1.0.2.otb", "size": 123456, "sha256": "<64 hex>" } ] }
//! ```
//!
//! An index past `expires` is refused (a frozen mirror cannot keep a gateway on old software forever), and so is
//! one `issued` before the newest index this gateway already accepted (a replayed index cannot roll it back).

mod channel;
pub mod http;
pub mod tls;

pub use channel::{part_path, Channel, ChannelLimits};

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use otpatch_common::bundle::compare_versions;
use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, BackendResult, Clock, FetchOutcome, Fetcher, ProgressFn};
use crate::engine::{BundleRef, WindowCtx};
use crate::fsutil::write_atomic;

/// Checks the index's detached signature; returns the signer's name.
pub trait IndexVerifier: Send + Sync {
    fn verify(&self, content: &[u8], signature: &[u8], now: Timestamp) -> Result<String, String>;

    /// The time the index's `expires` is checked against, from the system clock's `clock_now`: it must be the time
    /// the signature is checked at, clock floor included, or a gateway that boots at 1970 would take an expired
    /// index for a fresh one. The default is the clock itself.
    fn check_time(&self, clock_now: Timestamp) -> Timestamp {
        clock_now
    }
}

/// The signed index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub issued: Timestamp,
    pub expires: Timestamp,
    pub bundles: Vec<IndexEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    pub compatible: String,
    pub version: String,
    pub kind: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// What the gateway remembers about indexes it accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct IndexState {
    newest_issued: Option<Timestamp>,
}

impl Index {
    /// Parses and checks an index that was verified: format, freshness, replay, and that file names are plain.
    pub fn check(bytes: &[u8], now: Timestamp, newest_seen: Option<Timestamp>) -> BackendResult<Index> {
        let idx: Index = serde_json::from_slice(bytes)
            .map_err(|e| BackendError::new(format!("index.json is not a valid index: {e}")))?;
        if idx.format != 1 {
            return Err(BackendError::new(format!("index.json format {} is not supported (1 is)", idx.format)));
        }
        if now >= idx.expires {
            return Err(BackendError::new(format!(
                "index.json expired at {} (now {now}): the patch server's index is stale or replayed",
                idx.expires
            )));
        }
        if let Some(seen) = newest_seen {
            if idx.issued < seen {
                return Err(BackendError::new(format!(
                    "index.json was issued at {}, before the index already accepted ({seen}): replayed index refused",
                    idx.issued
                )));
            }
        }
        for b in &idx.bundles {
            let plain = !b.file.is_empty()
                && b.file.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && !b.file.starts_with('.');
            if !plain {
                return Err(BackendError::new(format!("index.json names an unsafe file {:?}", b.file)));
            }
            if b.sha256.len() != 64 || !b.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(BackendError::new(format!("index.json: {} has a malformed sha256", b.file)));
            }
        }
        Ok(idx)
    }

    /// The newest bundle for `compatible` that is newer than what is installed of its kind (versions compared as
    /// the verifier's anti-rollback compares them).
    pub fn pick(&self, compatible: &str, installed: &Installed) -> Option<&IndexEntry> {
        self.bundles
            .iter()
            .filter(|b| b.compatible == compatible)
            .filter(|b| is_newer(b, installed))
            .max_by(|a, b| compare_versions(&a.version, &b.version))
    }

    /// As [`Index::pick`], leaving out versions rolled back on this gateway: the newest newer bundle that was not
    /// rolled back (a version newer than a rolled-back one is taken as usual), else the newest rolled-back one
    /// that was left out, so the window can say why it installs nothing.
    pub fn pick_avoiding<'a>(
        &'a self,
        compatible: &str,
        installed: &'a Installed,
        avoid: &'a crate::rolled_back::RolledBack,
    ) -> Pick<'a> {
        let newer =
            || self.bundles.iter().filter(move |b| b.compatible == compatible).filter(move |b| is_newer(b, installed));
        if let Some(e) = newer()
            .filter(|b| avoid.find(compatible, &b.version).is_none())
            .max_by(|a, b| compare_versions(&a.version, &b.version))
        {
            return Pick::Entry(e);
        }
        newer()
            .filter_map(|b| avoid.find(compatible, &b.version))
            .max_by(|a, b| compare_versions(&a.version, &b.version))
            .map_or(Pick::Nothing, Pick::RolledBack)
    }
}

/// What this gateway committed for its compatible, by the signed manifest's kind (`livepatch`, `app`, `rauc`):
/// version. A livepatch and an A/B image are separate series (see `crate::committed`).
pub type Installed = std::collections::BTreeMap<String, String>;

/// Whether `entry` is newer than what is installed of its kind. The index's `kind` is the server's word, not
/// signed into the bundle: it only chooses what to fetch; the verifier compares the bundle's signed kind and
/// version again. `ab` and `rauc` both name an A/B image.
fn is_newer(entry: &IndexEntry, installed: &Installed) -> bool {
    let kind = match entry.kind.as_str() {
        "ab" => "rauc",
        k => k,
    };
    installed.get(kind).is_none_or(|v| compare_versions(&entry.version, v).is_gt())
}

/// What [`Index::pick_avoiding`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick<'a> {
    Entry(&'a IndexEntry),
    /// Nothing to install: the newer bundles were all rolled back here; this is the newest of them.
    RolledBack(&'a otpatch_common::api::RolledBackVersion),
    Nothing,
}

/// The Fetcher over the patch channel.
pub struct HttpsFetcher {
    pub channel: Channel,
    pub compatible: String,
    pub max_download: u64,
    /// `<state>`: `downloads/`, `bundles/`, `index-state.json` go here.
    pub state_dir: PathBuf,
    pub verifier: Arc<dyn IndexVerifier>,
    /// What this gateway committed, by kind (anti-rollback: only newer ones are fetched).
    pub installed: Arc<dyn Fn() -> Installed + Send + Sync>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for HttpsFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsFetcher").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl HttpsFetcher {
    fn state_path(&self) -> PathBuf {
        self.state_dir.join("index-state.json")
    }

    /// What the replay check remembers. Missing: nothing accepted yet. Unreadable: an error, never "nothing
    /// seen" (that would let a replayed older index in), as with `committed.json`.
    fn load_state(&self) -> BackendResult<IndexState> {
        Ok(crate::fsutil::load_json(&self.state_path(), "which index was seen last")
            .map_err(BackendError::new)?
            .unwrap_or_default())
    }
}

#[async_trait]
impl Fetcher for HttpsFetcher {
    async fn fetch(
        &self,
        window: &WindowCtx,
        avoid: &crate::rolled_back::RolledBack,
        progress: ProgressFn,
    ) -> BackendResult<FetchOutcome> {
        let ch = self.channel_for(window)?;
        let idx = self.index(&ch, window, &progress).await?;
        let installed = (self.installed)();
        match idx.pick_avoiding(&self.compatible, &installed, avoid) {
            Pick::Entry(entry) => Ok(FetchOutcome::Bundle(self.get(&ch, entry, &progress).await?)),
            Pick::RolledBack(r) => Ok(FetchOutcome::RolledBack(r.clone())),
            Pick::Nothing => Ok(FetchOutcome::NothingNewer),
        }
    }

    async fn fetch_named(&self, window: &WindowCtx, file: &str, progress: ProgressFn) -> BackendResult<BundleRef> {
        let ch = self.channel_for(window)?;
        let idx = self.index(&ch, window, &progress).await?;
        // Only what the signed index lists (with its size and digest), and only for this gateway.
        let Some(entry) = idx.bundles.iter().find(|e| e.file == file && e.compatible == self.compatible) else {
            return Err(BackendError::new(format!(
                "{file} is not in the patch server's signed index for {}",
                self.compatible
            )));
        };
        self.get(&ch, entry, &progress).await
    }
}

impl HttpsFetcher {
    /// The channel for `window`: to exactly the addresses resolved for it before segmentation, when they were
    /// (the rules allow only those, and no DNS is needed); otherwise as configured.
    fn channel_for(&self, window: &WindowCtx) -> BackendResult<Channel> {
        Ok(match crate::firewall::ServerAddresses::load(&self.state_dir, &window.id)? {
            Some(r) => self.channel.clone().connect_via_any(r.addrs),
            None => self.channel.clone(),
        })
    }

    /// Reads, verifies and checks the signed index (signature, freshness, no replay), and remembers it.
    async fn index(&self, channel: &Channel, window: &WindowCtx, progress: &ProgressFn) -> BackendResult<Index> {
        progress(-1, "reading the patch server's index".into());
        let content = channel.get_small("index.json", 1 << 20).await?;
        let sig = channel.get_small("index.json.sig", 256 << 10).await?;
        let now = self.verifier.check_time(self.clock.now());
        // Untrusted bytes from whoever answers on the patch channel: parsed off the runtime, and a panic of the
        // parser is a refusal, never the daemon's end.
        let verifier = self.verifier.clone();
        let (c, s) = (content.clone(), sig);
        let signer = tokio::task::spawn_blocking(move || verifier.verify(&c, &s, now))
            .await
            .map_err(|e| format!("the verifier failed on this input ({})", crate::fsutil::join_error_text(e)))
            .and_then(|r| r)
            .map_err(|e| BackendError::new(format!("index.json signature refused: {e}")))?;
        let mut state = self.load_state()?;
        let idx = Index::check(&content, now, state.newest_issued)?;
        state.newest_issued = Some(state.newest_issued.map_or(idx.issued, |s| s.max(idx.issued)));
        let text = serde_json::to_vec(&state).map_err(|e| BackendError::new(e.to_string()))?;
        write_atomic(&self.state_path(), &text).map_err(|e| BackendError::new(format!("saving index state: {e}")))?;
        tracing::info!(window = %window.id, signer = %signer, bundles = idx.bundles.len(), "index accepted");
        Ok(idx)
    }

    /// Downloads one index entry (resumable, size and digest checked) into `<state>/bundles/`.
    async fn get(&self, channel: &Channel, entry: &IndexEntry, progress: &ProgressFn) -> BackendResult<BundleRef> {
        let dest = self.state_dir.join("bundles").join(&entry.file);
        let part_dir = self.state_dir.join("downloads");
        let staging = part_dir.join(&entry.file);
        channel.download(&entry.file, &staging, entry.size, &entry.sha256, self.max_download, progress).await?;
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| BackendError::new(format!("{}: {e}", dir.display())))?;
        }
        tokio::fs::rename(&staging, &dest).await.map_err(|e| BackendError::new(format!("{}: {e}", dest.display())))?;
        Ok(BundleRef { path: dest, size: entry.size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn index(issued: &str, expires: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "format": 1, "issued": issued, "expires": expires,
            "bundles": [
                {"compatible": "gw", "version": "1.9", "kind": "livepatch", "file": "a-1.9.otb", "size": 1, "sha256": "00".repeat(32)},
                {"compatible": "gw", "version": "1.10", "kind": "livepatch", "file": "a-1.10.otb", "size": 1, "sha256": "00".repeat(32)},
                {"compatible": "other", "version": "9.0", "kind": "livepatch", "file": "b.otb", "size": 1, "sha256": "00".repeat(32)}
            ]
        }))
        .unwrap()
    }

    /// What is installed: livepatch `v`, if any.
    fn lp(v: Option<&str>) -> Installed {
        v.map(|v| Installed::from([("livepatch".to_string(), v.to_string())])).unwrap_or_default()
    }

    #[test]
    fn each_kind_is_compared_with_its_own_series() {
        let now = t("2026-12-01T00:00:00Z");
        let mut idx = Index::check(&index("2026-11-30T00:00:00Z", "2026-12-30T00:00:00Z"), now, None).unwrap();
        idx.bundles.push(IndexEntry {
            version: "3.0.0".into(),
            kind: "ab".into(),
            file: "os-3.raucb".into(),
            ..idx.bundles[0].clone()
        });
        // Image 3.0.0 committed, livepatch 1.9: livepatch 1.10 is newer than its own series, not older than 3.0.0.
        let mut installed = lp(Some("1.9"));
        installed.insert("rauc".into(), "3.0.0".into());
        assert_eq!(idx.pick("gw", &installed).map(|e| e.version.as_str()), Some("1.10"));
        installed.insert("livepatch".into(), "1.10".into());
        assert_eq!(idx.pick("gw", &installed), None, "nothing is newer of either kind");
        // Nothing committed as an image yet: the image 3.0.0 is the newest newer bundle.
        installed.remove("rauc");
        assert_eq!(idx.pick("gw", &installed).map(|e| e.file.as_str()), Some("os-3.raucb"));
    }

    #[test]
    fn index_freshness_and_replay() {
        let now = t("2026-12-01T00:00:00Z");
        let idx = Index::check(&index("2026-11-30T00:00:00Z", "2026-12-30T00:00:00Z"), now, None).unwrap();
        assert_eq!(idx.pick("gw", &lp(None)).unwrap().version, "1.10");
        assert_eq!(idx.pick("gw", &lp(Some("1.9"))).unwrap().version, "1.10");
        assert!(idx.pick("gw", &lp(Some("1.10"))).is_none());
        let e = Index::check(&index("2026-11-01T00:00:00Z", "2026-11-15T00:00:00Z"), now, None).unwrap_err();
        assert!(e.0.contains("expired"), "{e}");
        let e =
            Index::check(&index("2026-11-30T00:00:00Z", "2026-12-30T00:00:00Z"), now, Some(t("2026-11-30T12:00:00Z")))
                .unwrap_err();
        assert!(e.0.contains("replayed"), "{e}");
    }

    #[test]
    fn a_rolled_back_version_is_left_out_but_a_newer_one_is_taken() {
        let now = t("2026-12-01T00:00:00Z");
        let idx = Index::check(&index("2026-11-30T00:00:00Z", "2026-12-30T00:00:00Z"), now, None).unwrap();
        let rec = |v: &str| otpatch_common::api::RolledBackVersion {
            compatible: "gw".into(),
            version: v.into(),
            digest: "d".into(),
            rolled_back_at: now,
            why: "health failed".into(),
        };
        let none = crate::rolled_back::RolledBack::default();
        assert!(matches!(idx.pick_avoiding("gw", &lp(Some("1.9")), &none), Pick::Entry(e) if e.version == "1.10"));
        // 1.10 rolled back: nothing else is newer than 1.9, so the window says why it installs nothing.
        let ten = crate::rolled_back::RolledBack { versions: vec![rec("1.10")] };
        assert!(matches!(idx.pick_avoiding("gw", &lp(Some("1.9")), &ten), Pick::RolledBack(r) if r.version == "1.10"));
        // From 1.8 on, 1.9 (not rolled back) is taken instead.
        assert!(matches!(idx.pick_avoiding("gw", &lp(Some("1.8")), &ten), Pick::Entry(e) if e.version == "1.9"));
        // A version newer than the rolled-back one is taken as usual.
        let nine = crate::rolled_back::RolledBack { versions: vec![rec("1.9")] };
        assert!(matches!(idx.pick_avoiding("gw", &lp(Some("1.8")), &nine), Pick::Entry(e) if e.version == "1.10"));
        assert_eq!(idx.pick_avoiding("gw", &lp(Some("1.10")), &ten), Pick::Nothing);
    }

    #[test]
    fn unsafe_file_names_are_refused() {
        let bad = serde_json::to_vec(&serde_json::json!({
            "format": 1, "issued": "2026-11-30T00:00:00Z", "expires": "2026-12-30T00:00:00Z",
            "bundles": [{"compatible": "gw", "version": "1", "kind": "livepatch", "file": "../../etc/passwd", "size": 1, "sha256": "00".repeat(32)}]
        }))
        .unwrap();
        let e = Index::check(&bad, t("2026-12-01T00:00:00Z"), None).unwrap_err();
        assert!(e.0.contains("unsafe file"), "{e}");
    }
}
