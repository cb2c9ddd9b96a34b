//! On-disk structures and constants of RAFS v6 (EROFS-based) and v5 bootstraps, of the
//! blob ci array and header, and of the blob ToC (RAFS-FORMAT.md §2-§4).
//!
//! Every fixed-size structure has:
//! - `SIZE`: its on-disk size in bytes;
//! - `parse(&[u8]) -> Result<Self, RafsError>`: decodes from the start of the slice,
//!   little-endian, failing with [`RafsError::Truncated`] if the slice is too short. Parsing
//!   only decodes; semantic validation lives in the readers (v6.rs, v5.rs, ci.rs, toc.rs);
//! - `write_to(&self, out: &mut [u8])`: encodes into the first `SIZE` bytes of `out`
//!   (panics if `out` is shorter: that is a caller bug, never input-dependent);
//! - `to_bytes()`: the encoding as an owned buffer.
//!
//! Reserved fields are not kept: they decode to nothing and encode as zeros.
//! The builder uses these same structures to write images.

use super::error::{RafsError, Result};

// ---------------------------------------------------------------------------------------
// Byte helpers
// ---------------------------------------------------------------------------------------

/// Fail with `Truncated` unless `buf` holds at least `need` bytes.
pub fn need(buf: &[u8], need: usize, what: &'static str) -> Result<()> {
    if buf.len() < need {
        return Err(RafsError::Truncated {
            what,
            offset: 0,
            need: need as u64,
            have: buf.len() as u64,
        });
    }
    Ok(())
}

/// Bounds-checked sub-slice `[off, off + len)` of `buf`.
pub fn slice_at<'a>(buf: &'a [u8], off: u64, len: u64, what: &'static str) -> Result<&'a [u8]> {
    let trunc = || RafsError::Truncated {
        what,
        offset: off,
        need: len,
        have: (buf.len() as u64).saturating_sub(off),
    };
    let end = off.checked_add(len).ok_or_else(trunc)?;
    if end > buf.len() as u64 {
        return Err(trunc());
    }
    // Both fit in usize because they are <= buf.len().
    Ok(&buf[off as usize..end as usize])
}

// The getters below are only called after a `need` check covering the read.
#[inline]
fn u8_at(b: &[u8], o: usize) -> u8 {
    b[o]
}
#[inline]
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
#[inline]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
#[inline]
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
#[inline]
fn arr_at<const N: usize>(b: &[u8], o: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[o..o + N]);
    a
}
#[inline]
fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Bytes of a NUL-padded fixed field up to the first NUL.
pub fn trim_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(p) => &b[..p],
        None => b,
    }
}

/// Copy `s` into a NUL-padded fixed field (truncating if longer).
pub fn nul_padded<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = s.len().min(N);
    a[..n].copy_from_slice(&s[..n]);
    a
}

/// Round `v` up to a multiple of `align` (a power of two). Saturates instead of overflowing.
pub fn round_up(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    v.saturating_add(align - 1) & !(align - 1)
}

