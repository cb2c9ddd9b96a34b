//! RAFS v6 (EROFS-based) bootstrap reader: validation at open, then on-demand inode,
//! directory, xattr and chunk-index access straight from the mapped bytes.
//!
//! Nothing here materialises inodes: each call decodes only the structures it touches and
//! bounds-checks every offset against the bootstrap.

use super::error::{RafsError, Result};
use super::layout::*;
use super::types::*;

/// Block size of every accepted v6 image (tarfs with 512-byte blocks is refused).
const BLK: u64 = EROFS_BLOCK_SIZE;
/// Longest name an EROFS dirent may carry.
const MAX_NAME_LEN: usize = 255;
/// Longest symlink target nydusd accepts.
const MAX_SYMLINK_LEN: u64 = 4096;
/// Inode numbers must stay below 2^56.
const MAX_NID: u64 = (1 << 56) - 1;

/// Parsed superblocks and tables of a v6 bootstrap. O(number of blobs) in size.
#[derive(Debug)]
pub(crate) struct V6Meta {
    pub sb: ErofsSuperBlock,
    pub ext: RafsV6ExtSuperBlock,
    pub meta_addr: u64,
    pub blobs: Vec<BlobInfo>,
    pub blob_entries: Vec<BlobTableEntry>,
    pub devices: Vec<DeviceSlot>,
    pub compressor: Compressor,
    pub digester: Digester,
}

/// A located, validated inode.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ino {
    pub nid: u64,
    /// Absolute offset of the inode.
    pub off: u64,
    pub i: V6Inode,
}

impl Ino {
    fn kind(&self) -> u32 {
        u32::from(self.i.i_mode) & libc::S_IFMT
    }
    /// Absolute offset just past the inode and its xattr body.
    fn body_end(&self) -> u64 {
        self.off + self.i.size() as u64 + self.i.xattr_size() as u64
    }
}

fn corrupt<T>(msg: String) -> Result<T> {
    Err(RafsError::Corrupt(msg))
}

/// Check `[off, off+len)` is inside a buffer of `total` bytes.
fn in_file(total: u64, off: u64, len: u64, what: &str) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => corrupt(format!(
            "{what} at {off:#x} (+{len:#x}) lies outside the {total:#x}-byte bootstrap"
        )),
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 > 0 && b.1 > 0 && a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

