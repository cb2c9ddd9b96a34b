//! The shared host chunk cache behind RAFS filesystems: shared by several instances (as by
//! several daemons), coexisting with upstream nydusd's files in the same `work_dir`, serving
//! cached chunks by pread into the reply, surviving a full disk, and blob ids of inlined
//! bootstraps.

mod rafs_support;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rafs_support::*;
use rafs_virtiofsd::config::{CacheType, RafsConfig};
use rafs_virtiofsd::fs::rafs::RafsFs;
use rafs_virtiofsd::rafs::Digester;
use rafs_virtiofsd::rafs::RafsImage;
use rafs_virtiofsd::storage::cache::{ChunkCache, CACHE_DIR};

fn cached_config(blobs: &Path, work: &Path, amplify: u64) -> RafsConfig {
    let mut c = config(blobs, false);
    c.cache.kind = CacheType::BlobCache;
    c.cache.work_dir = Some(work.to_path_buf());
    c.amplify_io = amplify;
    c
}

fn backend_bytes(fs: &RafsFs) -> u64 {
    fs.metrics()["backend"]["read_amount_total"]
        .as_u64()
        .unwrap()
}

fn chunk_fetches(fs: &RafsFs) -> u64 {
    fs.metrics()["chunk_fetches"].as_u64().unwrap()
}

