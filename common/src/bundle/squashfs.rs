//! A minimal read-only squashfs 4.0 reader: enough to find a file in the root directory of a RAUC bundle and to
//! read it (the manifest) or hash it (an image) without mounting, which the daemon must not do with a bundle it
//! has not verified yet. Only gzip (zlib) compression, RAUC's default through mksquashfs, is supported; every
//! size and offset read from the image is checked against the image's length before it is used.

use std::os::unix::fs::FileExt;

use super::BundleError;

const METADATA_MAX: usize = 8192;
/// Most metadata blocks one lookup may read; a RAUC bundle's root directory and inodes fit in a handful.
const MAX_META_BLOCKS: usize = 4096;

/// A squashfs image inside a file: bytes `[0, len)`.
#[derive(Debug)]
pub(crate) struct Squashfs<'f> {
    file: &'f std::fs::File,
    len: u64,
    block_size: u32,
    inode_table: u64,
    dir_table: u64,
    frag_table: u64,
    frag_count: u32,
    root_inode: u64,
}

/// A regular file found in the image.
#[derive(Debug, Clone)]
pub(crate) struct FileEntry {
    pub size: u64,
    blocks_start: u64,
    block_sizes: Vec<u32>,
    fragment: Option<(u32, u32)>,
}

fn err(offset: u64, reason: impl Into<String>) -> BundleError {
    BundleError::Squashfs { offset, reason: reason.into() }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// Sequential reader over a metadata stream (inode or directory table).
struct Meta<'a, 'f> {
    fs: &'a Squashfs<'f>,
    next_block: u64,
    buf: Vec<u8>,
    pos: usize,
    blocks_read: usize,
}

impl<'a, 'f> Meta<'a, 'f> {
    fn new(fs: &'a Squashfs<'f>, block: u64, offset: usize) -> Result<Self, BundleError> {
        let mut m = Meta { fs, next_block: block, buf: Vec::new(), pos: 0, blocks_read: 0 };
        m.load()?;
        if offset > m.buf.len() {
            return Err(err(block, format!("offset {offset} past the end of a metadata block")));
        }
        m.pos = offset;
        Ok(m)
    }

    fn load(&mut self) -> Result<(), BundleError> {
        self.blocks_read += 1;
        if self.blocks_read > MAX_META_BLOCKS {
            return Err(err(self.next_block, "too many metadata blocks"));
        }
        let at = self.next_block;
        let header = self.fs.read(at, 2)?;
        let h = le16(&header, 0);
        let size = usize::from(h & 0x7fff);
        if size == 0 || size > METADATA_MAX {
            return Err(err(at, format!("metadata block of {size} bytes")));
        }
        let raw = self.fs.read(at.saturating_add(2), size)?;
        self.buf = if h & 0x8000 != 0 { raw } else { inflate(&raw, METADATA_MAX, at)? };
        self.next_block = at.saturating_add(2 + size as u64);
        self.pos = 0;
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, BundleError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pos >= self.buf.len() {
                self.load()?;
            }
            let take = (n - out.len()).min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok(out)
    }
}

fn inflate(raw: &[u8], limit: usize, at: u64) -> Result<Vec<u8>, BundleError> {
    miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(raw, limit)
        .map_err(|e| err(at, format!("gzip block does not inflate: {:?}", e.status)))
}

impl<'f> Squashfs<'f> {
    pub fn open(file: &'f std::fs::File, len: u64) -> Result<Self, BundleError> {
        if len < 96 {
            return Err(err(0, format!("image of {len} bytes is smaller than a superblock")));
        }
        let mut sb = [0u8; 96];
        file.read_exact_at(&mut sb, 0).map_err(|e| err(0, e.to_string()))?;
        if &sb[0..4] != b"hsqs" {
            return Err(err(0, "no squashfs magic"));
        }
        if le16(&sb, 28) != 4 {
            return Err(err(28, format!("squashfs version {} is not 4", le16(&sb, 28))));
        }
        let compressor = le16(&sb, 20);
        if compressor != 1 {
            return Err(err(20, format!("compressor {compressor} is not supported (only gzip, 1)")));
        }
        let block_size = le32(&sb, 12);
        if !(4096..=1 << 20).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(err(12, format!("block size {block_size}")));
        }
        let bytes_used = le64(&sb, 40);
        if bytes_used > len {
            return Err(err(40, format!("declares {bytes_used} bytes, the image has {len}")));
        }
        Ok(Squashfs {
            file,
            len: bytes_used,
            block_size,
            inode_table: le64(&sb, 64),
            dir_table: le64(&sb, 72),
            frag_table: le64(&sb, 80),
            frag_count: le32(&sb, 16),
            root_inode: le64(&sb, 32),
        })
    }

    fn read(&self, at: u64, n: usize) -> Result<Vec<u8>, BundleError> {
        let end = at.checked_add(n as u64).ok_or_else(|| err(at, "offset overflows"))?;
        if end > self.len {
            return Err(err(at, format!("{n} bytes at {at} run past the end of the image ({})", self.len)));
        }
        let mut buf = vec![0u8; n];
        self.file.read_exact_at(&mut buf, at).map_err(|e| err(at, e.to_string()))?;
        Ok(buf)
    }

    fn inode(&self, reference: u64) -> Result<Meta<'_, 'f>, BundleError> {
        let block = self.inode_table.checked_add(reference >> 16).ok_or_else(|| err(reference, "inode ref"))?;
        Meta::new(self, block, (reference & 0xffff) as usize)
    }

    /// Looks a name up in the root directory; `None` if it is not there.
    pub fn find_in_root(&self, name: &str) -> Result<Option<FileEntry>, BundleError> {
        let mut ino = self.inode(self.root_inode)?;
        let h = ino.bytes(16)?;
        let (start_block, size, offset) = match le16(&h, 0) {
            1 => {
                let d = ino.bytes(16)?;
                (u64::from(le32(&d, 0)), u64::from(le16(&d, 8)), usize::from(le16(&d, 10)))
            }
            8 => {
                let d = ino.bytes(24)?;
                (u64::from(le32(&d, 8)), u64::from(le32(&d, 4)), usize::from(le16(&d, 22)))
            }
            t => return Err(err(self.inode_table, format!("root inode has type {t}, not a directory"))),
        };
        // The stored size counts 3 bytes more than the listing ("." and ".." that are not stored).
        let mut left = size.saturating_sub(3);
        if left > 16 * 1024 * 1024 {
            return Err(err(self.dir_table, format!("root directory listing of {left} bytes")));
        }
        let mut dir = Meta::new(self, self.dir_table.saturating_add(start_block), offset)?;
        while left >= 12 {
            let hdr = dir.bytes(12)?;
            left -= 12;
            let count = u64::from(le32(&hdr, 0)) + 1;
            let inode_block = u64::from(le32(&hdr, 4));
            if count > 256 {
                return Err(err(self.dir_table, format!("directory header with {count} entries")));
            }
            for _ in 0..count {
                let e = dir.bytes(8)?;
                let name_len = usize::from(le16(&e, 6)) + 1;
                let entry_name = dir.bytes(name_len)?;
                left = left.saturating_sub(8 + name_len as u64);
                if entry_name == name.as_bytes() {
                    let t = le16(&e, 4);
                    if t != 2 && t != 9 {
                        return Err(err(self.dir_table, format!("{name} is not a regular file (type {t})")));
                    }
                    return self.file_inode((inode_block << 16) | u64::from(le16(&e, 0))).map(Some);
                }
            }
        }
        Ok(None)
    }

    fn file_inode(&self, reference: u64) -> Result<FileEntry, BundleError> {
        let mut ino = self.inode(reference)?;
        let h = ino.bytes(16)?;
        let (blocks_start, size, frag, frag_off) = match le16(&h, 0) {
            2 => {
                let d = ino.bytes(16)?;
                (u64::from(le32(&d, 0)), u64::from(le32(&d, 12)), le32(&d, 4), le32(&d, 8))
            }
            9 => {
                let d = ino.bytes(40)?;
                (le64(&d, 0), le64(&d, 8), le32(&d, 28), le32(&d, 32))
            }
            t => return Err(err(self.inode_table, format!("inode type {t} is not a regular file"))),
        };
        if size > self.len.saturating_mul(64) {
            return Err(err(self.inode_table, format!("file of {size} bytes in an image of {}", self.len)));
        }
        let bs = u64::from(self.block_size);
        let fragment = (frag != u32::MAX).then_some((frag, frag_off));
        let n = if fragment.is_some() { size / bs } else { size.div_ceil(bs) };
        // Each block needs a 4-byte size entry stored in the image: bound the count by the image size, and by
        // 2^20 entries (4 MiB of list; 128 GiB of file at RAUC's 128 KiB blocks).
        if n > self.len / 4 || n > 1 << 20 {
            return Err(err(self.inode_table, format!("{n} blocks declared")));
        }
        let sizes = ino.bytes(super::usize_of(n, "block list")? * 4)?;
        let block_sizes = sizes.chunks_exact(4).map(|c| le32(c, 0)).collect();
        Ok(FileEntry { size, blocks_start, block_sizes, fragment })
    }

    /// Reads a file's content in order, handing each piece to `sink`.
    pub fn read_file(&self, f: &FileEntry, mut sink: impl FnMut(&[u8])) -> Result<(), BundleError> {
        let bs = self.block_size as usize;
        let mut at = f.blocks_start;
        let mut left = f.size;
        for &s in &f.block_sizes {
            let stored = (s & 0x00ff_ffff) as usize;
            let want = super::usize_of(left.min(u64::from(self.block_size)), "data block")?;
            if stored == 0 {
                sink(&vec![0u8; want]);
            } else {
                if stored > bs {
                    return Err(err(at, format!("data block of {stored} bytes is larger than the block size")));
                }
                let raw = self.read(at, stored)?;
                let data = if s & 0x0100_0000 != 0 { raw } else { inflate(&raw, bs, at)? };
                if data.len() != want {
                    return Err(err(at, format!("data block holds {} bytes, expected {want}", data.len())));
                }
                sink(&data);
                at += stored as u64;
            }
            left -= want as u64;
        }
        if let Some((index, offset)) = f.fragment {
            if index >= self.frag_count {
                return Err(err(self.frag_table, format!("fragment {index} of {}", self.frag_count)));
            }
            let ptr = self.read(self.frag_table.saturating_add(u64::from(index / 512) * 8), 8)?;
            let mut m = Meta::new(self, le64(&ptr, 0), (index % 512) as usize * 16)?;
            let entry = m.bytes(16)?;
            let (start, s) = (le64(&entry, 0), le32(&entry, 8));
            let stored = (s & 0x00ff_ffff) as usize;
            if stored > bs {
                return Err(err(start, format!("fragment block of {stored} bytes")));
            }
            let raw = self.read(start, stored)?;
            let data = if s & 0x0100_0000 != 0 { raw } else { inflate(&raw, bs, start)? };
            let from = offset as usize;
            let to = from.saturating_add(super::usize_of(left, "file tail")?);
            let piece = data.get(from..to).ok_or_else(|| err(start, "file tail runs past its fragment"))?;
            sink(piece);
        } else if left != 0 {
            return Err(err(at, format!("{left} bytes of the file are in no block")));
        }
        Ok(())
    }
}
