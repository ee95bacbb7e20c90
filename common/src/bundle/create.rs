//! Writing otpatch bundles, signed natively with ring (RSA PKCS#1 v1.5 SHA-256, ECDSA P-256/SHA-256,
//! ECDSA P-384/SHA-384) from a PKCS#8 key. The CMS written is the same shape `openssl cms -sign -binary` makes,
//! so bundles from this function and from the shell recipe in FORMAT.md are interchangeable.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::cms::DigestAlg;
use super::der::{constructed, element, tag};
use super::manifest::{Manifest, PayloadInfo};
use super::otpatch::MAGIC;
use super::x509::Cert;
use super::{io, BundleError, HASH_BUF};

/// Validity given to a bundle when the request names no expiry.
pub const DEFAULT_VALIDITY_DAYS: i64 = 180;

/// What `otpatchctl bundle create` asks for.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// `livepatch` or `app`.
    pub kind: String,
    pub compatible: String,
    pub version: String,
    /// `None`: now + [`DEFAULT_VALIDITY_DAYS`].
    pub expires: Option<Timestamp>,
    pub kernel_releases: Vec<String>,
    pub build_id: Option<String>,
    /// Stored in this order under their file names.
    pub payloads: Vec<PathBuf>,
    /// PEM certificate of the signer (its key must match `signer_key`).
    pub signer_cert: PathBuf,
    /// PEM PKCS#8 private key (`openssl genpkey` writes this).
    pub signer_key: PathBuf,
    /// PEM files of intermediate CA certificates to carry in the CMS.
    pub chain: Vec<PathBuf>,
}

const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_ATTR_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const OID_ATTR_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_ATTR_SIGNING_TIME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05];
const OID_RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];

enum Key {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair, DigestAlg),
}

fn load_key(path: &Path) -> Result<Key, BundleError> {
    let bad = |reason: String| BundleError::Key { path: path.to_path_buf(), reason };
    let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| bad(format!("not a PEM PKCS#8 key: {e}")))?;
    let bytes = der.secret_pkcs8_der();
    if let Ok(k) = RsaKeyPair::from_pkcs8(bytes) {
        return Ok(Key::Rsa(k));
    }
    let rng = SystemRandom::new();
    if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, bytes, &rng) {
        return Ok(Key::Ecdsa(k, DigestAlg::Sha256));
    }
    if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, bytes, &rng) {
        return Ok(Key::Ecdsa(k, DigestAlg::Sha384));
    }
    Err(bad("neither an RSA (2048-8192 bit) nor an ECDSA P-256/P-384 key".into()))
}

fn load_certs(path: &Path) -> Result<Vec<Vec<u8>>, BundleError> {
    let bad = |reason: String| BundleError::Request { reason: format!("{}: {reason}", path.display()) };
    let mut out = Vec::new();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        out.push(c.map_err(|e| bad(e.to_string()))?.to_vec());
        if out.len() > 16 {
            return Err(bad("more than 16 certificates".into()));
        }
    }
    if out.is_empty() {
        return Err(bad("no PEM certificate".into()));
    }
    Ok(out)
}

fn utc_time(t: Timestamp) -> Vec<u8> {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    // UTCTime covers 1950-2049, as RFC 5652 asks for signingTime; GeneralizedTime after that.
    if (1950..2050).contains(&dt.year()) {
        element(tag::UTC_TIME, dt.strftime("%y%m%d%H%M%SZ").to_string().as_bytes())
    } else {
        element(tag::GENERALIZED_TIME, dt.strftime("%Y%m%d%H%M%SZ").to_string().as_bytes())
    }
}