#[test]
fn two_instances_share_one_cache_and_fetch_the_working_set_once() {
    let name = "v6-zstd-blake3-1m";
    let d = image_dir(name);
    // The working set: one instance alone, no cache.
    let mut cfg = config(&d.join("blobs"), false);
    cfg.amplify_io = 0;
    let alone = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
    let (bad, good) = read_tree(&alone, name);
    assert!(bad.is_empty() && !good.is_empty());
    let working_set = chunk_fetches(&alone);
    assert!(working_set > 0);

    for amplify in [0u64, 1 << 20] {
        let work = tempfile::tempdir().unwrap();
        let cfg = cached_config(&d.join("blobs"), work.path(), amplify);
        let a = Arc::new(RafsFs::open(&d.join("image.boot"), &cfg).unwrap());
        let b = Arc::new(RafsFs::open(&d.join("image.boot"), &cfg).unwrap());
        let ts: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|fs| std::thread::spawn(move || read_tree(&fs, name)))
            .collect();
        for t in ts {
            let (bad, good) = t.join().unwrap();
            assert!(bad.is_empty(), "{bad:?}");
            assert!(!good.is_empty());
        }
        let total = chunk_fetches(&a) + chunk_fetches(&b);
        if amplify == 0 {
            // Single-flight across instances (flock per chunk stripe): exactly once.
            assert_eq!(total, working_set, "amplify 0");
        } else {
            assert!(
                total <= working_set + working_set / 4,
                "amplified: fetched {total} chunks for a working set of {working_set}"
            );
        }
        // A third instance (a restarted daemon) reads everything from the cache.
        let c = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
        let (bad, _) = read_tree(&c, name);
        assert!(bad.is_empty());
        assert_eq!(chunk_fetches(&c), 0, "restart refetched");
        assert_eq!(
            backend_bytes(&c),
            c.device()
                .metrics()
                .backend_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.file_type().unwrap().is_file().then(|| {
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
        })
        .collect()
}

#[test]
fn coexists_with_upstream_nydusd_files_in_one_work_dir() {
    let name = "v6-zstd-64k-base";
    let d = image_dir(name);
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    let id = &img.blobs()[0].blob_id;
    let work = tempfile::tempdir().unwrap();
    // What an upstream nydusd leaves in the same work_dir: a sparse uncompressed blob cache,
    // a chunk-ready map and a blob.meta. Ours are garbage here, so misreading any of them
    // would serve wrong bytes.
    std::fs::write(
        work.path().join(format!("{id}.blob.data")),
        vec![0xEEu8; 1 << 20],
    )
    .unwrap();
    std::fs::write(
        work.path().join(format!("{id}.chunk_map")),
        vec![0xFFu8; 4096],
    )
    .unwrap();
    std::fs::write(
        work.path().join(format!("{id}.blob.meta")),
        vec![0x11u8; 8192],
    )
    .unwrap();
    let before = snapshot(work.path());
    let fs = RafsFs::open(
        &d.join("image.boot"),
        &cached_config(&d.join("blobs"), work.path(), 1 << 20),
    )
    .unwrap();
    let (bad, good) = read_tree(&fs, name);
    assert!(bad.is_empty() && !good.is_empty());
    // The invalid blob.meta was ignored (ci fetched from the blob instead).
    assert_eq!(fs.metrics()["device"]["ci_from_meta"], 0);
    assert_eq!(fs.metrics()["device"]["ci_loads"], 1);
    // Upstream's files are untouched; everything of ours is under rafs-chunks/.
    assert_eq!(snapshot(work.path()), before);
    let names: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !before.contains_key(n))
        .collect();
    assert_eq!(names, vec![CACHE_DIR.to_string()]);
    let mut n_chunks = 0;
    for dir in ["data", "packs"] {
        let dir = work.path().join(CACHE_DIR).join(dir);
        if dir.exists() {
            walk(&dir, &mut |p| {
                let n = p.file_name().unwrap().to_str().unwrap();
                assert!(!n.ends_with(".blob.data") && !n.ends_with(".blob.meta"));
                n_chunks += 1;
            });
        }
    }
    assert!(n_chunks > 0);
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

#[test]
fn cached_chunks_are_served_by_pread_into_the_reply() {
    let name = "v6-zstd-64k-base";
    let d = image_dir(name);
    let work = tempfile::tempdir().unwrap();
    let fs = RafsFs::open(
        &d.join("image.boot"),
        &cached_config(&d.join("blobs"), work.path(), 1 << 20),
    )
    .unwrap();
    let root = fs.image().root_ino();
    let e =
        fuse_backend_rs::api::filesystem::FileSystem::lookup(&fs, &ctx(), root, &cstr(b"big.bin"))
            .unwrap();
    let size = e.attr.st_size as u64;
    let first = read_all(&fs, e.inode, size, 128 * 1024).unwrap();
    // Second pass: every byte comes from the cache files through write_from.
    let mut w = VecWriter::default();
    let mut off = 0;
    while off < size {
        let n = fuse_backend_rs::api::filesystem::FileSystem::read(
            &fs,
            &ctx(),
            e.inode,
            0,
            &mut w,
            128 * 1024,
            off,
            None,
            0,
        )
        .unwrap();
        off += n as u64;
    }
    assert_eq!(w.data, first);
    assert_eq!(w.from_file as u64, size);
}

#[test]
fn full_cache_disk_still_serves_from_the_backend() {
    let name = "v6-zstd-64k-base";
    let d = image_dir(name);
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // A 64 KiB tmpfs, filled up: every cache insert hits ENOSPC.
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&work)
        .status();
    if !st.map(|s| s.success()).unwrap_or(false) {
        rafs_support::skip::skip("cannot mount a tmpfs (needs root)");
        return;
    }
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Umount(&work);
    std::fs::create_dir_all(work.join(CACHE_DIR).join("tmp")).unwrap();
    let mut filler = vec![0u8; 1 << 20];
    let mut k = 0;
    while std::fs::write(work.join(format!("fill{k}")), &filler).is_ok() {
        k += 1;
    }
    filler.truncate(0);
    let _ = std::fs::write(work.join("fill-small"), vec![0u8; 4096]);
    let fs = RafsFs::open(
        &d.join("image.boot"),
        &cached_config(&d.join("blobs"), &work, 1 << 20),
    )
    .unwrap();
    let (bad, good) = read_tree(&fs, name);
    assert!(bad.is_empty(), "{bad:?}");
    assert!(!good.is_empty());
    let errs = fs.metrics()["blobcache"]["insert_errors"].as_u64().unwrap();
    assert!(errs > 0, "the cache never saw the full disk");
}