macro_rules! fixed_codec {
    ($t:ty) => {
        impl $t {
            /// The encoding as an owned buffer of `SIZE` bytes.
            pub fn to_bytes(&self) -> Vec<u8> {
                let mut v = vec![0u8; Self::SIZE];
                self.write_to(&mut v);
                v
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// Common constants
// ---------------------------------------------------------------------------------------

/// EROFS / RAFS v6 block size (blkszbits 12).
pub const EROFS_BLOCK_SIZE: u64 = 4096;
/// log2 of [`EROFS_BLOCK_SIZE`].
pub const EROFS_BLKSZBITS: u8 = 12;
/// Block size bits of tarfs images (512-byte blocks).
pub const EROFS_BLKSZBITS_TARFS: u8 = 9;
/// Smallest chunk size.
pub const MIN_CHUNK_SIZE: u32 = 0x1000;
/// Largest chunk size.
pub const MAX_CHUNK_SIZE: u32 = 0x100_0000;
/// Default chunk size (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 0x10_0000;
/// Largest number of blobs one bootstrap can reference (device byte is blob index + 1).
pub const MAX_BLOBS: usize = 254;
/// Largest ci index (24 bits).
pub const MAX_CI_INDEX: u32 = 0xFF_FFFF;
/// Blob id of the bootstrap inlined in a per-layer blob.
pub const PLACEHOLDER_BLOB_ID: &str =
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// RafsSuperFlags (shared by v5 and v6 superblocks, RAFS-FORMAT.md §2.3).
pub mod super_flags {
    pub const COMPRESSION_NONE: u64 = 0x0000_0001;
    pub const COMPRESSION_LZ4: u64 = 0x0000_0002;
    pub const HASH_BLAKE3: u64 = 0x0000_0004;
    pub const HASH_SHA256: u64 = 0x0000_0008;
    pub const EXPLICIT_UID_GID: u64 = 0x0000_0010;
    pub const HAS_XATTR: u64 = 0x0000_0020;
    pub const COMPRESSION_GZIP: u64 = 0x0000_0040;
    pub const COMPRESSION_ZSTD: u64 = 0x0000_0080;
    pub const INLINED_CHUNK_DIGEST: u64 = 0x0000_0100;
    pub const TARTFS_MODE: u64 = 0x0000_0200;
    pub const ENCRYPTION_NONE: u64 = 0x0100_0000;
    pub const ENCRYPTION_ASE_128_XTS: u64 = 0x0200_0000;
    /// Reserved compat bits 0x0400_0000..=0x8000_0000 (known, ignored).
    pub const RESERVED_COMPAT: u64 = 0xFC00_0000;
    /// The compression bits.
    pub const COMPRESSION_MASK: u64 =
        COMPRESSION_NONE | COMPRESSION_LZ4 | COMPRESSION_GZIP | COMPRESSION_ZSTD;
    /// The hash bits.
    pub const HASH_MASK: u64 = HASH_BLAKE3 | HASH_SHA256;
    /// Every bit a reader may meet.
    pub const KNOWN: u64 = COMPRESSION_MASK
        | HASH_MASK
        | EXPLICIT_UID_GID
        | HAS_XATTR
        | INLINED_CHUNK_DIGEST
        | TARTFS_MODE
        | ENCRYPTION_NONE
        | ENCRYPTION_ASE_128_XTS
        | RESERVED_COMPAT;
}

/// The RafsSuperFlags compression bit of a compressor.
pub fn compressor_flag(c: super::Compressor) -> u64 {
    use super::Compressor::*;
    match c {
        None => super_flags::COMPRESSION_NONE,
        Lz4Block => super_flags::COMPRESSION_LZ4,
        Gzip => super_flags::COMPRESSION_GZIP,
        Zstd => super_flags::COMPRESSION_ZSTD,
    }
}

/// The RafsSuperFlags hash bit of a digester.
pub fn digester_flag(d: super::Digester) -> u64 {
    match d {
        super::Digester::Blake3 => super_flags::HASH_BLAKE3,
        super::Digester::Sha256 => super_flags::HASH_SHA256,
    }
}

/// BlobChunkFlags of chunk-table entries / v5 chunk records (RAFS-FORMAT.md §2.12).
pub mod chunk_flags {
    pub const COMPRESSED: u32 = 0x1;
    pub const HOLECHUNK: u32 = 0x2;
    pub const ENCRYPTED: u32 = 0x4;
    pub const BATCH: u32 = 0x8;
    pub const HAS_CRC32: u32 = 0x10;
}

/// Flags of a v2 ci entry (bits 56..63 of uncomp_info).
pub mod ci_v2_flags {
    pub const COMPRESSED: u8 = 0x01;
    pub const ZRAN: u8 = 0x02;
    pub const BATCH: u8 = 0x04;
    pub const ENCRYPTED: u8 = 0x08;
    pub const HAS_CRC32: u8 = 0x10;
}

/// Blob features that must never be set on disk / are unknown-incompatible.
pub const BLOB_FEATURES_INCOMPAT_UNKNOWN: u32 = 0x0000_F000;
/// In-memory only feature bit, never on disk.
pub const BLOB_FEATURE_V5_NO_EXT_BLOB_TABLE: u32 = 0x8000_0000;

// ---------------------------------------------------------------------------------------
// RAFS v6: EROFS superblock
// ---------------------------------------------------------------------------------------

/// Absolute offset of the EROFS superblock.
pub const EROFS_SUPER_OFFSET: u64 = 1024;
/// EROFS magic.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// feature_compat bit marking a RAFS v6 image.
pub const EROFS_FEATURE_COMPAT_RAFS_V6: u32 = 0x4000_0000;
/// feature_incompat: chunk-based files.
pub const EROFS_FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// feature_incompat: device table.
pub const EROFS_FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 0x8;
/// feature_incompat value every RAFS v6 image must carry exactly.
pub const RAFS_V6_FEATURE_INCOMPAT: u32 =
    EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE;
/// devt_slotoff of RAFS v6 images (table at 11 * 128 = 1408).
pub const EROFS_DEVT_SLOT_OFF: u16 = 11;

/// EROFS on-disk superblock (128 bytes at abs 1024).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErofsSuperBlock {
    pub magic: u32,
    pub checksum: u32,
    pub feature_compat: u32,
    pub blkszbits: u8,
    pub sb_extslots: u8,
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: u32,
    /// Compression algorithms / lz4 max distance union; 0 for RAFS.
    pub u1: u16,
    pub extra_devices: u16,
    pub devt_slotoff: u16,
}

impl ErofsSuperBlock {
    pub const SIZE: usize = 128;

    /// A superblock with the fixed RAFS v6 values (magic, compat, incompat, blkszbits,
    /// devt_slotoff); the caller fills the rest.
    pub fn new_rafs() -> Self {
        ErofsSuperBlock {
            magic: EROFS_MAGIC,
            feature_compat: EROFS_FEATURE_COMPAT_RAFS_V6,
            blkszbits: EROFS_BLKSZBITS,
            feature_incompat: RAFS_V6_FEATURE_INCOMPAT,
            devt_slotoff: EROFS_DEVT_SLOT_OFF,
            ..Default::default()
        }
    }

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "EROFS superblock")?;
        Ok(ErofsSuperBlock {
            magic: u32_at(b, 0),
            checksum: u32_at(b, 4),
            feature_compat: u32_at(b, 8),
            blkszbits: u8_at(b, 12),
            sb_extslots: u8_at(b, 13),
            root_nid: u16_at(b, 14),
            inos: u64_at(b, 16),
            build_time: u64_at(b, 24),
            build_time_nsec: u32_at(b, 32),
            blocks: u32_at(b, 36),
            meta_blkaddr: u32_at(b, 40),
            xattr_blkaddr: u32_at(b, 44),
            uuid: arr_at(b, 48),
            volume_name: arr_at(b, 64),
            feature_incompat: u32_at(b, 80),
            u1: u16_at(b, 84),
            extra_devices: u16_at(b, 86),
            devt_slotoff: u16_at(b, 88),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        put_u32(o, 0, self.magic);
        put_u32(o, 4, self.checksum);
        put_u32(o, 8, self.feature_compat);
        o[12] = self.blkszbits;
        o[13] = self.sb_extslots;
        put_u16(o, 14, self.root_nid);
        put_u64(o, 16, self.inos);
        put_u64(o, 24, self.build_time);
        put_u32(o, 32, self.build_time_nsec);
        put_u32(o, 36, self.blocks);
        put_u32(o, 40, self.meta_blkaddr);
        put_u32(o, 44, self.xattr_blkaddr);
        o[48..64].copy_from_slice(&self.uuid);
        o[64..80].copy_from_slice(&self.volume_name);
        put_u32(o, 80, self.feature_incompat);
        put_u16(o, 84, self.u1);
        put_u16(o, 86, self.extra_devices);
        put_u16(o, 88, self.devt_slotoff);
    }
}
fixed_codec!(ErofsSuperBlock);

// ---------------------------------------------------------------------------------------
// RAFS v6 extended superblock
// ---------------------------------------------------------------------------------------

/// Absolute offset of the RAFS v6 extended superblock.
pub const RAFS_V6_EXT_SUPER_OFFSET: u64 = 1152;
/// Absolute offset of the device table.
pub const RAFS_V6_DEVTABLE_OFFSET: u64 = 1408;

/// RAFS v6 extended superblock (256 bytes at abs 1152).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RafsV6ExtSuperBlock {
    /// RafsSuperFlags.
    pub flags: u64,
    pub blob_table_offset: u64,
    pub blob_table_size: u32,
    pub chunk_size: u32,
    pub chunk_table_offset: u64,
    pub chunk_table_size: u64,
    pub prefetch_table_offset: u64,
    pub prefetch_table_size: u32,
}

impl RafsV6ExtSuperBlock {
    pub const SIZE: usize = 256;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "RAFS v6 extended superblock")?;
        Ok(RafsV6ExtSuperBlock {
            flags: u64_at(b, 0),
            blob_table_offset: u64_at(b, 8),
            blob_table_size: u32_at(b, 16),
            chunk_size: u32_at(b, 20),
            chunk_table_offset: u64_at(b, 24),
            chunk_table_size: u64_at(b, 32),
            prefetch_table_offset: u64_at(b, 40),
            prefetch_table_size: u32_at(b, 48),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        put_u64(o, 0, self.flags);
        put_u64(o, 8, self.blob_table_offset);
        put_u32(o, 16, self.blob_table_size);
        put_u32(o, 20, self.chunk_size);
        put_u64(o, 24, self.chunk_table_offset);
        put_u64(o, 32, self.chunk_table_size);
        put_u64(o, 40, self.prefetch_table_offset);
        put_u32(o, 48, self.prefetch_table_size);
    }
}
fixed_codec!(RafsV6ExtSuperBlock);

// ---------------------------------------------------------------------------------------
// RAFS v6 device slot
// ---------------------------------------------------------------------------------------

/// EROFS device slot (128 bytes); one per blob, same order as the blob table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSlot {
    /// Blob id, NUL-padded.
    pub tag: [u8; 64],
    /// Uncompressed blob size / block size.
    pub blocks: u32,
    pub mapped_blkaddr: u32,
}

impl Default for DeviceSlot {
    fn default() -> Self {
        DeviceSlot {
            tag: [0; 64],
            blocks: 0,
            mapped_blkaddr: 0,
        }
    }
}

impl DeviceSlot {
    pub const SIZE: usize = 128;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "device slot")?;
        Ok(DeviceSlot {
            tag: arr_at(b, 0),
            blocks: u32_at(b, 64),
            mapped_blkaddr: u32_at(b, 68),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        o[..64].copy_from_slice(&self.tag);
        put_u32(o, 64, self.blocks);
        put_u32(o, 68, self.mapped_blkaddr);
    }

    /// The tag without its NUL padding.
    pub fn tag_bytes(&self) -> &[u8] {
        trim_nul(&self.tag)
    }
}
fixed_codec!(DeviceSlot);

// ---------------------------------------------------------------------------------------
// RAFS v6 blob table entry
// ---------------------------------------------------------------------------------------

/// v6 blob table entry (256 bytes), RAFS-FORMAT.md §2.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobTableEntry {
    /// Blob id, NUL-padded ASCII.
    pub blob_id: [u8; 64],
    pub blob_index: u32,
    pub chunk_size: u32,
    pub chunk_count: u32,
    pub compression_algo: u32,
    pub digest_algo: u32,
    pub features: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub blob_toc_size: u32,
    pub ci_compressor: u32,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
    pub blob_toc_digest: [u8; 32],
    /// SEPARATE: digest of the meta blob; encrypted: the AES key.
    pub blob_meta_digest: [u8; 32],
    /// SEPARATE: size of the meta blob; encrypted: IV bytes 0..7.
    pub blob_meta_size: u64,
    /// Encrypted: IV bytes 8..15.
    pub cipher_iv: u64,
    pub cipher_algo: u32,
}

