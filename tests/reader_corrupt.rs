//! Negative tests (RAFS-FORMAT.md §7.C): each corrupts a valid upstream bootstrap (or blob)
//! and asserts a clean error; plus truncation and byte-flip sweeps that must never panic.

use std::path::{Path, PathBuf};

use rafs_virtiofsd::rafs::ci::{self, ChunkInfoArray};
use rafs_virtiofsd::rafs::layout::*;
use rafs_virtiofsd::rafs::manifest::{exercise_all, manifest, walk, LocalBlobs, ManifestOptions};
use rafs_virtiofsd::rafs::{blob_features, codec, ChunkRef, Compressor, RafsError, RafsImage};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name)
}

fn base() -> Vec<u8> {
    std::fs::read(fixture("v6-zstd-64k-base").join("image.boot")).unwrap()
}

fn open(b: Vec<u8>) -> Result<RafsImage, RafsError> {
    RafsImage::from_bytes(b)
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Assert `r` is an error whose message contains `word`.
#[track_caller]
fn err_has<T: std::fmt::Debug>(r: Result<T, RafsError>, word: &str) {
    match r {
        Ok(v) => panic!("expected an error mentioning {word:?}, got Ok({v:?})"),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains(word), "error {m:?} does not mention {word:?}");
        }
    }
}

/// Absolute offset of v6 inode `nid`.
fn inode_off(img: &RafsImage, nid: u64) -> usize {
    let (sb, ..) = img.v6_tables().unwrap();
    (u64::from(sb.meta_blkaddr) * 4096 + nid * 32) as usize
}

/// Absolute offset of the first directory block of `nid` (inline or plain).
fn dir_data_off(img: &RafsImage, b: &[u8], nid: u64) -> usize {
    let off = inode_off(img, nid);
    let i = V6Inode::parse(&b[off..]).unwrap();
    if i.datalayout() == EROFS_INODE_FLAT_INLINE && i.i_size < 4096 {
        off + i.size() + i.xattr_size()
    } else {
        i.i_u as usize * 4096
    }
}

/// Absolute offset of the chunk-index array of regular file `nid`.
fn chunk_array_off(img: &RafsImage, b: &[u8], nid: u64) -> usize {
    let off = inode_off(img, nid);
    let i = V6Inode::parse(&b[off..]).unwrap();
    round_up((off + i.size() + i.xattr_size()) as u64, 8) as usize
}

fn nid_of(img: &RafsImage, path: &str) -> u64 {
    img.lookup_path(path.as_bytes()).unwrap().unwrap().ino
}

#[test]
fn wrong_magic() {
    let mut b = base();
    b[1024] ^= 1;
    assert!(matches!(open(b), Err(RafsError::BadMagic { .. })));
}

#[test]
fn nonzero_checksum() {
    let mut b = base();
    put_u32(&mut b, 1028, 1);
    err_has(open(b), "checksum");
}

#[test]
fn unknown_super_flag() {
    let mut b = base();
    let f = get_u64(&b, 1152);
    put_u64(&mut b, 1152, f | (1 << 40));
    err_has(open(b), "unknown superblock flags");
}

#[test]
fn two_compression_bits() {
    let mut b = base();
    let f = get_u64(&b, 1152);
    put_u64(&mut b, 1152, f | super_flags::COMPRESSION_LZ4);
    err_has(open(b), "exactly one compression");
}

#[test]
fn two_hash_bits() {
    let mut b = base();
    let f = get_u64(&b, 1152);
    put_u64(
        &mut b,
        1152,
        f | super_flags::HASH_SHA256 | super_flags::HASH_BLAKE3,
    );
    err_has(open(b), "exactly one hash");
}

