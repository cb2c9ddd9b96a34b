//! RAFS v5 bootstrap reader (RAFS-FORMAT.md §4): inode table → 8-byte aligned inode records
//! holding name, symlink target, xattrs and chunk records inline.
//!
//! Inode numbers are inode-table indexes (1-based). A directory's children occupy the
//! consecutive indexes `[child_index, child_index + child_count)` sorted by name; a hard link
//! name has its own index, but its record's `i_ino` names the canonical index, which is the
//! inode number reported for every name.

use super::error::{RafsError, Result};
use super::layout::*;
use super::types::*;
use super::v6::{compressor_of_super_flags, digester_of_super_flags};

/// Inode number of the v5 root directory.
pub const ROOT_INO: u64 = 1;
const MAX_NAME_LEN: usize = 255;
const MAX_SYMLINK_LEN: usize = 4096;

fn corrupt<T>(msg: String) -> Result<T> {
    Err(RafsError::Corrupt(msg))
}

fn in_file(total: u64, off: u64, len: u64, what: &str) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => corrupt(format!(
            "{what} at {off:#x} (+{len:#x}) lies outside the {total:#x}-byte bootstrap"
        )),
    }
}

/// Parsed v5 superblock and blob tables.
#[derive(Debug)]
pub(crate) struct V5Meta {
    pub sb: RafsV5SuperBlock,
    pub blobs: Vec<BlobInfo>,
    pub compressor: Compressor,
    pub digester: Digester,
}

/// A located, validated v5 inode record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rec {
    /// Inode-table index of this record.
    pub idx: u64,
    pub i: RafsV5Inode,
    pub name_off: u64,
    pub symlink_off: u64,
    /// Offset of the xattr table (its u64 size field), when XATTR.
    pub xattr_off: u64,
    pub chunks_off: u64,
}

impl Rec {
    fn kind(&self) -> u32 {
        self.i.i_mode & libc::S_IFMT
    }
}

impl V5Meta {
    pub fn load(b: &[u8]) -> Result<V5Meta> {
        let len = b.len() as u64;
        let sb = RafsV5SuperBlock::parse(b)?;
        if sb.magic != RAFS_V5_MAGIC {
            return Err(RafsError::BadMagic {
                what: "RAFS v5 superblock",
                found: u64::from(sb.magic),
            });
        }
        if sb.fs_version != RAFS_V5_VERSION {
            return corrupt(format!("RAFS v5 fs_version {:#x}", sb.fs_version));
        }
        if sb.sb_size as usize != RAFS_V5_SUPER_SIZE || len <= RAFS_V5_SUPER_SIZE as u64 {
            return corrupt(format!("RAFS v5 superblock size {}", sb.sb_size));
        }
        let cs = sb.block_size;
        if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return corrupt(format!("invalid chunk size {cs:#x}"));
        }
        if sb.flags & !super_flags::KNOWN != 0 {
            return corrupt(format!(
                "unknown superblock flags {:#x}",
                sb.flags & !super_flags::KNOWN
            ));
        }
        if sb.flags & super_flags::ENCRYPTION_ASE_128_XTS != 0 {
            return Err(RafsError::Unsupported(
                "encrypted images (AES-128-XTS)".into(),
            ));
        }
        if sb.flags & super_flags::TARTFS_MODE != 0 {
            return Err(RafsError::Unsupported(
                "tarfs mode (TARTFS_MODE flag)".into(),
            ));
        }
        let compressor = compressor_of_super_flags(sb.flags)?;
        let digester = digester_of_super_flags(sb.flags)?;

        let meta = (RAFS_V5_SUPER_SIZE as u64, len - RAFS_V5_SUPER_SIZE as u64);
        let within = |r: (u64, u64), what: &str| -> Result<()> {
            if r.0 < meta.0 {
                return corrupt(format!("{what} overlaps the superblock"));
            }
            in_file(len, r.0, r.1, what)
        };
        let overlap =
            |a: (u64, u64), c: (u64, u64)| a.1 > 0 && c.1 > 0 && a.0 < c.0 + c.1 && c.0 < a.0 + a.1;
        let it = (sb.inode_table_offset, u64::from(sb.inode_table_entries) * 4);
        within(it, "inode table")?;
        if sb.inode_table_offset % RAFS_V5_ALIGNMENT != 0 {
            return corrupt("inode table misaligned".into());
        }
        if sb.inode_table_entries == 0 || sb.inodes_count > u64::from(sb.inode_table_entries) {
            return corrupt(format!(
                "inode count {} vs inode table entries {}",
                sb.inodes_count, sb.inode_table_entries
            ));
        }
        let bt = (sb.blob_table_offset, u64::from(sb.blob_table_size));
        if bt.1 > 0 {
            within(bt, "blob table")?;
        }
        let et = (
            sb.extended_blob_table_offset,
            u64::from(sb.extended_blob_table_entries) * RafsV5ExtBlobEntry::SIZE as u64,
        );
        if et.1 > 0 {
            within(et, "extended blob table")?;
        }
        let pt = (
            sb.prefetch_table_offset,
            u64::from(sb.prefetch_table_entries) * 4,
        );
        if pt.1 > 0 {
            within(pt, "prefetch table")?;
        }
        let tables = [
            ("inode table", it),
            ("blob table", bt),
            ("extended blob table", et),
            ("prefetch table", pt),
        ];
        for (i, (na, a)) in tables.iter().enumerate() {
            for (nb, c) in &tables[i + 1..] {
                if overlap(*a, *c) {
                    return corrupt(format!("{na} overlaps {nb}"));
                }
            }
        }

