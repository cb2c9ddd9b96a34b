//! The image builder behind `rafs-image create` / `merge`: source trees (directory, tar,
//! tar.gz), parallel chunking with deduplication and compression, the blob writer (chunk
//! data, ci array + header, optional inlined bootstrap and ToC), and the v6 / v5 bootstrap
//! writers. Output is deterministic: the same input gives the same bytes.
//!
//! See docs/format.md ("Writer") for the design.

pub mod blob;
pub mod chunker;
pub mod merge;
pub mod tarball;
pub mod tools;
pub mod tree;
pub mod v5;
pub mod v6;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::rafs::layout::{self, BlobTableEntry};
use crate::rafs::{blob_features, ChunkInfo, Compressor, Digester, RafsError, RafsVersion};
use chunker::{Chunker, ChunkerConfig, DICT_BASE};
use tree::{DataSource, NodeId, Tree};

/// Blob index placeholder of chunks written to the new blob, until the table is final.
pub const NEW_BLOB: u32 = 0x2000_0000;

/// Errors of the builder.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad input or options.
    #[error("{0}")]
    Invalid(String),
    /// A tar stream that cannot be parsed.
    #[error("tar: {0}")]
    Tar(String),
    #[error(transparent)]
    Rafs(#[from] RafsError),
    #[error(transparent)]
    Codec(#[from] crate::rafs::codec::CodecError),
}

impl BuildError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        BuildError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Kind of the `create` source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceType {
    /// A host directory (`dir-rafs`).
    Dir,
    /// An uncompressed tar stream (`tar-rafs`).
    Tar,
    /// A gzip-compressed tar stream (`targz-rafs`).
    TarGz,
}

/// How whiteout entries of a layer are interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutSpec {
    /// `.wh.NAME` and `.wh..wh..opq` files.
    Oci,
    /// char device 0:0 and `trusted.overlay.opaque=y`.
    Overlayfs,
    /// Whiteouts are ordinary files.
    None,
}

/// Options of `create`.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub source: PathBuf,
    pub source_type: SourceType,
    pub version: RafsVersion,
    pub compressor: Compressor,
    pub digester: Digester,
    pub chunk_size: u32,
    /// Where to write the bootstrap (required unless `blob_inline_meta`).
    pub bootstrap: Option<PathBuf>,
    /// Blob file path.
    pub blob: Option<PathBuf>,
    /// Directory receiving the blob named by its id.
    pub blob_dir: Option<PathBuf>,
    /// Chunk dictionary bootstrap.
    pub chunk_dict: Option<PathBuf>,
    /// Parent bootstrap (the new layer is applied on top of it).
    pub parent_bootstrap: Option<PathBuf>,
    /// Prefetch patterns (absolute paths); empty = no prefetch table.
    pub prefetch_patterns: Vec<Vec<u8>>,
    /// Append the bootstrap (and with `blob_toc` a ToC) to the blob.
    pub blob_inline_meta: bool,
    pub blob_toc: bool,
    pub whiteout_spec: WhiteoutSpec,
    /// Worker threads (0 = all cores).
    pub threads: usize,
}

impl BuildOptions {
    /// Defaults of nydus-image for `source`.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        BuildOptions {
            source: source.into(),
            source_type: SourceType::Dir,
            version: RafsVersion::V6,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            chunk_size: layout::DEFAULT_CHUNK_SIZE,
            bootstrap: None,
            blob: None,
            blob_dir: None,
            chunk_dict: None,
            parent_bootstrap: None,
            prefetch_patterns: Vec::new(),
            blob_inline_meta: false,
            blob_toc: false,
            whiteout_spec: WhiteoutSpec::Oci,
            threads: 0,
        }
    }
}

