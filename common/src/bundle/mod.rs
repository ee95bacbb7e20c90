//! Signed update bundles: nothing reaches the kernel, a process or a slot unless its signature chains to the site's
//! trust anchors.
//!
//! Two families are verified here, before anything else sees them:
//!
//! - **otpatch bundles** (kernel livepatch modules, application payloads): `payloads | manifest | CMS | trailer`,
//!   one detached CMS SignedData over a TOML manifest that pins every payload by size and SHA-256. The layout and
//!   the trust rules are in `FORMAT.md` beside this file, with the shell recipe a vendor signs with (HSM-friendly:
//!   plain `openssl cms -sign`).
//! - **RAUC bundles** (A/B images): plain (detached CMS over the squashfs) and verity (manifest inside the CMS,
//!   squashfs authenticated by a dm-verity hash tree), read without mounting anything.
//!
//! Both share [`verify`]: CMS with exactly one signer and signed attributes, the chain to the [`TrustStore`], a
//! codeSigning signer, optional allowed signer names and CRL, then the anti-rollback and expiry rules of
//! [`Expectations`]. [`create`] writes otpatch bundles with native signing; [`inspect`] reports on any bundle.

// The parsers below read untrusted bytes: no silent truncation or sign change in a length or an offset.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

mod cms;
mod create;
mod der;
mod manifest;
mod otpatch;
mod rauc;
#[doc(hidden)]
pub mod shapes;
mod squashfs;
mod trust;
mod x509;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::Serialize;

pub use cms::DigestAlg;
pub use create::{create, CreateRequest, DEFAULT_VALIDITY_DAYS};
pub use manifest::{Manifest, PayloadInfo, MAX_MANIFEST_LEN, MAX_PAYLOADS};
pub use otpatch::{Trailer, MAGIC, TRAILER_LEN};
pub use trust::TrustStore;
pub use x509::CertSummary;

/// Largest CMS blob accepted (a chain of a few certificates is a few KiB; RAUC's own default limit is 64 KiB).
pub const MAX_CMS_LEN: u64 = 1024 * 1024;

/// The formats [`verify`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BundleFormat {
    Otpatch,
    RaucPlain,
    RaucVerity,
}

/// What the caller expects of a bundle. `now` is the caller's idea of the time: the daemon passes
/// max(system clock, signing time of the last verified bundle), so a gateway without RTC that boots in 1970
/// cannot be talked into accepting an expired signer or manifest (see FORMAT.md, "Time").
#[derive(Debug, Clone)]
pub struct Expectations {
    pub compatible: String,
    /// The versions last committed for this compatible, by the manifest's `kind` (`livepatch`, `app`, `rauc`): a
    /// bundle is compared only with the last one of its own kind. A livepatch and an image are separate series, so
    /// an image 3.0.0 does not make livepatch 1.2.0 a downgrade.
    pub last_committed: BTreeMap<String, String>,
    /// Allows an older version, or the same version again.
    pub allow_downgrade: bool,
    pub now: Timestamp,
    /// The running kernel (`uname -r`); a livepatch for another kernel is refused when this is given.
    pub kernel_release: Option<String>,
}

/// A bundle that passed every check.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub format: BundleFormat,
    pub kind: String,
    pub compatible: String,
    pub version: String,
    /// SHA-256 (hex) of the signed manifest bytes.
    pub digest: String,
    /// Subject of the signer certificate.
    pub signer: String,
    pub signing_time: Option<Timestamp>,
    pub payloads: Vec<PayloadInfo>,
    pub manifest: Manifest,
    /// Where each payload starts in the bundle file (otpatch bundles; empty for RAUC).
    pub payload_offsets: Vec<u64>,
    /// The verified path: signer, intermediates, anchor.
    pub chain: Vec<CertSummary>,
}

/// What `otpatchctl bundle inspect` prints.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub path: PathBuf,
    pub format: BundleFormat,
    pub size: u64,
    pub manifest: Manifest,
    /// SHA-256 (hex) of the manifest bytes.
    pub manifest_digest: String,
    pub digest_algorithm: String,
    pub signer: Option<String>,
    pub signing_time: Option<Timestamp>,
    /// Certificates as carried in the CMS (signer first), or the verified path to the anchor when a trust store was
    /// given and verification got that far.
    pub chain: Vec<CertSummary>,
    pub verdict: Verdict,
}

/// Whether the bundle would be accepted.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Verdict {
    /// No trust store given: nothing was checked but the structure.
    Unchecked,
    Valid,
    Invalid {
        error: String,
    },
}

