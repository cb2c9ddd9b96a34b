//! RAFS v6 bootstrap writer (RAFS-FORMAT.md §2).
//!
//! Layout: superblock block (EROFS sb, ext sb, device table), blob table, prefetch table,
//! meta area (one empty block, then every inode record: 64-byte extended inode, inline
//! xattrs, chunk-index array or inline tail), directory/symlink data blocks, chunk table.
//! Inodes are placed in depth-first pre-order (root first, nid 128); an inode record with an
//! inline tail never crosses a 4 KiB block.

use std::collections::{BTreeMap, HashMap};

use super::tree::{NodeId, Tree};
use super::BuildError;
use crate::rafs::layout::{
    self, round_up, BlobTableEntry, ChunkIndexEntry, ChunkRecord, DeviceSlot, Dirent,
    ErofsSuperBlock, InodeExtended, RafsV6ExtSuperBlock, XattrBodyHeader, XattrEntryHeader,
    EROFS_BLOCK_SIZE,
};
use crate::rafs::ChunkInfo;

const BLK: u64 = EROFS_BLOCK_SIZE;

/// What the v6 writer needs besides the tree.
pub struct V6Params<'a> {
    /// Final blob table (index = position).
    pub blobs: &'a [BlobTableEntry],
    pub chunk_size: u32,
    /// RafsSuperFlags.
    pub flags: u64,
    /// Nodes whose nids form the prefetch table, in order.
    pub prefetch: &'a [NodeId],
}

/// Result of writing: the bootstrap bytes and the nid of every placed node.
pub struct V6Output {
    pub bytes: Vec<u8>,
    pub nids: HashMap<NodeId, u64>,
}

struct Record {
    node: NodeId,
    /// Inode + xattr body bytes.
    xattr: Vec<u8>,
    layout: u16,
    /// Inline tail bytes (dirs/symlinks) written after the xattrs.
    tail: Vec<u8>,
    /// Full data blocks (dirs/symlinks, FLAT_PLAIN or INLINE head).
    blocks: Vec<u8>,
    /// Number of chunk-index entries (regular files).
    nchunks: usize,
    size: u64,
    offset: u64,
}

impl Record {
    fn head_len(&self) -> u64 {
        (InodeExtended::SIZE + self.xattr.len()) as u64
    }
    fn len(&self) -> u64 {
        if self.nchunks > 0 {
            round_up(self.head_len(), 8) + 8 * self.nchunks as u64
        } else {
            self.head_len() + self.tail.len() as u64
        }
    }
}

/// Encode the inline xattr body (header + entries) of a node; empty if it has none.
pub fn encode_xattrs(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Vec<u8>, BuildError> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut body = XattrBodyHeader::default().to_bytes();
    for (name, value) in xattrs {
        let (index, suffix) = layout::xattr_split(name).ok_or_else(|| {
            BuildError::Invalid(format!(
                "xattr {:?}: namespace not supported by RAFS (user, trusted, security, posix acl)",
                String::from_utf8_lossy(name)
            ))
        })?;
        if suffix.len() > 255 || value.len() > usize::from(u16::MAX) {
            return Err(BuildError::Invalid(format!(
                "xattr {:?}: name or value too long",
                String::from_utf8_lossy(name)
            )));
        }
        let h = XattrEntryHeader {
            name_len: suffix.len() as u8,
            name_index: index,
            value_size: value.len() as u16,
        };
        let start = body.len();
        body.extend_from_slice(&h.to_bytes());
        body.extend_from_slice(suffix);
        body.extend_from_slice(value);
        body.resize(start + h.entry_size(), 0);
    }
    Ok(body)
}

/// Pack sorted `(name, nid, file_type)` entries into directory blocks; returns the data
/// (full blocks, last block truncated to its used bytes).
fn pack_dirents(entries: &[(Vec<u8>, u64, u8)]) -> Vec<u8> {
    let mut blocks: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0usize;
    for (i, (name, _, _)) in entries.iter().enumerate() {
        let need = Dirent::SIZE + name.len();
        if used + need > BLK as usize {
            blocks.push(Vec::new());
            used = 0;
        }
        blocks.last_mut().expect("non-empty").push(i);
        used += need;
    }
    let mut out = Vec::new();
    let nblocks = blocks.len();
    for (bi, b) in blocks.iter().enumerate() {
        let mut blk = vec![0u8; BLK as usize];
        let mut nameoff = Dirent::SIZE * b.len();
        for (k, &i) in b.iter().enumerate() {
            let (name, nid, ft) = &entries[i];
            let d = Dirent {
                nid: *nid,
                nameoff: nameoff as u16,
                file_type: *ft,
            };
            d.write_to(&mut blk[k * Dirent::SIZE..]);
            blk[nameoff..nameoff + name.len()].copy_from_slice(name);
            nameoff += name.len();
        }
        if bi + 1 == nblocks {
            blk.truncate(nameoff);
        }
        out.extend_from_slice(&blk);
    }
    out
}