        let entries = if bt.1 > 0 {
            parse_v5_blob_table(&b[bt.0 as usize..(bt.0 + bt.1) as usize])?
        } else {
            Vec::new()
        };
        let n_ext = sb.extended_blob_table_entries as usize;
        if n_ext > 0 && n_ext < entries.len() {
            return corrupt(format!(
                "extended blob table ({n_ext}) shorter than blob table ({})",
                entries.len()
            ));
        }
        let mut blobs = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let ext = if n_ext > 0 {
                RafsV5ExtBlobEntry::parse(&b[et.0 as usize + i * RafsV5ExtBlobEntry::SIZE..])?
            } else {
                RafsV5ExtBlobEntry::default()
            };
            super::v6::refuse_unsupported_blob_features(i as u32, ext.features)?;
            let blob_id = std::str::from_utf8(&e.blob_id)
                .map_err(|_| RafsError::corrupt(format!("v5 blob {i}: id is not UTF-8")))?
                .to_string();
            blobs.push(BlobInfo {
                index: i as u32,
                blob_id,
                chunk_size: cs,
                chunk_count: ext.chunk_count,
                compressor,
                digester,
                features: ext.features,
                compressed_size: ext.compressed_size,
                uncompressed_size: ext.uncompressed_size,
                ci_compressor: Compressor::None,
                ci_offset: 0,
                ci_compressed_size: 0,
                ci_uncompressed_size: 0,
                toc_size: 0,
                toc_digest: [0; 32],
            });
        }
        let m = V5Meta {
            sb,
            blobs,
            compressor,
            digester,
        };
        let root = m.inode(b, ROOT_INO)?;
        if root.kind() != libc::S_IFDIR {
            return corrupt("root inode is not a directory".into());
        }
        Ok(m)
    }

    fn has_ext_table(&self) -> bool {
        self.sb.extended_blob_table_entries > 0
    }

    /// The record at inode-table index `idx`.
    fn record(&self, b: &[u8], idx: u64) -> Result<Rec> {
        if idx == 0 || idx > u64::from(self.sb.inode_table_entries) {
            return Err(RafsError::NoSuchInode(idx));
        }
        let len = b.len() as u64;
        let p = (self.sb.inode_table_offset + (idx - 1) * 4) as usize;
        let off = u64::from(u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]])) << 3;
        if off <= RAFS_V5_SUPER_SIZE as u64 {
            return corrupt(format!("inode {idx}: record offset {off:#x} invalid"));
        }
        in_file(len, off, RafsV5Inode::SIZE as u64, "v5 inode")?;
        let i = RafsV5Inode::parse(&b[off as usize..])?;
        if i.i_flags & !v5_inode_flags::KNOWN != 0 {
            return corrupt(format!("inode {idx}: unknown flags {:#x}", i.i_flags));
        }
        let name_off = off + RafsV5Inode::SIZE as u64;
        let nlen = usize::from(i.i_name_size);
        if nlen == 0 || nlen > MAX_NAME_LEN {
            return corrupt(format!("inode {idx}: name length {nlen}"));
        }
        let symlink_off = name_off + round_up(nlen as u64, RAFS_V5_ALIGNMENT);
        let slen = u64::from(i.i_symlink_size);
        let mut next = symlink_off + round_up(slen, RAFS_V5_ALIGNMENT);
        in_file(len, name_off, next - name_off, "v5 name/symlink")?;
        let kind = i.i_mode & libc::S_IFMT;
        if (kind == libc::S_IFLNK) != (i.i_flags & v5_inode_flags::SYMLINK != 0 && slen > 0) {
            return corrupt(format!("inode {idx}: symlink flag/size/mode disagree"));
        }
        let xattr_off = next;
        if i.i_flags & v5_inode_flags::XATTR != 0 {
            in_file(len, next, 8, "v5 xattr table")?;
            let p = next as usize;
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[p..p + 8]);
            let size = u64::from_le_bytes(a);
            let total = 8u64
                .checked_add(round_up(size, RAFS_V5_ALIGNMENT))
                .filter(|&t| t <= len)
                .ok_or_else(|| RafsError::corrupt(format!("inode {idx}: xattr size {size}")))?;
            in_file(len, next, total, "v5 xattr table")?;
            next += total;
        }
        let chunks_off = next;
        match kind {
            libc::S_IFREG => {
                let n = u64::from(i.i_child_count) * ChunkRecord::SIZE as u64;
                in_file(len, chunks_off, n, "v5 chunk records")?;
            }
            libc::S_IFDIR
            | libc::S_IFLNK
            | libc::S_IFCHR
            | libc::S_IFBLK
            | libc::S_IFIFO
            | libc::S_IFSOCK => {}
            _ => return corrupt(format!("inode {idx}: bad mode {:#o}", i.i_mode)),
        }
        Ok(Rec {
            idx,
            i,
            name_off,
            symlink_off,
            xattr_off,
            chunks_off,
        })
    }

    /// The canonical record of inode `ino` (its own table slot, with `i_ino == ino`).
    fn inode(&self, b: &[u8], ino: u64) -> Result<Rec> {
        let r = self.record(b, ino)?;
        if r.i.i_ino != ino {
            return corrupt(format!(
                "inode table slot {ino} holds inode {} (not a canonical inode)",
                r.i.i_ino
            ));
        }
        Ok(r)
    }

    fn name<'a>(&self, b: &'a [u8], r: &Rec) -> &'a [u8] {
        let s = r.name_off as usize;
        &b[s..s + usize::from(r.i.i_name_size)]
    }

    fn attr(&self, r: &Rec) -> InodeAttr {
        InodeAttr {
            ino: r.i.i_ino,
            mode: r.i.i_mode,
            uid: r.i.i_uid,
            gid: r.i.i_gid,
            nlink: r.i.i_nlink,
            size: r.i.i_size,
            rdev: r.i.i_rdev,
            mtime: r.i.i_mtime,
            mtime_nsec: r.i.i_mtime_nsec,
            blocks: r.i.i_blocks,
        }
    }

    pub fn getattr(&self, b: &[u8], ino: u64) -> Result<InodeAttr> {
        Ok(self.attr(&self.inode(b, ino)?))
    }

    fn dir(&self, b: &[u8], ino: u64) -> Result<Rec> {
        let r = self.inode(b, ino)?;
        if r.kind() != libc::S_IFDIR {
            return Err(RafsError::WrongType {
                ino,
                expected: "directory",
            });
        }
        if r.i.i_child_count > 0 {
            let first = u64::from(r.i.i_child_index);
            let end = first + u64::from(r.i.i_child_count);
            if first <= ino || end - 1 > u64::from(self.sb.inode_table_entries) {
                return corrupt(format!(
                    "directory {ino}: children [{first}, {end}) out of range"
                ));
            }
        }
        Ok(r)
    }

    /// Child `k` of directory record `d`, with its name; the reported attr is the
    /// canonical inode's.
    fn child<'a>(&self, b: &'a [u8], d: &Rec, k: u32) -> Result<(Rec, &'a [u8])> {
        let idx = u64::from(d.i.i_child_index) + u64::from(k);
        let r = self.record(b, idx)?;
        if r.i.i_ino == 0 || r.i.i_ino > u64::from(self.sb.inode_table_entries) {
            return corrupt(format!("entry {idx}: inode number {}", r.i.i_ino));
        }
        let name = self.name(b, &r);
        if name.contains(&b'/') || name == b"." || name == b".." {
            return corrupt(format!("directory {}: invalid child name", d.idx));
        }
        Ok((r, name))
    }

    pub fn lookup(&self, b: &[u8], parent: u64, name: &[u8]) -> Result<Option<InodeAttr>> {
        let d = self.dir(b, parent)?;
        if name == b"." {
            return Ok(Some(self.attr(&d)));
        }
        if name == b".." {
            return self.parent_attr(b, &d).map(Some);
        }
        let (mut lo, mut hi) = (0u32, d.i.i_child_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (r, n) = self.child(b, &d, mid)?;
            match n.cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    return self.getattr(b, r.i.i_ino).map(Some);
                }
            }
        }
        Ok(None)
    }

    fn parent_attr(&self, b: &[u8], d: &Rec) -> Result<InodeAttr> {
        let p = if d.idx == ROOT_INO {
            ROOT_INO
        } else {
            d.i.i_parent
        };
        let r = self.dir(b, p)?;
        Ok(self.attr(&r))
    }

    /// readdir: cookie 0 = ".", 1 = "..", 2 + k = child k.
    pub fn readdir(
        &self,
        b: &[u8],
        ino: u64,
        offset: u64,
        f: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        let d = self.dir(b, ino)?;
        let total = 2 + u64::from(d.i.i_child_count);
        let mut prev: Option<&[u8]> = None;
        for pos in offset..total {
            let (name, ino, ft): (&[u8], u64, u32) = match pos {
                0 => (b".", d.idx, u32::from(libc::DT_DIR)),
                1 => (b"..", self.parent_attr(b, &d)?.ino, u32::from(libc::DT_DIR)),
                _ => {
                    let (r, n) = self.child(b, &d, (pos - 2) as u32)?;
                    if let Some(p) = prev {
                        if p >= n {
                            return corrupt(format!("directory {ino}: children not sorted"));
                        }
                    }
                    prev = Some(n);
                    let ft = dt_of_file_type(file_type_of_mode(r.i.i_mode));
                    (n, r.i.i_ino, ft)
                }
            };
            let cont = f(DirEntry {
                name: name.to_vec(),
                ino,
                file_type: ft,
                next_offset: pos + 1,
            });
            if !cont {
                break;
            }
        }
        Ok(())
    }

    pub fn readlink(&self, b: &[u8], ino: u64) -> Result<Vec<u8>> {
        let r = self.inode(b, ino)?;
        if r.kind() != libc::S_IFLNK {
            return Err(RafsError::WrongType {
                ino,
                expected: "symlink",
            });
        }
        let n = usize::from(r.i.i_symlink_size);
        if n == 0 || n > MAX_SYMLINK_LEN {
            return corrupt(format!("inode {ino}: symlink of {n} bytes"));
        }
        let s = r.symlink_off as usize;
        Ok(b[s..s + n].to_vec())
    }

    fn xattrs(&self, b: &[u8], ino: u64, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let r = self.inode(b, ino)?;
        if r.i.i_flags & v5_inode_flags::XATTR == 0 {
            return Ok(());
        }
        let p = r.xattr_off as usize;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[p..p + 8]);
        let size = u64::from_le_bytes(a) as usize; // validated in `record`
        let body = &b[p + 8..p + 8 + size];
        let mut pos = 0usize;
        while pos < size {
            if pos + 4 > size {
                return corrupt(format!("inode {ino}: xattr pair header overruns the table"));
            }
            let plen = u32::from_le_bytes([body[pos], body[pos + 1], body[pos + 2], body[pos + 3]])
                as usize;
            pos += 4;
            if plen > size - pos {
                return corrupt(format!("inode {ino}: xattr pair overruns the table"));
            }
            let pair = &body[pos..pos + plen];
            let nul = pair
                .iter()
                .position(|&c| c == 0)
                .ok_or_else(|| RafsError::corrupt(format!("inode {ino}: xattr name lacks NUL")))?;
            if !f(&pair[..nul], &pair[nul + 1..]) {
                return Ok(());
            }
            pos += plen;
        }
        Ok(())
    }

    pub fn get_xattr(&self, b: &[u8], ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut out = None;
        self.xattrs(b, ino, &mut |n, v| {
            if n == name {
                out = Some(v.to_vec());
                false
            } else {
                true
            }
        })?;
        Ok(out)
    }

    pub fn list_xattrs(&self, b: &[u8], ino: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.xattrs(b, ino, &mut |n, _| {
            out.push(n.to_vec());
            true
        })?;
        Ok(out)
    }

    fn chunk_record(&self, b: &[u8], r: &Rec, k: u32) -> Result<ChunkRecord> {
        let p = r.chunks_off + u64::from(k) * ChunkRecord::SIZE as u64;
        let c = ChunkRecord::parse(&b[p as usize..])?;
        let Some(blob) = self.blobs.get(c.blob_index as usize) else {
            return corrupt(format!(
                "inode {}: chunk {k}: blob index {} out of range",
                r.idx, c.blob_index
            ));
        };
        if self.has_ext_table() && c.index >= blob.chunk_count {
            return corrupt(format!(
                "inode {}: chunk {k}: index {} >= blob chunk count {}",
                r.idx, c.index, blob.chunk_count
            ));
        }
        if c.uncompressed_size == 0 || c.uncompressed_size > self.sb.block_size {
            return corrupt(format!(
                "inode {}: chunk {k}: uncompressed size {}",
                r.idx, c.uncompressed_size
            ));
        }
        if c.flags & chunk_flags::COMPRESSED == 0 && c.compressed_size != c.uncompressed_size {
            return corrupt(format!(
                "inode {}: chunk {k}: stored chunk with differing sizes",
                r.idx
            ));
        }
        if c.flags & (chunk_flags::ENCRYPTED | chunk_flags::BATCH) != 0 {
            return Err(RafsError::Unsupported(format!(
                "inode {}: encrypted or batch chunk",
                r.idx
            )));
        }
        Ok(c)
    }

    pub fn file_chunks(
        &self,
        b: &[u8],
        ino: u64,
        offset: u64,
        size: u64,
    ) -> Result<Vec<FileChunk>> {
        let r = self.inode(b, ino)?;
        if r.kind() != libc::S_IFREG {
            return Err(RafsError::WrongType {
                ino,
                expected: "regular file",
            });
        }
        let isize = r.i.i_size;
        let end = offset.saturating_add(size).min(isize);
        if offset >= end {
            return Ok(Vec::new());
        }
        let cs = u64::from(self.sb.block_size);
        let mut out = Vec::new();
        let mk = |c: ChunkRecord| FileChunk {
            file_offset: c.file_offset,
            len: c.uncompressed_size,
            chunk: ChunkRef::Inline(c.to_chunk_info()),
        };
        if r.i.i_flags & v5_inode_flags::HAS_HOLE == 0 {
            let need = isize.div_ceil(cs);
            if u64::from(r.i.i_child_count) != need {
                return corrupt(format!(
                    "inode {ino}: {} chunk records for {isize} bytes",
                    r.i.i_child_count
                ));
            }
            for k in offset / cs..=(end - 1) / cs {
                let c = self.chunk_record(b, &r, k as u32)?;
                let want = (isize - k * cs).min(cs);
                if c.file_offset != k * cs || u64::from(c.uncompressed_size) != want {
                    return corrupt(format!(
                        "inode {ino}: chunk {k} covers [{}, +{}), expected [{}, +{want})",
                        c.file_offset,
                        c.uncompressed_size,
                        k * cs
                    ));
                }
                out.push(mk(c));
            }
        } else {
            let mut prev_end = 0u64;
            for k in 0..r.i.i_child_count {
                let c = self.chunk_record(b, &r, k)?;
                let cend = c.file_offset.saturating_add(u64::from(c.uncompressed_size));
                if c.file_offset < prev_end || cend > isize {
                    return corrupt(format!("inode {ino}: chunk {k} out of order or range"));
                }
                prev_end = cend;
                if cend > offset && c.file_offset < end {
                    out.push(mk(c));
                }
            }
        }
        Ok(out)
    }

    pub fn prefetch_inodes(&self, b: &[u8]) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for k in 0..u64::from(self.sb.prefetch_table_entries) {
            let p = (self.sb.prefetch_table_offset + 4 * k) as usize;
            let ino = u64::from(u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]));
            if ino == 0 {
                break;
            }
            self.inode(b, ino)
                .map_err(|e| RafsError::corrupt(format!("prefetch table entry {k}: {e}")))?;
            out.push(ino);
        }
        Ok(out)
    }

    /// Every chunk record of every canonical regular-file inode, in inode order.
    pub fn chunk_records<'a>(&'a self, b: &'a [u8]) -> V5ChunkIter<'a> {
        V5ChunkIter {
            m: self,
            b,
            idx: 0,
            cur: None,
            k: 0,
            failed: false,
        }
    }
}

/// Iterator behind [`V5Meta::chunk_records`]; O(1) memory.
pub(crate) struct V5ChunkIter<'a> {
    m: &'a V5Meta,
    b: &'a [u8],
    idx: u64,
    cur: Option<Rec>,
    k: u32,
    failed: bool,
}

impl Iterator for V5ChunkIter<'_> {
    type Item = Result<ChunkRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(r) = &self.cur {
                if self.k < r.i.i_child_count {
                    let k = self.k;
                    self.k += 1;
                    let res = self.m.chunk_record(self.b, r, k);
                    self.failed = res.is_err();
                    return Some(res);
                }
                self.cur = None;
            }
            self.idx += 1;
            if self.idx > u64::from(self.m.sb.inode_table_entries) {
                return None;
            }
            match self.m.record(self.b, self.idx) {
                Ok(r) if r.kind() == libc::S_IFREG && r.i.i_ino == self.idx => {
                    self.cur = Some(r);
                    self.k = 0;
                }
                Ok(_) => {}
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