impl Default for BlobTableEntry {
    fn default() -> Self {
        BlobTableEntry {
            blob_id: [0; 64],
            blob_index: 0,
            chunk_size: 0,
            chunk_count: 0,
            compression_algo: 0,
            digest_algo: 0,
            features: 0,
            compressed_size: 0,
            uncompressed_size: 0,
            blob_toc_size: 0,
            ci_compressor: 0,
            ci_offset: 0,
            ci_compressed_size: 0,
            ci_uncompressed_size: 0,
            blob_toc_digest: [0; 32],
            blob_meta_digest: [0; 32],
            blob_meta_size: 0,
            cipher_iv: 0,
            cipher_algo: 0,
        }
    }
}

impl BlobTableEntry {
    pub const SIZE: usize = 256;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "blob table entry")?;
        Ok(BlobTableEntry {
            blob_id: arr_at(b, 0),
            blob_index: u32_at(b, 64),
            chunk_size: u32_at(b, 68),
            chunk_count: u32_at(b, 72),
            compression_algo: u32_at(b, 76),
            digest_algo: u32_at(b, 80),
            features: u32_at(b, 84),
            compressed_size: u64_at(b, 88),
            uncompressed_size: u64_at(b, 96),
            blob_toc_size: u32_at(b, 104),
            ci_compressor: u32_at(b, 108),
            ci_offset: u64_at(b, 112),
            ci_compressed_size: u64_at(b, 120),
            ci_uncompressed_size: u64_at(b, 128),
            blob_toc_digest: arr_at(b, 136),
            blob_meta_digest: arr_at(b, 168),
            blob_meta_size: u64_at(b, 200),
            cipher_iv: u64_at(b, 208),
            cipher_algo: u32_at(b, 216),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        o[..64].copy_from_slice(&self.blob_id);
        put_u32(o, 64, self.blob_index);
        put_u32(o, 68, self.chunk_size);
        put_u32(o, 72, self.chunk_count);
        put_u32(o, 76, self.compression_algo);
        put_u32(o, 80, self.digest_algo);
        put_u32(o, 84, self.features);
        put_u64(o, 88, self.compressed_size);
        put_u64(o, 96, self.uncompressed_size);
        put_u32(o, 104, self.blob_toc_size);
        put_u32(o, 108, self.ci_compressor);
        put_u64(o, 112, self.ci_offset);
        put_u64(o, 120, self.ci_compressed_size);
        put_u64(o, 128, self.ci_uncompressed_size);
        o[136..168].copy_from_slice(&self.blob_toc_digest);
        o[168..200].copy_from_slice(&self.blob_meta_digest);
        put_u64(o, 200, self.blob_meta_size);
        put_u64(o, 208, self.cipher_iv);
        put_u32(o, 216, self.cipher_algo);
    }

    /// The blob id without NUL padding.
    pub fn blob_id_bytes(&self) -> &[u8] {
        trim_nul(&self.blob_id)
    }

    /// Decode into the shared [`super::BlobInfo`]; fails on unknown algorithms or a
    /// non-UTF-8 id. Does not validate the entry against the superblock.
    pub fn to_blob_info(&self) -> Result<super::BlobInfo> {
        use super::{Compressor, Digester};
        let bad = |what: &str, v: u32| {
            RafsError::corrupt(format!(
                "blob table entry {}: unknown {what} {v}",
                self.blob_index
            ))
        };
        let blob_id = std::str::from_utf8(self.blob_id_bytes())
            .map_err(|_| {
                RafsError::corrupt(format!(
                    "blob table entry {}: blob id is not UTF-8",
                    self.blob_index
                ))
            })?
            .to_string();
        Ok(super::BlobInfo {
            index: self.blob_index,
            blob_id,
            chunk_size: self.chunk_size,
            chunk_count: self.chunk_count,
            compressor: Compressor::from_u32(self.compression_algo)
                .ok_or_else(|| bad("compressor", self.compression_algo))?,
            digester: Digester::from_u32(self.digest_algo)
                .ok_or_else(|| bad("digester", self.digest_algo))?,
            features: self.features,
            compressed_size: self.compressed_size,
            uncompressed_size: self.uncompressed_size,
            ci_compressor: Compressor::from_u32(self.ci_compressor)
                .ok_or_else(|| bad("ci compressor", self.ci_compressor))?,
            ci_offset: self.ci_offset,
            ci_compressed_size: self.ci_compressed_size,
            ci_uncompressed_size: self.ci_uncompressed_size,
            toc_size: self.blob_toc_size,
            toc_digest: self.blob_toc_digest,
        })
    }

    /// Encode a [`super::BlobInfo`] (non-encrypted, non-separate blob).
    pub fn from_blob_info(b: &super::BlobInfo) -> Self {
        BlobTableEntry {
            blob_id: nul_padded(b.blob_id.as_bytes()),
            blob_index: b.index,
            chunk_size: b.chunk_size,
            chunk_count: b.chunk_count,
            compression_algo: b.compressor as u32,
            digest_algo: b.digester as u32,
            features: b.features,
            compressed_size: b.compressed_size,
            uncompressed_size: b.uncompressed_size,
            blob_toc_size: b.toc_size,
            ci_compressor: b.ci_compressor as u32,
            ci_offset: b.ci_offset,
            ci_compressed_size: b.ci_compressed_size,
            ci_uncompressed_size: b.ci_uncompressed_size,
            blob_toc_digest: b.toc_digest,
            ..Default::default()
        }
    }
}
fixed_codec!(BlobTableEntry);

// ---------------------------------------------------------------------------------------
// RAFS v6 inodes
// ---------------------------------------------------------------------------------------

/// Inode slot size: nid = (inode offset - meta_addr) / 32.
pub const EROFS_INODE_SLOT_SIZE: u64 = 32;
/// i_format bit 0: extended (64-byte) inode.
pub const EROFS_INODE_LAYOUT_EXTENDED: u16 = 0x1;
/// Data layout: plain blocks.
pub const EROFS_INODE_FLAT_PLAIN: u16 = 0;
/// Data layout: EROFS compressed (never used by RAFS).
pub const EROFS_INODE_COMPRESSED_FULL: u16 = 1;
/// Data layout: plain blocks plus an inline tail after the inode.
pub const EROFS_INODE_FLAT_INLINE: u16 = 2;
/// Data layout: EROFS compressed compact (never used by RAFS).
pub const EROFS_INODE_COMPRESSED_COMPACT: u16 = 3;
/// Data layout: chunk-based (regular files).
pub const EROFS_INODE_CHUNK_BASED: u16 = 4;
/// Bits of i_format a RAFS reader accepts (version bit + 3 bits of data layout).
pub const EROFS_I_FORMAT_KNOWN_MASK: u16 = 0xF;
/// Chunk format (i_u low 16 bits of chunk-based inodes): chunk-index entries follow.
pub const EROFS_CHUNK_FORMAT_INDEXES: u16 = 0x0020;
/// Chunk format: mask of log2(chunk size) - blkszbits.
pub const EROFS_CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x001F;

/// Data layout field of an i_format value.
pub fn i_format_datalayout(i_format: u16) -> u16 {
    (i_format >> 1) & 0x7
}

/// i_format of an inode.
pub fn i_format(extended: bool, datalayout: u16) -> u16 {
    (datalayout << 1) | u16::from(extended)
}

/// EROFS compact inode (32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeCompact {
    pub i_format: u16,
    pub i_xattr_icount: u16,
    pub i_mode: u16,
    pub i_nlink: u16,
    pub i_size: u32,
    pub i_u: u32,
    pub i_ino: u32,
    pub i_uid: u16,
    pub i_gid: u16,
}

impl InodeCompact {
    pub const SIZE: usize = 32;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "compact inode")?;
        Ok(InodeCompact {
            i_format: u16_at(b, 0),
            i_xattr_icount: u16_at(b, 2),
            i_mode: u16_at(b, 4),
            i_nlink: u16_at(b, 6),
            i_size: u32_at(b, 8),
            i_u: u32_at(b, 16),
            i_ino: u32_at(b, 20),
            i_uid: u16_at(b, 24),
            i_gid: u16_at(b, 26),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        put_u16(o, 0, self.i_format);
        put_u16(o, 2, self.i_xattr_icount);
        put_u16(o, 4, self.i_mode);
        put_u16(o, 6, self.i_nlink);
        put_u32(o, 8, self.i_size);
        put_u32(o, 16, self.i_u);
        put_u32(o, 20, self.i_ino);
        put_u16(o, 24, self.i_uid);
        put_u16(o, 26, self.i_gid);
    }
}
fixed_codec!(InodeCompact);

