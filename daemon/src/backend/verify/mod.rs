//! The [`Verifier`] over [`otpatch_common::bundle`]: the site's trust anchors from the policy, anti-rollback
//! against what this gateway committed, the running kernel for livepatches, and the clock rule for gateways
//! without a real-time clock (policy `trust.time_source = "system-with-floor"`: never earlier than the newest
//! signing time already verified). Also verifies the patch server's index signature, and extracts a verified
//! bundle's payloads (hashing them again while copying) for the backends that apply them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use otpatch_common::bundle::{self, BundleFormat, Expectations, TrustStore};
use otpatch_common::policy::{Settings, TimeSource};
use sha2::{Digest, Sha256};

use crate::backend::{BackendError, BackendResult, Clock, Verifier};
use crate::committed::Committed;
use crate::engine::{BundleRef, PatchKind, VerifiedBundle};
use crate::fetch::IndexVerifier;
use crate::fsutil::write_atomic;
use crate::sysroot::Sysroot;

/// Verifies bundles and the index against the policy's trust settings.
#[derive(Clone)]
pub struct BundleVerifier {
    trust: Result<Arc<TrustStore>, String>,
    compatible: String,
    allow_downgrade: bool,
    time_source: TimeSource,
    root: Sysroot,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for BundleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleVerifier").field("compatible", &self.compatible).finish_non_exhaustive()
    }
}

impl BundleVerifier {
    /// Loads the trust anchors (and CRL) the policy names, under the sysroot. A load failure is kept and
    /// reported on every verification, so the daemon still starts, serves status and lifts segmentation.
    pub fn new(settings: &Settings, root: &Sysroot, clock: Arc<dyn Clock>) -> Self {
        let anchors: Vec<PathBuf> = settings.trust.anchors.iter().map(|p| root.path(p)).collect();
        let crl = settings.trust.crl.as_ref().map(|p| root.path(p));
        let issuer = settings.trust.crl_issuer.as_ref().map(|p| root.path(p));
        let trust =
            TrustStore::from_trust_files(&anchors, &settings.trust.allowed_signers, crl.as_deref(), issuer.as_deref())
                .map(Arc::new)
                .map_err(|e| format!("the policy's trust anchors cannot be used: {e}"));
        BundleVerifier {
            trust,
            compatible: settings.gateway.compatible.clone(),
            allow_downgrade: settings.trust.allow_downgrade,
            time_source: settings.trust.time_source,
            root: root.clone(),
            clock,
        }
    }

    fn committed_path(&self) -> PathBuf {
        self.root.committed_file()
    }

    fn trust(&self) -> BackendResult<&TrustStore> {
        self.trust.as_deref().map_err(|e| BackendError::new(e.clone()))
    }

    /// The time signatures are checked against.
    pub fn now(&self, committed: &Committed) -> Timestamp {
        self.at_least_floor(self.clock.now(), committed)
    }

    /// `now`, raised to the clock floor when the policy's time source has one.
    fn at_least_floor(&self, now: Timestamp, committed: &Committed) -> Timestamp {
        match (self.time_source, committed.time_floor) {
            (TimeSource::SystemWithFloor, Some(floor)) if floor > now => floor,
            _ => now,
        }
    }

    fn kernel_release(&self) -> Option<String> {
        std::fs::read_to_string(self.root.path("/proc/sys/kernel/osrelease")).ok().map(|s| s.trim().to_string())
    }

    /// Full verification of a bundle file; `again` re-verifies one already accepted (same version allowed).
    pub fn verify_path(&self, path: &Path, again: bool) -> BackendResult<bundle::Verified> {
        self.verify_path_at(path, again, None)
    }

    /// [`Self::verify_path`] as of `at` (a bundle committed then: its integrity is checked, its signature as it
    /// chained then, so a manifest expiry or a signer's notAfter since then does not refuse it), or now.
    pub fn verify_path_at(&self, path: &Path, again: bool, at: Option<Timestamp>) -> BackendResult<bundle::Verified> {
        let committed = Committed::load(&self.committed_path()).map_err(BackendError::new)?;
        let exp = Expectations {
            compatible: self.compatible.clone(),
            last_committed: committed.versions_for(&self.compatible),
            allow_downgrade: self.allow_downgrade || again,
            now: at.unwrap_or_else(|| self.now(&committed)),
            kernel_release: self.kernel_release(),
        };
        bundle::verify(path, self.trust()?, &exp).map_err(|e| match e {
            bundle::BundleError::KernelMismatch { .. } => {
                BackendError::kernel_mismatch(format!("{}: {e}", path.display()))
            }
            e => BackendError::new(format!("{}: {e}", path.display())),
        })
    }

    /// Raises the clock floor to a verified signing time (never lowers it).
    fn raise_floor(&self, signed: Option<Timestamp>) {
        let Some(t) = signed else { return };
        let path = self.committed_path();
        let Ok(mut c) = Committed::load(&path) else { return };
        if c.time_floor.is_none_or(|f| t > f) {
            c.time_floor = Some(t);
            if let Ok(text) = serde_json::to_vec_pretty(&c) {
                if let Err(e) = write_atomic(&path, &text) {
                    tracing::warn!(error = %e, "could not record the clock floor");
                }
            }
        }
    }

