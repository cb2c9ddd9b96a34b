//! Reading a bootstrap back into a builder [`Tree`], and `merge` of per-layer bootstraps
//! with OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) applied in layer order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::tree::{Node, NodeId, Tree};
use super::{blob, super_flags, BuildError, WhiteoutSpec};
use crate::rafs::layout::{self, BlobTableEntry};
use crate::rafs::manifest::walk;
use crate::rafs::{blob_features, ChunkInfo, ChunkRef, RafsImage, RafsVersion};

/// A bootstrap read back as a tree plus its raw blob table.
pub struct LoadedImage {
    pub tree: Tree,
    pub blobs: Vec<BlobTableEntry>,
    pub version: RafsVersion,
    pub chunk_size: u32,
    pub flags: u64,
}

/// Read the whole tree of a bootstrap (metadata and chunk references).
pub fn load_image(path: &Path) -> Result<LoadedImage, BuildError> {
    let img = RafsImage::open(path)?;
    let blobs: Vec<BlobTableEntry> = match img.v6_tables() {
        Some((_, _, _, entries)) => entries.to_vec(),
        None => img
            .blobs()
            .iter()
            .map(BlobTableEntry::from_blob_info)
            .collect(),
    };
    // v6: full chunk infos from the chunk table, keyed by (blob, ci index).
    let mut table: HashMap<(u32, u32), ChunkInfo> = HashMap::new();
    if img.version() == RafsVersion::V6 {
        for c in img.chunk_table()? {
            table.insert((c.blob_index, c.index), c);
        }
    }
    let mut tree = Tree::new();
    let mut by_path: HashMap<Vec<u8>, NodeId> = HashMap::new();
    let mut by_ino: HashMap<u64, NodeId> = HashMap::new();
    walk(&img, &mut |e| {
        let a = e.attr;
        let id = if e.path == b"." {
            0
        } else {
            let (parent_path, name) = match e.path.iter().rposition(|&c| c == b'/') {
                Some(p) => (e.path[..p].to_vec(), e.path[p + 1..].to_vec()),
                None => (b".".to_vec(), e.path.clone()),
            };
            let parent = by_path.get(&parent_path).copied().unwrap_or(0);
            tree.add(Node::new(name, parent, a.mode))
        };
        by_path.insert(e.path.clone(), id);
        let node_is_reg = a.mode & libc::S_IFMT == libc::S_IFREG;
        if node_is_reg {
            if let Some(&first) = by_ino.get(&a.ino) {
                tree.nodes[id].link_to = Some(first);
                return Ok(());
            }
            by_ino.insert(a.ino, id);
        }
        let n = &mut tree.nodes[id];
        n.mode = a.mode;
        n.uid = a.uid;
        n.gid = a.gid;
        n.mtime = a.mtime;
        n.mtime_nsec = a.mtime_nsec;
        n.rdev = a.rdev;
        n.size = a.size;
        if a.mode & libc::S_IFMT == libc::S_IFLNK {
            n.symlink = img.readlink(a.ino)?;
        }
        if a.mode & libc::S_IFMT != libc::S_IFLNK || img.version() == RafsVersion::V6 {
            for name in img.list_xattrs(a.ino)? {
                let v = img.get_xattr(a.ino, &name)?.unwrap_or_default();
                n.xattrs.insert(name, v);
            }
        }
        if node_is_reg && a.size > 0 {
            for fc in img.file_chunks(a.ino, 0, a.size)? {
                let c = match fc.chunk {
                    ChunkRef::Inline(c) => c,
                    ChunkRef::Indexed {
                        blob_index,
                        ci_index,
                        ..
                    } => *table.get(&(blob_index, ci_index)).ok_or_else(|| {
                        crate::rafs::RafsError::corrupt(format!(
                            "chunk (blob {blob_index}, ci {ci_index}) missing from the chunk table"
                        ))
                    })?,
                };
                tree.nodes[id].chunks.push(c);
            }
        }
        Ok(())
    })?;
    Ok(LoadedImage {
        tree,
        blobs,
        version: img.version(),
        chunk_size: img.chunk_size(),
        flags: img.flags(),
    })
}

