//! [`RafsImage`]: an opened, validated RAFS v5 or v6 bootstrap.
//!
//! The bootstrap is memory-mapped (or held in an owned buffer); only the superblock and the
//! blob table are decoded at open. Every other access decodes the few structures it needs
//! from the mapped bytes, so memory beyond the mapping is O(1) in the number of files.

use std::fs::File;
use std::path::Path;

use super::error::{RafsError, Result};
use super::layout::{self, super_flags, ChunkRecord};
use super::types::*;
use super::v5::V5Meta;
use super::v6::V6Meta;

/// The bytes of a bootstrap: a read-only mapping or an owned buffer.
enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

enum Meta {
    V5(V5Meta),
    V6(V6Meta),
}

/// An opened RAFS bootstrap. Cheap to share (`Send + Sync`); all methods take `&self`.
///
/// Inode numbers are v6 nids or v5 inode-table indexes (1-based): stable, non-zero,
/// below 2^56, and shared by hard links.
pub struct RafsImage {
    data: Backing,
    meta: Meta,
}

impl std::fmt::Debug for RafsImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RafsImage")
            .field("version", &self.version())
            .field("len", &self.data.bytes().len())
            .field("blobs", &self.blobs().len())
            .finish()
    }
}

impl RafsImage {
    /// Map and validate the bootstrap at `path`.
    pub fn open(path: &Path) -> Result<RafsImage> {
        let io = |source| RafsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(RafsError::Truncated {
                what: "bootstrap",
                offset: 0,
                need: 4096,
                have: 0,
            });
        }
        // SAFETY: the mapping is read-only and private to this image. A bootstrap is an
        // immutable file (content-addressed layer data); the reader never trusts the bytes
        // and bounds-checks every access against the mapping length taken here. Another
        // process truncating the file underneath us is outside the supported contract
        // (it would raise SIGBUS, like for any mapped file).
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io)?;
        Self::with_backing(Backing::Mmap(map))
    }

    /// Validate a bootstrap held in memory (tests, fuzzing, bootstraps extracted from blobs).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<RafsImage> {
        Self::with_backing(Backing::Owned(bytes))
    }

    fn with_backing(data: Backing) -> Result<RafsImage> {
        let b = data.bytes();
        let meta = if b.len() >= 4 && b[..4] == layout::RAFS_V5_MAGIC.to_le_bytes() {
            Meta::V5(V5Meta::load(b)?)
        } else {
            Meta::V6(V6Meta::load(b)?)
        };
        Ok(RafsImage { data, meta })
    }

    fn b(&self) -> &[u8] {
        self.data.bytes()
    }

    /// The raw bootstrap bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.b()
    }

    pub fn version(&self) -> RafsVersion {
        match self.meta {
            Meta::V5(_) => RafsVersion::V5,
            Meta::V6(_) => RafsVersion::V6,
        }
    }

    /// Inode number of the root directory.
    pub fn root_ino(&self) -> u64 {
        match &self.meta {
            Meta::V5(_) => super::v5::ROOT_INO,
            Meta::V6(m) => u64::from(m.sb.root_nid),
        }
    }

    /// Global chunk size.
    pub fn chunk_size(&self) -> u32 {
        match &self.meta {
            Meta::V5(m) => m.sb.block_size,
            Meta::V6(m) => m.ext.chunk_size,
        }
    }

    /// RafsSuperFlags ([`layout::super_flags`]).
    pub fn flags(&self) -> u64 {
        match &self.meta {
            Meta::V5(m) => m.sb.flags,
            Meta::V6(m) => m.ext.flags,
        }
    }

    /// Image default compressor (superblock flag). Chunks use their blob's compressor.
    pub fn compressor(&self) -> Compressor {
        match &self.meta {
            Meta::V5(m) => m.compressor,
            Meta::V6(m) => m.compressor,
        }
    }

    /// Chunk digest algorithm (superblock flag).
    pub fn digester(&self) -> Digester {
        match &self.meta {
            Meta::V5(m) => m.digester,
            Meta::V6(m) => m.digester,
        }
    }

    /// Whether on-disk uid/gid are to be honoured (EXPLICIT_UID_GID); if not, nydusd
    /// reports its own euid/egid for every inode.
    pub fn explicit_uid_gid(&self) -> bool {
        self.flags() & super_flags::EXPLICIT_UID_GID != 0
    }

    /// Inode count recorded in the superblock (v6: tree entries; v5: unique inodes).
    pub fn inode_count(&self) -> u64 {
        match &self.meta {
            Meta::V5(m) => m.sb.inodes_count,
            Meta::V6(m) => m.sb.inos,
        }
    }

    /// The blob table.
    pub fn blobs(&self) -> &[BlobInfo] {
        match &self.meta {
            Meta::V5(m) => &m.blobs,
            Meta::V6(m) => &m.blobs,
        }
    }

    /// The raw v6 superblocks and blob-table entries (`None` for v5), for tools that
    /// rewrite or inspect images.
    pub fn v6_tables(
        &self,
    ) -> Option<(
        &layout::ErofsSuperBlock,
        &layout::RafsV6ExtSuperBlock,
        &[layout::DeviceSlot],
        &[layout::BlobTableEntry],
    )> {
        match &self.meta {
            Meta::V5(_) => None,
            Meta::V6(m) => Some((&m.sb, &m.ext, &m.devices, &m.blob_entries)),
        }
    }

    /// The raw v5 superblock (`None` for v6).
    pub fn v5_superblock(&self) -> Option<&layout::RafsV5SuperBlock> {
        match &self.meta {
            Meta::V5(m) => Some(&m.sb),
            Meta::V6(_) => None,
        }
    }

    /// stat of an inode.
    pub fn getattr(&self, ino: u64) -> Result<InodeAttr> {
        match &self.meta {
            Meta::V5(m) => m.getattr(self.b(), ino),
            Meta::V6(m) => Ok(m.attr(&m.inode(self.b(), ino)?)),
        }
    }

    /// Look `name` up in directory `parent` (binary search). `.` and `..` resolve as stored.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<InodeAttr>> {
        match &self.meta {
            Meta::V5(m) => m.lookup(self.b(), parent, name),
            Meta::V6(m) => m.lookup(self.b(), parent, name),
        }
    }

    /// Resolve a `/`-separated path from the root (empty components and a leading `/` are
    /// ignored; symlinks are not followed).
    pub fn lookup_path(&self, path: &[u8]) -> Result<Option<InodeAttr>> {
        let mut cur = self.getattr(self.root_ino())?;
        for comp in path.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
            if cur.mode & libc::S_IFMT != libc::S_IFDIR {
                return Ok(None);
            }
            match self.lookup(cur.ino, comp)? {
                Some(a) => cur = a,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Entries in on-disk (sorted) order, including "." and ".."; `offset` 0 starts at the
    /// first entry, else it is a `DirEntry::next_offset` from an earlier call. Stops when
    /// `f` returns false.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        f: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        match &self.meta {
            Meta::V5(m) => m.readdir(self.b(), ino, offset, f),
            Meta::V6(m) => m.readdir(self.b(), ino, offset, f),
        }
    }

    /// Target of a symlink.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match &self.meta {
            Meta::V5(m) => m.readlink(self.b(), ino),
            Meta::V6(m) => m.readlink(self.b(), ino),
        }
    }

    /// Value of the xattr with full name `name`.
    pub fn get_xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        match &self.meta {
            Meta::V5(m) => m.get_xattr(self.b(), ino, name),
            Meta::V6(m) => m.get_xattr(self.b(), ino, name),
        }
    }

    /// Full names of all xattrs of an inode, in on-disk order.
    pub fn list_xattrs(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        match &self.meta {
            Meta::V5(m) => m.list_xattrs(self.b(), ino),
            Meta::V6(m) => m.list_xattrs(self.b(), ino),
        }
    }

    /// Chunks of a regular file overlapping `[offset, offset + size)`, in file order.
    pub fn file_chunks(&self, ino: u64, offset: u64, size: u64) -> Result<Vec<FileChunk>> {
        match &self.meta {
            Meta::V5(m) => m.file_chunks(self.b(), ino, offset, size),
            Meta::V6(m) => m.file_chunks(self.b(), ino, offset, size),
        }
    }

    /// The prefetch table, as inode numbers (v6 nids / v5 inos); each is validated.
    pub fn prefetch_inodes(&self) -> Result<Vec<u64>> {
        match &self.meta {
            Meta::V5(m) => m.prefetch_inodes(self.b()),
            Meta::V6(m) => m.prefetch_inodes(self.b()),
        }
    }

    /// Raw chunk records: the v6 bootstrap chunk table, or every v5 chunk record in inode
    /// order (duplicates included). Decoded lazily.
    pub fn chunk_records(&self) -> Box<dyn Iterator<Item = Result<ChunkRecord>> + '_> {
        match &self.meta {
            Meta::V5(m) => Box::new(m.chunk_records(self.b())),
            Meta::V6(m) => Box::new(m.chunk_records(self.b())),
        }
    }

    /// The v6 bootstrap chunk table / all v5 chunk records (deduplicated by blob and ci
    /// index): digests and crc per chunk, for digest validation and tools.
    pub fn chunk_table(&self) -> Result<Vec<ChunkInfo>> {
        let mut out: Vec<ChunkInfo> = Vec::new();
        for r in self.chunk_records() {
            out.push(r?.to_chunk_info());
        }
        if self.version() == RafsVersion::V5 {
            out.sort_by_key(|c| (c.blob_index, c.index));
            out.dedup_by_key(|c| (c.blob_index, c.index));
        }
        Ok(out)
    }
}
