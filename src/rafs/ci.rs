//! Chunk-info ("ci") arrays of v6 blobs (RAFS-FORMAT.md §3.2-§3.4): the 4 KiB header, v1 and
//! v2 entries, and the `<blob_id>.blob.meta` file layout.

use super::codec;
use super::error::{RafsError, Result};
use super::layout::*;
use super::types::*;

fn corrupt<T>(blob: &BlobInfo, msg: String) -> Result<T> {
    Err(RafsError::Corrupt(format!(
        "blob {} ({}): ci array: {msg}",
        blob.index, blob.blob_id
    )))
}

/// Decoded chunk-info array of one blob (v6): ci header + v1/v2 entries.
#[derive(Clone, Debug)]
pub struct ChunkInfoArray {
    blob_index: u32,
    v2: bool,
    /// Uncompressed ci data (entries only).
    data: Vec<u8>,
    count: u32,
    header: CiHeader,
    /// Upper bound of compressed chunk ends (RAFS-FORMAT.md §3.8).
    compressed_limit: u64,
    /// Upper bound of uncompressed chunk ends.
    uncompressed_limit: u64,
    /// Chunk digests from the blob's `blob.digest` section, `count * 32` bytes.
    digests: Option<Vec<u8>>,
}

/// Size of one ci entry for a blob's features.
pub fn entry_size(features: u32) -> usize {
    if features & blob_features::CHUNK_INFO_V2 != 0 {
        CiEntryV2::SIZE
    } else {
        CiEntryV1::SIZE
    }
}

/// The bytes of a blob a reader must fetch to get its ci array:
/// `[ci_offset, ci_offset + ci_compressed_size + 4096)`.
pub fn ci_range(blob: &BlobInfo) -> (u64, u64) {
    (
        blob.ci_offset,
        blob.ci_compressed_size
            .saturating_add(CiHeader::SIZE as u64),
    )
}

impl ChunkInfoArray {
    /// `blob`: the blob-table entry; `data`: the bytes at
    /// `[ci_offset, ci_offset + ci_compressed_size + 4096)` of the blob (compressed ci
    /// followed by the 4 KiB header). Validates the header against the blob table.
    pub fn parse(blob: &BlobInfo, data: &[u8]) -> Result<ChunkInfoArray> {
        let csize = usize::try_from(blob.ci_compressed_size)
            .ok()
            .filter(|&c| c <= data.len().saturating_sub(CiHeader::SIZE))
            .ok_or_else(|| RafsError::Truncated {
                what: "ci array",
                offset: 0,
                need: blob
                    .ci_compressed_size
                    .saturating_add(CiHeader::SIZE as u64),
                have: data.len() as u64,
            })?;
        let header = CiHeader::parse(&data[csize..])?;
        Self::check_header(blob, &header)?;
        let usize_ = Self::uncompressed_len(blob)?;
        let raw = &data[..csize];
        let ci = if blob.ci_compressor == Compressor::None {
            if csize != usize_ {
                return corrupt(
                    blob,
                    format!("uncompressed ci of {csize} bytes, expected {usize_}"),
                );
            }
            raw.to_vec()
        } else {
            codec::decompress(blob.ci_compressor, raw, usize_)?
        };
        Self::build(blob, header, ci)
    }

    /// Same, from a `<blob_id>.blob.meta` file's bytes (RAFS-FORMAT.md §3.4): uncompressed
    /// ci data, zeros to a 4 KiB multiple, then the 4 KiB header.
    pub fn parse_blob_meta(blob: &BlobInfo, data: &[u8]) -> Result<ChunkInfoArray> {
        let usize_ = Self::uncompressed_len(blob)?;
        let hoff = round_up(usize_ as u64, EROFS_BLOCK_SIZE) as usize;
        let header = CiHeader::parse(data.get(hoff..).unwrap_or_default())?;
        Self::check_header(blob, &header)?;
        Self::build(blob, header, data[..usize_].to_vec())
    }

    fn uncompressed_len(blob: &BlobInfo) -> Result<usize> {
        let es = entry_size(blob.features) as u64;
        let want = u64::from(blob.chunk_count) * es;
        if blob.ci_uncompressed_size != want {
            return corrupt(
                blob,
                format!(
                    "uncompressed size {} != {} entries x {es}",
                    blob.ci_uncompressed_size, blob.chunk_count
                ),
            );
        }
        Ok(want as usize)
    }