#[test]
fn wrong_incompat_and_slot_offset_and_extslots() {
    let mut b = base();
    put_u32(&mut b, 1024 + 80, 0xC | 0x10);
    err_has(open(b), "feature_incompat");
    let mut b = base();
    put_u16(&mut b, 1024 + 88, 12);
    err_has(open(b), "devt_slotoff");
    let mut b = base();
    b[1024 + 13] = 1;
    err_has(open(b), "sb_extslots");
    let mut b = base();
    put_u32(&mut b, 1024 + 44, 3);
    err_has(open(b), "shared xattrs");
}

#[test]
fn blob_index_mismatch() {
    let mut b = base();
    put_u32(&mut b, 4096 + 64, 5);
    err_has(open(b), "blob_index");
}

#[test]
fn blob_chunk_size_mismatch() {
    let mut b = base();
    put_u32(&mut b, 4096 + 68, 0x20000);
    err_has(open(b), "chunk size");
}

#[test]
fn aligned_feature_missing() {
    let mut b = base();
    let f = u32::from_le_bytes(b[4096 + 84..4096 + 88].try_into().unwrap());
    put_u32(&mut b, 4096 + 84, f & !blob_features::ALIGNED);
    err_has(open(b), "ALIGNED");
}

#[test]
fn blob_ci_size_inconsistent() {
    let mut b = base();
    let u = get_u64(&b, 4096 + 128);
    put_u64(&mut b, 4096 + 128, u + 16);
    err_has(open(b), "ci uncompressed size");
}

#[test]
fn zran_batch_encrypted_tarfs_refused_by_name() {
    for (bit, word) in [
        (blob_features::ZRAN, "zran"),
        (blob_features::BATCH, "batch"),
        (blob_features::ENCRYPTED, "encrypted"),
        (blob_features::TARFS, "tarfs"),
    ] {
        let mut b = base();
        let f = u32::from_le_bytes(b[4096 + 84..4096 + 88].try_into().unwrap());
        put_u32(&mut b, 4096 + 84, f | bit);
        let e = open(b).unwrap_err();
        assert!(
            matches!(&e, RafsError::Unsupported(m) if m.contains(word)),
            "{word}: {e}"
        );
    }
    let mut b = base();
    let f = get_u64(&b, 1152);
    put_u64(&mut b, 1152, f | super_flags::TARTFS_MODE);
    assert!(matches!(open(b), Err(RafsError::Unsupported(m)) if m.contains("tarfs")));
    let mut b = base();
    let f = get_u64(&b, 1152);
    put_u64(&mut b, 1152, f | super_flags::ENCRYPTION_ASE_128_XTS);
    assert!(matches!(open(b), Err(RafsError::Unsupported(m)) if m.contains("encrypted")));
    let mut b = base();
    b[1024 + 12] = 9;
    assert!(matches!(open(b), Err(RafsError::Unsupported(m)) if m.contains("tarfs")));
}

#[test]
fn overlapping_tables() {
    let mut b = base();
    // Prefetch table inside the blob table.
    put_u64(&mut b, 1192, 4096 + 8);
    put_u32(&mut b, 1200, 8);
    err_has(open(b), "overlaps");
    let mut b = base();
    // Chunk table on top of the blob table.
    put_u64(&mut b, 1176, 4096);
    err_has(open(b), "overlaps");
}

#[test]
fn tables_outside_the_file() {
    let mut b = base();
    let len = b.len() as u64;
    put_u64(&mut b, 1184, len * 80);
    err_has(open(b), "chunk table");
    let mut b = base();
    put_u64(&mut b, 1160, 1 << 60);
    err_has(open(b), "blob table");
}

#[test]
fn absurd_device_count() {
    let mut b = base();
    put_u16(&mut b, 1024 + 86, 255);
    err_has(open(b), "blobs");
    let mut b = base();
    put_u16(&mut b, 1024 + 86, 2);
    err_has(open(b), "devices");
}

#[test]
fn device_slot_zero_blocks() {
    let mut b = base();
    put_u32(&mut b, 1408 + 64, 0);
    err_has(open(b), "0 blocks");
}