/// EROFS extended inode (64 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeExtended {
    pub i_format: u16,
    pub i_xattr_icount: u16,
    pub i_mode: u16,
    pub i_size: u64,
    pub i_u: u32,
    pub i_ino: u32,
    pub i_uid: u32,
    pub i_gid: u32,
    pub i_mtime: u64,
    pub i_mtime_nsec: u32,
    pub i_nlink: u32,
}

impl InodeExtended {
    pub const SIZE: usize = 64;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "extended inode")?;
        Ok(InodeExtended {
            i_format: u16_at(b, 0),
            i_xattr_icount: u16_at(b, 2),
            i_mode: u16_at(b, 4),
            i_size: u64_at(b, 8),
            i_u: u32_at(b, 16),
            i_ino: u32_at(b, 20),
            i_uid: u32_at(b, 24),
            i_gid: u32_at(b, 28),
            i_mtime: u64_at(b, 32),
            i_mtime_nsec: u32_at(b, 40),
            i_nlink: u32_at(b, 44),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        put_u16(o, 0, self.i_format);
        put_u16(o, 2, self.i_xattr_icount);
        put_u16(o, 4, self.i_mode);
        put_u64(o, 8, self.i_size);
        put_u32(o, 16, self.i_u);
        put_u32(o, 20, self.i_ino);
        put_u32(o, 24, self.i_uid);
        put_u32(o, 28, self.i_gid);
        put_u64(o, 32, self.i_mtime);
        put_u32(o, 40, self.i_mtime_nsec);
        put_u32(o, 44, self.i_nlink);
    }
}
fixed_codec!(InodeExtended);

/// Either inode form, decoded into common fields (what the reader works with).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Inode {
    /// True for the 64-byte form.
    pub extended: bool,
    pub i_format: u16,
    pub i_xattr_icount: u16,
    pub i_mode: u16,
    pub i_nlink: u32,
    pub i_size: u64,
    pub i_u: u32,
    pub i_ino: u32,
    pub i_uid: u32,
    pub i_gid: u32,
    /// 0 for compact inodes.
    pub i_mtime: u64,
    pub i_mtime_nsec: u32,
}

impl V6Inode {
    /// Decode the inode starting at `b[0]`, compact or extended per its i_format bit 0.
    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, 2, "inode")?;
        if u16_at(b, 0) & EROFS_INODE_LAYOUT_EXTENDED != 0 {
            let i = InodeExtended::parse(b)?;
            Ok(V6Inode {
                extended: true,
                i_format: i.i_format,
                i_xattr_icount: i.i_xattr_icount,
                i_mode: i.i_mode,
                i_nlink: i.i_nlink,
                i_size: i.i_size,
                i_u: i.i_u,
                i_ino: i.i_ino,
                i_uid: i.i_uid,
                i_gid: i.i_gid,
                i_mtime: i.i_mtime,
                i_mtime_nsec: i.i_mtime_nsec,
            })
        } else {
            let i = InodeCompact::parse(b)?;
            Ok(V6Inode {
                extended: false,
                i_format: i.i_format,
                i_xattr_icount: i.i_xattr_icount,
                i_mode: i.i_mode,
                i_nlink: u32::from(i.i_nlink),
                i_size: u64::from(i.i_size),
                i_u: i.i_u,
                i_ino: i.i_ino,
                i_uid: u32::from(i.i_uid),
                i_gid: u32::from(i.i_gid),
                i_mtime: 0,
                i_mtime_nsec: 0,
            })
        }
    }

    /// On-disk size of this inode (32 or 64).
    pub fn size(&self) -> usize {
        if self.extended {
            InodeExtended::SIZE
        } else {
            InodeCompact::SIZE
        }
    }

    /// Data layout (EROFS_INODE_FLAT_PLAIN etc).
    pub fn datalayout(&self) -> u16 {
        i_format_datalayout(self.i_format)
    }

    /// Bytes of the inline xattr body that follows the inode (0 if none).
    pub fn xattr_size(&self) -> usize {
        xattr_body_size(self.i_xattr_icount)
    }
}

// ---------------------------------------------------------------------------------------
// RAFS v6 xattrs
// ---------------------------------------------------------------------------------------

/// Size of the inline xattr body for `i_xattr_icount` (0 when the count is 0).
pub fn xattr_body_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XattrBodyHeader::SIZE + (usize::from(icount) - 1) * 4
    }
}

/// `i_xattr_icount` for a total xattr body size (header + entries, multiple of 4).
pub fn xattr_icount(body_size: usize) -> u16 {
    if body_size == 0 {
        0
    } else {
        ((body_size - XattrBodyHeader::SIZE) / 4 + 1) as u16
    }
}

/// xattr name_index values and their prefixes.
pub mod xattr_index {
    pub const USER: u8 = 1;
    pub const POSIX_ACL_ACCESS: u8 = 2;
    pub const POSIX_ACL_DEFAULT: u8 = 3;
    pub const TRUSTED: u8 = 4;
    pub const SECURITY: u8 = 6;
}

/// The full-name prefix of an xattr name_index (`None` for unknown indexes).
pub fn xattr_prefix(index: u8) -> Option<&'static [u8]> {
    match index {
        xattr_index::USER => Some(b"user."),
        xattr_index::POSIX_ACL_ACCESS => Some(b"system.posix_acl_access"),
        xattr_index::POSIX_ACL_DEFAULT => Some(b"system.posix_acl_default"),
        xattr_index::TRUSTED => Some(b"trusted."),
        xattr_index::SECURITY => Some(b"security."),
        _ => None,
    }
}

/// Split a full xattr name into (name_index, suffix); `None` if the namespace cannot be
/// stored in RAFS. The ACL names only match exactly (empty suffix).
pub fn xattr_split(name: &[u8]) -> Option<(u8, &[u8])> {
    if name == b"system.posix_acl_access" {
        return Some((xattr_index::POSIX_ACL_ACCESS, &[]));
    }
    if name == b"system.posix_acl_default" {
        return Some((xattr_index::POSIX_ACL_DEFAULT, &[]));
    }
    for idx in [
        xattr_index::USER,
        xattr_index::TRUSTED,
        xattr_index::SECURITY,
    ] {
        let p = xattr_prefix(idx).unwrap_or_default();
        if let Some(s) = name.strip_prefix(p) {
            return Some((idx, s));
        }
    }
    None
}

/// Inline xattr body header (12 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrBodyHeader {
    pub name_filter: u32,
    pub shared_count: u8,
}

impl XattrBodyHeader {
    pub const SIZE: usize = 12;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "xattr body header")?;
        Ok(XattrBodyHeader {
            name_filter: u32_at(b, 0),
            shared_count: u8_at(b, 4),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        put_u32(o, 0, self.name_filter);
        o[4] = self.shared_count;
    }
}
fixed_codec!(XattrBodyHeader);

/// Inline xattr entry header (4 bytes); the name suffix and value follow, padded to 4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrEntryHeader {
    pub name_len: u8,
    pub name_index: u8,
    pub value_size: u16,
}

impl XattrEntryHeader {
    pub const SIZE: usize = 4;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "xattr entry")?;
        Ok(XattrEntryHeader {
            name_len: u8_at(b, 0),
            name_index: u8_at(b, 1),
            value_size: u16_at(b, 2),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o[0] = self.name_len;
        o[1] = self.name_index;
        put_u16(o, 2, self.value_size);
    }

    /// Entry size including name, value and padding to 4 bytes.
    pub fn entry_size(&self) -> usize {
        (Self::SIZE + usize::from(self.name_len) + usize::from(self.value_size)).div_ceil(4) * 4
    }
}
fixed_codec!(XattrEntryHeader);