#[test]
fn inlined_bootstrap_placeholder_id_comes_from_the_layer_digest() {
    // A per-layer blob of the merged fixture carries its bootstrap inside, with the
    // placeholder blob id. Extract it and name it by the layer digest, as the snapshotter
    // names layer files.
    let d = image_dir("v6-layers-merged");
    let t = tempfile::tempdir().unwrap();
    let merged = RafsImage::open(&d.join("image.boot")).unwrap();
    let layer = merged
        .blobs()
        .iter()
        .max_by_key(|b| b.compressed_size)
        .unwrap()
        .blob_id
        .clone();
    let blob = std::fs::read(d.join("blobs").join(&layer)).unwrap();
    let boot = rafs_virtiofsd::rafs::toc::extract_bootstrap(&blob).unwrap();
    let img = RafsImage::from_bytes(boot.clone()).unwrap();
    assert_eq!(img.blobs()[0].blob_id, "x".repeat(64));
    let named = t.path().join(&layer);
    std::fs::write(&named, &boot).unwrap();
    let fs = RafsFs::open(&named, &config(&d.join("blobs"), true)).unwrap();
    assert_eq!(fs.device().blob_id(0).unwrap(), layer);
    // Every file of the layer reads and verifies.
    let n = read_every_file(&fs);
    assert!(n > 0);
    // Under another name, the open fails with a message saying what to do.
    let other = t.path().join("bootstrap");
    std::fs::write(&other, &boot).unwrap();
    let err = RafsFs::open(&other, &config(&d.join("blobs"), false))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("placeholder"), "{err}");
    // The localfs blob_file names it too.
    let mut cfg = config(&d.join("blobs"), false);
    if let rafs_virtiofsd::config::BackendConfig::LocalFs(l) = &mut cfg.backend {
        l.blob_file = Some(d.join("blobs").join(&layer));
    }
    let fs = RafsFs::open(&other, &cfg).unwrap();
    assert!(read_every_file(&fs) > 0);
}