/// Options of `merge` (nydus-image flag names).
#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// Per-layer bootstraps, lowest first.
    pub sources: Vec<PathBuf>,
    pub bootstrap: PathBuf,
    /// Per layer: the layer blob's digest (hex, optionally `sha256:`-prefixed); replaces
    /// placeholder / inlined blob ids.
    pub blob_digests: Option<Vec<String>>,
    pub blob_sizes: Option<Vec<u64>>,
    pub blob_toc_digests: Option<Vec<String>>,
    pub blob_toc_sizes: Option<Vec<u32>>,
    pub chunk_dict: Option<PathBuf>,
    pub prefetch_patterns: Vec<Vec<u8>>,
    /// Per layer (or empty): paths (`/a/b`, `/` for the root) of directories the layer's
    /// tar did not describe ([`super::BuildOutput::implicit_dirs`]); they keep the lower
    /// layer's attributes, as extracting the tar over the lower tree would.
    pub implicit_dirs: Vec<Vec<Vec<u8>>>,
}

impl MergeOptions {
    pub fn new(sources: Vec<PathBuf>, bootstrap: PathBuf) -> Self {
        MergeOptions {
            sources,
            bootstrap,
            blob_digests: None,
            blob_sizes: None,
            blob_toc_digests: None,
            blob_toc_sizes: None,
            chunk_dict: None,
            prefetch_patterns: Vec::new(),
            implicit_dirs: Vec::new(),
        }
    }
}

/// Result of a merge.
#[derive(Clone, Debug)]
pub struct MergeOutput {
    pub blobs: Vec<String>,
}

fn strip_digest(s: &str) -> &str {
    s.strip_prefix("sha256:").unwrap_or(s)
}