impl V6Meta {
    /// Validate the superblocks, device table and blob table of `b`.
    pub fn load(b: &[u8]) -> Result<V6Meta> {
        let len = b.len() as u64;
        if len < BLK {
            return Err(RafsError::Truncated {
                what: "RAFS v6 bootstrap",
                offset: 0,
                need: BLK,
                have: len,
            });
        }
        let sb = ErofsSuperBlock::parse(&b[EROFS_SUPER_OFFSET as usize..])?;
        if sb.magic != EROFS_MAGIC {
            return Err(RafsError::BadMagic {
                what: "EROFS superblock",
                found: u64::from(sb.magic),
            });
        }
        if sb.checksum != 0 {
            return corrupt(format!(
                "superblock checksum {:#x} is set (RAFS v6 requires 0)",
                sb.checksum
            ));
        }
        if sb.feature_compat & EROFS_FEATURE_COMPAT_RAFS_V6 == 0 {
            return corrupt(format!(
                "feature_compat {:#x} lacks the RAFS v6 bit",
                sb.feature_compat
            ));
        }
        if sb.blkszbits == EROFS_BLKSZBITS_TARFS {
            return Err(RafsError::Unsupported(
                "tarfs (512-byte block) RAFS v6 images".into(),
            ));
        }
        if sb.blkszbits != EROFS_BLKSZBITS {
            return corrupt(format!("unsupported blkszbits {}", sb.blkszbits));
        }
        if !len.is_multiple_of(BLK) {
            return corrupt(format!(
                "bootstrap size {len} is not a multiple of the block size"
            ));
        }
        if sb.sb_extslots != 0 {
            return corrupt(format!("sb_extslots is {}, must be 0", sb.sb_extslots));
        }
        if sb.feature_incompat != RAFS_V6_FEATURE_INCOMPAT {
            return corrupt(format!(
                "feature_incompat {:#x}, RAFS v6 requires {:#x}",
                sb.feature_incompat, RAFS_V6_FEATURE_INCOMPAT
            ));
        }
        if sb.u1 != 0 {
            return corrupt(format!("compression algorithms field is {:#x}", sb.u1));
        }
        if sb.devt_slotoff != EROFS_DEVT_SLOT_OFF {
            return corrupt(format!(
                "devt_slotoff {} (device table must be at 1408)",
                sb.devt_slotoff
            ));
        }
        if sb.xattr_blkaddr != 0 {
            return Err(RafsError::Unsupported(
                "shared xattrs (xattr_blkaddr != 0)".into(),
            ));
        }
        if sb.inos == 0 {
            return corrupt("inode count is 0".into());
        }
        if sb.root_nid == 0 {
            return corrupt("root nid is 0".into());
        }
        let meta_addr = u64::from(sb.meta_blkaddr) * BLK;
        if meta_addr >= len {
            return corrupt(format!("meta_blkaddr {} beyond the file", sb.meta_blkaddr));
        }

        let ext = RafsV6ExtSuperBlock::parse(&b[RAFS_V6_EXT_SUPER_OFFSET as usize..])?;
        let flags = ext.flags;
        if flags & !super_flags::KNOWN != 0 {
            return corrupt(format!(
                "unknown superblock flags {:#x}",
                flags & !super_flags::KNOWN
            ));
        }
        if flags & super_flags::TARTFS_MODE != 0 {
            return Err(RafsError::Unsupported(
                "tarfs mode (TARTFS_MODE flag)".into(),
            ));
        }
        if flags & super_flags::ENCRYPTION_ASE_128_XTS != 0 {
            return Err(RafsError::Unsupported(
                "encrypted images (AES-128-XTS)".into(),
            ));
        }
        let compressor = compressor_of_flags(flags)?;
        let digester = digester_of_flags(flags)?;
        let cs = ext.chunk_size;
        if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return corrupt(format!("invalid chunk size {cs:#x}"));
        }

        // Tables: inside the file, aligned, sized in whole entries, not overlapping.
        let nblobs = usize::from(sb.extra_devices);
        if nblobs > MAX_BLOBS {
            return corrupt(format!("{nblobs} blobs (at most {MAX_BLOBS})"));
        }
        let bt = (ext.blob_table_offset, u64::from(ext.blob_table_size));
        if bt.1 % BlobTableEntry::SIZE as u64 != 0 {
            return corrupt(format!("blob table size {} not a multiple of 256", bt.1));
        }
        if bt.1 / BlobTableEntry::SIZE as u64 != nblobs as u64 {
            return corrupt(format!(
                "blob table holds {} entries but the superblock has {nblobs} devices",
                bt.1 / BlobTableEntry::SIZE as u64
            ));
        }
        if bt.1 > 0 {
            if bt.0 < BLK || bt.0 % BLK != 0 {
                return corrupt(format!("blob table offset {:#x} misaligned", bt.0));
            }
            in_file(len, bt.0, bt.1, "blob table")?;
        }
        let ct = (ext.chunk_table_offset, ext.chunk_table_size);
        if ct.1 > 0 {
            if ct.0 % BLK != 0 {
                return corrupt(format!("chunk table offset {:#x} misaligned", ct.0));
            }
            if ct.1 % ChunkRecord::SIZE as u64 != 0 {
                return corrupt(format!("chunk table size {} not a multiple of 80", ct.1));
            }
            in_file(len, ct.0, ct.1, "chunk table")?;
        }
        let pt = (
            ext.prefetch_table_offset,
            if ext.prefetch_table_offset == 0 {
                0
            } else {
                u64::from(ext.prefetch_table_size)
            },
        );
        if pt.1 > 0 {
            if pt.0 % 8 != 0 || pt.1 % 4 != 0 {
                return corrupt(format!(
                    "prefetch table at {:#x} size {} misaligned",
                    pt.0, pt.1
                ));
            }
            in_file(len, pt.0, pt.1, "prefetch table")?;
        }
        let dt = (
            RAFS_V6_DEVTABLE_OFFSET,
            nblobs as u64 * DeviceSlot::SIZE as u64,
        );
        in_file(len, dt.0, dt.1, "device table")?;
        let tables = [
            ("device table", dt),
            ("blob table", bt),
            ("chunk table", ct),
            ("prefetch table", pt),
        ];
        for (i, (na, a)) in tables.iter().enumerate() {
            for (nb, bb) in &tables[i + 1..] {
                if overlaps(*a, *bb) {
                    return corrupt(format!("{na} overlaps {nb}"));
                }
            }
        }