/// Write a v6 bootstrap for `tree`.
pub fn write(tree: &Tree, p: &V6Params) -> Result<V6Output, BuildError> {
    let order = tree.preorder();
    let nlinks = tree.link_counts(&order);
    let nblobs = p.blobs.len();
    if nblobs > layout::MAX_BLOBS {
        return Err(BuildError::Invalid(format!(
            "{nblobs} blobs, RAFS allows {}",
            layout::MAX_BLOBS
        )));
    }
    let cs = u64::from(p.chunk_size);

    // Fixed head: superblock block, blob table, prefetch table.
    let blob_table_offset = round_up(
        layout::RAFS_V6_DEVTABLE_OFFSET + (DeviceSlot::SIZE * nblobs) as u64,
        BLK,
    );
    let blob_table_size = (BlobTableEntry::SIZE * nblobs) as u64;
    let prefetch_offset = blob_table_offset + blob_table_size;
    let prefetch_size = 4 * p.prefetch.len() as u64;
    let meta_addr = round_up(prefetch_offset + prefetch_size, BLK);

    // Records for primaries (hard links share their primary's record).
    let primaries: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|&n| tree.nodes[n].link_to.is_none())
        .collect();
    let mut recs: Vec<Record> = Vec::with_capacity(primaries.len());
    let mut rec_of: HashMap<NodeId, usize> = HashMap::new();
    // Directory sizes need only names; compute dirent data sizes first with dummy nids.
    for &n in &primaries {
        let node = &tree.nodes[n];
        let xattr = encode_xattrs(&node.xattrs)?;
        let mut r = Record {
            node: n,
            xattr,
            layout: layout::EROFS_INODE_FLAT_PLAIN,
            tail: Vec::new(),
            blocks: Vec::new(),
            nchunks: 0,
            size: 0,
            offset: 0,
        };
        if node.is_reg() {
            r.size = node.size;
            r.layout = layout::EROFS_INODE_CHUNK_BASED;
            r.nchunks = node.size.div_ceil(cs) as usize;
            if node.chunks.len() != r.nchunks {
                return Err(BuildError::Invalid(format!(
                    "{}: {} chunks for size {}",
                    String::from_utf8_lossy(&tree.path_of(n)),
                    node.chunks.len(),
                    node.size
                )));
            }
        } else if node.is_dir() {
            let names: Vec<(Vec<u8>, u64, u8)> = dir_entries(tree, n)
                .into_iter()
                .map(|(name, _, ft)| (name, 0, ft))
                .collect();
            r.size = pack_dirents(&names).len() as u64;
        } else if node.is_symlink() {
            if node.symlink.is_empty() || node.symlink.len() > 4095 {
                return Err(BuildError::Invalid(format!(
                    "{}: symlink target of {} bytes",
                    String::from_utf8_lossy(&tree.path_of(n)),
                    node.symlink.len()
                )));
            }
            r.size = node.symlink.len() as u64;
        }
        if node.is_dir() || node.is_symlink() {
            let tail = r.size % BLK;
            if tail != 0 && r.head_len() + tail <= BLK {
                r.layout = layout::EROFS_INODE_FLAT_INLINE;
                r.tail = vec![0u8; tail as usize]; // placeholder of the right length
            }
        }
        rec_of.insert(n, recs.len());
        recs.push(r);
    }

    // Place inode records from meta_addr + 4 KiB (nid 128 for the root).
    let mut pos = meta_addr + BLK;
    for r in recs.iter_mut() {
        pos = round_up(pos, 32);
        let len = r.len();
        let in_blk = pos % BLK;
        let must_fit = r.layout == layout::EROFS_INODE_FLAT_INLINE || len <= BLK;
        if must_fit && in_blk + len > BLK {
            pos = round_up(pos, BLK);
        }
        r.offset = pos;
        pos += len;
    }
    let mut nids: HashMap<NodeId, u64> = HashMap::with_capacity(order.len());
    for &n in &order {
        let primary = tree.nodes[n].link_to.unwrap_or(n);
        nids.insert(n, (recs[rec_of[&primary]].offset - meta_addr) / 32);
    }
    let nid_of = |n: NodeId| -> u64 { nids[&n] };
    if nid_of(0) > u64::from(u16::MAX) {
        return Err(BuildError::Invalid(
            "root nid does not fit in 16 bits".into(),
        ));
    }

    // Directory and symlink data; full blocks go after the inode area.
    let mut data_pos = round_up(pos, BLK);
    let data_start = data_pos;
    for r in recs.iter_mut() {
        let n = r.node;
        let node = &tree.nodes[n];
        let content: Vec<u8> = if node.is_dir() {
            let ents: Vec<(Vec<u8>, u64, u8)> = dir_entries(tree, n)
                .into_iter()
                .map(|(name, target, ft)| (name, nid_of(target), ft))
                .collect();
            pack_dirents(&ents)
        } else if node.is_symlink() {
            node.symlink.clone()
        } else {
            continue;
        };
        debug_assert_eq!(content.len() as u64, r.size);
        let (full, tail) = if r.layout == layout::EROFS_INODE_FLAT_INLINE {
            let t = content.len() - r.tail.len();
            (content[..t].to_vec(), content[t..].to_vec())
        } else {
            let mut c = content;
            c.resize(round_up(c.len() as u64, BLK) as usize, 0);
            (c, Vec::new())
        };
        r.tail = tail;
        r.blocks = full;
        if !r.blocks.is_empty() {
            data_pos += r.blocks.len() as u64;
        }
    }
    let data_end = data_pos;

    // Chunk table: distinct (digest, blob) pairs, sorted.
    let mut table: BTreeMap<([u8; 32], u32), ChunkRecord> = BTreeMap::new();
    for &n in &primaries {
        let node = &tree.nodes[n];
        for (k, c) in node.chunks.iter().enumerate() {
            let d = c.digest.unwrap_or([0; 32]);
            table
                .entry((d, c.blob_index))
                .or_insert_with(|| ChunkRecord::from_chunk_info(c, k as u64 * cs));
        }
    }
    let chunk_table_offset = if table.is_empty() { 0 } else { data_end };
    let chunk_table_size = (table.len() * ChunkRecord::SIZE) as u64;
    let total = round_up(data_end + chunk_table_size, BLK);

    // Serialize.
    let mut out = vec![0u8; total as usize];
    let mut next_block = data_start / BLK;
    for r in &recs {
        let node = &tree.nodes[r.node];
        let blkaddr = if r.blocks.is_empty() { 0 } else { next_block };
        if !r.blocks.is_empty() {
            let at = (next_block * BLK) as usize;
            out[at..at + r.blocks.len()].copy_from_slice(&r.blocks);
            next_block += r.blocks.len() as u64 / BLK;
        }
        let i_u: u32 = if node.is_reg() {
            let bits = p.chunk_size.trailing_zeros() - u32::from(layout::EROFS_BLKSZBITS);
            u32::from(layout::EROFS_CHUNK_FORMAT_INDEXES) | bits
        } else if node.is_dir() || node.is_symlink() {
            u32::try_from(blkaddr).map_err(|_| BuildError::Invalid("bootstrap too large".into()))?
        } else {
            let f = node.mode & libc::S_IFMT;
            if f == libc::S_IFCHR || f == libc::S_IFBLK {
                node.rdev
            } else {
                0
            }
        };
        let nlink = if node.is_dir() {
            2 + node
                .children
                .iter()
                .filter(|&&c| tree.nodes[c].is_dir())
                .count() as u32
        } else {
            nlinks.get(&r.node).copied().unwrap_or(1)
        };
        let ino = InodeExtended {
            i_format: layout::i_format(true, r.layout),
            i_xattr_icount: layout::xattr_icount(r.xattr.len()),
            i_mode: node.mode as u16,
            i_size: r.size,
            i_u,
            i_ino: (nid_of(r.node)) as u32,
            i_uid: node.uid,
            i_gid: node.gid,
            i_mtime: node.mtime,
            i_mtime_nsec: node.mtime_nsec,
            i_nlink: nlink,
        };
        let at = r.offset as usize;
        ino.write_to(&mut out[at..]);
        let mut q = at + InodeExtended::SIZE;
        out[q..q + r.xattr.len()].copy_from_slice(&r.xattr);
        q += r.xattr.len();
        if r.nchunks > 0 {
            q = round_up(q as u64, 8) as usize;
            for c in &node.chunks {
                let e = ChunkIndexEntry::new(
                    c.blob_index,
                    c.index,
                    (c.uncompressed_offset / BLK) as u32,
                );
                e.write_to(&mut out[q..]);
                q += ChunkIndexEntry::SIZE;
            }
        } else {
            out[q..q + r.tail.len()].copy_from_slice(&r.tail);
        }
    }
    for (i, rec) in table.values().enumerate() {
        let at = chunk_table_offset as usize + i * ChunkRecord::SIZE;
        rec.write_to(&mut out[at..]);
    }

    // Device table: blob slots, mapped block addresses after the bootstrap (512 KiB steps).
    let mut devblocks_total = 0u64;
    let mut mapped = round_up(total, BLK);
    for (i, b) in p.blobs.iter().enumerate() {
        let blocks = b.uncompressed_size.div_ceil(BLK).max(1);
        mapped = round_up(mapped, 512 * 1024);
        let slot = DeviceSlot {
            tag: b.blob_id,
            blocks: blocks as u32,
            mapped_blkaddr: (mapped / BLK) as u32,
        };
        mapped += blocks * BLK;
        devblocks_total += blocks;
        slot.write_to(&mut out[layout::RAFS_V6_DEVTABLE_OFFSET as usize + i * DeviceSlot::SIZE..]);
        b.write_to(&mut out[blob_table_offset as usize + i * BlobTableEntry::SIZE..]);
    }
    for (i, &n) in p.prefetch.iter().enumerate() {
        let nid = nids.get(&n).copied().unwrap_or(0) as u32;
        let at = prefetch_offset as usize + 4 * i;
        out[at..at + 4].copy_from_slice(&nid.to_le_bytes());
    }

    let mut sb = ErofsSuperBlock::new_rafs();
    sb.root_nid = nid_of(0) as u16;
    sb.inos = order.len() as u64;
    sb.blocks = devblocks_total as u32;
    sb.meta_blkaddr = (meta_addr / BLK) as u32;
    sb.extra_devices = nblobs as u16;
    sb.write_to(&mut out[layout::EROFS_SUPER_OFFSET as usize..]);
    let ext = RafsV6ExtSuperBlock {
        flags: p.flags,
        blob_table_offset,
        blob_table_size: blob_table_size as u32,
        chunk_size: p.chunk_size,
        chunk_table_offset,
        chunk_table_size,
        prefetch_table_offset: if p.prefetch.is_empty() {
            0
        } else {
            prefetch_offset
        },
        prefetch_table_size: prefetch_size as u32,
    };
    ext.write_to(&mut out[layout::RAFS_V6_EXT_SUPER_OFFSET as usize..]);
    Ok(V6Output { bytes: out, nids })
}

/// Sorted directory entries of `dir` including `.` and `..`: (name, target node, type).
fn dir_entries(tree: &Tree, dir: NodeId) -> Vec<(Vec<u8>, NodeId, u8)> {
    let node = &tree.nodes[dir];
    let mut v: Vec<(Vec<u8>, NodeId, u8)> = Vec::with_capacity(node.children.len() + 2);
    v.push((b".".to_vec(), dir, layout::file_type::DIR));
    v.push((b"..".to_vec(), node.parent, layout::file_type::DIR));
    for &c in &node.children {
        let cn = &tree.nodes[c];
        v.push((cn.name.clone(), c, layout::file_type_of_mode(cn.mode)));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Chunk infos of every primary regular file, for callers that need the blob's chunks.
pub fn all_chunks(tree: &Tree) -> Vec<ChunkInfo> {
    tree.preorder()
        .into_iter()
        .filter(|&n| tree.nodes[n].link_to.is_none())
        .flat_map(|n| tree.nodes[n].chunks.clone())
        .collect()
}