/// Builds a detached CMS SignedData over `content`.
pub(crate) fn sign_detached(
    content: &[u8],
    cert_path: &Path,
    key_path: &Path,
    chain: &[PathBuf],
    signing_time: Timestamp,
) -> Result<Vec<u8>, BundleError> {
    let key = load_key(key_path)?;
    let signer_der = load_certs(cert_path)?.swap_remove(0);
    let signer = Cert::parse(&signer_der)?;
    let mut certs = vec![signer_der.clone()];
    for p in chain {
        certs.extend(load_certs(p)?);
    }
    let digest = match &key {
        Key::Rsa(_) => DigestAlg::Sha256,
        Key::Ecdsa(_, d) => *d,
    };
    let md = ring::digest::digest(digest.ring(), content);
    let attr =
        |oid: &[u8], value: Vec<u8>| constructed(tag::SEQUENCE, &[&element(tag::OID, oid), &element(tag::SET, &value)]);
    let mut attrs = [
        attr(OID_ATTR_CONTENT_TYPE, element(tag::OID, OID_DATA)),
        attr(OID_ATTR_SIGNING_TIME, utc_time(signing_time)),
        attr(OID_ATTR_MESSAGE_DIGEST, element(tag::OCTET_STRING, md.as_ref())),
    ];
    // DER sorts the members of a SET OF by their encodings.
    attrs.sort();
    let attrs_body = attrs.concat();
    let to_sign = element(tag::SET, &attrs_body);
    let rng = SystemRandom::new();
    let (sig_alg, signature) = match &key {
        Key::Rsa(k) => {
            let mut sig = vec![0u8; k.public().modulus_len()];
            k.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, &to_sign, &mut sig)
                .map_err(|_| BundleError::Key { path: key_path.into(), reason: "RSA signing failed".into() })?;
            (constructed(tag::SEQUENCE, &[&element(tag::OID, OID_RSA_SHA256), &element(tag::NULL, &[])]), sig)
        }
        Key::Ecdsa(k, d) => {
            let sig = k
                .sign(&rng, &to_sign)
                .map_err(|_| BundleError::Key { path: key_path.into(), reason: "ECDSA signing failed".into() })?;
            let oid = if *d == DigestAlg::Sha256 { OID_ECDSA_SHA256 } else { OID_ECDSA_SHA384 };
            (element(tag::SEQUENCE, &element(tag::OID, oid)), sig.as_ref().to_vec())
        }
    };
    // Refuse a key that does not belong to the certificate now, rather than ship a bundle no gateway accepts.
    let cert_der = CertificateDer::from(signer_der.as_slice());
    let ee = webpki::EndEntityCert::try_from(&cert_der)
        .map_err(|e| BundleError::Request { reason: format!("signer certificate: {e:?}") })?;
    let check: &dyn rustls_pki_types::SignatureVerificationAlgorithm = match (&key, digest) {
        (Key::Rsa(_), _) => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        (_, DigestAlg::Sha256) => webpki::ring::ECDSA_P256_SHA256,
        _ => webpki::ring::ECDSA_P384_SHA384,
    };
    ee.verify_signature(check, &to_sign, &signature).map_err(|_| BundleError::Key {
        path: key_path.into(),
        reason: format!("does not match the certificate of {}", signer.subject),
    })?;

    let digest_alg = element(tag::SEQUENCE, &element(tag::OID, digest.oid()));
    let sid = constructed(tag::SEQUENCE, &[&signer.issuer_raw, &element(tag::INTEGER, &signer.serial)]);
    let signer_info = constructed(
        tag::SEQUENCE,
        &[
            &element(tag::INTEGER, &[1]),
            &sid,
            &digest_alg,
            &element(tag::CTX0, &attrs_body),
            &sig_alg,
            &element(tag::OCTET_STRING, &signature),
        ],
    );
    let signed_data = constructed(
        tag::SEQUENCE,
        &[
            &element(tag::INTEGER, &[1]),
            &element(tag::SET, &digest_alg),
            &element(tag::SEQUENCE, &element(tag::OID, OID_DATA)),
            &element(tag::CTX0, &certs.concat()),
            &element(tag::SET, &signer_info),
        ],
    );
    Ok(constructed(tag::SEQUENCE, &[&element(tag::OID, OID_SIGNED_DATA), &element(tag::CTX0, &signed_data)]))
}

/// Writes a signed otpatch bundle to `out` (through a temporary file next to it, renamed at the end).
pub fn create(req: &CreateRequest, out: &Path) -> Result<(), BundleError> {
    let now = Timestamp::now();
    let expires = match req.expires {
        Some(t) => t,
        None => now
            .checked_add(jiff::SignedDuration::from_hours(24 * DEFAULT_VALIDITY_DAYS))
            .map_err(|e| BundleError::Request { reason: e.to_string() })?,
    };
    let tmp = out.with_extension("partial");
    let result = write_bundle(req, out, &tmp, now, expires);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_bundle(
    req: &CreateRequest,
    out: &Path,
    tmp: &Path,
    now: Timestamp,
    expires: Timestamp,
) -> Result<(), BundleError> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(|e| io(tmp, e))?);
    let mut payloads = Vec::with_capacity(req.payloads.len());
    let mut buf = vec![0u8; HASH_BUF];
    for p in &req.payloads {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| BundleError::Request { reason: format!("{}: no usable file name", p.display()) })?;
        let mut src = std::fs::File::open(p).map_err(|e| io(p, e))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(|e| io(p, e))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| io(tmp, e))?;
            size += n as u64;
        }
        payloads.push(PayloadInfo {
            name: name.to_string(),
            size,
            sha256: hex::encode(ctx.finish()),
            slot_class: None,
        });
    }
    let manifest = Manifest {
        format: 1,
        kind: req.kind.clone(),
        compatible: req.compatible.clone(),
        version: req.version.clone(),
        expires: Some(expires),
        kernel_releases: req.kernel_releases.clone(),
        build_id: req.build_id.clone(),
        payloads,
    };
    manifest.validate()?;
    let text = manifest.to_toml()?;
    let cms = sign_detached(text.as_bytes(), &req.signer_cert, &req.signer_key, &req.chain, now)?;
    file.write_all(text.as_bytes()).map_err(|e| io(tmp, e))?;
    file.write_all(&cms).map_err(|e| io(tmp, e))?;
    file.write_all(&(text.len() as u64).to_be_bytes()).map_err(|e| io(tmp, e))?;
    file.write_all(&(cms.len() as u64).to_be_bytes()).map_err(|e| io(tmp, e))?;
    file.write_all(MAGIC).map_err(|e| io(tmp, e))?;
    let f = file.into_inner().map_err(|e| io(tmp, e.into_error()))?;
    f.sync_all().map_err(|e| io(tmp, e))?;
    std::fs::rename(tmp, out).map_err(|e| io(out, e))
}
