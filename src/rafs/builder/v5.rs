//! RAFS v5 bootstrap writer (RAFS-FORMAT.md §4).
//!
//! Inode indexes are assigned breadth-first per directory (a directory's children get
//! consecutive indexes, sorted by name; the root is 1). Every tree entry has its own record;
//! hard links share `i_ino` and carry the HARDLINK flag. Chunk records are stored inline.

use std::collections::{HashMap, VecDeque};

use super::tree::{NodeId, Tree};
use super::BuildError;
use crate::rafs::layout::{
    self, round_up, v5_inode_flags, BlobTableEntry, ChunkRecord, RafsV5BlobEntry,
    RafsV5ExtBlobEntry, RafsV5Inode, RafsV5SuperBlock,
};
use crate::rafs::{codec, Digester};

const ALIGN: u64 = layout::RAFS_V5_ALIGNMENT;

fn digester_of(flags: u64) -> Digester {
    if flags & layout::super_flags::HASH_SHA256 != 0 {
        Digester::Sha256
    } else {
        Digester::Blake3
    }
}

/// Encode a v5 xattr area (u64 total size, then `[u32 len][name]\0[value]` pairs), padded.
fn encode_xattrs(node: &super::tree::Node) -> Vec<u8> {
    if node.xattrs.is_empty() {
        return Vec::new();
    }
    let mut pairs = Vec::new();
    for (k, v) in &node.xattrs {
        let len = (k.len() + 1 + v.len()) as u32;
        pairs.extend_from_slice(&len.to_le_bytes());
        pairs.extend_from_slice(k);
        pairs.push(0);
        pairs.extend_from_slice(v);
    }
    let mut out = (pairs.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&pairs);
    out.resize(round_up(out.len() as u64, ALIGN) as usize, 0);
    out
}

fn pad8(v: &mut Vec<u8>) {
    v.resize(round_up(v.len() as u64, ALIGN) as usize, 0);
}

