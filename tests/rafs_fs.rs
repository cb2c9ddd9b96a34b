//! The RAFS filesystem over the upstream fixtures: through the storage device, through
//! direct FileSystem calls, and through a real FUSE mount on the host (needs root and
//! /dev/fuse). Fault cases: a missing blob and a corrupted blob byte give EIO, never wrong
//! data, and the fs keeps serving.

mod rafs_support;

use std::collections::BTreeMap;

use fuse_backend_rs::api::filesystem::{
    DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply,
};
use rafs_support::*;
use rafs_virtiofsd::config::CacheType;
use rafs_virtiofsd::fs::rafs::RafsFs;
use rafs_virtiofsd::rafs::manifest::{manifest, py_backslashreplace, ManifestOptions};
use rafs_virtiofsd::rafs::RafsImage;

#[test]
fn every_fixture_reads_exactly_through_the_device_with_validation() {
    for name in FIXTURES {
        let fs = open(name, true);
        let (want, flags) = want_manifest(name);
        let opts = ManifestOptions::from_flags(&flags).unwrap();
        let got = manifest(fs.image(), opts, &mut DeviceSource(&fs)).unwrap();
        assert_same_manifest(name, &got, &want);
        let m = fs.device().metrics();
        assert!(
            m.chunk_fetches.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "{name}: nothing fetched"
        );
    }
}