// ---------------------------------------------------------------------------------------
// RAFS v6 dirents
// ---------------------------------------------------------------------------------------

/// Dirent file_type values (EROFS_FT_*).
pub mod file_type {
    pub const UNKNOWN: u8 = 0;
    pub const REG_FILE: u8 = 1;
    pub const DIR: u8 = 2;
    pub const CHRDEV: u8 = 3;
    pub const BLKDEV: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SOCK: u8 = 6;
    pub const SYMLINK: u8 = 7;
}

/// The EROFS dirent file_type of an st_mode.
pub fn file_type_of_mode(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => file_type::REG_FILE,
        libc::S_IFDIR => file_type::DIR,
        libc::S_IFCHR => file_type::CHRDEV,
        libc::S_IFBLK => file_type::BLKDEV,
        libc::S_IFIFO => file_type::FIFO,
        libc::S_IFSOCK => file_type::SOCK,
        libc::S_IFLNK => file_type::SYMLINK,
        _ => file_type::UNKNOWN,
    }
}

/// The DT_* value of an EROFS dirent file_type.
pub fn dt_of_file_type(ft: u8) -> u32 {
    u32::from(match ft {
        file_type::REG_FILE => libc::DT_REG,
        file_type::DIR => libc::DT_DIR,
        file_type::CHRDEV => libc::DT_CHR,
        file_type::BLKDEV => libc::DT_BLK,
        file_type::FIFO => libc::DT_FIFO,
        file_type::SOCK => libc::DT_SOCK,
        file_type::SYMLINK => libc::DT_LNK,
        _ => libc::DT_UNKNOWN,
    })
}

/// EROFS directory entry (12 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dirent {
    pub nid: u64,
    /// Offset of the name inside the directory block.
    pub nameoff: u16,
    pub file_type: u8,
}

impl Dirent {
    pub const SIZE: usize = 12;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "dirent")?;
        Ok(Dirent {
            nid: u64_at(b, 0),
            nameoff: u16_at(b, 8),
            file_type: u8_at(b, 10),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        put_u64(o, 0, self.nid);
        put_u16(o, 8, self.nameoff);
        o[10] = self.file_type;
        o[11] = 0;
    }
}
fixed_codec!(Dirent);

// ---------------------------------------------------------------------------------------
// RAFS v6 chunk index entry
// ---------------------------------------------------------------------------------------

/// Chunk-index entry (8 bytes), EROFS `erofs_inode_chunk_index` as reinterpreted by RAFS:
/// `ci_index` is 24 bits over bytes 0-1 and 3, byte 2 is `blob_index + 1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkIndexEntry {
    /// 24-bit ci index within the blob.
    pub ci_index: u32,
    /// Raw device byte: blob index + 1 (0 is invalid).
    pub device: u8,
    /// Uncompressed offset in the blob / block size.
    pub blkaddr: u32,
}

impl ChunkIndexEntry {
    pub const SIZE: usize = 8;

    /// An entry for `(blob_index, ci_index)`; `blob_index` must be < 255 and `ci_index`
    /// < 2^24 (higher bits are dropped).
    pub fn new(blob_index: u32, ci_index: u32, blkaddr: u32) -> Self {
        ChunkIndexEntry {
            ci_index: ci_index & MAX_CI_INDEX,
            device: (blob_index as u8).wrapping_add(1),
            blkaddr,
        }
    }

    /// The blob index, `None` for the invalid device byte 0.
    pub fn blob_index(&self) -> Option<u32> {
        self.device.checked_sub(1).map(u32::from)
    }

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "chunk index entry")?;
        Ok(ChunkIndexEntry {
            ci_index: u32::from(u16_at(b, 0)) | (u32::from(u8_at(b, 3)) << 16),
            device: u8_at(b, 2),
            blkaddr: u32_at(b, 4),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        put_u16(o, 0, self.ci_index as u16);
        o[2] = self.device;
        o[3] = (self.ci_index >> 16) as u8;
        put_u32(o, 4, self.blkaddr);
    }
}
fixed_codec!(ChunkIndexEntry);

// ---------------------------------------------------------------------------------------
// Chunk record: v6 chunk table entry = v5 chunk info (80 bytes)
// ---------------------------------------------------------------------------------------

/// Chunk info record (80 bytes): an entry of the v6 bootstrap chunk table and the v5
/// per-file chunk record (RAFS-FORMAT.md §2.12).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkRecord {
    pub digest: [u8; 32],
    pub blob_index: u32,
    /// BlobChunkFlags ([`chunk_flags`]).
    pub flags: u32,
    pub compressed_size: u32,
    pub uncompressed_size: u32,
    pub compressed_offset: u64,
    pub uncompressed_offset: u64,
    pub file_offset: u64,
    /// ci index of the chunk in its blob.
    pub index: u32,
    pub crc32: u32,
}

impl ChunkRecord {
    pub const SIZE: usize = 80;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "chunk record")?;
        Ok(ChunkRecord {
            digest: arr_at(b, 0),
            blob_index: u32_at(b, 32),
            flags: u32_at(b, 36),
            compressed_size: u32_at(b, 40),
            uncompressed_size: u32_at(b, 44),
            compressed_offset: u64_at(b, 48),
            uncompressed_offset: u64_at(b, 56),
            file_offset: u64_at(b, 64),
            index: u32_at(b, 72),
            crc32: u32_at(b, 76),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o[..32].copy_from_slice(&self.digest);
        put_u32(o, 32, self.blob_index);
        put_u32(o, 36, self.flags);
        put_u32(o, 40, self.compressed_size);
        put_u32(o, 44, self.uncompressed_size);
        put_u64(o, 48, self.compressed_offset);
        put_u64(o, 56, self.uncompressed_offset);
        put_u64(o, 64, self.file_offset);
        put_u32(o, 72, self.index);
        put_u32(o, 76, self.crc32);
    }

    /// As a shared [`super::ChunkInfo`] (crc only when HAS_CRC32, digest always).
    pub fn to_chunk_info(&self) -> super::ChunkInfo {
        super::ChunkInfo {
            blob_index: self.blob_index,
            index: self.index,
            compressed_offset: self.compressed_offset,
            compressed_size: self.compressed_size,
            uncompressed_offset: self.uncompressed_offset,
            uncompressed_size: self.uncompressed_size,
            compressed: self.flags & chunk_flags::COMPRESSED != 0,
            crc32: (self.flags & chunk_flags::HAS_CRC32 != 0).then_some(self.crc32),
            digest: Some(self.digest),
        }
    }

    /// From a shared [`super::ChunkInfo`] (missing digest → zeros; crc sets HAS_CRC32).
    pub fn from_chunk_info(c: &super::ChunkInfo, file_offset: u64) -> Self {
        let mut flags = 0;
        if c.compressed {
            flags |= chunk_flags::COMPRESSED;
        }
        if c.crc32.is_some() {
            flags |= chunk_flags::HAS_CRC32;
        }
        ChunkRecord {
            digest: c.digest.unwrap_or([0; 32]),
            blob_index: c.blob_index,
            flags,
            compressed_size: c.compressed_size,
            uncompressed_size: c.uncompressed_size,
            compressed_offset: c.compressed_offset,
            uncompressed_offset: c.uncompressed_offset,
            file_offset,
            index: c.index,
            crc32: c.crc32.unwrap_or(0),
        }
    }
}
fixed_codec!(ChunkRecord);

// ---------------------------------------------------------------------------------------
// Blob ci header and entries
// ---------------------------------------------------------------------------------------

/// ci header magic (at both ends of the 4 KiB header).
pub const CI_HEADER_MAGIC: u32 = 0xB10B_B10B;

/// Blob compression-context ("ci") header, 4096 bytes (RAFS-FORMAT.md §3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CiHeader {
    pub magic: u32,
    pub features: u32,
    pub ci_compressor: u32,
    pub ci_entries: u32,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
    pub ctx_offset: u64,
    pub ctx_size: u64,
    pub ctx_count: u32,
    pub magic2: u32,
}

