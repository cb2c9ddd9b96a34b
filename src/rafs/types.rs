//! Format-level types shared by the reader, the builder and the storage layer.
//!
//! These are the seam between `rafs` and `storage`: the storage layer only sees blobs
//! ([`BlobInfo`]) and chunks ([`ChunkRef`], [`ChunkInfo`]), never inodes.

use std::fmt;

/// Chunk/ci compression algorithm, with the on-disk enum value of the blob table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compressor {
    None = 0,
    Lz4Block = 1,
    Gzip = 2,
    Zstd = 3,
}

impl Compressor {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Lz4Block),
            2 => Some(Self::Gzip),
            3 => Some(Self::Zstd),
            _ => None,
        }
    }
    /// Name as used on nydus-image's command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4Block => "lz4_block",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Chunk digest algorithm, with the on-disk enum value of the blob table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Digester {
    Blake3 = 0,
    Sha256 = 1,
}

impl Digester {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Blake3),
            1 => Some(Self::Sha256),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
        }
    }
}

impl fmt::Display for Digester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// RAFS version of a bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RafsVersion {
    V5,
    V6,
}

/// One entry of the bootstrap's blob table (v6), or of the v5 blob table plus its
/// extended blob table. Field meanings follow RAFS-FORMAT.md §2.5.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// Position in the blob table; chunk references use this.
    pub index: u32,
    /// Blob id (normally hex sha256 of the blob file); `"x" * 64` in inlined bootstraps.
    pub blob_id: String,
    pub chunk_size: u32,
    pub chunk_count: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    /// BlobFeatures bits.
    pub features: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    /// Compressor of the ci array (v6).
    pub ci_compressor: Compressor,
    /// Offset of the compressed ci array in the blob (v6); the 4 KiB header follows it.
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
    /// Size of the ToC (entries + 512 byte tar header); 0 when unknown.
    pub toc_size: u32,
    /// sha256 of the ToC; all zero when unknown.
    pub toc_digest: [u8; 32],
}

/// BlobFeatures bits (RAFS-FORMAT.md §2.5).
pub mod blob_features {
    pub const ALIGNED: u32 = 0x0000_0001;
    pub const INLINED_FS_META: u32 = 0x0000_0002;
    pub const CHUNK_INFO_V2: u32 = 0x0000_0004;
    pub const ZRAN: u32 = 0x0000_0008;
    pub const SEPARATE: u32 = 0x0000_0010;
    pub const INLINED_CHUNK_DIGEST: u32 = 0x0000_0020;
    pub const TARFS: u32 = 0x0000_0040;
    pub const BATCH: u32 = 0x0000_0080;
    pub const ENCRYPTED: u32 = 0x0000_0100;
    pub const IS_CHUNKDICT_GENERATED: u32 = 0x0000_0200;
    pub const IS_SEPARATED_WITH_PREFETCH_FILES: u32 = 0x0000_0400;
    pub const EXTERNAL: u32 = 0x0000_0800;
    pub const HAS_TAR_HEADER: u32 = 0x1000_0000;
    pub const HAS_TOC: u32 = 0x2000_0000;
    pub const CAP_TAR_TOC: u32 = 0x4000_0000;
}

/// Everything needed to fetch, decompress and verify one chunk, decoded from a blob's ci
/// array (v6), a v5 chunk record, or the v6 bootstrap chunk table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Index into the bootstrap's blob table.
    pub blob_index: u32,
    /// ci index of the chunk within its blob.
    pub index: u32,
    pub compressed_offset: u64,
    pub compressed_size: u32,
    pub uncompressed_offset: u64,
    pub uncompressed_size: u32,
    /// Whether the payload is compressed with the blob's compressor.
    pub compressed: bool,
    /// CRC-32C of the uncompressed data, when the image records one.
    pub crc32: Option<u32>,
    /// Digest of the uncompressed data (blake3/sha256 per blob), when known.
    pub digest: Option<[u8; 32]>,
}

/// How an inode refers to a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRef {
    /// v6: resolve `(blob_index, ci_index)` through that blob's ci array.
    /// `blkaddr` is the uncompressed offset / 4096 (used to key the chunk table).
    Indexed {
        blob_index: u32,
        ci_index: u32,
        blkaddr: u32,
    },
    /// v5: the full record is stored in the bootstrap.
    Inline(ChunkInfo),
}

impl ChunkRef {
    pub fn blob_index(&self) -> u32 {
        match self {
            ChunkRef::Indexed { blob_index, .. } => *blob_index,
            ChunkRef::Inline(c) => c.blob_index,
        }
    }
}

/// One chunk of a regular file: it covers file bytes `[file_offset, file_offset + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileChunk {
    pub file_offset: u64,
    /// Bytes of the file this chunk covers (the chunk's uncompressed size).
    pub len: u32,
    pub chunk: ChunkRef,
}

/// stat(2)-like attributes of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InodeAttr {
    /// Stable, non-zero inode number, < 2^56. Hard links share it.
    pub ino: u64,
    /// Full st_mode (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
    /// 512-byte blocks.
    pub blocks: u64,
}

/// One directory entry, as returned by readdir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    /// DT_* value (libc::DT_REG etc).
    pub file_type: u32,
    /// Cookie to pass as `offset` to continue after this entry.
    pub next_offset: u64,
}