    /// Copies payload `name` (or the first whose name ends with `suffix`) of a verified otpatch bundle to
    /// `dest_dir`, hashing it on the way; the copy is used only if it matches the signed manifest.
    pub fn extract_payload(
        &self,
        v: &bundle::Verified,
        path: &Path,
        suffix: &str,
        dest_dir: &Path,
    ) -> BackendResult<PathBuf> {
        if v.format != BundleFormat::Otpatch {
            return Err(BackendError::new(format!(
                "{}: only otpatch bundles carry payloads to extract",
                path.display()
            )));
        }
        let (i, p) = v
            .payloads
            .iter()
            .enumerate()
            .find(|(_, p)| p.name.ends_with(suffix))
            .ok_or_else(|| BackendError::new(format!("{}: no payload named *{suffix}", path.display())))?;
        let offset = v.payload_offsets[i];
        std::fs::create_dir_all(dest_dir).map_err(|e| BackendError::new(format!("{}: {e}", dest_dir.display())))?;
        let dest = dest_dir.join(format!("{}-{}", &v.digest[..16.min(v.digest.len())], sanitize(&p.name)));
        if dest.exists() && crate::fsutil::sha256_file(&dest).ok().as_deref() == Some(p.sha256.as_str()) {
            return Ok(dest);
        }
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::File::open(path).map_err(|e| BackendError::new(format!("{}: {e}", path.display())))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| BackendError::new(format!("{}: {e}", path.display())))?;
        let tmp = dest.with_extension("partial");
        let mut out = std::fs::File::create(&tmp).map_err(|e| BackendError::new(format!("{}: {e}", tmp.display())))?;
        let mut h = Sha256::new();
        let mut left = p.size;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want]).map_err(|e| BackendError::new(format!("{}: {e}", path.display())))?;
            if n == 0 {
                return Err(BackendError::new(format!("{}: truncated while extracting {}", path.display(), p.name)));
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| BackendError::new(format!("{}: {e}", tmp.display())))?;
            left -= n as u64;
        }
        out.sync_all().map_err(|e| BackendError::new(format!("{}: {e}", tmp.display())))?;
        let got = hex::encode(h.finalize());
        if got != p.sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(BackendError::new(format!(
                "{}: payload {} changed since it was verified (sha256 {got}, signed {})",
                path.display(),
                p.name,
                p.sha256
            )));
        }
        std::fs::rename(&tmp, &dest).map_err(|e| BackendError::new(format!("{}: {e}", dest.display())))?;
        Ok(dest)
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

/// The engine's view of a verified bundle.
pub fn to_engine(v: &bundle::Verified, path: &Path) -> VerifiedBundle {
    let kind = match (v.format, v.kind.as_str()) {
        (BundleFormat::RaucPlain | BundleFormat::RaucVerity, _) => PatchKind::Ab,
        (_, "livepatch") => PatchKind::Livepatch,
        _ => PatchKind::App,
    };
    VerifiedBundle {
        path: path.to_path_buf(),
        kind,
        compatible: v.compatible.clone(),
        version: v.version.clone(),
        digest: v.digest.clone(),
        signer: v.signer.clone(),
        verified_at: None,
    }
}

#[async_trait]
impl Verifier for BundleVerifier {
    async fn verify(&self, b: &BundleRef) -> BackendResult<VerifiedBundle> {
        let me = self.clone();
        let path = b.path.clone();
        // Hashing, parsing and extracting a large untrusted bundle is blocking work: all of it off the runtime,
        // so D-Bus keeps answering; a panic of a parser there is a refusal, never the daemon's end.
        tokio::task::spawn_blocking(move || {
            let v = me.verify_path(&path, false)?;
            me.raise_floor(v.signing_time);
            let out = to_engine(&v, &path);
            if out.kind == PatchKind::App {
                // Refused here, before a checkpoint or an apply: nothing would install it (the livepatch path must
                // not).
                return Err(BackendError::new(format!(
                    "{}: app bundles are not supported yet: no backend applies them",
                    path.display()
                )));
            }
            if out.kind == PatchKind::Livepatch {
                // The module must fit the running kernel (vermagic, build-id): refused here, before any apply.
                let ko = me.extract_payload(&v, &path, ".ko", &me.root.state_dir().join("livepatch"))?;
                crate::livepatch::check_module(&me.root, &ko, v.manifest.build_id.as_deref())?;
            }
            Ok(out)
        })
        .await
        .map_err(|e| {
            BackendError::new(format!(
                "{}: the verifier failed on this bundle ({})",
                b.path.display(),
                crate::fsutil::join_error_text(e)
            ))
        })?
    }
}

impl IndexVerifier for BundleVerifier {
    fn verify(&self, content: &[u8], signature: &[u8], _now: Timestamp) -> Result<String, String> {
        let trust = self.trust.as_deref().map_err(|e| e.clone())?;
        let committed = Committed::load(&self.committed_path())?;
        bundle::verify_detached(content, signature, trust, self.now(&committed)).map_err(|e| e.to_string())
    }

    fn check_time(&self, clock_now: Timestamp) -> Timestamp {
        // Unreadable state: the clock as it is (the signature check then refuses, reading the same file).
        match Committed::load(&self.committed_path()) {
            Ok(c) => self.at_least_floor(clock_now, &c),
            Err(_) => clock_now,
        }
    }
}

#[cfg(test)]
mod tests;