/// Merge per-layer bootstraps into one v6 bootstrap.
pub fn merge(o: &MergeOptions) -> Result<MergeOutput, BuildError> {
    let n = o.sources.len();
    if n == 0 {
        return Err(BuildError::Invalid(
            "merge needs at least one bootstrap".into(),
        ));
    }
    for (what, len) in [
        ("--blob-digests", o.blob_digests.as_ref().map(|v| v.len())),
        ("--blob-sizes", o.blob_sizes.as_ref().map(|v| v.len())),
        (
            "--blob-toc-digests",
            o.blob_toc_digests.as_ref().map(|v| v.len()),
        ),
        (
            "--blob-toc-sizes",
            o.blob_toc_sizes.as_ref().map(|v| v.len()),
        ),
    ] {
        if let Some(l) = len {
            if l != n {
                return Err(BuildError::Invalid(format!(
                    "{what} has {l} values for {n} bootstraps"
                )));
            }
        }
    }
    let mut merged = Tree::new();
    let mut table: Vec<BlobTableEntry> = Vec::new();
    // With --chunk-dict (as nydus-image): the dictionary's blobs may appear in every layer;
    // each layer has at most one blob of its own, and the per-layer flags (--blob-digests,
    // --blob-sizes, --blob-toc-*) describe that one. The dictionary must be compatible with
    // the layers (RAFS version, chunk size, explicit uid/gid).
    let dict = match &o.chunk_dict {
        Some(d) => {
            let img = load_image(d)?;
            if img.version != RafsVersion::V6 {
                return Err(BuildError::Invalid(format!(
                    "chunk dict {}: merge supports RAFS v6 bootstraps only",
                    d.display()
                )));
            }
            Some((d.clone(), img))
        }
        None => None,
    };
    let dict_ids: Vec<[u8; 64]> = dict
        .as_ref()
        .map(|(_, img)| img.blobs.iter().map(|e| e.blob_id).collect())
        .unwrap_or_default();
    let per_layer_flags = o.blob_digests.is_some()
        || o.blob_sizes.is_some()
        || o.blob_toc_digests.is_some()
        || o.blob_toc_sizes.is_some();
    let mut chunk_size = 0;
    let mut base_flags = 0u64;
    let mut first_src = PathBuf::new();
    for (li, src) in o.sources.iter().enumerate() {
        let layer = load_image(src)?;
        if layer.version != RafsVersion::V6 {
            return Err(BuildError::Invalid(format!(
                "{}: merge supports RAFS v6 bootstraps only",
                src.display()
            )));
        }
        if li == 0 {
            chunk_size = layer.chunk_size;
            base_flags = layer.flags;
            first_src = src.clone();
            if let Some((d, img)) = &dict {
                check_compatible(d, img.chunk_size, img.flags, src, chunk_size, base_flags)?;
            }
        } else {
            check_compatible(
                &first_src,
                chunk_size,
                base_flags,
                src,
                layer.chunk_size,
                layer.flags,
            )?;
        }
        // The layer's own blobs: those not in the chunk dictionary.
        let is_inlined = |e: &BlobTableEntry| {
            e.features & blob_features::INLINED_FS_META != 0
                || e.blob_id_bytes() == layout::PLACEHOLDER_BLOB_ID.as_bytes()
        };
        let mut own: Vec<usize> = (0..layer.blobs.len())
            .filter(|&bi| !dict_ids.contains(&layer.blobs[bi].blob_id))
            .collect();
        if own.len() > 1 && dict.is_none() {
            // Without --chunk-dict, a layer whose other blobs came from a dictionary is
            // still unambiguous if exactly one blob is the layer's inlined one.
            let inl: Vec<usize> = own
                .iter()
                .copied()
                .filter(|&bi| is_inlined(&layer.blobs[bi]))
                .collect();
            if inl.len() == 1 {
                own = inl;
            }
        }
        if own.len() > 1 && (dict.is_some() || per_layer_flags) {
            return Err(BuildError::Invalid(format!(
                "{}: {} data blobs not in the chunk dictionary; a layer has at most one{}",
                src.display(),
                own.len(),
                if dict.is_some() {
                    ""
                } else {
                    " when --blob-digests/--blob-sizes/--blob-toc-* are given (pass --chunk-dict \
                     if the others come from one)"
                }
            )));
        }
        // Blob table of this layer → merged table.
        let mut remap: HashMap<u32, u32> = HashMap::new();
        for (bi, e) in layer.blobs.iter().enumerate() {
            let mut e = *e;
            // The per-layer flags name the layer's own blob, inlined or not.
            if own.len() == 1 && own[0] == bi {
                if let Some(d) = &o.blob_digests {
                    e.blob_id = layout::nul_padded(strip_digest(&d[li]).as_bytes());
                }
                if let Some(s) = &o.blob_sizes {
                    e.compressed_size = s[li];
                }
                if let Some(t) = &o.blob_toc_digests {
                    let h = hex::decode(strip_digest(&t[li])).map_err(|_| {
                        BuildError::Invalid(format!("bad --blob-toc-digests value {:?}", t[li]))
                    })?;
                    if h.len() != 32 {
                        return Err(BuildError::Invalid("ToC digest must be 32 bytes".into()));
                    }
                    e.blob_toc_digest.copy_from_slice(&h);
                }
                if let Some(t) = &o.blob_toc_sizes {
                    e.blob_toc_size = t[li];
                }
            }
            // The merged bootstrap is not inside any blob.
            e.features &= !blob_features::INLINED_FS_META;
            if e.blob_id_bytes() == layout::PLACEHOLDER_BLOB_ID.as_bytes() {
                return Err(BuildError::Invalid(format!(
                    "{}: blob {bi} has a placeholder id; pass --blob-digests",
                    src.display()
                )));
            }
            let idx = match table.iter().position(|t| t.blob_id == e.blob_id) {
                Some(p) => p as u32,
                None => {
                    e.blob_index = table.len() as u32;
                    table.push(e);
                    table.len() as u32 - 1
                }
            };
            remap.insert(bi as u32, idx);
        }
        let mut lt = layer.tree;
        for node in lt.nodes.iter_mut() {
            for c in node.chunks.iter_mut() {
                c.blob_index = remap[&c.blob_index];
            }
        }
        if let Some(paths) = o.implicit_dirs.get(li) {
            for p in paths {
                if let Some(n) = lt.lookup_path(p).filter(|&n| lt.nodes[n].is_dir()) {
                    lt.nodes[n].implicit = true;
                }
            }
        }
        apply_layer(&mut merged, &lt, super::WhiteoutSpec::Oci);
    }
    merged.fix_hardlinks();

    // Drop blobs no longer referenced and renumber.
    let order = merged.preorder();
    let mut used = vec![false; table.len()];
    for &n in &order {
        for c in &merged.nodes[n].chunks {
            used[c.blob_index as usize] = true;
        }
    }
    let mut new_index = HashMap::new();
    let mut final_table = Vec::new();
    for (i, mut e) in table.into_iter().enumerate() {
        if used[i] {
            e.blob_index = final_table.len() as u32;
            new_index.insert(i as u32, e.blob_index);
            final_table.push(e);
        }
    }
    for node in merged.nodes.iter_mut() {
        for c in node.chunks.iter_mut() {
            if let Some(&ni) = new_index.get(&c.blob_index) {
                c.blob_index = ni;
            }
        }
    }
    let has_xattr = order.iter().any(|&n| !merged.nodes[n].xattrs.is_empty());
    let inlined_digest = !final_table.is_empty()
        && final_table
            .iter()
            .all(|e| e.features & blob_features::INLINED_CHUNK_DIGEST != 0);
    let comp = crate::rafs::Compressor::from_u32(
        final_table.first().map(|e| e.compression_algo).unwrap_or(3),
    )
    .unwrap_or(crate::rafs::Compressor::Zstd);
    let dig = if base_flags & layout::super_flags::HASH_SHA256 != 0 {
        crate::rafs::Digester::Sha256
    } else {
        crate::rafs::Digester::Blake3
    };
    let mut flags = super_flags(comp, dig, has_xattr, inlined_digest);
    // Keep the image-default compressor bit of the first layer.
    if base_flags & layout::super_flags::COMPRESSION_MASK != 0 {
        flags = (flags & !layout::super_flags::COMPRESSION_MASK)
            | (base_flags & layout::super_flags::COMPRESSION_MASK);
    }
    let prefetch = super::prefetch_nodes(&merged, &o.prefetch_patterns)?;
    let out = super::v6::write(
        &merged,
        &super::v6::V6Params {
            blobs: &final_table,
            chunk_size,
            flags,
            prefetch: &prefetch,
        },
    )?;
    blob::write_file(&o.bootstrap, &out.bytes)?;
    Ok(MergeOutput {
        blobs: final_table
            .iter()
            .map(|e| String::from_utf8_lossy(e.blob_id_bytes()).into_owned())
            .collect(),
    })
}

