//! The otpatch bundle container: `payload… | manifest | CMS (DER) | trailer`, read from the end.
//!
//! The trailer is 24 bytes: manifest length and CMS length as 8-byte big-endian integers, then the magic
//! `OTPBNDL1`. Payloads need no index of their own: the signed manifest lists them in file order with their sizes,
//! and their sizes must add up to exactly what lies before the manifest.

use std::path::Path;

use super::cms;
use super::manifest::{Manifest, MAX_MANIFEST_LEN};
use super::{
    check_expectations, hash_range, io, read_at, BundleError, BundleFormat, Expectations, InspectReport, TrustStore,
    Verified, MAX_CMS_LEN,
};

/// The last 8 bytes of every otpatch bundle.
pub const MAGIC: &[u8; 8] = b"OTPBNDL1";
/// Length of the trailer: manifest length, CMS length, magic.
pub const TRAILER_LEN: u64 = 24;

/// The decoded trailer, with the offsets it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub manifest_len: u64,
    pub cms_len: u64,
    /// Bytes before the manifest: the payloads.
    pub payload_len: u64,
}

impl Trailer {
    /// Decodes the last 24 bytes of a file of `file_len` bytes, checking every declared size against the limits
    /// and the file before anything is allocated or read.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Trailer, BundleError> {
        let [m0, m1, m2, m3, m4, m5, m6, m7, c0, c1, c2, c3, c4, c5, c6, c7, magic @ ..] = bytes else {
            return Err(BundleError::BadTrailer { reason: format!("{} bytes, expected {TRAILER_LEN}", bytes.len()) });
        };
        if magic != MAGIC {
            return Err(BundleError::BadTrailer {
                reason: format!("magic is {:?}, expected {:?}", String::from_utf8_lossy(magic), "OTPBNDL1"),
            });
        }
        let manifest_len = u64::from_be_bytes([*m0, *m1, *m2, *m3, *m4, *m5, *m6, *m7]);
        let cms_len = u64::from_be_bytes([*c0, *c1, *c2, *c3, *c4, *c5, *c6, *c7]);
        if manifest_len == 0 {
            return Err(BundleError::BadTrailer { reason: "manifest length is 0".into() });
        }
        if cms_len == 0 {
            return Err(BundleError::BadTrailer { reason: "CMS length is 0".into() });
        }
        if manifest_len > MAX_MANIFEST_LEN {
            return Err(BundleError::SizeTooLarge {
                what: "manifest",
                declared: manifest_len,
                limit: MAX_MANIFEST_LEN,
            });
        }
        if cms_len > MAX_CMS_LEN {
            return Err(BundleError::SizeTooLarge { what: "CMS signature", declared: cms_len, limit: MAX_CMS_LEN });
        }
        let needed = manifest_len + cms_len + TRAILER_LEN;
        if needed > file_len {
            return Err(BundleError::Truncated { what: "manifest, CMS and trailer", needed, available: file_len });
        }
        Ok(Trailer { manifest_len, cms_len, payload_len: file_len - needed })
    }
}

/// The parts of a bundle read into memory: everything but the payloads.
struct Parts {
    file: std::fs::File,
    len: u64,
    trailer: Trailer,
    manifest: Vec<u8>,
    cms: Vec<u8>,
}

fn read_parts(path: &Path) -> Result<Parts, BundleError> {
    let mut file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    if len < TRAILER_LEN {
        return Err(BundleError::Truncated { what: "trailer", needed: TRAILER_LEN, available: len });
    }
    let tail = read_at(&mut file, path, len - TRAILER_LEN, TRAILER_LEN)?;
    let trailer = Trailer::parse(&tail, len)?;
    // Both lengths are bounded by the limits checked in Trailer::parse.
    let manifest = read_at(&mut file, path, trailer.payload_len, trailer.manifest_len)?;
    let cms = read_at(&mut file, path, trailer.payload_len + trailer.manifest_len, trailer.cms_len)?;
    Ok(Parts { file, len, trailer, manifest, cms })
}

pub(crate) fn verify(path: &Path, trust: &TrustStore, exp: &Expectations) -> Result<Verified, BundleError> {
    let Parts { mut file, trailer, manifest: manifest_bytes, cms: cms_bytes, .. } = read_parts(path)?;
    let sd = cms::parse(&cms_bytes)?;
    if sd.econtent.is_some() {
        return Err(BundleError::NotCms {
            reason: "the CMS encapsulates its content; otpatch bundles are signed detached (no -nodetach)".into(),
        });
    }
    let signer = sd.single_signer()?;
    let digest = ring::digest::digest(signer.digest.ring(), &manifest_bytes);
    let outcome = cms::verify_signer(&sd, &signer, digest.as_ref(), trust, exp.now)?;
    // From here on the manifest is the signer's word.
    let manifest = Manifest::parse_otpatch(&manifest_bytes)?;
    let mut declared: u64 = 0;
    for p in &manifest.payloads {
        declared = declared
            .checked_add(p.size)
            .ok_or(BundleError::PayloadAreaMismatch { declared: u64::MAX, actual: trailer.payload_len })?;
    }
    if declared != trailer.payload_len {
        return Err(BundleError::PayloadAreaMismatch { declared, actual: trailer.payload_len });
    }
    check_expectations(&manifest, exp)?;
    let mut offsets = Vec::with_capacity(manifest.payloads.len());
    let mut offset = 0u64;
    for p in &manifest.payloads {
        let actual = hex::encode(hash_range(&mut file, path, offset, p.size, &ring::digest::SHA256)?);
        if actual != p.sha256 {
            return Err(BundleError::PayloadDigestMismatch {
                name: p.name.clone(),
                offset,
                end: offset + p.size,
                expected: p.sha256.clone(),
                actual,
            });
        }
        offsets.push(offset);
        offset += p.size;
    }
    Ok(Verified::new(BundleFormat::Otpatch, manifest, &manifest_bytes, &outcome, offsets))
}

pub(crate) fn inspect(path: &Path) -> Result<InspectReport, BundleError> {
    let parts = read_parts(path)?;
    let manifest = Manifest::parse_otpatch(&parts.manifest)?;
    Ok(InspectReport::unchecked(path, BundleFormat::Otpatch, parts.len, manifest, &parts.manifest, &parts.cms))
}

/// Parses the trailer and, if it is sound, the manifest of an in-memory bundle: the fuzz targets' entry point.
#[doc(hidden)]
pub fn parse_untrusted(bytes: &[u8]) -> Result<(Trailer, Manifest), BundleError> {
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len < TRAILER_LEN {
        return Err(BundleError::Truncated { what: "trailer", needed: TRAILER_LEN, available: len });
    }
    let split = bytes.len() - super::usize_of(TRAILER_LEN, "the trailer")?;
    let t = Trailer::parse(&bytes[split..], len)?;
    let start = super::usize_of(t.payload_len, "the payloads")?;
    let manifest_len = super::usize_of(t.manifest_len, "the manifest")?;
    let cms_len = super::usize_of(t.cms_len, "the CMS")?;
    // Trailer::parse checked that these lie inside the file; the slicing is checked all the same.
    let part = |from: usize, n: usize, what: &'static str| {
        bytes.get(from..from.saturating_add(n)).ok_or(BundleError::Truncated {
            what,
            needed: t.payload_len,
            available: len,
        })
    };
    let m = Manifest::parse_otpatch(part(start, manifest_len, "manifest")?)?;
    let cms_start = start + manifest_len;
    let _ = cms::parse(part(cms_start, cms_len, "CMS")?).map(|sd| sd.single_signer().is_ok());
    Ok((t, m))
}
