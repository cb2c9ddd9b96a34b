//! Finishing a build: the blob's ci array and header, the optional inlined bootstrap and
//! ToC (RAFS-FORMAT.md §3.2-§3.6), naming the blob by its sha256, and writing the
//! bootstrap. Also loads chunk dictionaries (§5).

use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::chunker::BlobFile;
use super::tree::{NodeId, Tree};
use super::{new_blob_features, super_flags, BuildError, BuildOptions, BuildOutput};
use crate::rafs::layout::{
    self, round_up, BlobTableEntry, ChunkRecord, CiEntryV1, CiHeader, ErofsSuperBlock,
    RafsV6ExtSuperBlock, TarHeader, TocEntry,
};
use crate::rafs::{codec, ChunkInfo, Compressor, RafsVersion};

/// A loaded chunk dictionary: its blob table and every chunk of its chunk table.
pub struct ChunkDict {
    pub blobs: Vec<BlobTableEntry>,
    /// Chunks with `blob_index` = index in `blobs`.
    pub chunks: Vec<ChunkInfo>,
}

/// Load a v6 bootstrap as a chunk dictionary (from its chunk table), checking that it is
/// compatible with the build (RAFS version, chunk size, digest algorithm).
pub fn load_chunk_dict(path: &Path, opts: &BuildOptions) -> Result<ChunkDict, BuildError> {
    if opts.version == RafsVersion::V5 {
        // v5 dictionaries are walked inode by inode (chunk records are inline).
        let l = super::merge::load_image(path)?;
        if l.version != RafsVersion::V5 || l.chunk_size != opts.chunk_size {
            return Err(BuildError::Invalid(format!(
                "chunk dict {}: RAFS version or chunk size differs from the build",
                path.display()
            )));
        }
        let mut chunks = Vec::new();
        if l.flags & layout::digester_flag(opts.digester) != 0 {
            for n in l.tree.preorder() {
                chunks.extend(l.tree.nodes[n].chunks.iter().copied());
            }
        }
        return Ok(ChunkDict {
            blobs: l.blobs,
            chunks,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| BuildError::io(path, e))?;
    let (blobs, chunks, chunk_size, flags) = read_v6_tables(&bytes)
        .map_err(|e| BuildError::Invalid(format!("chunk dict {}: {e}", path.display())))?;
    if chunk_size != opts.chunk_size {
        return Err(BuildError::Invalid(format!(
            "chunk dict {}: chunk size {chunk_size:#x} differs from the build's {:#x}",
            path.display(),
            opts.chunk_size
        )));
    }
    let chunks = if flags & layout::digester_flag(opts.digester) != 0 {
        chunks
    } else {
        // A dictionary with another digest algorithm cannot match any chunk.
        Vec::new()
    };
    Ok(ChunkDict { blobs, chunks })
}

/// Blob table, chunk table, chunk size and flags of a v6 bootstrap.
pub fn read_v6_tables(
    b: &[u8],
) -> Result<(Vec<BlobTableEntry>, Vec<ChunkInfo>, u32, u64), crate::rafs::RafsError> {
    use crate::rafs::RafsError;
    let sb = ErofsSuperBlock::parse(layout::slice_at(b, 1024, 128, "superblock")?)?;
    if sb.magic != layout::EROFS_MAGIC {
        return Err(RafsError::BadMagic {
            what: "RAFS v6 superblock",
            found: u64::from(sb.magic),
        });
    }
    let ext = RafsV6ExtSuperBlock::parse(layout::slice_at(
        b,
        layout::RAFS_V6_EXT_SUPER_OFFSET,
        RafsV6ExtSuperBlock::SIZE as u64,
        "ext superblock",
    )?)?;
    let bt = layout::slice_at(
        b,
        ext.blob_table_offset,
        u64::from(ext.blob_table_size),
        "blob table",
    )?;
    let mut blobs = Vec::new();
    for e in bt.chunks_exact(BlobTableEntry::SIZE) {
        blobs.push(BlobTableEntry::parse(e)?);
    }
    let ct = layout::slice_at(
        b,
        ext.chunk_table_offset,
        ext.chunk_table_size,
        "chunk table",
    )?;
    let mut chunks = Vec::new();
    for e in ct.chunks_exact(ChunkRecord::SIZE) {
        let r = ChunkRecord::parse(e)?;
        if r.blob_index as usize >= blobs.len() {
            return Err(RafsError::corrupt(format!(
                "chunk table entry references blob {} of {}",
                r.blob_index,
                blobs.len()
            )));
        }
        chunks.push(r.to_chunk_info());
    }
    Ok((blobs, chunks, ext.chunk_size, ext.flags))
}

/// Encode the v1 ci array of `chunks` (ci order).
pub fn encode_ci_v1(chunks: &[ChunkInfo]) -> Vec<u8> {
    let mut v = vec![0u8; chunks.len() * CiEntryV1::SIZE];
    for (i, c) in chunks.iter().enumerate() {
        CiEntryV1 {
            compressed_offset: c.compressed_offset,
            compressed_size: c.compressed_size,
            uncompressed_offset: c.uncompressed_offset,
            uncompressed_size: c.uncompressed_size,
        }
        .write_to(&mut v[i * CiEntryV1::SIZE..]);
    }
    v
}

fn tar_header(name: &str, size: u64) -> Vec<u8> {
    TarHeader {
        name: name.as_bytes().to_vec(),
        size,
    }
    .to_bytes()
}

fn sha256(b: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(b).into()
}

fn toc_entry(
    name: &str,
    c: Compressor,
    digest: [u8; 32],
    off: u64,
    csize: u64,
    usize_: u64,
) -> TocEntry {
    TocEntry {
        flags: TocEntry::flag_of(c).unwrap_or(layout::toc_flags::COMPRESSION_NONE),
        name: layout::nul_padded(name.as_bytes()),
        uncompressed_digest: digest,
        compressed_offset: off,
        compressed_size: csize,
        uncompressed_size: usize_,
    }
}

/// Write ci/ToC/bootstrap, name the blob, write the bootstrap file.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_build(
    opts: &BuildOptions,
    tree: Tree,
    mut table: Vec<BlobTableEntry>,
    new_chunks: Vec<ChunkInfo>,
    mut blob: BlobFile,
    uncompressed_size: u64,
    prefetch: &[NodeId],
    has_xattr: bool,
) -> Result<BuildOutput, BuildError> {
    let has_chunks = !new_chunks.is_empty();
    let features = new_blob_features(opts, has_chunks);
    let inline = opts.blob_inline_meta;
    let mut toc: Vec<TocEntry> = Vec::new();
    let mut entry_index = None;
    if has_chunks {
        let data_len = blob.len();
        if inline {
            let d = blob.digest_so_far()?;
            toc.push(toc_entry(
                layout::TOC_ENTRY_BLOB_RAW,
                Compressor::None,
                d,
                0,
                data_len,
                data_len,
            ));
            blob.write(&tar_header(layout::TOC_ENTRY_BLOB_RAW, data_len))?;
        }
        let mut entry = BlobTableEntry {
            blob_id: layout::nul_padded(layout::PLACEHOLDER_BLOB_ID.as_bytes()),
            blob_index: table.len() as u32,
            chunk_size: opts.chunk_size,
            chunk_count: new_chunks.len() as u32,
            compression_algo: opts.compressor as u32,
            digest_algo: opts.digester as u32,
            features,
            uncompressed_size: if opts.version == RafsVersion::V6 {
                round_up(uncompressed_size, 4096)
            } else {
                uncompressed_size
            },
            ..Default::default()
        };
        if opts.version == RafsVersion::V6 {
            let ci = encode_ci_v1(&new_chunks);
            let (ci_comp, ci_bytes) = match codec::compress(opts.compressor, &ci)? {
                Some(c) => (opts.compressor, c),
                None => (Compressor::None, ci.clone()),
            };
            let ci_offset = blob.len();
            let hdr = CiHeader {
                magic: layout::CI_HEADER_MAGIC,
                features,
                ci_compressor: ci_comp as u32,
                ci_entries: new_chunks.len() as u32,
                ci_offset,
                ci_compressed_size: ci_bytes.len() as u64,
                ci_uncompressed_size: ci.len() as u64,
                magic2: layout::CI_HEADER_MAGIC,
                ..Default::default()
            }
            .to_bytes();
            blob.write(&ci_bytes)?;
            blob.write(&hdr)?;
            entry.ci_compressor = ci_comp as u32;
            entry.ci_offset = ci_offset;
            entry.ci_compressed_size = ci_bytes.len() as u64;
            entry.ci_uncompressed_size = ci.len() as u64;
            if inline {
                toc.push(toc_entry(
                    layout::TOC_ENTRY_BLOB_META,
                    ci_comp,
                    sha256(&ci),
                    ci_offset,
                    ci_bytes.len() as u64,
                    ci.len() as u64,
                ));
                toc.push(toc_entry(
                    layout::TOC_ENTRY_BLOB_META_HEADER,
                    Compressor::None,
                    sha256(&hdr),
                    ci_offset + ci_bytes.len() as u64,
                    hdr.len() as u64,
                    hdr.len() as u64,
                ));
                blob.write(&tar_header(
                    layout::TOC_ENTRY_BLOB_META,
                    (ci_bytes.len() + hdr.len()) as u64,
                ))?;
                if opts.blob_toc {
                    let mut digests = Vec::with_capacity(new_chunks.len() * 32);
                    for c in &new_chunks {
                        digests.extend_from_slice(&c.digest.unwrap_or([0; 32]));
                    }
                    let off = blob.len();
                    toc.push(toc_entry(
                        layout::TOC_ENTRY_BLOB_DIGEST,
                        Compressor::None,
                        sha256(&digests),
                        off,
                        digests.len() as u64,
                        digests.len() as u64,
                    ));
                    blob.write(&digests)?;
                    blob.write(&tar_header(
                        layout::TOC_ENTRY_BLOB_DIGEST,
                        digests.len() as u64,
                    ))?;
                }
            }
        }
        entry_index = Some(table.len());
        table.push(entry);
    }

    let inlined_digest = !table.is_empty()
        && table
            .iter()
            .all(|e| e.features & crate::rafs::blob_features::INLINED_CHUNK_DIGEST != 0);
    let flags = super_flags(opts.compressor, opts.digester, has_xattr, inlined_digest);

    let mut out = BuildOutput {
        blob_id: None,
        blob_path: None,
        blob_size: 0,
        chunk_count: new_chunks.len() as u32,
        blobs: Vec::new(),
        bootstrap: opts.bootstrap.clone(),
        bootstrap_size: 0,
        toc_digest: None,
        toc_size: 0,
        implicit_dirs: Vec::new(),
    };
    let bootstrap: Vec<u8>;
    if inline {
        if let Some(i) = entry_index {
            table[i].compressed_size = blob.len();
        }
        bootstrap = write_bootstrap(opts, &tree, &table, flags, prefetch)?;
        // With a ToC the bootstrap is zstd-compressed (the ToC entry says so); without one
        // (older `--blob-inline-meta` shape) it is stored raw, as readers expect.
        let compressed = if opts.blob_toc {
            codec::compress(Compressor::Zstd, &bootstrap)?
        } else {
            None
        };
        let (boot_comp, boot_bytes) = match compressed {
            Some(c) => (Compressor::Zstd, c),
            None => (Compressor::None, bootstrap.clone()),
        };
        let off = blob.len();
        blob.write(&boot_bytes)?;
        blob.write(&tar_header(
            layout::TOC_ENTRY_BOOTSTRAP,
            boot_bytes.len() as u64,
        ))?;
        if opts.blob_toc {
            toc.push(toc_entry(
                layout::TOC_ENTRY_BOOTSTRAP,
                boot_comp,
                sha256(&bootstrap),
                off,
                boot_bytes.len() as u64,
                bootstrap.len() as u64,
            ));
            let mut t = vec![0u8; toc.len() * TocEntry::SIZE];
            for (i, e) in toc.iter().enumerate() {
                e.write_to(&mut t[i * TocEntry::SIZE..]);
            }
            let h = tar_header(layout::TOC_NAME, t.len() as u64);
            out.toc_digest = Some(hex::encode(sha256(&[t.as_slice(), h.as_slice()].concat())));
            out.toc_size = (t.len() + h.len()) as u32;
            blob.write(&t)?;
            blob.write(&h)?;
        }
        let (tmp, id, size) = blob.finish()?;
        let path = place_blob(opts, &tmp, &id)?;
        out.blob_id = Some(id.clone());
        out.blob_path = Some(path);
        out.blob_size = size;
        out.blobs = table
            .iter()
            .map(|e| String::from_utf8_lossy(e.blob_id_bytes()).into_owned())
            .collect();
        if let Some(i) = entry_index {
            out.blobs[i] = id;
        }
    } else {
        if let Some(i) = entry_index {
            let (tmp, id, size) = blob.finish()?;
            let path = place_blob(opts, &tmp, &id)?;
            table[i].blob_id = layout::nul_padded(id.as_bytes());
            table[i].compressed_size = size;
            out.blob_id = Some(id);
            out.blob_path = Some(path);
            out.blob_size = size;
        } else {
            blob.discard();
        }
        bootstrap = write_bootstrap(opts, &tree, &table, flags, prefetch)?;
        out.blobs = table
            .iter()
            .map(|e| String::from_utf8_lossy(e.blob_id_bytes()).into_owned())
            .collect();
    }
    if let Some(p) = &opts.bootstrap {
        write_file(p, &bootstrap)?;
    }
    out.bootstrap_size = bootstrap.len() as u64;
    Ok(out)
}

fn write_bootstrap(
    opts: &BuildOptions,
    tree: &Tree,
    table: &[BlobTableEntry],
    flags: u64,
    prefetch: &[NodeId],
) -> Result<Vec<u8>, BuildError> {
    match opts.version {
        RafsVersion::V6 => Ok(super::v6::write(
            tree,
            &super::v6::V6Params {
                blobs: table,
                chunk_size: opts.chunk_size,
                flags,
                prefetch,
            },
        )?
        .bytes),
        RafsVersion::V5 => super::v5::write(tree, table, opts.chunk_size, flags, prefetch),
    }
}

/// Write `bytes` to `path` atomically (temporary file + rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| BuildError::io(d, e))?;
    }
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes).map_err(|e| BuildError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| BuildError::io(path, e))
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp{}", std::process::id()));
    PathBuf::from(s)
}

/// Move the finished blob to `--blob` and/or `--blob-dir/<id>`.
fn place_blob(opts: &BuildOptions, tmp: &Path, id: &str) -> Result<PathBuf, BuildError> {
    let mut placed: Option<PathBuf> = None;
    if let Some(b) = &opts.blob {
        std::fs::rename(tmp, b)
            .or_else(|_| {
                std::fs::copy(tmp, b)
                    .map(|_| ())
                    .and_then(|_| std::fs::remove_file(tmp))
            })
            .map_err(|e| BuildError::io(b, e))?;
        placed = Some(b.clone());
    }
    if let Some(d) = &opts.blob_dir {
        let dst = d.join(id);
        std::fs::create_dir_all(d).map_err(|e| BuildError::io(d, e))?;
        match &placed {
            Some(src) => {
                std::fs::copy(src, &dst).map_err(|e| BuildError::io(&dst, e))?;
            }
            None => {
                std::fs::rename(tmp, &dst).map_err(|e| BuildError::io(&dst, e))?;
                placed = Some(dst);
            }
        }
    }
    placed.ok_or_else(|| BuildError::Invalid("no blob destination".into()))
}