/// Layers (and the chunk dictionary) merge only if their chunk size and explicit uid/gid
/// setting agree, as nydus-image requires.
fn check_compatible(
    a: &Path,
    a_chunk: u32,
    a_flags: u64,
    b: &Path,
    b_chunk: u32,
    b_flags: u64,
) -> Result<(), BuildError> {
    if a_chunk != b_chunk {
        return Err(BuildError::Invalid(format!(
            "{}: chunk size {b_chunk:#x} differs from {a_chunk:#x} of {}",
            b.display(),
            a.display()
        )));
    }
    let explicit = |f: u64| f & layout::super_flags::EXPLICIT_UID_GID != 0;
    if explicit(a_flags) != explicit(b_flags) {
        return Err(BuildError::Invalid(format!(
            "{}: explicit uid/gid setting differs from {}",
            b.display(),
            a.display()
        )));
    }
    Ok(())
}

const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";

fn is_whiteout(n: &Node, spec: WhiteoutSpec) -> Option<&[u8]> {
    match spec {
        WhiteoutSpec::Oci => n
            .name
            .strip_prefix(WH_PREFIX)
            .filter(|t| !t.is_empty() && *t != b".wh..opq"),
        WhiteoutSpec::Overlayfs => {
            (n.mode & libc::S_IFMT == libc::S_IFCHR && n.rdev == 0).then_some(n.name.as_slice())
        }
        WhiteoutSpec::None => None,
    }
}