/// Every way a bundle can be refused, each carrying what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a bundle: {reason}")]
    NotABundle { path: PathBuf, reason: String },
    #[error("bundle trailer: {reason}")]
    BadTrailer { reason: String },
    #[error("{what} declares {declared} bytes, more than the limit of {limit}")]
    SizeTooLarge { what: &'static str, declared: u64, limit: u64 },
    #[error("truncated: {what} needs {needed} bytes but the file has {available}")]
    Truncated { what: &'static str, needed: u64, available: u64 },
    #[error("{part} at offset {offset}: {reason}")]
    Der { part: &'static str, offset: usize, reason: String },
    #[error("signature block is not CMS: {reason}")]
    NotCms { reason: String },
    #[error("CMS content type is {content_type}, not SignedData (1.2.840.113549.1.7.2)")]
    NotSignedData { content_type: String },
    #[error("signed content type is {content_type}, not id-data (1.2.840.113549.1.7.1)")]
    WrongContentType { content_type: String },
    #[error("the CMS must carry exactly one signer, it has {count}")]
    SignerCount { count: usize },
    #[error("the signer has no signed attributes (signed with -noattr?); they are required")]
    NoSignedAttributes,
    #[error("signed attribute {name} is missing")]
    MissingSignedAttribute { name: &'static str },
    #[error("signed contentType attribute {attribute} differs from the encapsulated content type {encapsulated}")]
    ContentTypeMismatch { attribute: String, encapsulated: String },
    #[error("messageDigest mismatch ({algorithm}): signed {signed}, content has {actual}")]
    MessageDigestMismatch { algorithm: &'static str, signed: String, actual: String },
    #[error("{algorithm} is too weak and refused")]
    WeakAlgorithm { algorithm: String },
    #[error("unsupported algorithm {oid}")]
    UnsupportedAlgorithm { oid: String },
    #[error("the signer's certificate is not in the CMS")]
    SignerCertificateMissing,
    #[error("signature by {signer} does not verify")]
    BadSignature { signer: String },
    #[error("signer {signer}: key does not fit the signature algorithm: {reason}")]
    UnsupportedSignerKey { signer: String, reason: String },
    #[error("a certificate in the chain of {signer} expired at {not_after} (now {now})")]
    CertificateExpired { signer: String, not_after: Timestamp, now: Timestamp },
    #[error("a certificate in the chain of {signer} is not valid before {not_before} (now {now})")]
    CertificateNotYetValid { signer: String, not_before: Timestamp, now: Timestamp },
    #[error("signer {signer} does not chain to a trust anchor of this site")]
    UnknownIssuer { signer: String },
    #[error("signer {signer} is a CA certificate; bundles must be signed by a signing certificate issued by the CA")]
    CaAsSigner { signer: String },
    #[error("signer {signer} (or its issuer) is revoked by the CRL")]
    Revoked { signer: String },
    #[error("chain of {signer} is invalid: {reason}")]
    Chain { signer: String, reason: String },
    #[error(
        "certificate {subject}: its keyUsage does not permit {usage} (RFC 5280 4.2.1.3), so it cannot act as {role}"
    )]
    KeyUsageForbids { subject: String, usage: &'static str, role: &'static str },
    #[error("signer {signer} lacks extendedKeyUsage codeSigning")]
    NotCodeSigning { signer: String },
    #[error("signer CN {common_name:?} is not one of the allowed signers {allowed:?}")]
    SignerNotAllowed { common_name: String, allowed: Vec<String> },
    #[error("signer {signer}: {reason}, so it cannot be compared with the allowed signers")]
    SignerNameMalformed { signer: String, reason: String },
    #[error("manifest: {reason}")]
    Manifest { reason: String },
    #[error("payloads declared in the manifest total {declared} bytes, the bundle holds {actual}")]
    PayloadAreaMismatch { declared: u64, actual: u64 },
    #[error("payload {name:?} (bytes {offset}..{end}) has SHA-256 {actual}, the manifest pins {expected}")]
    PayloadDigestMismatch { name: String, offset: u64, end: u64, expected: String, actual: String },
    #[error("payload {name:?}: size {actual} differs from the {expected} bytes the manifest pins")]
    PayloadSizeMismatch { name: String, expected: u64, actual: u64 },
    #[error("manifest expired at {expires} (now {now})")]
    ManifestExpired { expires: Timestamp, now: Timestamp },
    #[error("bundle is for {found:?}, this gateway is {expected:?}")]
    WrongCompatible { expected: String, found: String },
    #[error("version {offered} is older than the committed {committed} (downgrade refused)")]
    Downgrade { offered: String, committed: String },
    #[error("version {version} is already committed")]
    AlreadyCommitted { version: String },
    #[error("livepatch is for kernel(s) {supported:?}, the running kernel is {running}")]
    KernelMismatch { running: String, supported: Vec<String> },
    #[error("trust anchors {path}: {reason}")]
    TrustAnchor { path: PathBuf, reason: String },
    #[error("CRL {path}: {reason}")]
    Crl { path: PathBuf, reason: String },
    #[error(
        "CRL {path} (issued by {issuer}) expired at {next_update} (now {now}): the plant must renew it \
         (a new CRL from the issuing CA, e.g. openssl ca -gencrl) and install it; until then bundles are refused"
    )]
    CrlExpired { path: PathBuf, issuer: String, next_update: Timestamp, now: Timestamp },
    #[error(
        "CRL {path} is issued by {issuer}, which is neither a trust anchor nor a CA of the chain of {signer}; it \
         cannot revoke anything there, so it is refused rather than ignored: configure the CRL of the vendor's CA"
    )]
    CrlIssuerNotInChain { path: PathBuf, issuer: String, signer: String },
    #[error("signing key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("squashfs at offset {offset}: {reason}")]
    Squashfs { offset: u64, reason: String },
    #[error("RAUC manifest: {reason}")]
    RaucManifest { reason: String },
    #[error("RAUC verity: {reason}")]
    Verity { reason: String },
    #[error("bundle request: {reason}")]
    Request { reason: String },
}