impl CiHeader {
    pub const SIZE: usize = 4096;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "ci header")?;
        Ok(CiHeader {
            magic: u32_at(b, 0),
            features: u32_at(b, 4),
            ci_compressor: u32_at(b, 8),
            ci_entries: u32_at(b, 12),
            ci_offset: u64_at(b, 16),
            ci_compressed_size: u64_at(b, 24),
            ci_uncompressed_size: u64_at(b, 32),
            ctx_offset: u64_at(b, 40),
            ctx_size: u64_at(b, 48),
            ctx_count: u32_at(b, 56),
            magic2: u32_at(b, 4092),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        put_u32(o, 0, self.magic);
        put_u32(o, 4, self.features);
        put_u32(o, 8, self.ci_compressor);
        put_u32(o, 12, self.ci_entries);
        put_u64(o, 16, self.ci_offset);
        put_u64(o, 24, self.ci_compressed_size);
        put_u64(o, 32, self.ci_uncompressed_size);
        put_u64(o, 40, self.ctx_offset);
        put_u64(o, 48, self.ctx_size);
        put_u32(o, 56, self.ctx_count);
        put_u32(o, 4092, self.magic2);
    }
}
fixed_codec!(CiHeader);

/// v1 ci entry (16 bytes): sizes stored minus one, no flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CiEntryV1 {
    pub compressed_offset: u64,
    pub compressed_size: u32,
    /// 4 KiB aligned (low 12 bits are not stored).
    pub uncompressed_offset: u64,
    pub uncompressed_size: u32,
}

const V1_UNCOMP_OFFSET_MASK: u64 = 0x0000_0FFF_FFFF_F000;
const V1_COMP_OFFSET_MASK: u64 = 0x0000_00FF_FFFF_FFFF;

impl CiEntryV1 {
    pub const SIZE: usize = 16;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "ci v1 entry")?;
        let u = u64_at(b, 0);
        let c = u64_at(b, 8);
        let usize_m1 = ((u >> 44) & 0xF_FFFF) | (((u >> 8) & 0xF) << 20);
        let csize_m1 = ((c >> 44) & 0xF_FFFF) | (((c >> 40) & 0xF) << 20);
        Ok(CiEntryV1 {
            compressed_offset: c & V1_COMP_OFFSET_MASK,
            compressed_size: csize_m1 as u32 + 1,
            uncompressed_offset: u & V1_UNCOMP_OFFSET_MASK,
            uncompressed_size: usize_m1 as u32 + 1,
        })
    }

    /// Encodes; sizes must be in 1..=2^24, offsets within their bit widths (excess bits
    /// are dropped; the builder validates beforehand).
    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        let um1 = u64::from(self.uncompressed_size.saturating_sub(1)) & 0xFF_FFFF;
        let cm1 = u64::from(self.compressed_size.saturating_sub(1)) & 0xFF_FFFF;
        let u = (self.uncompressed_offset & V1_UNCOMP_OFFSET_MASK)
            | ((um1 & 0xF_FFFF) << 44)
            | ((um1 >> 20) << 8);
        let c = (self.compressed_offset & V1_COMP_OFFSET_MASK)
            | ((cm1 & 0xF_FFFF) << 44)
            | ((cm1 >> 20) << 40);
        put_u64(o, 0, u);
        put_u64(o, 8, c);
    }

    /// v1 has no flag: compressed iff the sizes differ.
    pub fn is_compressed(&self) -> bool {
        self.compressed_size != self.uncompressed_size
    }
}
fixed_codec!(CiEntryV1);

/// v2 ci entry (24 bytes): flags and a data word (crc32 / zran / batch info).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CiEntryV2 {
    pub compressed_offset: u64,
    /// Stored as is (not minus one), at most 0xFF_FFFF.
    pub compressed_size: u32,
    /// 4 KiB aligned.
    pub uncompressed_offset: u64,
    pub uncompressed_size: u32,
    /// [`ci_v2_flags`].
    pub flags: u8,
    /// crc32 (HAS_CRC32) or zran/batch (offset, context index).
    pub data: u64,
}

impl CiEntryV2 {
    pub const SIZE: usize = 24;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "ci v2 entry")?;
        let u = u64_at(b, 0);
        let c = u64_at(b, 8);
        Ok(CiEntryV2 {
            compressed_offset: c & V1_COMP_OFFSET_MASK,
            compressed_size: (c >> 40) as u32,
            uncompressed_offset: (u & 0xFFFF_FFFF) << 12,
            uncompressed_size: ((u >> 32) & 0xFF_FFFF) as u32 + 1,
            flags: (u >> 56) as u8,
            data: u64_at(b, 16),
        })
    }

    /// Encodes; see [`CiEntryV1::write_to`] for range limits.
    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        let um1 = u64::from(self.uncompressed_size.saturating_sub(1)) & 0xFF_FFFF;
        let u = ((self.uncompressed_offset >> 12) & 0xFFFF_FFFF)
            | (um1 << 32)
            | (u64::from(self.flags) << 56);
        let c = (self.compressed_offset & V1_COMP_OFFSET_MASK)
            | ((u64::from(self.compressed_size) & 0xFF_FFFF) << 40);
        put_u64(o, 0, u);
        put_u64(o, 8, c);
        put_u64(o, 16, self.data);
    }
}
fixed_codec!(CiEntryV2);

/// Size of a zran / batch context entry in the ci context table.
pub const CI_CTX_ENTRY_SIZE: usize = 40;

// ---------------------------------------------------------------------------------------
// ToC and tar headers
// ---------------------------------------------------------------------------------------

/// Name of the ToC section's tar header.
pub const TOC_NAME: &str = "rafs.blob.toc";
/// ToC entry names.
pub const TOC_ENTRY_BLOB_RAW: &str = "image.blob";
pub const TOC_ENTRY_BLOB_META: &str = "blob.meta";
pub const TOC_ENTRY_BLOB_META_HEADER: &str = "blob.meta.header";
pub const TOC_ENTRY_BLOB_DIGEST: &str = "blob.digest";
pub const TOC_ENTRY_BOOTSTRAP: &str = "image.boot";
/// ToC entry compression flags (a different numbering from the blob table).
pub mod toc_flags {
    pub const COMPRESSION_NONE: u32 = 0x1;
    pub const COMPRESSION_ZSTD: u32 = 0x2;
    pub const COMPRESSION_LZ4_BLOCK: u32 = 0x4;
    pub const COMPRESSION_MASK: u32 = 0xF;
}

/// One ToC entry (128 bytes), RAFS-FORMAT.md §3.5.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TocEntry {
    /// [`toc_flags`].
    pub flags: u32,
    /// Name, NUL padded.
    pub name: [u8; 16],
    /// SHA-256 of the uncompressed content.
    pub uncompressed_digest: [u8; 32],
    /// Absolute offset in the blob.
    pub compressed_offset: u64,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

impl TocEntry {
    pub const SIZE: usize = 128;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "ToC entry")?;
        Ok(TocEntry {
            flags: u32_at(b, 0),
            name: arr_at(b, 8),
            uncompressed_digest: arr_at(b, 24),
            compressed_offset: u64_at(b, 56),
            compressed_size: u64_at(b, 64),
            uncompressed_size: u64_at(b, 72),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        put_u32(o, 0, self.flags);
        o[8..24].copy_from_slice(&self.name);
        o[24..56].copy_from_slice(&self.uncompressed_digest);
        put_u64(o, 56, self.compressed_offset);
        put_u64(o, 64, self.compressed_size);
        put_u64(o, 72, self.uncompressed_size);
    }

    /// The name without NUL padding.
    pub fn name_bytes(&self) -> &[u8] {
        trim_nul(&self.name)
    }

    /// Compressor of the entry's content (`None` for an unknown flag value).
    pub fn compressor(&self) -> Option<super::Compressor> {
        match self.flags & toc_flags::COMPRESSION_MASK {
            toc_flags::COMPRESSION_NONE => Some(super::Compressor::None),
            toc_flags::COMPRESSION_ZSTD => Some(super::Compressor::Zstd),
            toc_flags::COMPRESSION_LZ4_BLOCK => Some(super::Compressor::Lz4Block),
            _ => None,
        }
    }

    /// ToC flag of a compressor (`None` for gzip, which the ToC cannot express).
    pub fn flag_of(c: super::Compressor) -> Option<u32> {
        match c {
            super::Compressor::None => Some(toc_flags::COMPRESSION_NONE),
            super::Compressor::Zstd => Some(toc_flags::COMPRESSION_ZSTD),
            super::Compressor::Lz4Block => Some(toc_flags::COMPRESSION_LZ4_BLOCK),
            super::Compressor::Gzip => None,
        }
    }
}
fixed_codec!(TocEntry);

