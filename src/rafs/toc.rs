//! Blob table of contents (ToC) and trailing-tar-header sections (RAFS-FORMAT.md §3.5-§3.6):
//! locate `image.boot`, `blob.meta`, `blob.digest` inside a per-layer blob.

use sha2::{Digest, Sha256};

use super::codec;
use super::error::{RafsError, Result};
use super::layout::*;
use super::types::*;

/// Most entries a ToC may have (upstream writes 5).
pub const MAX_TOC_ENTRIES: usize = 256;
/// Largest section we decompress from a blob (an inlined bootstrap): 1 GiB.
pub const MAX_SECTION_SIZE: u64 = 1 << 30;

/// ToC of a blob with HAS_TOC (RAFS-FORMAT.md §3.5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Toc {
    pub entries: Vec<TocEntry>,
}

fn corrupt<T>(msg: impl Into<String>) -> Result<T> {
    Err(RafsError::Corrupt(msg.into()))
}

/// Parse the trailing tar header that ends at `end` in `blob`; returns it and the start
/// offset of the section it describes.
pub fn section_before(blob: &[u8], end: u64) -> Result<(TarHeader, u64)> {
    let hstart = end
        .checked_sub(TarHeader::SIZE as u64)
        .ok_or_else(|| RafsError::corrupt("blob too short for a tar header"))?;
    let h = TarHeader::parse(slice_at(
        blob,
        hstart,
        TarHeader::SIZE as u64,
        "tar header",
    )?)?;
    let start = hstart
        .checked_sub(h.size)
        .ok_or_else(|| RafsError::corrupt("tar header size exceeds the blob"))?;
    Ok((h, start))
}

impl Toc {
    /// Parse the ToC from the end of a blob. `blob_tail` must end at the blob's end and
    /// contain at least the ToC entries and its tar header. If `expected` is given (the
    /// blob table's non-zero ToC digest), the SHA-256 of entries + header must match.
    pub fn parse(blob_tail: &[u8], expected: Option<[u8; 32]>) -> Result<Toc> {
        let (h, start) = section_before(blob_tail, blob_tail.len() as u64)?;
        if h.name != TOC_NAME.as_bytes() {
            return corrupt(format!(
                "last tar header is {:?}, not {TOC_NAME}",
                String::from_utf8_lossy(&h.name)
            ));
        }
        if h.size % TocEntry::SIZE as u64 != 0
            || h.size / TocEntry::SIZE as u64 > MAX_TOC_ENTRIES as u64
        {
            return corrupt(format!("ToC size {} invalid", h.size));
        }
        let raw = &blob_tail[start as usize..];
        if let Some(want) = expected.filter(|d| d.iter().any(|&c| c != 0)) {
            let got: [u8; 32] = Sha256::digest(raw).into();
            if got != want {
                return corrupt(format!(
                    "ToC digest {} != blob table {}",
                    hex::encode(got),
                    hex::encode(want)
                ));
            }
        }
        let n = (h.size / TocEntry::SIZE as u64) as usize;
        let mut entries = Vec::with_capacity(n);
        for k in 0..n {
            entries.push(TocEntry::parse(&raw[k * TocEntry::SIZE..])?);
        }
        Ok(Toc { entries })
    }

    /// Parse the ToC of a whole blob, using `blob.toc_size` when known.
    pub fn from_blob(blob: &[u8], info: Option<&BlobInfo>) -> Result<Toc> {
        let len = blob.len() as u64;
        let (tail_len, digest) = match info {
            Some(b) if b.toc_size > 0 => (u64::from(b.toc_size), Some(b.toc_digest)),
            Some(b) => (len.min(4096), Some(b.toc_digest)),
            None => (len.min(4096), None),
        };
        if tail_len > len {
            return corrupt("ToC size larger than the blob");
        }
        let toc = Toc::parse(&blob[(len - tail_len) as usize..], digest)?;
        if info.is_some_and(|b| b.toc_size > 0)
            && toc.entries.len() * TocEntry::SIZE + TarHeader::SIZE != tail_len as usize
        {
            return corrupt("blob table ToC size disagrees with the ToC");
        }
        Ok(toc)
    }

    /// Entry by name.
    pub fn find(&self, name: &str) -> Option<&TocEntry> {
        self.entries
            .iter()
            .find(|e| e.name_bytes() == name.as_bytes())
    }