/// What `create` produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildOutput {
    /// Blob id of the new blob (its sha256; `None` if no blob was written).
    pub blob_id: Option<String>,
    /// Path of the new blob file.
    pub blob_path: Option<PathBuf>,
    pub blob_size: u64,
    /// Chunks stored in the new blob.
    pub chunk_count: u32,
    /// Ids of every blob the bootstrap references, in blob-table order.
    pub blobs: Vec<String>,
    pub bootstrap: Option<PathBuf>,
    pub bootstrap_size: u64,
    /// Hex SHA-256 of the new blob's ToC (entries and their tar header), with `blob_toc`.
    pub toc_digest: Option<String>,
    /// Bytes of that ToC (entries and tar header); 0 without one.
    pub toc_size: u32,
    /// Directories (`/a/b`; `/` for the root) that a tar source did not describe: see
    /// [`merge::MergeOptions::implicit_dirs`].
    pub implicit_dirs: Vec<Vec<u8>>,
}

/// Parse a chunk size given as hex (`0x...`) or decimal; must be a power of two in
/// 4 KiB..=16 MiB.
pub fn parse_chunk_size(s: &str) -> Result<u32, BuildError> {
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        s.parse::<u64>()
    }
    .map_err(|_| BuildError::Invalid(format!("invalid chunk size {s:?}")))?;
    if !v.is_power_of_two()
        || v < u64::from(layout::MIN_CHUNK_SIZE)
        || v > u64::from(layout::MAX_CHUNK_SIZE)
    {
        return Err(BuildError::Invalid(format!(
            "chunk size {s} must be a power of two between 0x1000 and 0x1000000"
        )));
    }
    Ok(v as u32)
}

/// RafsSuperFlags for a build.
pub fn super_flags(c: Compressor, d: Digester, has_xattr: bool, inlined_digest: bool) -> u64 {
    use layout::super_flags as f;
    let mut flags = layout::compressor_flag(c)
        | layout::digester_flag(d)
        | f::EXPLICIT_UID_GID
        | f::ENCRYPTION_NONE;
    if has_xattr {
        flags |= f::HAS_XATTR;
    }
    if inlined_digest {
        flags |= f::INLINED_CHUNK_DIGEST;
    }
    flags
}

/// Build an image from `opts.source`.
pub fn create(opts: &BuildOptions) -> Result<BuildOutput, BuildError> {
    create_inner(opts, None)
}

/// Build an image from an uncompressed tar stream (a layer streamed from a registry:
/// `opts.source` and `opts.source_type` are ignored). The stream is read once, in order,
/// and never buffered whole.
pub fn create_from_tar(opts: &BuildOptions, tar: &mut dyn Read) -> Result<BuildOutput, BuildError> {
    create_inner(opts, Some(tar))
}