/// Read all regular files of `fs` (by walking it); returns how many were read.
fn read_every_file(fs: &RafsFs) -> usize {
    let img = fs.image().clone();
    let mut stack = vec![img.root_ino()];
    let mut n = 0;
    while let Some(dir) = stack.pop() {
        let mut kids = Vec::new();
        img.readdir(dir, 0, &mut |e| {
            if e.name != b"." && e.name != b".." {
                kids.push(e.ino);
            }
            true
        })
        .unwrap();
        for k in kids {
            let a = img.getattr(k).unwrap();
            match a.mode & libc::S_IFMT {
                libc::S_IFDIR => stack.push(k),
                libc::S_IFREG if a.size > 0 => {
                    read_all(fs, k, a.size, 128 * 1024).unwrap();
                    n += 1;
                }
                _ => {}
            }
        }
    }
    n
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(20) {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn prefetch_all_fetches_everything_in_the_background() {
    let name = "v6-zstd-64k-base";
    let d = image_dir(name);
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut cfg = cached_config(&d.join("blobs"), work.path(), 0);
    cfg.fs_prefetch.enable = true;
    cfg.fs_prefetch.prefetch_all = true;
    cfg.fs_prefetch.threads_count = 2;
    let fs = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
    // Every distinct chunk the files use (chunk-dict style dedup means <= chunk_count).
    let n = img.blobs()[0].chunk_count as u64;
    assert!(
        wait_for(|| chunk_fetches(&fs) >= n),
        "prefetch fetched {} of {n}",
        chunk_fetches(&fs)
    );
    // On-demand reads now hit the cache only.
    let (bad, _) = read_tree(&fs, name);
    assert!(bad.is_empty());
    assert_eq!(chunk_fetches(&fs), n);
    assert_eq!(fs.metrics()["errors"], 0);
}

#[test]
fn prefetch_follows_the_prefetch_table_and_bandwidth_limit() {
    let name = "v6-prefetch-64k";
    let d = image_dir(name);
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    let table = img.prefetch_inodes().unwrap();
    assert!(!table.is_empty(), "fixture has a prefetch table");
    let work = tempfile::tempdir().unwrap();
    let mut cfg = cached_config(&d.join("blobs"), work.path(), 0);
    cfg.fs_prefetch.enable = true;
    cfg.fs_prefetch.threads_count = 1;
    // 2 MiB/s: slow enough to measure.
    cfg.fs_prefetch.bandwidth_rate = 2 << 20;
    let t0 = std::time::Instant::now();
    let fs = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
    // The chunks of the prefetch-table files (and only those, unless it names the root).
    let mut want_chunks = std::collections::HashSet::new();
    let mut bytes = 0u64;
    let mut stack = table.clone();
    while let Some(ino) = stack.pop() {
        let a = img.getattr(ino).unwrap();
        match a.mode & libc::S_IFMT {
            libc::S_IFREG => {
                for c in img.file_chunks(ino, 0, a.size).unwrap() {
                    if want_chunks.insert(format!("{:?}", c.chunk)) {
                        bytes += u64::from(c.len);
                    }
                }
            }
            libc::S_IFDIR => img
                .readdir(ino, 0, &mut |e| {
                    if e.name != b"." && e.name != b".." {
                        stack.push(e.ino);
                    }
                    true
                })
                .unwrap(),
            _ => {}
        }
    }
    let n = want_chunks.len() as u64;
    assert!(n > 0);
    assert!(
        wait_for(|| chunk_fetches(&fs) >= n),
        "prefetched {} of {n}",
        chunk_fetches(&fs)
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(chunk_fetches(&fs), n, "prefetched more than the table");
    let min = std::time::Duration::from_secs_f64(bytes as f64 / f64::from(2u32 << 20) * 0.8);
    assert!(
        t0.elapsed() >= min,
        "{bytes} bytes prefetched in {:?}, faster than the limit allows",
        t0.elapsed()
    );
}

#[test]
fn dropping_the_fs_stops_prefetch() {
    let name = "v6-zstd-64k-base";
    let d = image_dir(name);
    let work = tempfile::tempdir().unwrap();
    let mut cfg = cached_config(&d.join("blobs"), work.path(), 0);
    cfg.fs_prefetch.enable = true;
    cfg.fs_prefetch.prefetch_all = true;
    cfg.fs_prefetch.threads_count = 1;
    // 64 KiB/s: the whole image would take many seconds.
    cfg.fs_prefetch.bandwidth_rate = 64 << 10;
    let fs = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
    assert!(wait_for(|| chunk_fetches(&fs) >= 1));
    let device = fs.device().clone();
    drop(fs);
    std::thread::sleep(std::time::Duration::from_millis(400));
    let n = device
        .metrics()
        .chunk_fetches
        .load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let m = device
        .metrics()
        .chunk_fetches
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(n, m, "prefetch kept fetching after the fs was dropped");
    assert!(m < 20, "rate limit not applied: {m} chunks");
}

#[test]
fn sequential_reads_trigger_readahead_random_ones_do_not() {
    let name = "v6-zstd-64k-base";
    let d = image_dir(name);
    let mut cfg = config(&d.join("blobs"), false);
    // Amplification off in effect (1 byte), readahead window then 1 MiB.
    cfg.amplify_io = 1;
    let read_at = |fs: &RafsFs, ino: u64, off: u64| {
        let mut w = VecWriter::default();
        fuse_backend_rs::api::filesystem::FileSystem::read(
            fs,
            &ctx(),
            ino,
            0,
            &mut w,
            4096,
            off,
            None,
            0,
        )
        .unwrap();
    };
    let fs = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
    let root = fs.image().root_ino();
    let e =
        fuse_backend_rs::api::filesystem::FileSystem::lookup(&fs, &ctx(), root, &cstr(b"big.bin"))
            .unwrap();
    // Distinct chunks of the file (identical chunks are stored once).
    let chunks = fs
        .image()
        .file_chunks(e.inode, 0, e.attr.st_size as u64)
        .unwrap()
        .iter()
        .map(|c| format!("{:?}", c.chunk))
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    assert!(chunks >= 4, "{chunks}");
    for off in [0u64, 4096, 8192] {
        read_at(&fs, e.inode, off);
    }
    assert!(
        wait_for(|| chunk_fetches(&fs) >= chunks),
        "readahead fetched {} of {chunks} chunks",
        chunk_fetches(&fs)
    );
    assert!(fs.metrics()["readahead_chunks"].as_u64().unwrap() > 0);
    let fs2 = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
    for off in [0u64, 500_000, 100_000, 900_000] {
        read_at(&fs2, e.inode, off);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(fs2.metrics()["readahead_chunks"], 0);
    assert_eq!(chunk_fetches(&fs2), 4);
}

/// The last regular file (with data) in the order prefetch walks the tree.
fn last_in_prefetch_order(img: &RafsImage) -> (u64, u64) {
    let mut last = None;
    let mut stack = vec![img.root_ino()];
    // Depth first, children in readdir order, as prefetch collects them.
    fn walk(img: &RafsImage, ino: u64, last: &mut Option<(u64, u64)>) {
        let a = img.getattr(ino).unwrap();
        match a.mode & libc::S_IFMT {
            libc::S_IFREG if a.size > 0 => *last = Some((ino, a.size)),
            libc::S_IFDIR => {
                let mut kids = Vec::new();
                img.readdir(ino, 0, &mut |e| {
                    if e.name != b"." && e.name != b".." {
                        kids.push(e.ino);
                    }
                    true
                })
                .unwrap();
                for k in kids {
                    walk(img, k, last);
                }
            }
            _ => {}
        }
    }
    while let Some(i) = stack.pop() {
        walk(img, i, &mut last);
    }
    last.expect("a file with data")
}

/// Prefetch runs behind a slow bandwidth limit; an on-demand read of the file prefetch would
/// reach last is served at once (the reader fetches its chunks itself instead of waiting in
/// the prefetch queue), and prefetch, when it gets there, finds them cached: every chunk is
/// fetched once.
#[test]
fn on_demand_read_does_not_wait_behind_prefetch() {
    let name = "v6-zstd-64k-base";
    let d = image_dir(name);
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    let n = img.blobs()[0].chunk_count as u64;
    let (ino, size) = last_in_prefetch_order(&img);
    let want = read_all(&open(name, false), ino, size, 1 << 16).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut cfg = cached_config(&d.join("blobs"), work.path(), 0);
    cfg.fs_prefetch.enable = true;
    cfg.fs_prefetch.prefetch_all = true;
    cfg.fs_prefetch.threads_count = 1;
    // 512 KiB/s (of decompressed chunk data): prefetch of the whole image takes seconds.
    cfg.fs_prefetch.bandwidth_rate = 512 << 10;
    let fs = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
    assert!(wait_for(|| chunk_fetches(&fs) >= 1));
    let got = read_all(&fs, ino, size, 1 << 16).unwrap();
    let at_read = chunk_fetches(&fs);
    assert_eq!(got, want);
    assert!(
        at_read < n / 2,
        "the read waited for prefetch: {at_read} of {n} chunks fetched when it returned"
    );
    assert!(
        wait_for(|| chunk_fetches(&fs) >= n),
        "prefetch fetched {} of {n}",
        chunk_fetches(&fs)
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(chunk_fetches(&fs), n, "a chunk was fetched twice");
}

/// Counts the content-addressed chunks of a cache work dir (own files and pack records) and
/// checks that each holds exactly the bytes its digest says (a torn write must never be
/// under a final name or an index record).
fn check_cache_files(work: &Path) -> usize {
    if !work.join(CACHE_DIR).exists() {
        return 0;
    }
    let mut n = 0;
    for (algo, digest, data) in ChunkCache::open(work, 0).unwrap().digest_chunks() {
        if algo != Digester::Blake3 {
            continue;
        }
        assert_eq!(
            blake3::hash(&data).as_bytes(),
            &digest,
            "{}: wrong or torn bytes ({} of them)",
            hex::encode(digest),
            data.len()
        );
        n += 1;
    }
    n
}

/// kill -9 of the daemon while it writes the shared cache (background prefetch of every
/// chunk; the kill is sent as soon as a chunk write has begun), at least 20 times on one
/// work dir, until one kill has left a half-written temporary file; then
/// every cache file holds its digest's bytes, and a fresh instance on that work dir serves
/// every file of the image byte for byte.
#[test]
fn kill_9_during_cache_writes_never_leaves_a_wrong_byte() {
    use std::time::{Duration, Instant};
    let name = "v6-zstd-blake3-1m";
    let d = image_dir(name);
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let cfg = t.path().join("rafs.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "device": {
                "backend": {"type": "localfs", "config": {"dir": d.join("blobs")}},
                "cache": {"type": "blobcache", "config": {"work_dir": work}}
            },
            "mode": "direct",
            "digest_validate": false,
            "fs_prefetch": {"enable": true, "prefetch_all": true, "threads_count": 2}
        })
        .to_string(),
    )
    .unwrap();
    let sock = t.path().join("vhost.sock");
    let boot = d.join("image.boot");
    let mut counts = Vec::new();
    // 20 kills, and more (up to 100) until one has landed in the middle of a write.
    for i in 0..100u64 {
        if i >= 20 && counts.iter().any(|&(_, tmp)| tmp > 0) {
            break;
        }
        let _ = std::fs::remove_file(&sock);
        let mut dmn = support::Daemon::spawn(&[
            "virtiofs",
            "--sock",
            sock.to_str().unwrap(),
            "--bootstrap",
            boot.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--log-level",
            "warn",
        ]);
        assert!(support::wait_for_path(&sock, Duration::from_secs(10)));
        // Kill the moment a chunk write is under way (a temporary file exists), or after
        // 2 s if none comes (everything cached).
        let tmpdir = work.join(CACHE_DIR).join("tmp");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2)
            && std::fs::read_dir(&tmpdir).map_or(true, |mut d| d.next().is_none())
        {
            std::hint::spin_loop();
        }
        let (_, status) = dmn
            .signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
            .expect("daemon survived SIGKILL");
        // -1: ended by a signal, not an exit code.
        assert_eq!(
            status,
            -1,
            "run {i}: exited on its own after {:?}",
            t0.elapsed()
        );
        // A kill in a write leaves a partial temporary file (the next start clears it) or
        // pack bytes that no index record names.
        let tmp = std::fs::read_dir(&tmpdir).map(|d| d.count()).unwrap_or(0) as u64
            + ChunkCache::open(&work, 0).map_or(0, |c| c.packs().dead_bytes());
        counts.push((check_cache_files(&work), tmp));
    }
    // The kills did land while chunks were being written, and the store was still growing.
    assert!(
        counts.iter().any(|&(_, tmp)| tmp > 0),
        "no kill landed in a cache write: (chunks, tmp files + dead pack bytes) {counts:?}"
    );
    let fs = RafsFs::open(&boot, &cached_config(&d.join("blobs"), &work, 0)).unwrap();
    let (bad, good) = read_tree(&fs, name);
    assert!(bad.is_empty(), "{bad:?}");
    assert!(!good.is_empty());
    assert_eq!(fs.metrics()["errors"], 0);
    assert_eq!(fs.metrics()["device"]["verify_errors"], 0);
    check_cache_files(&work);
}
