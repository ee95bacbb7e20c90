//! The image sets on disk: `<state>/checkpoints/<window>/<process>/` holds CRIU's images of one process (and,
//! with pre-dump, the pre-dump's images in `pre/`), CRIU's logs, and `manifest.json`, written last: what was
//! dumped (pid, executable, boot id), how long it took, and every image file with its size (and SHA-256 for
//! all but the page contents), so a restore can tell a complete, untouched set from a damaged one before it
//! stops anything.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// Where a pre-dump goes, inside the process's directory (CRIU's `--prev-images-dir`, relative to `-D`).
pub const PRE_DIR: &str = "pre";

/// CRIU's image magics (criu/include/magic.h): the first word of every image file.
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
const INVENTORY_MAGIC: u32 = 0x5831_3116;
const STATS_MAGIC: u32 = 0x5709_3306;

/// CRIU's own account of a dump (its `stats-dump` image), times in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DumpStats {
    /// Stopping every task of the tree.
    pub freezing_us: u64,
    /// How long the tasks stayed frozen: what the process feels.
    pub frozen_us: u64,
    pub memdump_us: u64,
    pub memwrite_us: u64,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
}

/// One image file of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// Relative to the process's directory (`core-42.img`, `pre/pages-1.img`).
    pub name: String,
    pub size: u64,
    /// SHA-256 of the content; `None` for page contents (hashing hundreds of MiB would lengthen every
    /// checkpoint; their size is still checked).
    pub sha256: Option<String>,
}

/// `manifest.json` of one process's image set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub window: String,
    pub process: String,
    pub pid: i32,
    /// The process's start time (`/proc/PID/stat` field 22, clock ticks after boot): a restore stops the pid
    /// only while it still has this start time. `None` in manifests of otpatchd before it was recorded.
    #[serde(default)]
    pub start_time: Option<u64>,
    /// Every task of the dumped tree, the root first: the restore needs each of these pids free.
    pub pids: Vec<i32>,
    pub exe: PathBuf,
    pub boot_id: String,
    /// When the dump finished (RFC 3339).
    pub taken_at: String,
    pub pre_dump: bool,
    pub tcp_established: bool,
    /// Resident memory of the tree when it was dumped, bytes.
    pub rss: u64,
    /// Wall time of `criu pre-dump` (0 without), of `criu dump`, ms.
    pub pre_dump_ms: u64,
    pub dump_ms: u64,
    pub stats: Option<DumpStats>,
    pub pre_stats: Option<DumpStats>,
    pub files: Vec<ImageFile>,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join(MANIFEST);
        let text = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let m: Manifest =
            serde_json::from_slice(&text).map_err(|e| format!("{}: not a manifest: {e}", path.display()))?;
        if m.format != 1 {
            return Err(format!("{}: unknown manifest format {}", path.display(), m.format));
        }
        Ok(m)
    }

    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(&dir.join(MANIFEST), &json)
    }
}

/// Decodes a `stats-dump` image: two magic words, then one length-prefixed protobuf `StatsEntry` whose field 1
/// is a `DumpStatsEntry` (criu/images/stats.proto). Unknown fields are skipped; `None` if it is not one.
pub fn parse_stats_dump(bytes: &[u8]) -> Option<DumpStats> {
    let word = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    let mut at = 0;
    if word(at)? == IMG_SERVICE_MAGIC || word(at)? == IMG_COMMON_MAGIC {
        at += 4;
    }
    if word(at)? != STATS_MAGIC {
        return None;
    }
    at += 4;
    let len = usize::try_from(word(at)?).ok()?;
    at += 4;
    let entry = bytes.get(at..at.checked_add(len)?)?;
    let dump = proto_fields(entry)?.into_iter().find_map(|(n, v)| match (n, v) {
        (1, Field::Bytes(b)) => Some(b),
        _ => None,
    })?;
    let mut s = DumpStats::default();
    for (n, v) in proto_fields(dump)? {
        let Field::Varint(v) = v else { continue };
        match n {
            1 => s.freezing_us = v,
            2 => s.frozen_us = v,
            3 => s.memdump_us = v,
            4 => s.memwrite_us = v,
            5 => s.pages_scanned = v,
            6 => s.pages_skipped_parent = v,
            7 => s.pages_written = v,
            _ => {}
        }
    }
    Some(s)
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message (varint, length-delimited, fixed32/64: all CRIU's stats use).
fn proto_fields(mut b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                let (v, rest) = (b.get(..n)?, b.get(n..)?);
                b = rest;
                Field::Bytes(v)
            }
            1 => {
                b = b.get(8..)?;
                continue;
            }
            5 => {
                b = b.get(4..)?;
                continue;
            }
            _ => return None,
        };
        out.push((key >> 3, field));
    }
    Some(out)
}