#[test]
fn absurd_chunk_count() {
    let mut b = base();
    put_u32(&mut b, 4096 + 72, 0x0200_0000);
    err_has(open(b), "");
}

#[test]
fn truncated_bootstrap_not_block_multiple() {
    let mut b = base();
    b.truncate(b.len() - 1);
    err_has(open(b), "multiple of the block size");
    err_has(open(vec![0u8; 100]), "truncated");
    err_has(open(Vec::new()), "truncated");
}

#[test]
fn chunk_index_device_byte_zero_or_too_big() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    let nid = nid_of(&img, "big.bin");
    let arr = chunk_array_off(&img, &b0, nid);
    drop(img);
    for dev in [0u8, 2, 255] {
        let mut b = b0.clone();
        b[arr + 2] = dev;
        let img = open(b).unwrap();
        err_has(img.file_chunks(nid, 0, 1 << 20), "device");
    }
}

#[test]
fn chunk_index_ci_index_beyond_chunk_count() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    let nid = nid_of(&img, "big.bin");
    let arr = chunk_array_off(&img, &b0, nid);
    let mut b = b0.clone();
    b[arr] = 0xff;
    b[arr + 1] = 0xff;
    b[arr + 3] = 0xff;
    let img = open(b).unwrap();
    err_has(img.file_chunks(nid, 0, 1), "ci index");
    // Later chunks are still fine.
    assert!(img.file_chunks(nid, 0x10000, 1).is_ok());
}

#[test]
fn nid_zero_and_beyond_the_file() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    assert!(matches!(img.getattr(0), Err(RafsError::NoSuchInode(0))));
    assert!(img.getattr(1 << 40).is_err());
    assert!(img.getattr(u64::MAX).is_err());
    // A dirent pointing beyond the file: lookup of that name fails cleanly.
    let root = img.root_ino();
    let d = dir_data_off(&img, &b0, root);
    let mut b = b0.clone();
    // Entry 0 of the root block is "-dash" (sorts before ".").
    put_u64(&mut b, d, 1 << 30);
    let img = open(b).unwrap();
    assert!(img.lookup(root, b"-dash").is_err());
}

#[test]
fn dirent_nameoff_rules() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    let root = img.root_ino();
    let d = dir_data_off(&img, &b0, root);
    let nameoff0 = u16::from_le_bytes([b0[d + 8], b0[d + 9]]);
    for bad in [nameoff0 + 1, 4096, 0, 6] {
        let mut b = b0.clone();
        put_u16(&mut b, d + 8, bad);
        let r = open(b);
        // The root is validated at open ("." and ".." lookups), so either open or readdir
        // reports it.
        match r {
            Err(e) => assert!(e.to_string().contains("directory"), "{e}"),
            Ok(img) => err_has(img.readdir(root, 0, &mut |_| true), "nameoff"),
        }
    }
    // A later entry's nameoff going backwards.
    let mut b = b0.clone();
    put_u16(&mut b, d + 12 * 3 + 8, nameoff0 - 1);
    let r = open(b).and_then(|img| img.readdir(root, 0, &mut |_| true));
    assert!(r.is_err());
}

#[test]
fn unsorted_dirents() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    let root = img.root_ino();
    let d = dir_data_off(&img, &b0, root);
    // Make the name of entry 4 sort before entry 3.
    let n4 = u16::from_le_bytes([b0[d + 4 * 12 + 8], b0[d + 4 * 12 + 9]]) as usize;
    let mut b = b0.clone();
    b[d + n4] = 0x01;
    let r = open(b).and_then(|img| img.readdir(root, 0, &mut |_| true));
    err_has(r, "not sorted");
}