/// A ZeroCopyWriter collecting into a Vec, as the FUSE server's writer would.
fn walk_direct(fs: &RafsFs, ino: u64, path: &str, out: &mut BTreeMap<String, Line>) {
    let mut entries: Vec<(Vec<u8>, Entry)> = Vec::new();
    fs.opendir(&ctx(), ino, 0).unwrap();
    // Small buffers: exercise resuming from offsets.
    let mut offset = 0;
    loop {
        let mut batch = Vec::new();
        fs.readdirplus(
            &ctx(),
            ino,
            0,
            4096,
            offset,
            &mut |d: DirEntry, e: Entry| {
                if batch.len() == 3 {
                    return Ok(0);
                }
                batch.push((d.name.to_vec(), e, d.offset));
                Ok(1)
            },
        )
        .unwrap();
        if batch.is_empty() {
            break;
        }
        offset = batch.last().unwrap().2;
        entries.extend(batch.into_iter().map(|(n, e, _)| (n, e)));
    }
    fs.releasedir(&ctx(), ino, 0, 0).unwrap();
    for (name, e) in entries {
        if name == b"." || name == b".." {
            continue;
        }
        let looked = fs.lookup(&ctx(), ino, &cstr(&name)).unwrap();
        assert_eq!(looked.inode, e.inode);
        assert!(looked.inode < 1 << 56);
        let st = e.attr;
        let p = if path.is_empty() {
            py_backslashreplace(&name)
        } else {
            format!("{path}/{}", py_backslashreplace(&name))
        };
        let fmt = st.st_mode & libc::S_IFMT;
        let kind = match fmt {
            libc::S_IFREG => "f",
            libc::S_IFDIR => "d",
            libc::S_IFLNK => "l",
            libc::S_IFIFO => "p",
            libc::S_IFCHR => "c",
            libc::S_IFBLK => "b",
            libc::S_IFSOCK => "s",
            _ => "?",
        };
        let (size, sha, target) = match fmt {
            libc::S_IFREG => {
                let (h, _, _) = fs.open(&ctx(), e.inode, libc::O_RDONLY as u32, 0).unwrap();
                let data = read_all(fs, e.inode, st.st_size as u64, 128 * 1024).unwrap();
                // A different request size gives the same bytes.
                assert_eq!(
                    read_all(fs, e.inode, st.st_size as u64, 5000).unwrap(),
                    data
                );
                fs.release(&ctx(), e.inode, 0, h.unwrap_or(0), false, false, None)
                    .unwrap();
                (st.st_size.to_string(), sha_prefix(&data), "-".to_string())
            }
            libc::S_IFLNK => {
                let t = fs.readlink(&ctx(), e.inode).unwrap();
                (st.st_size.to_string(), "-".into(), hex::encode(t))
            }
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let xattrs = {
            let names = match fs.listxattr(&ctx(), e.inode, 65536).unwrap() {
                ListxattrReply::Names(n) => n,
                ListxattrReply::Count(_) => panic!("count for a sized listxattr"),
            };
            let mut v: Vec<String> = Vec::new();
            let mut names: Vec<&[u8]> =
                names.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
            names.sort();
            for n in names {
                let val = match fs.getxattr(&ctx(), e.inode, &cstr(n), 65536).unwrap() {
                    GetxattrReply::Value(v) => v,
                    GetxattrReply::Count(_) => panic!("count for a sized getxattr"),
                };
                v.push(format!("{}={}", hex::encode(n), hex::encode(val)));
            }
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        out.insert(
            p.clone(),
            Line {
                kind: kind.into(),
                mode: format!("{:o}", st.st_mode & 0o7777),
                owner: format!("{}:{}", st.st_uid, st.st_gid),
                size,
                target,
                sha,
                xattrs,
            },
        );
        if fmt == libc::S_IFDIR {
            walk_direct(fs, e.inode, &p, out);
        }
    }
}

#[test]
fn direct_filesystem_calls_match_the_source_tree() {
    for name in ["v6-zstd-64k-base", "v5-zstd-64k", "v6-zstd-blake3-1m"] {
        let fs = open(name, false);
        let root = fs.image().root_ino();
        let mut got = BTreeMap::new();
        walk_direct(&fs, root, "", &mut got);
        let (want, _) = want_manifest(name);
        let mut want = parse_manifest(&want);
        want.remove(".");
        assert_eq!(got.len(), want.len(), "{name}: entry count");
        for (p, w) in &want {
            let g = got.get(p).unwrap_or_else(|| panic!("{name}: {p} missing"));
            assert_eq!(g.kind, w.kind, "{name}: {p} kind");
            if w.mode != "-" {
                assert_eq!(g.mode, w.mode, "{name}: {p} mode");
            }
            assert_eq!(g.owner, w.owner, "{name}: {p} owner");
            assert_eq!(g.target, w.target, "{name}: {p} target");
            if w.kind == "f" || w.kind == "l" {
                assert_eq!(g.size, w.size, "{name}: {p} size");
            }
            if w.sha != "-" {
                assert_eq!(g.sha, w.sha, "{name}: {p} content");
            }
            if w.xattrs != "-" {
                // treemanifest lists xattrs as hex name=value pairs; compare the set of names.
                assert_ne!(g.xattrs, "-", "{name}: {p} xattrs missing");
            }
        }
        let m = fs.metrics();
        assert!(m["reads"].as_u64().unwrap() > 0);
        assert_eq!(m["errors"].as_u64().unwrap(), 0);
        let b = fs.backend_metrics();
        assert_eq!(b["backend_type"], "localfs");
        assert!(b["read_amount_total"].as_u64().unwrap() > 0);
        let c = fs.blobcache_metrics();
        assert!(c["total"].as_u64().unwrap() >= c["whole_hits"].as_u64().unwrap());
        assert!(
            c["whole_hits"].as_u64().unwrap() > 0,
            "repeat reads hit memory"
        );
    }
}

#[test]
fn errnos_and_read_only() {
    let fs = open("v6-zstd-64k-base", false);
    let root = fs.image().root_ino();
    let c = ctx();
    let enoent = fs.lookup(&c, root, &cstr(b"no-such-file")).unwrap_err();
    assert_eq!(enoent.raw_os_error(), Some(libc::ENOENT));
    let f = fs.lookup(&c, root, &cstr(b"big.bin")).unwrap();
    assert_eq!(
        fs.lookup(&c, f.inode, &cstr(b"x"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        fs.getattr(&c, 1 << 50, None).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    // Writes are refused.
    let erofs = Some(libc::EROFS);
    assert_eq!(
        fs.open(&c, f.inode, libc::O_RDWR as u32, 0)
            .unwrap_err()
            .raw_os_error(),
        erofs
    );
    assert_eq!(
        fs.mkdir(&c, root, &cstr(b"d"), 0o755, 0)
            .unwrap_err()
            .raw_os_error(),
        erofs
    );
    assert_eq!(
        fs.unlink(&c, root, &cstr(b"big.bin"))
            .unwrap_err()
            .raw_os_error(),
        erofs
    );
    assert_eq!(
        fs.setxattr(&c, f.inode, &cstr(b"user.x"), b"v", 0)
            .unwrap_err()
            .raw_os_error(),
        erofs
    );
    assert_eq!(
        fs.access(&c, f.inode, libc::W_OK as u32)
            .unwrap_err()
            .raw_os_error(),
        erofs
    );
    fs.access(&c, f.inode, libc::R_OK as u32).unwrap();
    // Reading a directory or readlink on a file.
    let mut w = VecWriter::default();
    assert_eq!(
        fs.read(&c, root, 0, &mut w, 10, 0, None, 0)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EISDIR)
    );
    assert_eq!(
        fs.readlink(&c, f.inode).unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    // lseek: all data, the hole at EOF.
    let size = f.attr.st_size as u64;
    assert_eq!(
        fs.lseek(&c, f.inode, 0, 100, libc::SEEK_DATA as u32)
            .unwrap(),
        100
    );
    assert_eq!(
        fs.lseek(&c, f.inode, 0, 100, libc::SEEK_HOLE as u32)
            .unwrap(),
        size
    );
    assert_eq!(
        fs.lseek(&c, f.inode, 0, size, libc::SEEK_DATA as u32)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENXIO)
    );
    // statfs
    let st = fs.statfs(&c, root).unwrap();
    assert_eq!(st.f_namemax, 255);
    assert!(st.f_files > 0);
    // xattrs: size probe, ERANGE, ENODATA.
    let (want, _) = want_manifest("v6-zstd-64k-base");
    let with_x = parse_manifest(&want)
        .into_iter()
        .find(|(_, l)| l.xattrs != "-")
        .map(|(p, _)| p)
        .expect("tree has xattrs");
    let mut ino = root;
    for comp in with_x.split('/') {
        ino = fs.lookup(&c, ino, &cstr(comp.as_bytes())).unwrap().inode;
    }
    let names = match fs.listxattr(&c, ino, 0).unwrap() {
        ListxattrReply::Count(n) => n,
        _ => panic!("size probe must return a count"),
    };
    assert!(names > 0);
    assert_eq!(
        fs.listxattr(&c, ino, 1).err().unwrap().raw_os_error(),
        Some(libc::ERANGE)
    );
    assert_eq!(
        fs.getxattr(&c, ino, &cstr(b"user.nonexistent"), 100)
            .err()
            .unwrap()
            .raw_os_error(),
        Some(libc::ENODATA)
    );
    // With enable_xattr off there are none, and no ENOSYS.
    let d = image_dir("v6-zstd-64k-base");
    let mut cfg = config(&d.join("blobs"), false);
    cfg.enable_xattr = false;
    let fs2 = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
    match fs2.listxattr(&c, ino, 0).unwrap() {
        ListxattrReply::Count(n) => assert_eq!(n, 0),
        _ => panic!(),
    }
    let first = String::from_utf8(fs.image().list_xattrs(ino).unwrap()[0].clone()).unwrap();
    assert_eq!(
        fs2.getxattr(&c, ino, &cstr(first.as_bytes()), 100)
            .err()
            .unwrap()
            .raw_os_error(),
        Some(libc::ENODATA)
    );
}

#[test]
fn missing_blob_is_eio_and_the_fs_keeps_serving() {
    let t = tempfile::tempdir().unwrap();
    let d = copy_fixture("v6-chunkdict-64k", t.path());
    // small2 uses two blobs: its own and the chunk dict's. Remove the dict's blob.
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    assert_eq!(img.blobs().len(), 2);
    std::fs::remove_file(d.join("blobs").join(&img.blobs()[0].blob_id)).unwrap();
    let fs = RafsFs::open(&d.join("image.boot"), &config(&d.join("blobs"), false)).unwrap();
    let (bad, good) = read_tree(&fs, "v6-chunkdict-64k");
    assert!(!bad.is_empty(), "no read failed");
    assert!(!good.is_empty(), "nothing could be read");
    assert!(fs.metrics()["errors"].as_u64().unwrap() >= bad.len() as u64);
}

#[test]
fn corrupted_blob_byte_is_eio_never_wrong_data() {
    // Uncompressed blobs: only the checksums can notice.
    for (name, validate) in [
        ("v6-none-64k", false),
        ("v6-none-64k", true),
        ("v5-zstd-64k", true),
    ] {
        let t = tempfile::tempdir().unwrap();
        let d = copy_fixture(name, t.path());
        let img = RafsImage::open(&d.join("image.boot")).unwrap();
        let blob = d.join("blobs").join(&img.blobs()[0].blob_id);
        let mut data = std::fs::read(&blob).unwrap();
        for off in [100usize, 70_000, 300_000] {
            data[off] ^= 0x5a;
        }
        std::fs::write(&blob, &data).unwrap();
        let fs = RafsFs::open(&d.join("image.boot"), &config(&d.join("blobs"), validate)).unwrap();
        let (bad, good) = read_tree(&fs, name);
        assert!(!bad.is_empty(), "{name}: corruption not detected");
        assert!(!good.is_empty(), "{name}: nothing readable");
    }
}

#[test]
fn swapped_chunks_are_caught() {
    // A blob.meta whose ci entries for two same-sized chunks are swapped: every byte the
    // device reads is valid chunk data, but of the wrong chunk. The bootstrap's chunk
    // table (crc / digest by ci index) must catch it, with and without digest_validate.
    let t = tempfile::tempdir().unwrap();
    let d = copy_fixture("v6-none-64k", t.path());
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    let b = &img.blobs()[0];
    let blob = d.join("blobs").join(&b.blob_id);
    let data = std::fs::read(&blob).unwrap();
    let ci = rafs_virtiofsd::rafs::ci::ChunkInfoArray::parse(
        b,
        &data[b.ci_offset as usize..(b.ci_offset + b.ci_compressed_size) as usize + 4096],
    )
    .unwrap();
    let mut entries: Vec<_> = (0..ci.len() as u32).map(|i| ci.get(i).unwrap()).collect();
    let (i, j) = (0..entries.len())
        .flat_map(|i| (i + 1..entries.len()).map(move |j| (i, j)))
        .find(|&(i, j)| entries[i].uncompressed_size == entries[j].uncompressed_size)
        .expect("two chunks of one size");
    entries.swap(i, j);
    entries[i].index = i as u32;
    entries[j].index = j as u32;
    let v2 = b.features & rafs_virtiofsd::rafs::blob_features::CHUNK_INFO_V2 != 0;
    let raw = rafs_virtiofsd::rafs::ci::encode_entries(&entries, v2);
    let meta = rafs_virtiofsd::rafs::ci::encode_blob_meta(b, &raw);
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join(format!("{}.blob.meta", b.blob_id)), meta).unwrap();
    for validate in [false, true] {
        let mut cfg = config(&d.join("blobs"), validate);
        cfg.cache.work_dir = Some(work.clone());
        cfg.cache.kind = CacheType::None;
        let fs = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
        let (bad, good) = read_tree(&fs, "v6-none-64k");
        assert!(
            !bad.is_empty(),
            "swapped chunks served (validate={validate})"
        );
        assert!(!good.is_empty());
        // The ci came from the blob.meta file, not from the blob.
        let m = fs.device().metrics();
        assert_eq!(m.ci_from_meta.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}

/// A FUSE mount of one RafsFs on the host, served by threads in this process.
#[test]
fn fuse_mount_serves_the_tree() {
    for name in ["v6-zstd-64k-base", "v5-zstd-64k", "v6-layers-merged"] {
        let Some(m) = Mounted::new(open(name, true)) else {
            return;
        };
        let (want, flags) = want_manifest(name);
        // Content and types through the kernel, always.
        let want_lines = parse_manifest(&want);
        for (p, l) in want_lines.iter().filter(|(p, _)| !p.contains('\\')) {
            let path = m.mnt.join(p);
            let md = std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{p}: {e}"));
            if l.kind == "f" {
                let data = std::fs::read(&path).unwrap();
                assert_eq!(data.len().to_string(), l.size, "{name}: {p}");
                assert_eq!(sha_prefix(&data), l.sha, "{name}: {p}");
            }
            if l.kind == "l" {
                assert!(md.file_type().is_symlink());
            }
        }
        // The exact manifest.
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(treemanifest()).arg(&m.mnt);
        for f in flags.split_whitespace() {
            cmd.arg(f);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_manifest(name, &String::from_utf8(out.stdout).unwrap(), &want);
        // Writes fail with EROFS through the kernel too.
        let e = std::fs::write(m.mnt.join("new-file"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    }
}

#[test]
fn fuse_mount_missing_blob_gives_eio() {
    let t = tempfile::tempdir().unwrap();
    let d = copy_fixture("v6-zstd-64k-base", t.path());
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    let blob = d.join("blobs").join(&img.blobs()[0].blob_id);
    let saved = t.path().join("saved");
    std::fs::rename(&blob, &saved).unwrap();
    let fs = RafsFs::open(&d.join("image.boot"), &config(&d.join("blobs"), false)).unwrap();
    let Some(m) = Mounted::new(fs) else { return };
    let e = std::fs::read(m.mnt.join("big.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    // Metadata still works, and once the blob is back, data too.
    assert!(std::fs::read_dir(&m.mnt).unwrap().count() > 3);
    std::fs::rename(&saved, &blob).unwrap();
    let (want, _) = want_manifest("v6-zstd-64k-base");
    let l = &parse_manifest(&want)["big.bin"];
    assert_eq!(
        sha_prefix(&std::fs::read(m.mnt.join("big.bin")).unwrap()),
        l.sha
    );
}