/// Size of the read buffer when hashing: large enough for full hashing speed, small enough for constant memory.
pub(crate) const HASH_BUF: usize = 64 * 1024;

/// Compares two versions: split on `.`, each component compared as a number when both are all digits (any
/// length; leading zeros ignored), otherwise digit-prefix first and then the rest byte by byte; a missing
/// component counts as `0`, so `1.2` equals `1.2.0`. Examples: `1.10 > 1.9`, `2.0.1 > 2.0`, `1.2-rc1 < 1.2-rc2`.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (p, q) => {
                let ord = compare_component(p.unwrap_or("0"), q.unwrap_or("0"));
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

fn compare_component(a: &str, b: &str) -> Ordering {
    let split = |s: &str| {
        // No byte offsets into the text: the version comes from an untrusted manifest.
        let rest = s.trim_start_matches(|c: char| c.is_ascii_digit());
        let digits = s.strip_suffix(rest).unwrap_or_default().trim_start_matches('0');
        (digits.to_string(), rest.to_string())
    };
    let (an, ar) = split(a);
    let (bn, br) = split(b);
    an.len().cmp(&bn.len()).then_with(|| an.cmp(&bn)).then_with(|| ar.cmp(&br))
}

/// The rules that follow from the signed manifest and the caller's expectations, checked before any payload is
/// hashed so a refused bundle costs no I/O.
pub(crate) fn check_expectations(m: &Manifest, exp: &Expectations) -> Result<(), BundleError> {
    if m.compatible != exp.compatible {
        return Err(BundleError::WrongCompatible { expected: exp.compatible.clone(), found: m.compatible.clone() });
    }
    if let Some(expires) = m.expires {
        if expires <= exp.now {
            return Err(BundleError::ManifestExpired { expires, now: exp.now });
        }
    }
    if let (Some(running), "livepatch") = (&exp.kernel_release, m.kind.as_str()) {
        if !m.kernel_releases.iter().any(|r| r == running) {
            return Err(BundleError::KernelMismatch { running: running.clone(), supported: m.kernel_releases.clone() });
        }
    }
    if let (Some(last), false) = (exp.last_committed.get(&m.kind), exp.allow_downgrade) {
        match compare_versions(&m.version, last) {
            Ordering::Less => {
                return Err(BundleError::Downgrade { offered: m.version.clone(), committed: last.clone() })
            }
            Ordering::Equal => return Err(BundleError::AlreadyCommitted { version: m.version.clone() }),
            Ordering::Greater => {}
        }
    }
    Ok(())
}