        // Device slots.
        let mut devices = Vec::with_capacity(nblobs);
        for i in 0..nblobs {
            let d = DeviceSlot::parse(&b[dt.0 as usize + i * DeviceSlot::SIZE..])?;
            if devices
                .iter()
                .any(|o: &DeviceSlot| o.tag_bytes() == d.tag_bytes())
            {
                return corrupt(format!(
                    "duplicate device tag {}",
                    String::from_utf8_lossy(d.tag_bytes())
                ));
            }
            devices.push(d);
        }

        // Blob table.
        let mut blobs = Vec::with_capacity(nblobs);
        let mut blob_entries = Vec::with_capacity(nblobs);
        for i in 0..nblobs {
            let e = BlobTableEntry::parse(&b[bt.0 as usize + i * BlobTableEntry::SIZE..])?;
            let info = validate_blob_entry(&e, i as u32, cs)?;
            // nydusd rejects empty devices; a blob without chunks (an inlined bootstrap of a
            // layer without file data) cannot be referenced, so it is tolerated there.
            if devices[i].blocks == 0 && info.chunk_count > 0 {
                return corrupt(format!("device slot {i} has 0 blocks"));
            }
            blobs.push(info);
            blob_entries.push(e);
        }

        let meta = V6Meta {
            sb,
            ext,
            meta_addr,
            blobs,
            blob_entries,
            devices,
            compressor,
            digester,
        };
        // The root must be a directory whose "." and ".." are itself.
        let root = meta.inode(b, u64::from(sb.root_nid))?;
        if root.kind() != libc::S_IFDIR {
            return corrupt("root inode is not a directory".into());
        }
        for dot in [&b"."[..], &b".."[..]] {
            match meta.find_dirent(b, &root, dot)? {
                Some(d) if d.nid == root.nid => {}
                Some(d) => {
                    return corrupt(format!(
                        "root entry {:?} points to nid {} instead of the root",
                        String::from_utf8_lossy(dot),
                        d.nid
                    ))
                }
                None => {
                    return corrupt(format!(
                        "root directory lacks {:?}",
                        String::from_utf8_lossy(dot)
                    ))
                }
            }
        }
        Ok(meta)
    }

    /// Locate and validate inode `nid`.
    pub fn inode(&self, b: &[u8], nid: u64) -> Result<Ino> {
        if nid == 0 || nid > MAX_NID {
            return Err(RafsError::NoSuchInode(nid));
        }
        let len = b.len() as u64;
        let off = nid
            .checked_mul(EROFS_INODE_SLOT_SIZE)
            .and_then(|o| o.checked_add(self.meta_addr))
            .filter(|&o| o.saturating_add(InodeCompact::SIZE as u64) <= len)
            .ok_or(RafsError::NoSuchInode(nid))?;
        let i = V6Inode::parse(&b[off as usize..]).map_err(|_| RafsError::NoSuchInode(nid))?;
        if i.i_format & !EROFS_I_FORMAT_KNOWN_MASK != 0 {
            return corrupt(format!(
                "inode {nid}: unknown i_format bits {:#x}",
                i.i_format
            ));
        }
        let ino = Ino { nid, off, i };
        in_file(len, off, (ino.body_end() - off).max(1), "inode and xattrs")?;
        let layout = i.datalayout();
        let kind = ino.kind();
        match kind {
            libc::S_IFREG => {
                if layout != EROFS_INODE_CHUNK_BASED
                    && !(layout == EROFS_INODE_FLAT_PLAIN && i.i_size == 0)
                {
                    return corrupt(format!(
                        "inode {nid}: regular file with data layout {layout}"
                    ));
                }
            }
            libc::S_IFDIR | libc::S_IFLNK => {
                if layout != EROFS_INODE_FLAT_PLAIN && layout != EROFS_INODE_FLAT_INLINE {
                    return corrupt(format!(
                        "inode {nid}: directory/symlink with data layout {layout}"
                    ));
                }
                if kind == libc::S_IFLNK && (i.i_size == 0 || i.i_size > MAX_SYMLINK_LEN) {
                    return corrupt(format!("inode {nid}: symlink target of {} bytes", i.i_size));
                }
                // All data blocks must exist in the bootstrap.
                if i.i_size > len {
                    return corrupt(format!(
                        "inode {nid}: size {} larger than the bootstrap",
                        i.i_size
                    ));
                }
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK => {
                if layout != EROFS_INODE_FLAT_PLAIN && layout != EROFS_INODE_FLAT_INLINE {
                    return corrupt(format!(
                        "inode {nid}: special file with data layout {layout}"
                    ));
                }
            }
            _ => return corrupt(format!("inode {nid}: bad mode {:#o}", i.i_mode)),
        }
        Ok(ino)
    }

    pub fn attr(&self, ino: &Ino) -> InodeAttr {
        let i = &ino.i;
        let kind = ino.kind();
        let rdev = if i.extended && (kind == libc::S_IFCHR || kind == libc::S_IFBLK) {
            i.i_u
        } else {
            0
        };
        InodeAttr {
            ino: ino.nid,
            mode: u32::from(i.i_mode),
            uid: i.i_uid,
            gid: i.i_gid,
            nlink: i.i_nlink,
            size: i.i_size,
            rdev,
            mtime: i.i_mtime,
            mtime_nsec: i.i_mtime_nsec,
            blocks: i.i_size.div_ceil(512),
        }
    }

    /// Number of data blocks of a directory or symlink.
    fn nblocks(ino: &Ino) -> u64 {
        ino.i.i_size.div_ceil(BLK)
    }

    /// Bytes of data block `idx` of a directory or symlink (the tail may be inline).
    fn data_block<'a>(&self, b: &'a [u8], ino: &Ino, idx: u64) -> Result<&'a [u8]> {
        let size = ino.i.i_size;
        let nblocks = Self::nblocks(ino);
        if idx >= nblocks {
            return corrupt(format!("inode {}: block {idx} out of range", ino.nid));
        }
        let tail = size % BLK;
        let is_last = idx + 1 == nblocks;
        let blen = if is_last && tail != 0 { tail } else { BLK };
        let len = b.len() as u64;
        if is_last && tail != 0 && ino.i.datalayout() == EROFS_INODE_FLAT_INLINE {
            let start = ino.body_end();
            if start / BLK != (start + tail - 1) / BLK {
                return corrupt(format!(
                    "inode {}: inline tail crosses a block boundary",
                    ino.nid
                ));
            }
            in_file(len, start, tail, "inline data")?;
            return Ok(&b[start as usize..(start + tail) as usize]);
        }
        let start = u64::from(ino.i.i_u)
            .checked_add(idx)
            .and_then(|blk| blk.checked_mul(BLK))
            .ok_or_else(|| RafsError::corrupt("data block address overflows"))?;
        if start < self.meta_addr.max(BLK) {
            return corrupt(format!(
                "inode {}: data block {:#x} inside the superblock area",
                ino.nid, start
            ));
        }
        in_file(len, start, blen, "data block")?;
        Ok(&b[start as usize..(start + blen) as usize])
    }

    fn dir(&self, b: &[u8], nid: u64) -> Result<Ino> {
        let ino = self.inode(b, nid)?;
        if ino.kind() != libc::S_IFDIR {
            return Err(RafsError::WrongType {
                ino: nid,
                expected: "directory",
            });
        }
        if ino.i.i_size == 0 {
            return corrupt(format!("directory {nid} is empty (no . and ..)"));
        }
        Ok(ino)
    }

    /// Binary search for `name` in directory `dir`: over blocks by first/last name, then
    /// within the block.
    fn find_dirent(&self, b: &[u8], dir: &Ino, name: &[u8]) -> Result<Option<Dirent>> {
        let (mut lo, mut hi) = (0u64, Self::nblocks(dir));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let blk = self.data_block(b, dir, mid)?;
            let ents = parse_dir_block(blk, dir.nid)?;
            let (first, last) = match (ents.first(), ents.last()) {
                (Some(f), Some(l)) => (f.1, l.1),
                _ => return corrupt(format!("directory {}: empty block", dir.nid)),
            };
            if name < first {
                hi = mid;
            } else if name > last {
                lo = mid + 1;
            } else {
                return Ok(ents
                    .binary_search_by(|e| e.1.cmp(name))
                    .ok()
                    .map(|i| ents[i].0));
            }
        }
        Ok(None)
    }

    pub fn lookup(&self, b: &[u8], parent: u64, name: &[u8]) -> Result<Option<InodeAttr>> {
        let dir = self.dir(b, parent)?;
        let Some(d) = self.find_dirent(b, &dir, name)? else {
            return Ok(None);
        };
        let child = self.inode(b, d.nid)?;
        let ft = file_type_of_mode(u32::from(child.i.i_mode));
        // EROFS allows an unknown dirent type; any other must match the inode.
        if d.file_type != file_type::UNKNOWN && d.file_type != ft {
            return corrupt(format!(
                "directory {parent}: entry {:?} has type {} but inode {} is type {ft}",
                String::from_utf8_lossy(name),
                d.file_type,
                d.nid
            ));
        }
        Ok(Some(self.attr(&child)))
    }

    /// readdir: `offset` encodes (block << 16 | entry index); see [`cookie`].
    pub fn readdir(
        &self,
        b: &[u8],
        ino: u64,
        offset: u64,
        f: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        let dir = self.dir(b, ino)?;
        let nblocks = Self::nblocks(&dir);
        let mut blk_idx = offset >> 16;
        let mut ent_idx = (offset & 0xFFFF) as usize;
        let from_start = offset == 0;
        let mut prev_last: Option<Vec<u8>> = None;
        let (mut seen_dot, mut seen_dotdot) = (false, false);
        while blk_idx < nblocks {
            let blk = self.data_block(b, &dir, blk_idx)?;
            let ents = parse_dir_block(blk, ino)?;
            if let (Some(p), Some(first)) = (&prev_last, ents.first()) {
                if p.as_slice() >= first.1 {
                    return corrupt(format!("directory {ino}: blocks are not sorted"));
                }
            }
            while ent_idx < ents.len() {
                let (d, name) = ents[ent_idx];
                if name == b"." {
                    seen_dot = true;
                    if d.nid != ino {
                        return corrupt(format!("directory {ino}: \".\" points to {}", d.nid));
                    }
                } else if name == b".." {
                    seen_dotdot = true;
                }
                if d.nid == 0 || d.nid > MAX_NID {
                    return corrupt(format!("directory {ino}: entry with nid {}", d.nid));
                }
                let next = cookie(blk_idx, ent_idx + 1);
                let cont = f(DirEntry {
                    name: name.to_vec(),
                    ino: d.nid,
                    file_type: dt_of_file_type(d.file_type),
                    next_offset: next,
                });
                if !cont {
                    return Ok(());
                }
                ent_idx += 1;
            }
            prev_last = ents.last().map(|e| e.1.to_vec());
            blk_idx += 1;
            ent_idx = 0;
        }
        if from_start && !(seen_dot && seen_dotdot) {
            return corrupt(format!("directory {ino} lacks \".\" or \"..\""));
        }
        Ok(())
    }

    pub fn readlink(&self, b: &[u8], nid: u64) -> Result<Vec<u8>> {
        let ino = self.inode(b, nid)?;
        if ino.kind() != libc::S_IFLNK {
            return Err(RafsError::WrongType {
                ino: nid,
                expected: "symlink",
            });
        }
        // size <= 4096 (checked in `inode`), so one block.
        Ok(self.data_block(b, &ino, 0)?.to_vec())
    }

    /// Walk the inline xattr entries of `nid`, calling `f(full_name, value)`.
    fn xattrs(&self, b: &[u8], nid: u64, f: &mut dyn FnMut(Vec<u8>, &[u8]) -> bool) -> Result<()> {
        let ino = self.inode(b, nid)?;
        let size = ino.i.xattr_size();
        if size == 0 {
            return Ok(());
        }
        let start = ino.off as usize + ino.i.size();
        let body = &b[start..start + size];
        let hdr = XattrBodyHeader::parse(body)?;
        if hdr.shared_count != 0 {
            return Err(RafsError::Unsupported(format!(
                "inode {nid}: shared xattrs"
            )));
        }
        let mut pos = XattrBodyHeader::SIZE;
        while pos < size {
            let e = XattrEntryHeader::parse(&body[pos..]).map_err(|_| {
                RafsError::corrupt(format!("inode {nid}: xattr entry overruns i_xattr_icount"))
            })?;
            let esize = e.entry_size();
            if pos + esize > size {
                return corrupt(format!("inode {nid}: xattr entry overruns i_xattr_icount"));
            }
            let prefix = xattr_prefix(e.name_index).ok_or_else(|| {
                RafsError::corrupt(format!(
                    "inode {nid}: unknown xattr name index {}",
                    e.name_index
                ))
            })?;
            let n0 = pos + XattrEntryHeader::SIZE;
            let n1 = n0 + usize::from(e.name_len);
            let v1 = n1 + usize::from(e.value_size);
            let mut name = prefix.to_vec();
            name.extend_from_slice(&body[n0..n1]);
            if !f(name, &body[n1..v1]) {
                return Ok(());
            }
            pos += esize;
        }
        Ok(())
    }

    pub fn get_xattr(&self, b: &[u8], nid: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.xattrs(b, nid, &mut |n, v| {
            if n == name {
                found = Some(v.to_vec());
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    pub fn list_xattrs(&self, b: &[u8], nid: u64) -> Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        self.xattrs(b, nid, &mut |n, _| {
            names.push(n);
            true
        })?;
        Ok(names)
    }

    pub fn file_chunks(
        &self,
        b: &[u8],
        nid: u64,
        offset: u64,
        size: u64,
    ) -> Result<Vec<FileChunk>> {
        let ino = self.inode(b, nid)?;
        if ino.kind() != libc::S_IFREG {
            return Err(RafsError::WrongType {
                ino: nid,
                expected: "regular file",
            });
        }
        let isize = ino.i.i_size;
        let end = offset.saturating_add(size).min(isize);
        if isize == 0 || offset >= end {
            return Ok(Vec::new());
        }
        let cs = u64::from(self.ext.chunk_size);
        let count = isize.div_ceil(cs);
        let fmt = ino.i.i_u as u16;
        if fmt & EROFS_CHUNK_FORMAT_INDEXES == 0 {
            return Err(RafsError::Unsupported(format!(
                "inode {nid}: chunk format {fmt:#x} without chunk indexes (block map)"
            )));
        }
        let arr = round_up(ino.body_end(), 8);
        let arr_len = count
            .checked_mul(ChunkIndexEntry::SIZE as u64)
            .ok_or_else(|| RafsError::corrupt("chunk count overflows"))?;
        in_file(b.len() as u64, arr, arr_len, "chunk index array")?;
        let first = offset / cs;
        let last = (end - 1) / cs;
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        for k in first..=last {
            let p = (arr + k * ChunkIndexEntry::SIZE as u64) as usize;
            let e = ChunkIndexEntry::parse(&b[p..])?;
            let blob_index = e
                .blob_index()
                .filter(|&bi| (bi as usize) < self.blobs.len())
                .ok_or_else(|| {
                    RafsError::corrupt(format!(
                        "inode {nid}: chunk {k} refers to device {} of {}",
                        e.device,
                        self.blobs.len()
                    ))
                })?;
            let blob = &self.blobs[blob_index as usize];
            if e.ci_index >= blob.chunk_count {
                return corrupt(format!(
                    "inode {nid}: chunk {k}: ci index {} >= blob {blob_index} chunk count {}",
                    e.ci_index, blob.chunk_count
                ));
            }
            let file_offset = k * cs;
            out.push(FileChunk {
                file_offset,
                len: (isize - file_offset).min(cs) as u32,
                chunk: ChunkRef::Indexed {
                    blob_index,
                    ci_index: e.ci_index,
                    blkaddr: e.blkaddr,
                },
            });
        }
        Ok(out)
    }

    pub fn prefetch_inodes(&self, b: &[u8]) -> Result<Vec<u64>> {
        let off = self.ext.prefetch_table_offset;
        if off == 0 {
            return Ok(Vec::new());
        }
        let n = u64::from(self.ext.prefetch_table_size) / 4;
        let mut out = Vec::new();
        for k in 0..n {
            let p = (off + 4 * k) as usize;
            let nid = u64::from(u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]));
            if nid == 0 {
                break;
            }
            self.inode(b, nid)
                .map_err(|e| RafsError::corrupt(format!("prefetch table entry {k}: {e}")))?;
            out.push(nid);
        }
        Ok(out)
    }

    /// Records of the bootstrap chunk table, validated against the blob table.
    pub fn chunk_records<'a>(
        &'a self,
        b: &'a [u8],
    ) -> impl Iterator<Item = Result<ChunkRecord>> + 'a {
        let off = self.ext.chunk_table_offset as usize;
        let n = (self.ext.chunk_table_size / ChunkRecord::SIZE as u64) as usize;
        (0..n).map(move |k| {
            let r = ChunkRecord::parse(&b[off + k * ChunkRecord::SIZE..])?;
            let Some(blob) = self.blobs.get(r.blob_index as usize) else {
                return corrupt(format!(
                    "chunk table entry {k}: blob index {} out of range",
                    r.blob_index
                ));
            };
            if r.index >= blob.chunk_count {
                return corrupt(format!(
                    "chunk table entry {k}: ci index {} >= chunk count {}",
                    r.index, blob.chunk_count
                ));
            }
            Ok(r)
        })
    }
}

