//! RAUC bundles, verified before RAUC sees them, without mounting anything.
//!
//! Layout (RAUC 1.8): `squashfs | [verity hash tree] | CMS (DER) | CMS length (8 bytes, big-endian)`.
//! - plain: the CMS is detached and signs the squashfs; `manifest.raucm` is read from the squashfs;
//! - verity: the CMS encapsulates the manifest, which states the dm-verity root hash, salt and tree size; the tree
//!   (SHA-256, 4 KiB blocks, salt first, top level stored first, as dm-verity format 1) is checked against the
//!   squashfs and the root hash, streaming, one block of each at a time.
//!
//! For both, each image the manifest lists must be in the squashfs with the stated size and SHA-256.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::cms;
use super::manifest::{Manifest, PayloadInfo, MAX_MANIFEST_LEN};
use super::squashfs::Squashfs;
use super::{
    check_expectations, hash_range, io, read_at, BundleError, BundleFormat, Expectations, InspectReport, TrustStore,
    Verified, HASH_BUF, MAX_CMS_LEN,
};

const VERITY_BLOCK: u64 = 4096;
const VERITY_BLOCK_BYTES: usize = 4096;

/// The RAUC manifest fields that matter here.
#[derive(Debug, Clone, Default)]
pub(crate) struct RaucManifest {
    pub compatible: String,
    pub version: String,
    pub format: String,
    pub verity_hash: Option<String>,
    pub verity_salt: Option<String>,
    pub verity_size: Option<u64>,
    pub images: Vec<PayloadInfo>,
}

fn bad(reason: impl Into<String>) -> BundleError {
    BundleError::RaucManifest { reason: reason.into() }
}