/// Write a v5 bootstrap. `blobs` are the blob-table entries (ids, sizes, features).
pub fn write(
    tree: &Tree,
    blobs: &[BlobTableEntry],
    chunk_size: u32,
    flags: u64,
    prefetch: &[NodeId],
) -> Result<Vec<u8>, BuildError> {
    // v5 has no ENCRYPTION_NONE flag in practice.
    let flags = flags & !layout::super_flags::ENCRYPTION_NONE;
    let digester = digester_of(flags);
    // Breadth-first indexes.
    let mut index_of: HashMap<NodeId, u32> = HashMap::new();
    let mut order: Vec<NodeId> = vec![0];
    index_of.insert(0, 1);
    let mut queue = VecDeque::from([0usize]);
    let mut child_start: HashMap<NodeId, u32> = HashMap::new();
    while let Some(d) = queue.pop_front() {
        child_start.insert(d, order.len() as u32 + 1);
        for &c in &tree.nodes[d].children {
            index_of.insert(c, order.len() as u32 + 1);
            order.push(c);
            if tree.nodes[c].is_dir() {
                queue.push_back(c);
            }
        }
    }
    let pre = tree.preorder();
    let nlinks = tree.link_counts(&pre);
    // Builder inode numbers: primaries get their own index; links share the primary's.
    let ino_of = |n: NodeId| -> u64 {
        let p = tree.nodes[n].link_to.unwrap_or(n);
        u64::from(index_of[&p])
    };

    // Digests bottom-up (reverse BFS order visits children before parents).
    let mut digest: HashMap<NodeId, [u8; 32]> = HashMap::new();
    for &n in order.iter().rev() {
        let node = &tree.nodes[tree.nodes[n].link_to.unwrap_or(n)];
        let d = if node.is_reg() {
            let mut cat = Vec::with_capacity(node.chunks.len() * 32);
            for c in &node.chunks {
                cat.extend_from_slice(&c.digest.unwrap_or([0; 32]));
            }
            codec::digest(digester, &cat)
        } else if node.is_symlink() {
            codec::digest(digester, &node.symlink)
        } else if node.is_dir() {
            let mut cat = Vec::new();
            for c in &tree.nodes[n].children {
                cat.extend_from_slice(&digest[c]);
            }
            codec::digest(digester, &cat)
        } else {
            codec::digest(digester, &[])
        };
        digest.insert(n, d);
    }

    // Records.
    let mut records: Vec<Vec<u8>> = Vec::with_capacity(order.len());
    for &n in &order {
        let name_node = &tree.nodes[n];
        let node = &tree.nodes[name_node.link_to.unwrap_or(n)];
        let name: &[u8] = if n == 0 { b"/" } else { &name_node.name };
        let xattrs = encode_xattrs(node);
        let mut iflags = 0u64;
        if node.is_symlink() {
            iflags |= v5_inode_flags::SYMLINK;
        }
        let nlink = if node.is_dir() {
            2 + node
                .children
                .iter()
                .filter(|&&c| tree.nodes[c].is_dir())
                .count() as u32
        } else {
            nlinks
                .get(&name_node.link_to.unwrap_or(n))
                .copied()
                .unwrap_or(1)
        };
        if node.is_reg() && nlink > 1 {
            iflags |= v5_inode_flags::HARDLINK;
        }
        if !xattrs.is_empty() {
            iflags |= v5_inode_flags::XATTR;
        }
        let (child_index, child_count) = if node.is_dir() {
            let cnt = node.children.len() as u32;
            (if cnt > 0 { child_start[&n] } else { 0 }, cnt)
        } else if node.is_reg() {
            (0, node.chunks.len() as u32)
        } else {
            (0, 0)
        };
        let size = if node.is_dir() {
            let s: u64 = node
                .children
                .iter()
                .map(|&c| tree.nodes[c].name.len() as u64 + 8)
                .sum();
            round_up(s, 4096).max(4096)
        } else {
            node.size
        };
        let xsize = if xattrs.is_empty() {
            0
        } else {
            u64::from_le_bytes(xattrs[..8].try_into().expect("8 bytes")) + 8
        };
        let inode = RafsV5Inode {
            i_digest: digest[&n],
            i_parent: if n == 0 {
                0
            } else {
                u64::from(index_of[&name_node.parent])
            },
            i_ino: ino_of(n),
            i_uid: node.uid,
            i_gid: node.gid,
            i_projid: 0,
            i_mode: node.mode,
            i_size: size,
            i_blocks: (size + xsize).div_ceil(512),
            i_flags: iflags,
            i_nlink: nlink,
            i_child_index: child_index,
            i_child_count: child_count,
            i_name_size: name.len() as u16,
            i_symlink_size: node.symlink.len() as u16,
            i_rdev: node.rdev,
            i_mtime_nsec: node.mtime_nsec,
            i_mtime: node.mtime,
        };
        let mut rec = inode.to_bytes();
        rec.extend_from_slice(name);
        pad8(&mut rec);
        if node.is_symlink() {
            rec.extend_from_slice(&node.symlink);
            pad8(&mut rec);
        }
        rec.extend_from_slice(&xattrs);
        if node.is_reg() {
            let cs = u64::from(chunk_size);
            for (k, c) in node.chunks.iter().enumerate() {
                rec.extend_from_slice(&ChunkRecord::from_chunk_info(c, k as u64 * cs).to_bytes());
            }
        }
        records.push(rec);
    }

    // Tables.
    let entries = order.len();
    let inode_table_offset = layout::RAFS_V5_SUPER_SIZE as u64;
    let inode_table_size = round_up(4 * entries as u64, ALIGN);
    let prefetch_offset = inode_table_offset + inode_table_size;
    let prefetch_ids: Vec<u32> = prefetch
        .iter()
        .filter_map(|n| index_of.get(n).copied())
        .collect();
    let prefetch_size = round_up(4 * prefetch_ids.len() as u64, ALIGN);
    let blob_table_offset = prefetch_offset + prefetch_size;
    let v5_blobs: Vec<RafsV5BlobEntry> = blobs
        .iter()
        .map(|b| RafsV5BlobEntry {
            readahead_offset: 0,
            readahead_size: 0,
            blob_id: b.blob_id_bytes().to_vec(),
        })
        .collect();
    let blob_table = layout::encode_v5_blob_table(&v5_blobs);
    let ext_offset = blob_table_offset + blob_table.len() as u64;
    let ext_size = (RafsV5ExtBlobEntry::SIZE * blobs.len()) as u64;
    let mut pos = ext_offset + ext_size;
    let mut offsets = Vec::with_capacity(entries);
    for r in &records {
        offsets.push(pos);
        pos += r.len() as u64;
    }
    let mut out = vec![0u8; pos as usize];
    for (i, off) in offsets.iter().enumerate() {
        let at = inode_table_offset as usize + 4 * i;
        let v = u32::try_from(off >> 3)
            .map_err(|_| BuildError::Invalid("v5 bootstrap too large".into()))?;
        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
        out[*off as usize..*off as usize + records[i].len()].copy_from_slice(&records[i]);
    }
    for (i, id) in prefetch_ids.iter().enumerate() {
        let at = prefetch_offset as usize + 4 * i;
        out[at..at + 4].copy_from_slice(&id.to_le_bytes());
    }
    out[blob_table_offset as usize..blob_table_offset as usize + blob_table.len()]
        .copy_from_slice(&blob_table);
    for (i, b) in blobs.iter().enumerate() {
        RafsV5ExtBlobEntry {
            chunk_count: b.chunk_count,
            features: b.features,
            uncompressed_size: b.uncompressed_size,
            compressed_size: b.compressed_size,
        }
        .write_to(&mut out[ext_offset as usize + i * RafsV5ExtBlobEntry::SIZE..]);
    }
    let unique = pre
        .iter()
        .filter(|&&n| tree.nodes[n].link_to.is_none())
        .count();
    let sb = RafsV5SuperBlock {
        magic: layout::RAFS_V5_MAGIC,
        fs_version: layout::RAFS_V5_VERSION,
        sb_size: layout::RAFS_V5_SUPER_SIZE as u32,
        block_size: chunk_size,
        flags,
        inodes_count: unique as u64,
        inode_table_offset,
        prefetch_table_offset: prefetch_offset,
        blob_table_offset,
        inode_table_entries: entries as u32,
        prefetch_table_entries: prefetch_ids.len() as u32,
        blob_table_size: blob_table.len() as u32,
        extended_blob_table_entries: blobs.len() as u32,
        extended_blob_table_offset: ext_offset,
    };
    sb.write_to(&mut out[..]);
    Ok(out)
}