#[test]
fn xattr_entries_overrunning_icount() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    let nid = nid_of(&img, "xattr_file");
    assert!(!img.list_xattrs(nid).unwrap().is_empty());
    let off = inode_off(&img, nid);
    let icount = u16::from_le_bytes([b0[off + 2], b0[off + 3]]);
    // Growing the first entry's value past the body.
    let mut b = b0.clone();
    let e0 = off + 64 + 12;
    put_u16(&mut b, e0 + 2, 0xfff0);
    let img = open(b).unwrap();
    err_has(img.list_xattrs(nid), "overruns");
    // Shrinking icount cuts the last entry.
    let mut b = b0.clone();
    put_u16(&mut b, off + 2, icount - 1);
    let img = open(b).unwrap();
    err_has(img.list_xattrs(nid), "overruns");
    // Unknown name index.
    let mut b = b0.clone();
    b[e0 + 1] = 9;
    let img = open(b).unwrap();
    err_has(img.get_xattr(nid, b"user.x"), "name index");
}

#[test]
fn directory_loop_is_detected() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    let root = img.root_ino();
    let d00 = nid_of(&img, "d00");
    let d = dir_data_off(&img, &b0, d00);
    // Find d00's entry for "d04" and point it at the root.
    let mut b = b0.clone();
    let n0 = u16::from_le_bytes([b0[d + 8], b0[d + 9]]) as usize / 12;
    let mut patched = false;
    for k in 0..n0 {
        let no = u16::from_le_bytes([b0[d + k * 12 + 8], b0[d + k * 12 + 9]]) as usize;
        if b0[d + no..].starts_with(b"d04") {
            put_u64(&mut b, d + k * 12, root);
            patched = true;
        }
    }
    assert!(patched);
    let img = open(b).unwrap();
    err_has(walk(&img, &mut |_| Ok(())), "loop");
}

#[test]
fn symlink_and_dir_sizes_absurd() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    let l = nid_of(&img, "link_rel");
    let off = inode_off(&img, l);
    let mut b = b0.clone();
    put_u64(&mut b, off + 8, 5000);
    let img2 = open(b).unwrap();
    err_has(img2.readlink(l), "symlink");
    let d = nid_of(&img, "many");
    let off = inode_off(&img, d);
    let mut b = b0.clone();
    put_u64(&mut b, off + 8, 1 << 50);
    let img2 = open(b).unwrap();
    assert!(img2.readdir(d, 0, &mut |_| true).is_err());
    assert!(img2.lookup(d, b"zzz").is_err());
}

#[test]
fn regular_file_size_absurd() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    let nid = nid_of(&img, "big.bin");
    let off = inode_off(&img, nid);
    let mut b = b0.clone();
    put_u64(&mut b, off + 8, u64::MAX);
    let img = open(b).unwrap();
    err_has(img.file_chunks(nid, 0, u64::MAX), "chunk index array");
}