/// Parses the INI key file RAUC writes (`[update]`, `[bundle]`, `[image.<class>]`).
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<RaucManifest, BundleError> {
    let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
    let mut m = RaucManifest { format: "plain".into(), ..Default::default() };
    let mut section = String::new();
    let (mut compatible, mut version) = (None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            if let Some(class) = name.strip_prefix("image.") {
                if m.images.len() >= 64 {
                    return Err(bad("more than 64 images"));
                }
                m.images.push(PayloadInfo {
                    name: String::new(),
                    size: 0,
                    sha256: String::new(),
                    slot_class: Some(class.to_string()),
                });
            }
            continue;
        }
        let (key, value) =
            line.split_once('=').ok_or_else(|| bad(format!("line {}: {line:?} is not key=value", n + 1)))?;
        let (key, value) = (key.trim(), value.trim().to_string());
        let number = |v: &str| v.parse::<u64>().map_err(|_| bad(format!("line {}: {key}={v} is not a number", n + 1)));
        match (section.as_str(), key) {
            ("update", "compatible") => compatible = Some(value),
            ("update", "version") => version = Some(value),
            ("bundle", "format") => m.format = value,
            ("bundle", "verity-hash") => m.verity_hash = Some(value),
            ("bundle", "verity-salt") => m.verity_salt = Some(value),
            ("bundle", "verity-size") => m.verity_size = Some(number(&value)?),
            (s, k) if s.starts_with("image.") => {
                if let Some(img) = m.images.last_mut() {
                    match k {
                        "filename" => img.name = value,
                        "sha256" => img.sha256 = value.to_ascii_lowercase(),
                        "size" => img.size = number(&value)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    m.compatible = compatible.ok_or_else(|| bad("[update] compatible is missing"))?;
    m.version = version.unwrap_or_default();
    for img in &m.images {
        let class = img.slot_class.clone().unwrap_or_default();
        if img.name.is_empty() || img.name.contains('/') {
            return Err(bad(format!("[image.{class}] filename {:?} is missing or not a plain name", img.name)));
        }
        if img.sha256.len() != 64 || !img.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("[image.{class}] sha256 {:?} is not 64 hex digits", img.sha256)));
        }
    }
    Ok(m)
}

impl RaucManifest {
    fn to_manifest(&self) -> Manifest {
        Manifest {
            format: 1,
            kind: "rauc".into(),
            compatible: self.compatible.clone(),
            version: self.version.clone(),
            expires: None,
            kernel_releases: Vec::new(),
            build_id: None,
            payloads: self.images.clone(),
        }
    }
}

/// The CMS at the end of a RAUC bundle and where the squashfs (plus verity tree) ends.
struct Layout {
    len: u64,
    payload_len: u64,
    cms: Vec<u8>,
}

fn layout(f: &mut std::fs::File, path: &Path) -> Result<Layout, BundleError> {
    let len = f.metadata().map_err(|e| io(path, e))?.len();
    if len < 8 {
        return Err(BundleError::Truncated { what: "RAUC signature size", needed: 8, available: len });
    }
    let tail = read_at(f, path, len - 8, 8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&tail);
    let cms_len = u64::from_be_bytes(b);
    if cms_len == 0 {
        return Err(BundleError::BadTrailer { reason: "RAUC signature size is 0".into() });
    }
    if cms_len > MAX_CMS_LEN {
        return Err(BundleError::SizeTooLarge { what: "RAUC signature", declared: cms_len, limit: MAX_CMS_LEN });
    }
    if cms_len + 8 > len {
        return Err(BundleError::Truncated { what: "RAUC signature", needed: cms_len + 8, available: len });
    }
    let payload_len = len - 8 - cms_len;
    let cms = read_at(f, path, payload_len, cms_len)?;
    Ok(Layout { len, payload_len, cms })
}

pub(crate) fn detect(f: &mut std::fs::File, path: &Path, _len: u64) -> Result<BundleFormat, BundleError> {
    let l = layout(f, path)?;
    let sd = cms::parse(&l.cms)?;
    Ok(if sd.econtent.is_some() { BundleFormat::RaucVerity } else { BundleFormat::RaucPlain })
}

fn read_squashfs_manifest(f: &std::fs::File, data_len: u64) -> Result<Vec<u8>, BundleError> {
    let fs = Squashfs::open(f, data_len)?;
    let entry = fs
        .find_in_root("manifest.raucm")?
        .ok_or_else(|| BundleError::RaucManifest { reason: "no manifest.raucm in the bundle".into() })?;
    if entry.size > MAX_MANIFEST_LEN {
        return Err(BundleError::SizeTooLarge {
            what: "manifest.raucm",
            declared: entry.size,
            limit: MAX_MANIFEST_LEN,
        });
    }
    let mut out = Vec::new();
    fs.read_file(&entry, |b| out.extend_from_slice(b))?;
    Ok(out)
}

fn check_images(f: &std::fs::File, data_len: u64, images: &[PayloadInfo]) -> Result<(), BundleError> {
    let fs = Squashfs::open(f, data_len)?;
    for img in images {
        let entry = fs.find_in_root(&img.name)?.ok_or_else(|| BundleError::RaucManifest {
            reason: format!("image {:?} is not in the bundle", img.name),
        })?;
        if entry.size != img.size {
            return Err(BundleError::PayloadSizeMismatch {
                name: img.name.clone(),
                expected: img.size,
                actual: entry.size,
            });
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        fs.read_file(&entry, |b| ctx.update(b))?;
        let actual = hex::encode(ctx.finish());
        if actual != img.sha256 {
            return Err(BundleError::PayloadDigestMismatch {
                name: img.name.clone(),
                offset: 0,
                end: img.size,
                expected: img.sha256.clone(),
                actual,
            });
        }
    }
    Ok(())
}

fn verity_err(reason: impl Into<String>) -> BundleError {
    BundleError::Verity { reason: reason.into() }
}

fn salted(salt: &[u8], block: &[u8]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt);
    ctx.update(block);
    ctx.finish()
}

/// Checks the dm-verity tree stored after `data_blocks` blocks against the data and the root hash.
fn check_verity(
    f: &std::fs::File,
    data_blocks: u64,
    tree_blocks: u64,
    salt: &[u8],
    root: &[u8],
) -> Result<(), BundleError> {
    const PER_BLOCK: u64 = VERITY_BLOCK / 32;
    // Level i holds ceil(data_blocks / 128^(i+1)) blocks; the top level (one block) is stored first.
    let mut sizes = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(PER_BLOCK);
        sizes.push(n);
        if sizes.len() > 10 {
            return Err(verity_err("too many tree levels"));
        }
    }
    let total: u64 = sizes.iter().sum();
    if total != tree_blocks {
        return Err(verity_err(format!(
            "the tree should have {total} blocks for {data_blocks} data blocks, it has {tree_blocks}"
        )));
    }
    let mut starts = vec![0u64; sizes.len()];
    let mut pos = data_blocks;
    for i in (0..sizes.len()).rev() {
        starts[i] = pos;
        pos += sizes[i];
    }
    let read = |block: u64, buf: &mut [u8]| {
        f.read_exact_at(buf, block * VERITY_BLOCK).map_err(|e| verity_err(format!("block {block}: {e}")))
    };
    let mut input = vec![0u8; HASH_BUF];
    let mut hashes = vec![0u8; VERITY_BLOCK_BYTES];
    for (level, &size) in sizes.iter().enumerate() {
        let (in_start, in_count) = if level == 0 { (0, data_blocks) } else { (starts[level - 1], sizes[level - 1]) };
        let per_read = HASH_BUF as u64 / VERITY_BLOCK;
        let mut done = 0u64;
        while done < in_count {
            let k = per_read.min(in_count - done);
            let chunk = &mut input[..super::usize_of(k, "hash tree")? * VERITY_BLOCK_BYTES];
            read(in_start + done, chunk)?;
            for (j, block) in chunk.chunks_exact(VERITY_BLOCK_BYTES).enumerate() {
                let idx = done + j as u64;
                if idx.is_multiple_of(PER_BLOCK) {
                    read(starts[level] + idx / PER_BLOCK, &mut hashes)?;
                    // Entries past the last input block of the last hash block must be zero.
                    let used = super::usize_of((in_count - idx).min(PER_BLOCK) * 32, "hash block")?;
                    if hashes[used..].iter().any(|b| *b != 0) {
                        return Err(verity_err(format!(
                            "spare area of hash block {} is not zero",
                            starts[level] + idx / PER_BLOCK
                        )));
                    }
                }
                let e = super::usize_of((idx % PER_BLOCK) * 32, "hash block")?;
                if salted(salt, block).as_ref() != &hashes[e..e + 32] {
                    let what = if level == 0 { "data" } else { "hash" };
                    return Err(verity_err(format!(
                        "{what} block {} does not match the hash tree (level {level})",
                        in_start + idx
                    )));
                }
            }
            done += k;
        }
        let _ = size;
    }
    let mut top = vec![0u8; VERITY_BLOCK_BYTES];
    read(*starts.last().unwrap_or(&0), &mut top)?;
    if salted(salt, &top).as_ref() != root {
        return Err(verity_err("root hash does not match the manifest's verity-hash"));
    }
    Ok(())
}