/// The 512-byte GNU tar header that follows each section of a blob with HAS_TAR_HEADER.
/// Only name, type `'0'` and size are meaningful (RAFS-FORMAT.md §3.5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TarHeader {
    /// Entry name (at most 100 bytes).
    pub name: Vec<u8>,
    /// Size of the section just before this header.
    pub size: u64,
}

impl TarHeader {
    pub const SIZE: usize = 512;

    /// Parse and check the checksum, regular-file type and GNU magic.
    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "tar header")?;
        let b = &b[..Self::SIZE];
        let stored = parse_octal(&b[148..156])
            .ok_or_else(|| RafsError::corrupt("tar header: bad checksum field"))?;
        let sum: u64 = b
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(c)
                }
            })
            .sum();
        if stored != sum {
            return Err(RafsError::corrupt(format!(
                "tar header: checksum {stored} != computed {sum}"
            )));
        }
        if b[156] != b'0' && b[156] != 0 {
            return Err(RafsError::corrupt(format!(
                "tar header: type {:#x} is not a regular file",
                b[156]
            )));
        }
        let size = if b[124] & 0x80 != 0 {
            // GNU base-256 size.
            let mut v: u64 = u64::from(b[124] & 0x7f);
            for &c in &b[125..136] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(c)))
                    .ok_or_else(|| RafsError::corrupt("tar header: size overflows"))?;
            }
            v
        } else {
            parse_octal(&b[124..136])
                .ok_or_else(|| RafsError::corrupt("tar header: bad size field"))?
        };
        Ok(TarHeader {
            name: trim_nul(&b[0..100]).to_vec(),
            size,
        })
    }

    /// Encode as upstream does: name, mode/uid/gid/mtime left zero, octal size, type '0',
    /// GNU magic, checksum.
    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        let n = self.name.len().min(100);
        o[..n].copy_from_slice(&self.name[..n]);
        // 11 octal digits + NUL (sizes < 8 GiB); larger sizes use base-256.
        if self.size < 0o77777777777 {
            let s = format!("{:011o}", self.size);
            o[124..135].copy_from_slice(s.as_bytes());
        } else {
            let be = self.size.to_be_bytes();
            o[124] = 0x80;
            o[128..136].copy_from_slice(&be);
        }
        o[156] = b'0';
        o[257..263].copy_from_slice(b"ustar ");
        o[263..265].copy_from_slice(b" \0");
        o[148..156].fill(b' ');
        let sum: u64 = o.iter().map(|&c| u64::from(c)).sum();
        let s = format!("{:06o}\0 ", sum);
        o[148..156].copy_from_slice(s.as_bytes());
    }
}
fixed_codec!(TarHeader);

/// Parse a NUL/space-terminated octal field; empty → 0.
fn parse_octal(f: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut started = false;
    for &c in f {
        match c {
            b'0'..=b'7' => {
                started = true;
                v = v.checked_mul(8)?.checked_add(u64::from(c - b'0'))?;
            }
            b' ' if !started => {}
            b' ' | 0 => break,
            _ => return None,
        }
    }
    Some(v)
}

// ---------------------------------------------------------------------------------------
// RAFS v5
// ---------------------------------------------------------------------------------------

/// v5 superblock magic (bytes `53 46 41 52` at offset 0).
pub const RAFS_V5_MAGIC: u32 = 0x5241_4653;
/// v5 fs_version.
pub const RAFS_V5_VERSION: u32 = 0x500;
/// v5 superblock size.
pub const RAFS_V5_SUPER_SIZE: usize = 8192;
/// v5 structures are 8-byte aligned.
pub const RAFS_V5_ALIGNMENT: u64 = 8;

/// v5 inode i_flags bits.
pub mod v5_inode_flags {
    pub const SYMLINK: u64 = 0x1;
    pub const HARDLINK: u64 = 0x2;
    pub const XATTR: u64 = 0x4;
    pub const HAS_HOLE: u64 = 0x8;
    pub const KNOWN: u64 = SYMLINK | HARDLINK | XATTR | HAS_HOLE;
}

/// RAFS v5 superblock (8192 bytes at abs 0), RAFS-FORMAT.md §4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RafsV5SuperBlock {
    pub magic: u32,
    pub fs_version: u32,
    pub sb_size: u32,
    /// Chunk size.
    pub block_size: u32,
    pub flags: u64,
    pub inodes_count: u64,
    pub inode_table_offset: u64,
    pub prefetch_table_offset: u64,
    pub blob_table_offset: u64,
    pub inode_table_entries: u32,
    pub prefetch_table_entries: u32,
    pub blob_table_size: u32,
    pub extended_blob_table_entries: u32,
    pub extended_blob_table_offset: u64,
}

impl RafsV5SuperBlock {
    pub const SIZE: usize = RAFS_V5_SUPER_SIZE;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "RAFS v5 superblock")?;
        Ok(RafsV5SuperBlock {
            magic: u32_at(b, 0),
            fs_version: u32_at(b, 4),
            sb_size: u32_at(b, 8),
            block_size: u32_at(b, 12),
            flags: u64_at(b, 16),
            inodes_count: u64_at(b, 24),
            inode_table_offset: u64_at(b, 32),
            prefetch_table_offset: u64_at(b, 40),
            blob_table_offset: u64_at(b, 48),
            inode_table_entries: u32_at(b, 56),
            prefetch_table_entries: u32_at(b, 60),
            blob_table_size: u32_at(b, 64),
            extended_blob_table_entries: u32_at(b, 68),
            extended_blob_table_offset: u64_at(b, 72),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        put_u32(o, 0, self.magic);
        put_u32(o, 4, self.fs_version);
        put_u32(o, 8, self.sb_size);
        put_u32(o, 12, self.block_size);
        put_u64(o, 16, self.flags);
        put_u64(o, 24, self.inodes_count);
        put_u64(o, 32, self.inode_table_offset);
        put_u64(o, 40, self.prefetch_table_offset);
        put_u64(o, 48, self.blob_table_offset);
        put_u32(o, 56, self.inode_table_entries);
        put_u32(o, 60, self.prefetch_table_entries);
        put_u32(o, 64, self.blob_table_size);
        put_u32(o, 68, self.extended_blob_table_entries);
        put_u64(o, 72, self.extended_blob_table_offset);
    }
}
fixed_codec!(RafsV5SuperBlock);

/// RAFS v5 inode (128 bytes); name, symlink target, xattrs and chunk records follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RafsV5Inode {
    pub i_digest: [u8; 32],
    pub i_parent: u64,
    pub i_ino: u64,
    pub i_uid: u32,
    pub i_gid: u32,
    pub i_projid: u32,
    pub i_mode: u32,
    pub i_size: u64,
    pub i_blocks: u64,
    /// [`v5_inode_flags`].
    pub i_flags: u64,
    pub i_nlink: u32,
    pub i_child_index: u32,
    pub i_child_count: u32,
    pub i_name_size: u16,
    pub i_symlink_size: u16,
    pub i_rdev: u32,
    pub i_mtime_nsec: u32,
    pub i_mtime: u64,
}