/// Copy a fixture's blob dir into a temp dir, apply `f` to the single blob's bytes.
fn corrupt_blob(
    name: &str,
    f: impl FnOnce(&RafsImage, &mut Vec<u8>),
) -> (RafsImage, tempfile::TempDir) {
    let img = RafsImage::open(&fixture(name).join("image.boot")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let id = img.blobs()[0].blob_id.clone();
    let mut blob = std::fs::read(fixture(name).join("blobs").join(&id)).unwrap();
    f(&img, &mut blob);
    std::fs::write(tmp.path().join(&id), blob).unwrap();
    (img, tmp)
}

#[test]
fn ci_header_magic_and_size_mismatch() {
    let img = RafsImage::open(&fixture("v6-zstd-64k-base").join("image.boot")).unwrap();
    let blob = img.blobs()[0].clone();
    let data = std::fs::read(
        fixture("v6-zstd-64k-base")
            .join("blobs")
            .join(&blob.blob_id),
    )
    .unwrap();
    let (off, len) = ci::ci_range(&blob);
    let range = data[off as usize..(off + len) as usize].to_vec();
    assert!(ChunkInfoArray::parse(&blob, &range).is_ok());
    let h = blob.ci_compressed_size as usize;
    for (field, word) in [
        (0usize, "magic"),
        (4092, "magic"),
        (12, "entries"),
        (24, "disagrees"),
    ] {
        let mut r = range.clone();
        r[h + field] ^= 0x01;
        err_has(ChunkInfoArray::parse(&blob, &r), word);
    }
    // Through the reader: a blob whose ci header is corrupt fails the file read.
    let (img, tmp) = corrupt_blob("v6-zstd-64k-base", |_, b| b[(off as usize) + h] ^= 1);
    let mut src = LocalBlobs::new(tmp.path());
    err_has(
        manifest(&img, ManifestOptions::default(), &mut src),
        "magic",
    );
}

#[test]
fn decompression_to_the_wrong_length() {
    // Replace one compressed chunk's payload with a valid zstd frame of one byte less,
    // padded by a skippable frame to the same compressed size.
    let img0 = RafsImage::open(&fixture("v6-zstd-64k-base").join("image.boot")).unwrap();
    let mut src0 = LocalBlobs::new(&fixture("v6-zstd-64k-base").join("blobs"));
    // A compressed chunk big enough to hold a short frame plus a skippable frame.
    let arr = src0.ci_array(&img0, 0).unwrap();
    let info = (0..arr.len() as u32)
        .map(|k| arr.get(k).unwrap())
        .filter(|c| c.compressed)
        .max_by_key(|c| c.compressed_size)
        .expect("a compressed chunk");
    let (img, tmp) = corrupt_blob("v6-zstd-64k-base", |_, blob| {
        let off = info.compressed_offset as usize;
        let raw = &blob[off..off + info.compressed_size as usize];
        codec::decompress(Compressor::Zstd, raw, info.uncompressed_size as usize).unwrap();
        let short =
            zstd::bulk::compress(&vec![0u8; info.uncompressed_size as usize - 1], 3).unwrap();
        let pad = info.compressed_size as usize - short.len();
        assert!(
            pad >= 8,
            "short frame must leave room for a skippable frame"
        );
        let mut frame = short.clone();
        frame.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        frame.extend_from_slice(&((pad - 8) as u32).to_le_bytes());
        frame.resize(info.compressed_size as usize, 0);
        blob[off..off + frame.len()].copy_from_slice(&frame);
    });
    let mut src = LocalBlobs::new(tmp.path());
    let e = manifest(&img, ManifestOptions::default(), &mut src).unwrap_err();
    assert!(matches!(e, RafsError::BadData(_)), "{e}");
}

#[test]
fn corrupt_chunk_data_fails_digest_or_crc() {
    for name in ["v6-none-64k", "v5-zstd-64k"] {
        let img0 = RafsImage::open(&fixture(name).join("image.boot")).unwrap();
        let nid = nid_of(&img0, "big.bin");
        let c = img0.file_chunks(nid, 0, 1).unwrap()[0];
        let off = match c.chunk {
            ChunkRef::Inline(i) => i.compressed_offset,
            ChunkRef::Indexed { ci_index, .. } => {
                LocalBlobs::new(&fixture(name).join("blobs"))
                    .ci_array(&img0, 0)
                    .unwrap()
                    .get(ci_index)
                    .unwrap()
                    .compressed_offset
            }
        } as usize;
        let (img, tmp) = corrupt_blob(name, |_, b| b[off + 3] ^= 0x55);
        let mut src = LocalBlobs::new(tmp.path());
        let e = manifest(&img, ManifestOptions::default(), &mut src).unwrap_err();
        assert!(matches!(e, RafsError::BadData(_)), "{name}: {e}");
    }
}

// ------------------------------------------------------------------------------------------
// v5
// ------------------------------------------------------------------------------------------

fn v5() -> Vec<u8> {
    std::fs::read(fixture("v5-zstd-64k").join("image.boot")).unwrap()
}

#[test]
fn v5_superblock_corruptions() {
    let mut b = v5();
    put_u32(&mut b, 4, 0x400);
    err_has(open(b), "fs_version");
    let mut b = v5();
    put_u32(&mut b, 12, 0x10001);
    err_has(open(b), "chunk size");
    let mut b = v5();
    put_u64(&mut b, 32, 1 << 50);
    err_has(open(b), "inode table");
    let mut b = v5();
    let f = get_u64(&b, 16);
    put_u64(&mut b, 16, f | super_flags::COMPRESSION_GZIP);
    err_has(open(b), "exactly one compression");
    let mut b = v5();
    // Blob table on top of the inode table.
    let it = get_u64(&b, 32);
    put_u64(&mut b, 48, it);
    err_has(open(b), "overlaps");
}

#[test]
fn v5_inode_table_and_chunk_corruptions() {
    let b0 = v5();
    let img = open(b0.clone()).unwrap();
    let nid = nid_of(&img, "big.bin");
    let it = get_u64(&b0, 32) as usize;
    // Inode table slot pointing into the superblock.
    let mut b = b0.clone();
    put_u32(&mut b, it + (nid as usize - 1) * 4, 4);
    let img2 = open(b).unwrap();
    assert!(img2.getattr(nid).is_err());
    // Chunk record with an out-of-range blob index.
    let rec = (u32::from_le_bytes(b0[it + (nid as usize - 1) * 4..][..4].try_into().unwrap())
        as usize)
        << 3;
    let i = RafsV5Inode::parse(&b0[rec..]).unwrap();
    let chunks = rec + 128 + round_up(u64::from(i.i_name_size), 8) as usize;
    let mut b = b0.clone();
    put_u32(&mut b, chunks + 32, 7);
    let img2 = open(b).unwrap();
    err_has(img2.file_chunks(nid, 0, 1), "blob index");
    // Directory children range beyond the table.
    let root_rec = (u32::from_le_bytes(b0[it..it + 4].try_into().unwrap()) as usize) << 3;
    let mut b = b0.clone();
    put_u32(&mut b, root_rec + 96, 1 << 30);
    assert!(open(b)
        .and_then(|i| i.readdir(1, 0, &mut |_| true))
        .is_err());
}

// ------------------------------------------------------------------------------------------
// Sweeps
// ------------------------------------------------------------------------------------------

fn exercise(img: &RafsImage) {
    exercise_all(img);
}

#[test]
fn truncation_sweep_never_panics() {
    for b0 in [v5(), base()] {
        for n in 0..b0.len() {
            if let Ok(img) = open(b0[..n].to_vec()) {
                exercise(&img);
            }
        }
    }
}

#[test]
fn byte_flip_sweep_never_panics() {
    // Flip bytes across the superblocks, tables and metadata of both versions.
    for b0 in [v5(), base()] {
        let len = b0.len();
        // Exhaustive with RAFS_FULL_SWEEP=1 (slow in debug builds); the fuzz targets cover
        // the rest.
        let step = if std::env::var_os("RAFS_FULL_SWEEP").is_some() {
            1
        } else {
            37
        };
        for off in (0..len).step_by(step) {
            for x in [0xffu8, 0x80] {
                let mut b = b0.clone();
                b[off] ^= x;
                if let Ok(img) = open(b) {
                    exercise(&img);
                }
            }
        }
    }
}

#[test]
fn dirent_type_disagreeing_with_inode() {
    let b0 = base();
    let img = open(b0.clone()).unwrap();
    let root = img.root_ino();
    let d = dir_data_off(&img, &b0, root);
    // Entry 0 is "-dash", a regular file; claim it is a directory.
    let mut b = b0.clone();
    b[d + 10] = file_type::DIR;
    let img = open(b.clone()).unwrap();
    err_has(img.lookup(root, b"-dash"), "type");
    err_has(walk(&img, &mut |_| Ok(())), "type");
    // An unknown type is allowed (EROFS permits it).
    b[d + 10] = file_type::UNKNOWN;
    let img = open(b).unwrap();
    assert!(img.lookup(root, b"-dash").unwrap().is_some());
}