/// Detects the format from the end of the file: the otpatch magic, or else a RAUC bundle (squashfs at the start,
/// a CMS size in the last 8 bytes).
/// Verifies a detached CMS signature (DER, as `openssl cms -sign -binary -outform DER` writes it) over `content`
/// — the patch server's signed index, for one — with the same rules as a bundle: one signer, signed attributes,
/// chain to the trust anchors, codeSigning, allowed algorithms, validity at `now`. Returns the signer's subject.
pub fn verify_detached(
    content: &[u8],
    cms_der: &[u8],
    trust: &TrustStore,
    now: Timestamp,
) -> Result<String, BundleError> {
    let sd = cms::parse(cms_der)?;
    if sd.econtent.is_some() {
        return Err(BundleError::NotCms {
            reason: "the CMS encapsulates its content; a detached signature was expected".into(),
        });
    }
    let signer = sd.single_signer()?;
    let digest = ring::digest::digest(signer.digest.ring(), content);
    let outcome = cms::verify_signer(&sd, &signer, digest.as_ref(), trust, now)?;
    Ok(outcome.signer.subject.clone())
}

pub fn detect(path: &Path) -> Result<BundleFormat, BundleError> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let len = f.metadata().map_err(|e| io(path, e))?.len();
    if len < 8 {
        return Err(BundleError::NotABundle { path: path.into(), reason: format!("only {len} bytes") });
    }
    let tail = read_at(&mut f, path, len - 8, 8)?;
    if tail == MAGIC {
        return Ok(BundleFormat::Otpatch);
    }
    let head = read_at(&mut f, path, 0, 4)?;
    if head == b"hsqs" {
        return rauc::detect(&mut f, path, len);
    }
    Err(BundleError::NotABundle {
        path: path.into(),
        reason: "neither the otpatch magic at the end nor a squashfs (RAUC) at the start".into(),
    })
}

/// Verifies a bundle of any supported format. Nothing in it should be used unless this returns `Ok`.
pub fn verify(path: &Path, trust: &TrustStore, exp: &Expectations) -> Result<Verified, BundleError> {
    match detect(path)? {
        BundleFormat::Otpatch => otpatch::verify(path, trust, exp),
        BundleFormat::RaucPlain | BundleFormat::RaucVerity => rauc::verify(path, trust, exp),
    }
}

/// Reads a bundle's manifest and certificates; with a trust store (and expectations, else permissive ones at the
/// current time) also gives the verdict of [`verify`]. Structural errors (not a bundle, truncated, not CMS) are
/// returned as errors; policy and signature failures become `Verdict::Invalid`.
pub fn inspect(
    path: &Path,
    trust: Option<&TrustStore>,
    exp: Option<&Expectations>,
) -> Result<InspectReport, BundleError> {
    let format = detect(path)?;
    let mut report = match format {
        BundleFormat::Otpatch => otpatch::inspect(path)?,
        _ => rauc::inspect(path)?,
    };
    if let Some(trust) = trust {
        let permissive;
        let exp = match exp {
            Some(e) => e,
            None => {
                permissive = Expectations {
                    compatible: report.manifest.compatible.clone(),
                    last_committed: Default::default(),
                    allow_downgrade: true,
                    now: Timestamp::now(),
                    kernel_release: None,
                };
                &permissive
            }
        };
        report.verdict = match verify(path, trust, exp) {
            Ok(v) => {
                report.signing_time = v.signing_time;
                report.chain = v.chain;
                Verdict::Valid
            }
            Err(e) => Verdict::Invalid { error: e.to_string() },
        };
    }
    Ok(report)
}

pub(crate) fn io(path: &Path, e: std::io::Error) -> BundleError {
    BundleError::Io { path: path.to_path_buf(), source: e }
}

/// Reads exactly `len` bytes at `offset`; `len` is always checked against the file size by the caller.
pub(crate) fn read_at(f: &mut std::fs::File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, BundleError> {
    use std::io::{Read, Seek, SeekFrom};
    let len = usize_of(len, "a part of the bundle")?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| io(path, e))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).map_err(|e| io(path, e))?;
    Ok(buf)
}

/// A length or offset read from untrusted bytes as a `usize`; one that does not fit this target (a 32-bit
/// gateway) is refused, never truncated.
pub(crate) fn usize_of(v: u64, what: &'static str) -> Result<usize, BundleError> {
    usize::try_from(v).map_err(|_| BundleError::SizeTooLarge {
        what,
        declared: v,
        limit: u64::try_from(usize::MAX).unwrap_or(u64::MAX),
    })
}