/// readdir cookie of entry `ent` in block `blk`.
fn cookie(blk: u64, ent: usize) -> u64 {
    (blk << 16) | ent as u64
}

/// Decode and validate one directory block: dirents, then packed names, sorted strictly.
fn parse_dir_block(blk: &[u8], dir: u64) -> Result<Vec<(Dirent, &[u8])>> {
    let d0 = Dirent::parse(blk)
        .map_err(|_| RafsError::corrupt(format!("directory {dir}: block too short")))?;
    let n0 = usize::from(d0.nameoff);
    if n0 < Dirent::SIZE || n0 % Dirent::SIZE != 0 || n0 >= blk.len() {
        return corrupt(format!(
            "directory {dir}: first nameoff {n0} invalid for a {}-byte block",
            blk.len()
        ));
    }
    let count = n0 / Dirent::SIZE;
    let mut out: Vec<(Dirent, &[u8])> = Vec::with_capacity(count);
    let mut next = d0;
    for i in 0..count {
        let d = next;
        let start = usize::from(d.nameoff);
        let end = if i + 1 < count {
            next = Dirent::parse(&blk[(i + 1) * Dirent::SIZE..])?;
            usize::from(next.nameoff)
        } else {
            blk[start.min(blk.len())..]
                .iter()
                .position(|&c| c == 0)
                .map_or(blk.len(), |p| start + p)
        };
        if start < n0 || start >= end || end > blk.len() || end - start > MAX_NAME_LEN {
            return corrupt(format!(
                "directory {dir}: dirent {i} name [{start}, {end}) invalid"
            ));
        }
        let name = &blk[start..end];
        if let Some(p) = out.last() {
            if p.1 >= name {
                return corrupt(format!(
                    "directory {dir}: entries not sorted ({:?} before {:?})",
                    String::from_utf8_lossy(p.1),
                    String::from_utf8_lossy(name)
                ));
            }
        }
        out.push((d, name));
    }
    Ok(out)
}