fn decode_hex32(field: &str, v: Option<&String>) -> Result<Vec<u8>, BundleError> {
    let v = v.ok_or_else(|| bad(format!("[bundle] {field} is missing")))?;
    let b = hex::decode(v).map_err(|_| bad(format!("[bundle] {field}={v} is not hex")))?;
    if b.len() != 32 {
        return Err(bad(format!("[bundle] {field} has {} bytes, expected 32", b.len())));
    }
    Ok(b)
}

pub(crate) fn verify(path: &Path, trust: &TrustStore, exp: &Expectations) -> Result<Verified, BundleError> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let l = layout(&mut f, path)?;
    let sd = cms::parse(&l.cms)?;
    let signer = sd.single_signer()?;
    let (format, manifest_bytes, outcome, data_len) = match sd.econtent {
        None => {
            let digest = hash_range(&mut f, path, 0, l.payload_len, signer.digest.ring())?;
            let outcome = cms::verify_signer(&sd, &signer, digest.as_ref(), trust, exp.now)?;
            let bytes = read_squashfs_manifest(&f, l.payload_len)?;
            (BundleFormat::RaucPlain, bytes, outcome, l.payload_len)
        }
        Some(content) => {
            if content.len() as u64 > MAX_MANIFEST_LEN {
                return Err(BundleError::SizeTooLarge {
                    what: "RAUC manifest",
                    declared: content.len() as u64,
                    limit: MAX_MANIFEST_LEN,
                });
            }
            let digest = ring::digest::digest(signer.digest.ring(), content);
            let outcome = cms::verify_signer(&sd, &signer, digest.as_ref(), trust, exp.now)?;
            (BundleFormat::RaucVerity, content.to_vec(), outcome, 0)
        }
    };
    let rm = parse_manifest(&manifest_bytes)?;
    let manifest = rm.to_manifest();
    let data_len = match format {
        BundleFormat::RaucVerity => {
            if rm.format != "verity" {
                return Err(bad(format!("bundle format {:?} with an encapsulated manifest (only verity)", rm.format)));
            }
            let size = rm.verity_size.ok_or_else(|| bad("[bundle] verity-size is missing"))?;
            if size == 0 || size % VERITY_BLOCK != 0 || size >= l.payload_len || l.payload_len % VERITY_BLOCK != 0 {
                return Err(verity_err(format!(
                    "verity-size {size} does not fit a payload of {} bytes in 4 KiB blocks",
                    l.payload_len
                )));
            }
            l.payload_len - size
        }
        _ => {
            if rm.format != "plain" {
                return Err(bad(format!("format {:?} in a bundle signed as plain", rm.format)));
            }
            data_len
        }
    };
    check_expectations(&manifest, exp)?;
    if format == BundleFormat::RaucVerity {
        let salt = decode_hex32("verity-salt", rm.verity_salt.as_ref())?;
        let root = decode_hex32("verity-hash", rm.verity_hash.as_ref())?;
        check_verity(&f, data_len / VERITY_BLOCK, (l.payload_len - data_len) / VERITY_BLOCK, &salt, &root)?;
    }
    check_images(&f, data_len, &rm.images)?;
    Ok(Verified::new(format, manifest, &manifest_bytes, &outcome, Vec::new()))
}

pub(crate) fn inspect(path: &Path) -> Result<InspectReport, BundleError> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let l = layout(&mut f, path)?;
    let sd = cms::parse(&l.cms)?;
    let (format, bytes) = match sd.econtent {
        Some(c) => (BundleFormat::RaucVerity, c.to_vec()),
        None => (BundleFormat::RaucPlain, read_squashfs_manifest(&f, l.payload_len)?),
    };
    let manifest = parse_manifest(&bytes)?.to_manifest();
    Ok(InspectReport::unchecked(path, format, l.len, manifest, &bytes, &l.cms))
}

/// Fuzz entry point: the RAUC manifest parser.
#[doc(hidden)]
pub fn parse_manifest_untrusted(bytes: &[u8]) -> bool {
    parse_manifest(bytes).is_ok()
}

/// Fuzz entry point: squashfs lookup and read of `manifest.raucm` from an image in a file.
#[doc(hidden)]
pub fn read_manifest_untrusted(file: &std::fs::File, len: u64) -> Result<Vec<u8>, BundleError> {
    read_squashfs_manifest(file, len)
}