/// Hashes `len` bytes from `offset` with a fixed buffer; returns the digest.
pub(crate) fn hash_range(
    f: &mut std::fs::File,
    path: &Path,
    offset: u64,
    len: u64,
    alg: &'static ring::digest::Algorithm,
) -> Result<ring::digest::Digest, BundleError> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset)).map_err(|e| io(path, e))?;
    let mut ctx = ring::digest::Context::new(alg);
    let mut buf = vec![0u8; HASH_BUF];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(HASH_BUF as u64)).unwrap_or(HASH_BUF);
        let chunk = &mut buf[..want];
        f.read_exact(chunk).map_err(|e| io(path, e))?;
        ctx.update(chunk);
        left -= want as u64;
    }
    Ok(ctx.finish())
}

/// SHA-256 (hex) of manifest bytes: what identifies a bundle.
fn manifest_sha256(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

impl Verified {
    /// A bundle of `format` whose `manifest` (parsed from `manifest_bytes`) was signed as `outcome` says.
    pub(crate) fn new(
        format: BundleFormat,
        manifest: Manifest,
        manifest_bytes: &[u8],
        outcome: &cms::SignerOutcome,
        payload_offsets: Vec<u64>,
    ) -> Verified {
        Verified {
            format,
            kind: manifest.kind.clone(),
            compatible: manifest.compatible.clone(),
            version: manifest.version.clone(),
            digest: manifest_sha256(manifest_bytes),
            signer: outcome.signer.subject.clone(),
            signing_time: outcome.signing_time,
            payloads: manifest.payloads.clone(),
            manifest,
            payload_offsets,
            chain: outcome.chain.iter().map(|c| c.summary()).collect(),
        }
    }
}

impl InspectReport {
    /// What `inspect` shows before any trust check: structure, manifest and the certificates `cms` carries.
    pub(crate) fn unchecked(
        path: &Path,
        format: BundleFormat,
        size: u64,
        manifest: Manifest,
        manifest_bytes: &[u8],
        cms: &[u8],
    ) -> InspectReport {
        let (chain, signer, digest_algorithm) = cms_chain_summary(cms);
        InspectReport {
            path: path.to_path_buf(),
            format,
            size,
            manifest_digest: manifest_sha256(manifest_bytes),
            manifest,
            digest_algorithm,
            signer,
            signing_time: None,
            chain,
            verdict: Verdict::Unchecked,
        }
    }
}

/// Summaries of the certificates a CMS carries, signer first when it can be found, for `inspect`.
fn cms_chain_summary(cms: &[u8]) -> (Vec<CertSummary>, Option<String>, String) {
    let Ok(sd) = cms::parse(cms) else { return (Vec::new(), None, String::new()) };
    let mut certs: Vec<x509::Cert> = sd.certs.iter().filter_map(|d| x509::Cert::parse(d).ok()).collect();
    let signer = sd.single_signer().ok();
    let digest = signer.as_ref().map(|s| s.digest.name().to_string()).unwrap_or_default();
    // Unverified, so only a display order: end-entity certificates (the signer) before CA certificates.
    certs.sort_by_key(|c| c.is_ca);
    let signer_name = certs.iter().find(|c| !c.is_ca).map(|c| c.subject.clone());
    (certs.iter().map(x509::Cert::summary).collect(), signer_name, digest)
}

#[cfg(test)]
mod tests;

/// Entry points for the fuzz targets in `common/fuzz`: every parser of untrusted bytes, without a trust store.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::otpatch::parse_untrusted as otpatch_bundle;
    pub use super::rauc::{parse_manifest_untrusted as rauc_manifest, read_manifest_untrusted as squashfs_manifest};
    /// The structure-aware generator: [`shapes::check`] decodes bytes into a DER shape and feeds every parser.
    pub use super::shapes;

    /// The trailer decoder alone.
    pub fn trailer(bytes: &[u8]) -> bool {
        super::Trailer::parse(bytes, u64::MAX / 2).is_ok()
    }

    /// The otpatch manifest parser alone.
    pub fn manifest(bytes: &[u8]) -> bool {
        super::Manifest::parse_otpatch(bytes).is_ok()
    }

    /// The CMS parser, the signer and its signed attributes, and every certificate it carries.
    pub fn cms(bytes: &[u8]) -> bool {
        let Ok(sd) = super::cms::parse(bytes) else { return false };
        for c in &sd.certs {
            let _ = super::x509::Cert::parse(c);
        }
        let _ = super::cms_chain_summary(bytes);
        sd.single_signer().is_ok()
    }
}