fn compressor_of_flags(flags: u64) -> Result<Compressor> {
    use super_flags::*;
    let bits = flags & COMPRESSION_MASK;
    match bits {
        COMPRESSION_NONE => Ok(Compressor::None),
        COMPRESSION_LZ4 => Ok(Compressor::Lz4Block),
        COMPRESSION_GZIP => Ok(Compressor::Gzip),
        COMPRESSION_ZSTD => Ok(Compressor::Zstd),
        _ => corrupt(format!(
            "superblock must set exactly one compression flag, has {bits:#x}"
        )),
    }
}

fn digester_of_flags(flags: u64) -> Result<Digester> {
    use super_flags::*;
    match flags & HASH_MASK {
        HASH_BLAKE3 => Ok(Digester::Blake3),
        HASH_SHA256 => Ok(Digester::Sha256),
        bits => corrupt(format!(
            "superblock must set exactly one hash flag, has {bits:#x}"
        )),
    }
}

pub(crate) fn compressor_of_super_flags(flags: u64) -> Result<Compressor> {
    compressor_of_flags(flags)
}

pub(crate) fn digester_of_super_flags(flags: u64) -> Result<Digester> {
    digester_of_flags(flags)
}

/// Refuse blob features this reader does not implement, naming them.
pub(crate) fn refuse_unsupported_blob_features(index: u32, features: u32) -> Result<()> {
    use blob_features::*;
    let named = [
        (ZRAN, "zran (--oci-ref) blobs"),
        (BATCH, "batch chunks"),
        (ENCRYPTED, "encrypted blobs"),
        (TARFS, "tarfs blobs"),
        (SEPARATE, "separate meta blobs"),
        (EXTERNAL, "external blobs"),
    ];
    for (bit, name) in named {
        if features & bit != 0 {
            return Err(RafsError::Unsupported(format!("blob {index}: {name}")));
        }
    }
    if features & (BLOB_FEATURES_INCOMPAT_UNKNOWN | BLOB_FEATURE_V5_NO_EXT_BLOB_TABLE) != 0 {
        return corrupt(format!(
            "blob {index}: unknown incompatible features {features:#x}"
        ));
    }
    Ok(())
}