    /// Encode entries + their `rafs.blob.toc` tar header (what goes at the blob's end).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TocEntry::SIZE + TarHeader::SIZE);
        for e in &self.entries {
            out.extend_from_slice(&e.to_bytes());
        }
        let h = TarHeader {
            name: TOC_NAME.as_bytes().to_vec(),
            size: out.len() as u64,
        };
        out.extend_from_slice(&h.to_bytes());
        out
    }

    /// Read, decompress and verify (SHA-256 of the uncompressed content) one entry's content
    /// from the whole blob.
    pub fn read_entry(blob: &[u8], e: &TocEntry) -> Result<Vec<u8>> {
        let name = String::from_utf8_lossy(e.name_bytes()).into_owned();
        let algo = e.compressor().ok_or_else(|| {
            RafsError::corrupt(format!("ToC entry {name}: unknown flags {:#x}", e.flags))
        })?;
        if e.uncompressed_size > MAX_SECTION_SIZE {
            return corrupt(format!(
                "ToC entry {name}: absurd size {}",
                e.uncompressed_size
            ));
        }
        let raw = slice_at(blob, e.compressed_offset, e.compressed_size, "ToC section")?;
        let data = match algo {
            Compressor::None => {
                if e.compressed_size != e.uncompressed_size {
                    return corrupt(format!("ToC entry {name}: stored section sizes differ"));
                }
                raw.to_vec()
            }
            a => codec::decompress(a, raw, e.uncompressed_size as usize)?,
        };
        let got: [u8; 32] = Sha256::digest(&data).into();
        if got != e.uncompressed_digest {
            return corrupt(format!("ToC entry {name}: content digest mismatch"));
        }
        Ok(data)
    }
}

/// Extract the bootstrap inlined in a per-layer blob: through the ToC (`image.boot` entry)
/// when the blob has one, else from the trailing `image.boot` tar header (older
/// `--blob-inline-meta` blobs, where the bootstrap is stored uncompressed).
pub fn extract_bootstrap(blob: &[u8]) -> Result<Vec<u8>> {
    match Toc::from_blob(blob, None) {
        Ok(toc) => {
            let e = toc
                .find(TOC_ENTRY_BOOTSTRAP)
                .ok_or_else(|| RafsError::corrupt("blob ToC has no image.boot entry"))?;
            Toc::read_entry(blob, e)
        }
        Err(toc_err) => {
            let (h, start) = section_before(blob, blob.len() as u64).map_err(|_| toc_err)?;
            if h.name != TOC_ENTRY_BOOTSTRAP.as_bytes() {
                return corrupt("blob has neither a ToC nor a trailing image.boot section");
            }
            Ok(blob[start as usize..start as usize + h.size as usize].to_vec())
        }
    }
}

/// The chunk digest array (`blob.digest`) of a blob with a ToC: `chunk_count * 32` bytes.
pub fn chunk_digests(blob: &[u8], info: &BlobInfo) -> Result<Vec<u8>> {
    let toc = Toc::from_blob(blob, Some(info))?;
    let e = toc
        .find(TOC_ENTRY_BLOB_DIGEST)
        .ok_or_else(|| RafsError::corrupt("blob ToC has no blob.digest entry"))?;
    let d = Toc::read_entry(blob, e)?;
    if d.len() != info.chunk_count as usize * 32 {
        return corrupt(format!(
            "blob.digest holds {} bytes for {} chunks",
            d.len(),
            info.chunk_count
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, off: u64, content: &[u8], stored: &[u8], flags: u32) -> TocEntry {
        TocEntry {
            flags,
            name: nul_padded(name.as_bytes()),
            uncompressed_digest: Sha256::digest(content).into(),
            compressed_offset: off,
            compressed_size: stored.len() as u64,
            uncompressed_size: content.len() as u64,
        }
    }

    #[test]
    fn toc_round_trip_and_bootstrap_extraction() {
        let boot = vec![7u8; 10_000];
        let zboot = codec::compress(Compressor::Zstd, &boot).unwrap().unwrap();
        let mut blob = b"chunkdata".to_vec();
        let off = blob.len() as u64;
        blob.extend_from_slice(&zboot);
        blob.extend_from_slice(
            &TarHeader {
                name: b"image.boot".to_vec(),
                size: zboot.len() as u64,
            }
            .to_bytes(),
        );
        let toc = Toc {
            entries: vec![entry(
                "image.boot",
                off,
                &boot,
                &zboot,
                toc_flags::COMPRESSION_ZSTD,
            )],
        };
        let enc = toc.encode();
        blob.extend_from_slice(&enc);
        let digest: [u8; 32] = Sha256::digest(&enc).into();
        assert_eq!(Toc::parse(&enc, Some(digest)).unwrap(), toc);
        assert!(Toc::parse(&enc, Some([1; 32])).is_err());
        assert_eq!(extract_bootstrap(&blob).unwrap(), boot);

        // A corrupted section fails its digest.
        let mut bad = blob.clone();
        bad[off as usize + 5] ^= 0xff;
        assert!(extract_bootstrap(&bad).is_err());
        // Truncations never panic.
        for n in 0..blob.len() {
            let _ = extract_bootstrap(&blob[..n]);
        }
    }

    #[test]
    fn legacy_trailing_image_boot() {
        let mut blob = b"data".to_vec();
        blob.extend_from_slice(b"BOOT");
        blob.extend_from_slice(
            &TarHeader {
                name: b"image.boot".to_vec(),
                size: 4,
            }
            .to_bytes(),
        );
        assert_eq!(extract_bootstrap(&blob).unwrap(), b"BOOT");
    }
}