fn create_inner(
    opts: &BuildOptions,
    tar: Option<&mut dyn Read>,
) -> Result<BuildOutput, BuildError> {
    if opts.version == RafsVersion::V5 && opts.blob_toc {
        return Err(BuildError::Invalid(
            "--features blob-toc is not supported with --fs-version 5".into(),
        ));
    }
    if opts.bootstrap.is_none() && !opts.blob_inline_meta {
        return Err(BuildError::Invalid(
            "--bootstrap is required unless --blob-inline-meta is given".into(),
        ));
    }
    if opts.blob.is_none() && opts.blob_dir.is_none() {
        return Err(BuildError::Invalid(
            "one of --blob or --blob-dir is required".into(),
        ));
    }
    let tmp_dir = opts
        .blob_dir
        .clone()
        .or_else(|| {
            opts.blob
                .as_ref()
                .and_then(|b| b.parent().map(|p| p.to_path_buf()))
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let cfg = ChunkerConfig {
        chunk_size: opts.chunk_size,
        compressor: opts.compressor,
        digester: opts.digester,
        aligned: opts.version == RafsVersion::V6,
        blob_index: NEW_BLOB,
        threads: opts.threads,
    };
    let mut chunker = Chunker::new(cfg, &tmp_dir)?;

    // Parent bootstrap: its tree is the base, its blobs keep their indexes, and its chunks
    // are reused instead of written again.
    let parent = match &opts.parent_bootstrap {
        Some(p) => {
            let l = merge::load_image(p)?;
            if l.version != opts.version || l.chunk_size != opts.chunk_size {
                return Err(BuildError::Invalid(format!(
                    "parent bootstrap {}: RAFS version or chunk size differs from the build",
                    p.display()
                )));
            }
            if l.flags & layout::digester_flag(opts.digester) != 0 {
                for n in l.tree.preorder() {
                    chunker.add_known(l.tree.nodes[n].chunks.iter().copied());
                }
            }
            Some(l)
        }
        None => None,
    };

    // Chunk dictionary.
    let dict = match &opts.chunk_dict {
        Some(p) => {
            let d = blob::load_chunk_dict(p, opts)?;
            chunker.set_dict(d.chunks.iter().copied());
            Some(d)
        }
        None => None,
    };

    // Source tree; tar sources are chunked while they are parsed.
    let mut tree = match (opts.source_type, tar) {
        (_, Some(r)) => {
            let mut t = tarball::read_tar(r, &mut chunker)?;
            if parent.is_none() {
                apply_whiteout_spec_single(&mut t, opts.whiteout_spec);
            }
            t
        }
        (SourceType::Dir, None) => {
            let mut t = Tree::from_dir(&opts.source)?;
            if parent.is_none() {
                apply_whiteout_spec_single(&mut t, opts.whiteout_spec);
            }
            t.fix_hardlinks();
            let order = data_order(&t, &opts.prefetch_patterns);
            for n in order {
                let node = &t.nodes[n];
                if let DataSource::Path(p) = &node.source {
                    let mut r = std::fs::File::open(p).map_err(|e| BuildError::io(p, e))?;
                    chunker.add_file(n, &mut r, node.size)?;
                    let mut extra = [0u8; 1];
                    if r.read(&mut extra).map_err(|e| BuildError::io(p, e))? != 0 {
                        return Err(BuildError::Invalid(format!(
                            "{}: file grew while building",
                            p.display()
                        )));
                    }
                }
            }
            t
        }
        (SourceType::Tar | SourceType::TarGz, None) => {
            let f =
                std::fs::File::open(&opts.source).map_err(|e| BuildError::io(&opts.source, e))?;
            let r = std::io::BufReader::with_capacity(1 << 20, f);
            let mut t = if opts.source_type == SourceType::TarGz {
                tarball::read_tar(&mut flate2::read::GzDecoder::new(r), &mut chunker)?
            } else {
                tarball::read_tar(&mut { r }, &mut chunker)?
            };
            if parent.is_none() {
                apply_whiteout_spec_single(&mut t, opts.whiteout_spec);
            }
            t
        }
    };
    let out = chunker.finish()?;
    for (n, chunks) in out.node_chunks.iter() {
        tree.nodes[*n].chunks = chunks.clone();
    }
    // Make the first live name of each hard-link group its primary (taking over the chunks).
    tree.fix_hardlinks();

    // Final blob table: parent blobs, dictionary blobs used (first-use order), then the
    // new blob.
    let mut table: Vec<BlobTableEntry> =
        parent.as_ref().map(|p| p.blobs.clone()).unwrap_or_default();
    let mut dict_map = std::collections::HashMap::new();
    if let Some(d) = &dict {
        for &di in &out.dict_blobs_used {
            let mut e = d.blobs[di as usize];
            match table.iter().position(|t| t.blob_id == e.blob_id) {
                Some(i) => {
                    dict_map.insert(di, i as u32);
                }
                None => {
                    e.blob_index = table.len() as u32;
                    dict_map.insert(di, e.blob_index);
                    table.push(e);
                }
            }
        }
    }
    let new_index = table.len() as u32;
    let remap = |c: &mut ChunkInfo| {
        if c.blob_index == NEW_BLOB {
            c.blob_index = new_index;
        } else if c.blob_index >= DICT_BASE {
            c.blob_index = dict_map[&(c.blob_index - DICT_BASE)];
        }
    };
    for node in tree.nodes.iter_mut() {
        node.chunks.iter_mut().for_each(remap);
    }
    let mut new_chunks = out.chunks.clone();
    new_chunks.iter_mut().for_each(remap);
    if let Some(p) = parent {
        let mut base = p.tree;
        merge::apply_layer(&mut base, &tree, opts.whiteout_spec);
        base.fix_hardlinks();
        tree = base;
    }

    let implicit_dirs: Vec<Vec<u8>> = tree
        .preorder()
        .into_iter()
        .filter(|&n| tree.nodes[n].implicit && tree.nodes[n].is_dir())
        .map(|n| tree.path_of(n))
        .collect();
    let prefetch = prefetch_nodes(&tree, &opts.prefetch_patterns)?;
    let has_xattr = tree
        .preorder()
        .iter()
        .any(|&n| !tree.nodes[n].xattrs.is_empty());
    let mut out = blob::finish_build(
        opts,
        tree,
        table,
        new_chunks,
        out.blob,
        out.uncompressed_size,
        &prefetch,
        has_xattr,
    )?;
    out.implicit_dirs = implicit_dirs;
    Ok(out)
}

/// For a single-layer build: drop whiteout entries (nothing below them to hide), unless the
/// spec is `none`.
fn apply_whiteout_spec_single(t: &mut Tree, spec: WhiteoutSpec) {
    if spec == WhiteoutSpec::None {
        return;
    }
    let order = t.preorder();
    for n in order {
        if t.nodes[n].deleted || n == 0 {
            continue;
        }
        let node = &t.nodes[n];
        let wh = match spec {
            WhiteoutSpec::Oci => node.name.starts_with(b".wh."),
            WhiteoutSpec::Overlayfs => node.mode & libc::S_IFMT == libc::S_IFCHR && node.rdev == 0,
            WhiteoutSpec::None => false,
        };
        if wh {
            t.detach(n);
        }
    }
    if spec == WhiteoutSpec::Overlayfs {
        for n in t.preorder() {
            t.nodes[n]
                .xattrs
                .remove(b"trusted.overlay.opaque".as_slice());
        }
    }
}

/// Nodes matched by prefetch patterns, in pattern order (a directory stands for itself).
pub fn prefetch_nodes(tree: &Tree, patterns: &[Vec<u8>]) -> Result<Vec<NodeId>, BuildError> {
    let mut out = Vec::new();
    for p in patterns {
        if let Some(n) = tree.lookup_path(p) {
            let n = tree.nodes[n].link_to.unwrap_or(n);
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Order in which file data is written: files under prefetch patterns first (pattern
/// order), then all others in tree pre-order.
fn data_order(tree: &Tree, patterns: &[Vec<u8>]) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in patterns {
        if let Some(start) = tree.lookup_path(p) {
            let mut stack = vec![start];
            let mut sub = Vec::new();
            while let Some(n) = stack.pop() {
                sub.push(n);
                stack.extend(tree.nodes[n].children.iter().rev().copied());
            }
            for n in sub {
                if tree.nodes[n].is_reg() && tree.nodes[n].link_to.is_none() && seen.insert(n) {
                    out.push(n);
                }
            }
        }
    }
    for n in tree.preorder() {
        if tree.nodes[n].is_reg() && tree.nodes[n].link_to.is_none() && seen.insert(n) {
            out.push(n);
        }
    }
    out
}

/// Blob features of a blob written by this builder.
pub fn new_blob_features(opts: &BuildOptions, has_chunks: bool) -> u32 {
    let mut f = blob_features::CAP_TAR_TOC;
    if opts.version == RafsVersion::V6 {
        f |= blob_features::ALIGNED;
    }
    if opts.blob_inline_meta {
        f |= blob_features::INLINED_FS_META | blob_features::HAS_TAR_HEADER;
        if opts.blob_toc {
            f |= blob_features::HAS_TOC;
            if has_chunks {
                f |= blob_features::INLINED_CHUNK_DIGEST;
            }
        }
    }
    f
}