/// Whether a file is a page-contents image (`pages-N.img`), which is not hashed.
fn is_pages(name: &str) -> bool {
    name.rsplit('/').next().is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img"))
}

/// Every `.img` file of a process's directory and its pre-dump directory, with size and hash.
pub fn list_images(dir: &Path) -> io::Result<Vec<ImageFile>> {
    let mut out = Vec::new();
    for sub in ["", PRE_DIR] {
        let d = if sub.is_empty() { dir.to_path_buf() } else { dir.join(sub) };
        if sub == PRE_DIR && !d.is_dir() {
            continue;
        }
        let mut names: Vec<String> = fs::read_dir(&d)?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".img"))
            .collect();
        names.sort();
        for n in names {
            let rel = if sub.is_empty() { n } else { format!("{sub}/{n}") };
            let path = dir.join(&rel);
            let size = fs::metadata(&path)?.len();
            let sha256 = if is_pages(&rel) { None } else { Some(crate::fsutil::sha256_file(&path)?) };
            out.push(ImageFile { name: rel, size, sha256 });
        }
    }
    Ok(out)
}

/// Checks a process's image set before anything is stopped: the manifest parses, names the images CRIU
/// needs for the root task, every listed file is there with its size and hash, and starts with a CRIU magic.
pub fn validate(dir: &Path) -> Result<Manifest, String> {
    let m = Manifest::load(dir)?;
    let pid = m.pid;
    for needed in ["inventory.img".to_string(), "pstree.img".into(), format!("core-{pid}.img"), format!("mm-{pid}.img")]
    {
        if !m.files.iter().any(|f| f.name == needed) {
            return Err(format!("{}: the manifest lists no {needed}", dir.display()));
        }
    }
    for f in &m.files {
        let path = dir.join(&f.name);
        let meta = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() != f.size {
            return Err(format!("{}: {} bytes, the dump wrote {}", path.display(), meta.len(), f.size));
        }
        if let Some(want) = &f.sha256 {
            let got = crate::fsutil::sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if &got != want {
                return Err(format!("{}: content changed since the dump (SHA-256 differs)", path.display()));
            }
            // Page contents are raw; every other image starts with a magic.
            let head = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let first = head.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
            if !matches!(first, Some(IMG_COMMON_MAGIC | IMG_SERVICE_MAGIC | INVENTORY_MAGIC)) {
                return Err(format!("{}: not a CRIU image", path.display()));
            }
        }
    }
    Ok(m)
}

/// Removes every image set under `images` but `keep`'s: a rolled-back window's images stay for diagnosis until
/// the next window checkpoints. Returns what it removed.
pub fn remove_other_sets(images: &Path, keep: &str) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let rd = match fs::read_dir(images) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy() == keep {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
        removed.push(p);
    }
    Ok(removed)
}

/// The bytes an unprivileged writer may still use on the file system holding `dir` (statvfs).
pub fn available_space(dir: &Path) -> io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    // 32-bit targets have narrower types.
    #[allow(clippy::useless_conversion)]
    let (blocks, size): (u64, u64) = (s.blocks_available().into(), s.fragment_size().into());
    Ok(blocks.saturating_mul(size))
}

/// A directory name for a window or process id: anything but letters, digits, `.`, `_`, `-`, `@` becomes `_`.
pub fn dir_name(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') { c } else { '_' })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        format!("_{s}")
    } else {
        s
    }
}