    fn check_header(blob: &BlobInfo, h: &CiHeader) -> Result<()> {
        use blob_features::*;
        if h.magic != CI_HEADER_MAGIC || h.magic2 != CI_HEADER_MAGIC {
            return Err(RafsError::BadMagic {
                what: "ci header",
                found: (u64::from(h.magic) << 32) | u64::from(h.magic2),
            });
        }
        super::v6::refuse_unsupported_blob_features(blob.index, h.features)?;
        super::v6::refuse_unsupported_blob_features(blob.index, blob.features)?;
        if (h.features ^ blob.features) & CHUNK_INFO_V2 != 0 {
            return corrupt(blob, "header and blob table disagree on v2 entries".into());
        }
        if blob.features & IS_CHUNKDICT_GENERATED == 0 && h.ci_entries != blob.chunk_count {
            return corrupt(
                blob,
                format!(
                    "header has {} entries, blob table {}",
                    h.ci_entries, blob.chunk_count
                ),
            );
        }
        if h.ci_compressor != blob.ci_compressor as u32
            || h.ci_offset != blob.ci_offset
            || h.ci_compressed_size != blob.ci_compressed_size
            || h.ci_uncompressed_size != blob.ci_uncompressed_size
        {
            return corrupt(
                blob,
                format!(
                    "header (compressor {}, offset {}, sizes {}/{}) disagrees with the blob table \
                     (compressor {}, offset {}, sizes {}/{})",
                    h.ci_compressor,
                    h.ci_offset,
                    h.ci_compressed_size,
                    h.ci_uncompressed_size,
                    blob.ci_compressor as u32,
                    blob.ci_offset,
                    blob.ci_compressed_size,
                    blob.ci_uncompressed_size
                ),
            );
        }
        Ok(())
    }

    fn build(blob: &BlobInfo, header: CiHeader, data: Vec<u8>) -> Result<ChunkInfoArray> {
        use blob_features::*;
        let compressed_limit = if blob.features & CAP_TAR_TOC != 0 {
            if blob.features & HAS_TAR_HEADER != 0 {
                blob.ci_offset.saturating_sub(TarHeader::SIZE as u64)
            } else {
                blob.ci_offset
            }
        } else {
            blob.compressed_size
        };
        Ok(ChunkInfoArray {
            blob_index: blob.index,
            v2: blob.features & CHUNK_INFO_V2 != 0,
            count: (data.len() / entry_size(blob.features)) as u32,
            data,
            header,
            compressed_limit,
            uncompressed_limit: round_up(blob.uncompressed_size, EROFS_BLOCK_SIZE),
            digests: None,
        })
    }

    /// Attach the blob's chunk digest array (`blob.digest`, `count * 32` bytes).
    pub fn set_digests(&mut self, digests: Vec<u8>) -> Result<()> {
        if digests.len() != self.count as usize * 32 {
            return Err(RafsError::corrupt(format!(
                "blob {}: digest array of {} bytes for {} chunks",
                self.blob_index,
                digests.len(),
                self.count
            )));
        }
        self.digests = Some(digests);
        Ok(())
    }