impl RafsV5Inode {
    pub const SIZE: usize = 128;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "RAFS v5 inode")?;
        Ok(RafsV5Inode {
            i_digest: arr_at(b, 0),
            i_parent: u64_at(b, 32),
            i_ino: u64_at(b, 40),
            i_uid: u32_at(b, 48),
            i_gid: u32_at(b, 52),
            i_projid: u32_at(b, 56),
            i_mode: u32_at(b, 60),
            i_size: u64_at(b, 64),
            i_blocks: u64_at(b, 72),
            i_flags: u64_at(b, 80),
            i_nlink: u32_at(b, 88),
            i_child_index: u32_at(b, 92),
            i_child_count: u32_at(b, 96),
            i_name_size: u16_at(b, 100),
            i_symlink_size: u16_at(b, 102),
            i_rdev: u32_at(b, 104),
            i_mtime_nsec: u32_at(b, 108),
            i_mtime: u64_at(b, 112),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        o[..32].copy_from_slice(&self.i_digest);
        put_u64(o, 32, self.i_parent);
        put_u64(o, 40, self.i_ino);
        put_u32(o, 48, self.i_uid);
        put_u32(o, 52, self.i_gid);
        put_u32(o, 56, self.i_projid);
        put_u32(o, 60, self.i_mode);
        put_u64(o, 64, self.i_size);
        put_u64(o, 72, self.i_blocks);
        put_u64(o, 80, self.i_flags);
        put_u32(o, 88, self.i_nlink);
        put_u32(o, 92, self.i_child_index);
        put_u32(o, 96, self.i_child_count);
        put_u16(o, 100, self.i_name_size);
        put_u16(o, 102, self.i_symlink_size);
        put_u32(o, 104, self.i_rdev);
        put_u32(o, 108, self.i_mtime_nsec);
        put_u64(o, 112, self.i_mtime);
    }
}
fixed_codec!(RafsV5Inode);

/// v5 extended blob table entry (64 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RafsV5ExtBlobEntry {
    pub chunk_count: u32,
    pub features: u32,
    pub uncompressed_size: u64,
    pub compressed_size: u64,
}

impl RafsV5ExtBlobEntry {
    pub const SIZE: usize = 64;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need(b, Self::SIZE, "v5 extended blob table entry")?;
        Ok(RafsV5ExtBlobEntry {
            chunk_count: u32_at(b, 0),
            features: u32_at(b, 4),
            uncompressed_size: u64_at(b, 8),
            compressed_size: u64_at(b, 16),
        })
    }

    pub fn write_to(&self, out: &mut [u8]) {
        let o = &mut out[..Self::SIZE];
        o.fill(0);
        put_u32(o, 0, self.chunk_count);
        put_u32(o, 4, self.features);
        put_u64(o, 8, self.uncompressed_size);
        put_u64(o, 16, self.compressed_size);
    }
}
fixed_codec!(RafsV5ExtBlobEntry);

/// One entry of the v5 (variable-length) blob table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RafsV5BlobEntry {
    pub readahead_offset: u32,
    pub readahead_size: u32,
    pub blob_id: Vec<u8>,
}

/// Decode the v5 blob table: entries `[u32 ra_offset][u32 ra_size][id]` separated by a
/// single NUL, the whole table zero-padded to 8 bytes.
pub fn parse_v5_blob_table(b: &[u8]) -> Result<Vec<RafsV5BlobEntry>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 8 < b.len() {
        let rest = &b[pos..];
        // Remaining zero padding ends the table.
        if rest.iter().all(|&c| c == 0) {
            break;
        }
        let readahead_offset = u32_at(rest, 0);
        let readahead_size = u32_at(rest, 4);
        let id_area = &rest[8..];
        let id_len = id_area
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(id_area.len());
        if id_len == 0 {
            return Err(RafsError::corrupt("v5 blob table: empty blob id"));
        }
        if out.len() >= MAX_BLOBS {
            return Err(RafsError::corrupt("v5 blob table: too many blobs"));
        }
        out.push(RafsV5BlobEntry {
            readahead_offset,
            readahead_size,
            blob_id: id_area[..id_len].to_vec(),
        });
        pos += 8 + id_len + 1;
    }
    Ok(out)
}

/// Encode the v5 blob table (padded to 8 bytes).
pub fn encode_v5_blob_table(entries: &[RafsV5BlobEntry]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            v.push(0);
        }
        v.extend_from_slice(&e.readahead_offset.to_le_bytes());
        v.extend_from_slice(&e.readahead_size.to_le_bytes());
        v.extend_from_slice(&e.blob_id);
    }
    v.resize(round_up(v.len() as u64, RAFS_V5_ALIGNMENT) as usize, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_structs_round_trip() {
        let mut sb = ErofsSuperBlock::new_rafs();
        sb.root_nid = 128;
        sb.inos = 42;
        sb.meta_blkaddr = 2;
        sb.extra_devices = 1;
        assert_eq!(ErofsSuperBlock::parse(&sb.to_bytes()).unwrap(), sb);

        let ext = RafsV6ExtSuperBlock {
            flags: 0x0100_0035,
            blob_table_offset: 4096,
            blob_table_size: 256,
            chunk_size: 0x10000,
            chunk_table_offset: 0xc000,
            chunk_table_size: 0x37f0,
            prefetch_table_offset: 4352,
            prefetch_table_size: 8,
        };
        assert_eq!(RafsV6ExtSuperBlock::parse(&ext.to_bytes()).unwrap(), ext);

        let ci = ChunkIndexEntry::new(3, 0x12_3456, 77);
        let b = ci.to_bytes();
        assert_eq!(b, [0x56, 0x34, 4, 0x12, 77, 0, 0, 0]);
        let p = ChunkIndexEntry::parse(&b).unwrap();
        assert_eq!(p.blob_index(), Some(3));
        assert_eq!(p.ci_index, 0x12_3456);

        let e = CiEntryV1 {
            compressed_offset: 0x12_3456_789a,
            compressed_size: 0xAB_CDEF,
            uncompressed_offset: 0x0ABC_DEF1_2000,
            uncompressed_size: 0x100_0000,
        };
        assert_eq!(CiEntryV1::parse(&e.to_bytes()).unwrap(), e);
        let e2 = CiEntryV2 {
            compressed_offset: 0xFF_FFFF_FFFF,
            compressed_size: 0xFF_FFFF,
            uncompressed_offset: 0xFFFF_FFFF << 12,
            uncompressed_size: 1,
            flags: ci_v2_flags::COMPRESSED | ci_v2_flags::HAS_CRC32,
            data: 0xdead_beef,
        };
        assert_eq!(CiEntryV2::parse(&e2.to_bytes()).unwrap(), e2);

        let t = TarHeader {
            name: b"rafs.blob.toc".to_vec(),
            size: 640,
        };
        assert_eq!(TarHeader::parse(&t.to_bytes()).unwrap(), t);
        let mut bad = t.to_bytes();
        bad[0] ^= 1;
        assert!(TarHeader::parse(&bad).is_err());
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert!(matches!(
            ErofsSuperBlock::parse(&[0u8; 127]),
            Err(RafsError::Truncated { .. })
        ));
        assert!(CiHeader::parse(&[0u8; 4095]).is_err());
        assert!(slice_at(&[0u8; 10], 5, 6, "x").is_err());
        assert!(slice_at(&[0u8; 10], u64::MAX, 2, "x").is_err());
        assert_eq!(slice_at(&[0u8; 10], 5, 5, "x").unwrap().len(), 5);
    }

    #[test]
    fn v5_blob_table_round_trip() {
        let t = vec![
            RafsV5BlobEntry {
                readahead_offset: 1,
                readahead_size: 2,
                blob_id: b"abc".to_vec(),
            },
            RafsV5BlobEntry {
                readahead_offset: 0,
                readahead_size: 0,
                blob_id: vec![b'f'; 64],
            },
        ];
        let enc = encode_v5_blob_table(&t);
        assert_eq!(enc.len() % 8, 0);
        assert_eq!(parse_v5_blob_table(&enc).unwrap(), t);
    }

    #[test]
    fn xattr_names_split_and_join() {
        assert_eq!(xattr_split(b"user.x"), Some((1, &b"x"[..])));
        assert_eq!(xattr_split(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(xattr_split(b"system.other"), None);
        assert_eq!(xattr_body_size(xattr_icount(12 + 16)), 28);
    }
}