fn is_opaque_marker(n: &Node, spec: WhiteoutSpec) -> bool {
    spec == WhiteoutSpec::Oci && n.name.as_slice() == WH_OPAQUE
}

/// Apply one layer tree on top of `merged`, interpreting whiteouts per `spec` (OCI
/// `.wh.NAME` / `.wh..wh..opq`, or overlayfs char 0:0 / `trusted.overlay.opaque=y`).
pub fn apply_layer(merged: &mut Tree, layer: &Tree, spec: WhiteoutSpec) {
    // Root attributes come from the upper layer, unless its tar did not describe the root.
    if !layer.nodes[0].implicit {
        copy_attrs(&mut merged.nodes[0], &layer.nodes[0]);
    }
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    map.insert(0, 0);
    let mut links: Vec<(NodeId, NodeId)> = Vec::new();
    let mut stack = vec![0usize];
    while let Some(ld) = stack.pop() {
        let md = map[&ld];
        let children = layer.nodes[ld].children.clone();
        // Whiteouts first: they hide lower-layer entries only.
        let opaque_dir = ld != 0
            && spec == WhiteoutSpec::Overlayfs
            && layer.nodes[ld]
                .xattrs
                .get(b"trusted.overlay.opaque".as_slice())
                .map(|v| v.as_slice())
                == Some(b"y");
        if opaque_dir
            || children
                .iter()
                .any(|&c| is_opaque_marker(&layer.nodes[c], spec))
        {
            for mc in merged.nodes[md].children.clone() {
                merged.detach(mc);
            }
        }
        for &c in &children {
            if let Some(target) = is_whiteout(&layer.nodes[c], spec) {
                if let Some(mc) = merged.child(md, target) {
                    merged.detach(mc);
                }
            }
        }
        if opaque_dir {
            merged.nodes[md]
                .xattrs
                .remove(b"trusted.overlay.opaque".as_slice());
        }
        for &c in &children {
            let ln = &layer.nodes[c];
            if is_opaque_marker(ln, spec) || is_whiteout(ln, spec).is_some() {
                continue;
            }
            let existing = merged.child(md, &ln.name);
            let id = match existing {
                Some(e) if ln.is_dir() && merged.nodes[e].is_dir() => {
                    if !ln.implicit {
                        copy_attrs(&mut merged.nodes[e], ln);
                    }
                    e
                }
                other => {
                    if let Some(e) = other {
                        merged.detach(e);
                    }
                    let mut n = ln.clone();
                    n.parent = md;
                    n.children = Vec::new();
                    n.link_to = None;
                    let id = merged.add(n);
                    if let Some(p) = ln.link_to {
                        links.push((id, p));
                    }
                    id
                }
            };
            map.insert(c, id);
            if ln.is_dir() {
                stack.push(c);
            }
        }
    }
    for (id, lp) in links {
        match map.get(&lp) {
            Some(&mp) if !merged.nodes[mp].deleted => merged.nodes[id].link_to = Some(mp),
            _ => {
                // The primary did not survive: this name holds the data itself.
                let src = &layer.nodes[lp];
                merged.nodes[id].chunks = src.chunks.clone();
                merged.nodes[id].size = src.size;
            }
        }
    }
}

fn copy_attrs(dst: &mut Node, src: &Node) {
    dst.mode = src.mode;
    dst.uid = src.uid;
    dst.gid = src.gid;
    dst.mtime = src.mtime;
    dst.mtime_nsec = src.mtime_nsec;
    dst.xattrs = src.xattrs.clone();
}