    /// The decoded 4 KiB header.
    pub fn header(&self) -> &CiHeader {
        &self.header
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the array has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entry `ci_index`, validated (sizes, bounds within the blob, flags).
    pub fn get(&self, ci_index: u32) -> Result<ChunkInfo> {
        let bad = |m: String| {
            Err(RafsError::Corrupt(format!(
                "blob {}: ci entry {ci_index}: {m}",
                self.blob_index
            )))
        };
        if ci_index >= self.count {
            return bad(format!("index out of range ({} entries)", self.count));
        }
        let i = ci_index as usize;
        let (coff, csize, uoff, usz, compressed, crc32) = if self.v2 {
            let e = CiEntryV2::parse(&self.data[i * CiEntryV2::SIZE..])?;
            use ci_v2_flags::*;
            if e.flags & (ZRAN | BATCH | ENCRYPTED) != 0 {
                return Err(RafsError::Unsupported(format!(
                    "blob {}: ci entry {ci_index}: zran/batch/encrypted chunk (flags {:#x})",
                    self.blob_index, e.flags
                )));
            }
            let crc = if e.flags & HAS_CRC32 != 0 {
                let c = e.data as u32;
                if c == 0 {
                    return bad("HAS_CRC32 with crc 0".into());
                }
                Some(c)
            } else {
                None
            };
            (
                e.compressed_offset,
                e.compressed_size,
                e.uncompressed_offset,
                e.uncompressed_size,
                e.flags & COMPRESSED != 0,
                crc,
            )
        } else {
            let e = CiEntryV1::parse(&self.data[i * CiEntryV1::SIZE..])?;
            (
                e.compressed_offset,
                e.compressed_size,
                e.uncompressed_offset,
                e.uncompressed_size,
                e.is_compressed(),
                None,
            )
        };
        if csize == 0 || usz == 0 {
            return bad("zero size".into());
        }
        if !compressed && csize != usz {
            return bad(format!("stored chunk with sizes {csize} != {usz}"));
        }
        if coff + u64::from(csize) > self.compressed_limit {
            return bad(format!(
                "compressed range [{coff}, +{csize}) beyond the data area ({})",
                self.compressed_limit
            ));
        }
        if uoff + u64::from(usz) > self.uncompressed_limit {
            return bad(format!(
                "uncompressed range [{uoff}, +{usz}) beyond the blob ({})",
                self.uncompressed_limit
            ));
        }
        let digest = self.digests.as_ref().map(|d| {
            let mut a = [0u8; 32];
            a.copy_from_slice(&d[i * 32..i * 32 + 32]);
            a
        });
        Ok(ChunkInfo {
            blob_index: self.blob_index,
            index: ci_index,
            compressed_offset: coff,
            compressed_size: csize,
            uncompressed_offset: uoff,
            uncompressed_size: usz,
            compressed,
            crc32,
            digest,
        })
    }
}

/// Encode uncompressed ci data for `chunks` (in ci-index order) as v1 or v2 entries.
/// v1 cannot carry a crc; v2 stores it with HAS_CRC32.
pub fn encode_entries(chunks: &[ChunkInfo], v2: bool) -> Vec<u8> {
    let es = if v2 { CiEntryV2::SIZE } else { CiEntryV1::SIZE };
    let mut out = vec![0u8; chunks.len() * es];
    for (k, c) in chunks.iter().enumerate() {
        let o = &mut out[k * es..];
        if v2 {
            let mut flags = 0;
            if c.compressed {
                flags |= ci_v2_flags::COMPRESSED;
            }
            if c.crc32.is_some() {
                flags |= ci_v2_flags::HAS_CRC32;
            }
            CiEntryV2 {
                compressed_offset: c.compressed_offset,
                compressed_size: c.compressed_size,
                uncompressed_offset: c.uncompressed_offset,
                uncompressed_size: c.uncompressed_size,
                flags,
                data: u64::from(c.crc32.unwrap_or(0)),
            }
            .write_to(o);
        } else {
            CiEntryV1 {
                compressed_offset: c.compressed_offset,
                compressed_size: c.compressed_size,
                uncompressed_offset: c.uncompressed_offset,
                uncompressed_size: c.uncompressed_size,
            }
            .write_to(o);
        }
    }
    out
}

/// The ci header matching a blob-table entry.
pub fn header_for(blob: &BlobInfo) -> CiHeader {
    CiHeader {
        magic: CI_HEADER_MAGIC,
        features: blob.features,
        ci_compressor: blob.ci_compressor as u32,
        ci_entries: blob.chunk_count,
        ci_offset: blob.ci_offset,
        ci_compressed_size: blob.ci_compressed_size,
        ci_uncompressed_size: blob.ci_uncompressed_size,
        ctx_offset: 0,
        ctx_size: 0,
        ctx_count: 0,
        magic2: CI_HEADER_MAGIC,
    }
}

/// A `<blob_id>.blob.meta` file: uncompressed ci, zeros to 4 KiB, header.
pub fn encode_blob_meta(blob: &BlobInfo, ci_uncompressed: &[u8]) -> Vec<u8> {
    let hoff = round_up(ci_uncompressed.len() as u64, EROFS_BLOCK_SIZE) as usize;
    let mut out = vec![0u8; hoff + CiHeader::SIZE];
    out[..ci_uncompressed.len()].copy_from_slice(ci_uncompressed);
    header_for(blob).write_to(&mut out[hoff..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(v2: bool, n: u32, comp: Compressor) -> BlobInfo {
        BlobInfo {
            index: 0,
            blob_id: "b".into(),
            chunk_size: 0x10000,
            chunk_count: n,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            features: blob_features::ALIGNED
                | blob_features::CAP_TAR_TOC
                | if v2 { blob_features::CHUNK_INFO_V2 } else { 0 },
            compressed_size: 1 << 20,
            uncompressed_size: 1 << 20,
            ci_compressor: comp,
            ci_offset: 1 << 20,
            ci_compressed_size: 0,
            ci_uncompressed_size: u64::from(n) * if v2 { 24 } else { 16 },
            toc_size: 0,
            toc_digest: [0; 32],
        }
    }

    fn chunks() -> Vec<ChunkInfo> {
        (0..3u32)
            .map(|k| ChunkInfo {
                blob_index: 0,
                index: k,
                compressed_offset: u64::from(k) * 100,
                compressed_size: 100,
                uncompressed_offset: u64::from(k) * 4096,
                uncompressed_size: 4000,
                compressed: true,
                crc32: Some(0x1234 + k),
                digest: None,
            })
            .collect()
    }

    #[test]
    fn v1_v2_round_trip_compressed_and_blob_meta() {
        for v2 in [false, true] {
            for comp in [Compressor::None, Compressor::Zstd, Compressor::Lz4Block] {
                let cs = chunks();
                let raw = encode_entries(&cs, v2);
                let mut b = blob(v2, 3, comp);
                let stored = match codec::compress(comp, &raw).unwrap() {
                    Some(c) => c,
                    None => {
                        b.ci_compressor = Compressor::None;
                        raw.clone()
                    }
                };
                b.ci_compressed_size = stored.len() as u64;
                let mut data = stored.clone();
                data.extend_from_slice(&header_for(&b).to_bytes());
                let a = ChunkInfoArray::parse(&b, &data).unwrap();
                assert_eq!(a.len(), 3);
                for (k, c) in cs.iter().enumerate() {
                    let mut want = *c;
                    if !v2 {
                        want.crc32 = None;
                    }
                    assert_eq!(a.get(k as u32).unwrap(), want);
                }
                assert!(a.get(3).is_err());
                let m = ChunkInfoArray::parse_blob_meta(&b, &encode_blob_meta(&b, &raw)).unwrap();
                assert_eq!(m.get(2).unwrap(), a.get(2).unwrap());

                // Header mismatch and bad magic are errors.
                let mut bad = data.clone();
                let h = stored.len();
                bad[h] ^= 1;
                assert!(ChunkInfoArray::parse(&b, &bad).is_err());
                let mut b2 = b.clone();
                b2.ci_offset += 1;
                assert!(ChunkInfoArray::parse(&b2, &data).is_err());
                assert!(ChunkInfoArray::parse(&b, &data[..data.len() - 1]).is_err());
            }
        }
    }

    #[test]
    fn entries_beyond_the_blob_are_errors() {
        let mut cs = chunks();
        cs[1].compressed_offset = 1 << 20; // past ci_offset
        let raw = encode_entries(&cs, false);
        let mut b = blob(false, 3, Compressor::None);
        b.ci_compressed_size = raw.len() as u64;
        let mut data = raw.clone();
        data.extend_from_slice(&header_for(&b).to_bytes());
        let a = ChunkInfoArray::parse(&b, &data).unwrap();
        assert!(a.get(0).is_ok());
        assert!(a.get(1).is_err());
    }

    #[test]
    fn zran_batch_encrypted_are_refused_by_name() {
        for (bit, word) in [
            (blob_features::ZRAN, "zran"),
            (blob_features::BATCH, "batch"),
            (blob_features::ENCRYPTED, "encrypted"),
        ] {
            let mut b = blob(true, 0, Compressor::None);
            b.features |= bit;
            let data = header_for(&b).to_bytes();
            let e = ChunkInfoArray::parse(&b, &data).unwrap_err();
            assert!(
                matches!(&e, RafsError::Unsupported(m) if m.contains(word)),
                "{e}"
            );
        }
    }
}