/// Validate one v6 blob table entry (RAFS-FORMAT.md §2.5) and decode it.
fn validate_blob_entry(e: &BlobTableEntry, pos: u32, chunk_size: u32) -> Result<BlobInfo> {
    use blob_features::*;
    if e.blob_index != pos {
        return corrupt(format!(
            "blob table entry {pos} has blob_index {}",
            e.blob_index
        ));
    }
    if e.chunk_size != chunk_size {
        return corrupt(format!(
            "blob {pos}: chunk size {:#x} differs from the superblock's {chunk_size:#x}",
            e.chunk_size
        ));
    }
    refuse_unsupported_blob_features(pos, e.features)?;
    if e.cipher_algo != 0 {
        return Err(RafsError::Unsupported(format!(
            "blob {pos}: encrypted blobs (cipher {})",
            e.cipher_algo
        )));
    }
    let info = e.to_blob_info()?;
    if e.features & ALIGNED == 0 {
        return corrupt(format!("blob {pos}: ALIGNED feature missing"));
    }
    if e.chunk_count > MAX_CI_INDEX + 1 {
        return corrupt(format!("blob {pos}: absurd chunk count {}", e.chunk_count));
    }
    if e.compressed_size > 1 << 40 || e.uncompressed_size > 1 << 44 {
        return corrupt(format!("blob {pos}: absurd blob sizes"));
    }
    if e.ci_offset.checked_add(e.ci_compressed_size).is_none() {
        return corrupt(format!("blob {pos}: ci offset + size overflows"));
    }
    if e.ci_compressed_size > e.ci_uncompressed_size {
        return corrupt(format!(
            "blob {pos}: ci compressed size {} > uncompressed size {}",
            e.ci_compressed_size, e.ci_uncompressed_size
        ));
    }
    let entry = if e.features & CHUNK_INFO_V2 != 0 {
        CiEntryV2::SIZE
    } else {
        CiEntryV1::SIZE
    } as u64;
    if e.features & IS_CHUNKDICT_GENERATED == 0
        && e.ci_uncompressed_size != u64::from(e.chunk_count) * entry
    {
        return corrupt(format!(
            "blob {pos}: ci uncompressed size {} != {} chunks x {entry}",
            e.ci_uncompressed_size, e.chunk_count
        ));
    }
    Ok(info)
}
