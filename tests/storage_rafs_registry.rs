//! A RAFS filesystem whose blobs come from a registry: lazily (bytes measured from a real
//! Debian docker-registry's access log), through the shared cache, and with faults (registry
//! down, wrong bytes). Configs are the v1 JSON nydus-snapshotter emits.

mod rafs_support;
#[path = "common/registry.rs"]
mod registry;
#[path = "common/vu_driver.rs"]
mod vu_driver;

use std::path::Path;
use std::time::{Duration, Instant};

use rafs_support::*;
use sha2::Digest;

fn sha_full(d: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(d))
}
use rafs_virtiofsd::config::RafsConfig;
use rafs_virtiofsd::fs::rafs::RafsFs;
use rafs_virtiofsd::rafs::RafsImage;
use registry::{range_reply, FakeServer, Registry, Reply};

fn v1_config(host: &str, repo: &str, work: Option<&Path>, validate: bool) -> RafsConfig {
    let cache = match work {
        Some(w) => format!(
            r#""cache": {{"type": "blobcache", "compressed": false, "config": {{"work_dir": "{}", "disable_indexed_map": false}}}}"#,
            w.display()
        ),
        None => r#""cache": {"type": ""}"#.to_string(),
    };
    let s = format!(
        r#"{{
      "device": {{
        "backend": {{"type": "registry", "config": {{
          "readahead": false, "host": "{host}", "repo": "{repo}", "scheme": "http",
          "skip_verify": false, "timeout": 2, "connect_timeout": 1, "retry_limit": 1,
          "proxy": {{"url": "", "fallback": false, "ping_url": "", "check_interval": 0, "use_http": false}}
        }}}},
        {cache}
      }},
      "mode": "direct", "digest_validate": {validate}, "iostats_files": false, "enable_xattr": true,
      "fs_prefetch": {{"enable": false, "prefetch_all": false, "threads_count": 4, "merging_size": 1048576, "bandwidth_rate": 0}}
    }}"#
    );
    let c = RafsConfig::from_str(&s).unwrap();
    assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
    c
}

/// A top-level regular file of fixture `name` over 1000 bytes, other than big.bin (its
/// chunks are not big.bin's).
fn top_level_file_besides_big_bin(name: &str) -> String {
    let (want, _) = want_manifest(name);
    parse_manifest(&want)
        .into_iter()
        .find(|(p, l)| {
            l.kind == "f"
                && !p.contains('/')
                && p != "big.bin"
                && l.size.parse::<u64>().unwrap() > 1000
        })
        .map(|(p, _)| p)
        .unwrap()
}

fn push_fixture(reg: &Registry, name: &str, repo: &str) -> RafsImage {
    let d = image_dir(name);
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    for b in img.blobs() {
        let data = std::fs::read(d.join("blobs").join(&b.blob_id)).unwrap();
        assert_eq!(reg.push_blob(repo, &data), b.blob_id);
    }
    img
}

#[test]
fn lazy_reads_from_a_real_registry() {
    let reg = Registry::start(None);
    let name = "v6-zstd-blake3-1m";
    let img = push_fixture(&reg, name, "test/rafs");
    let id = img.blobs()[0].blob_id.clone();
    let blob_len = std::fs::metadata(image_dir(name).join("blobs").join(&id))
        .unwrap()
        .len();
    let work = tempfile::tempdir().unwrap();
    let d = image_dir(name);
    let fs = RafsFs::open(
        &d.join("image.boot"),
        &v1_config(&reg.host(), "test/rafs", Some(work.path()), true),
    )
    .unwrap();
    // Opening fetches nothing.
    assert_eq!(reg.served_bytes(&id), 0);
    // One small file: the ci array plus at most one amplified range.
    let (want, _) = want_manifest(name);
    let want = parse_manifest(&want);
    let (path, line) = want
        .iter()
        .find(|(_, l)| l.kind == "f" && l.size.parse::<u64>().unwrap() < 4096 && l.size != "0")
        .unwrap();
    let mut ino = fs.image().root_ino();
    for c in path.split('/') {
        ino = fuse_backend_rs::api::filesystem::FileSystem::lookup(
            &fs,
            &ctx(),
            ino,
            &cstr(c.as_bytes()),
        )
        .unwrap()
        .inode;
    }
    let data = read_all(&fs, ino, line.size.parse().unwrap(), 128 * 1024).unwrap();
    assert_eq!(sha_prefix(&data), line.sha);
    let served = reg.served_bytes(&id);
    let ci = img.blobs()[0].ci_compressed_size + 4096;
    assert!(
        served <= ci + (1 << 20) + (1 << 20),
        "one small file cost {served} bytes of a {blob_len}-byte blob"
    );
    assert!(served < blob_len / 2, "not lazy: {served} of {blob_len}");
    // The whole tree is right; the registry served about the blob once.
    let (bad, good) = read_tree(&fs, name);
    assert!(bad.is_empty(), "{bad:?}");
    assert!(!good.is_empty());
    let total = reg.served_bytes(&id);
    assert!(
        total <= blob_len + blob_len / 4,
        "{total} for a blob of {blob_len}"
    );
    // A second instance (another daemon) over the same cache: no registry traffic.
    let fs2 = RafsFs::open(
        &d.join("image.boot"),
        &v1_config(&reg.host(), "test/rafs", Some(work.path()), true),
    )
    .unwrap();
    let before = reg.served_bytes(&id);
    let (bad, _) = read_tree(&fs2, name);
    assert!(bad.is_empty());
    // Nothing at all: chunks and the ci array are both kept in the cache dir.
    assert_eq!(reg.served_bytes(&id), before);
    assert_eq!(fs2.metrics()["device"]["ci_from_meta"], 1);
}

#[test]
fn registry_down_gives_eio_in_time_and_cached_data_still_serves() {
    let reg = Registry::start(None);
    let name = "v6-zstd-64k-base";
    let img = push_fixture(&reg, name, "test/down");
    let work = tempfile::tempdir().unwrap();
    let d = image_dir(name);
    let cfg = v1_config(&reg.host(), "test/down", Some(work.path()), false);
    let mut cfg_small = cfg.clone();
    cfg_small.amplify_io = 0;
    let fs = RafsFs::open(&d.join("image.boot"), &cfg_small).unwrap();
    // Warm one file, then stop the registry.
    let root = fs.image().root_ino();
    let lookup = |fs: &RafsFs, n: &[u8]| {
        fuse_backend_rs::api::filesystem::FileSystem::lookup(fs, &ctx(), root, &cstr(n)).unwrap()
    };
    let warm = lookup(&fs, b"big.bin");
    read_all(&fs, warm.inode, warm.attr.st_size as u64, 128 * 1024).unwrap();
    drop(reg);
    let (want, _) = want_manifest(name);
    let want = parse_manifest(&want);
    let cold_name = top_level_file_besides_big_bin(name);
    let cold = lookup(&fs, cold_name.as_bytes());
    let t0 = Instant::now();
    let e = read_all(&fs, cold.inode, cold.attr.st_size as u64, 128 * 1024).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    // timeout 2 s, connect 1 s, one retry: well under 15 s.
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    // Cached data is still served while the registry is down.
    let again = read_all(&fs, warm.inode, warm.attr.st_size as u64, 128 * 1024).unwrap();
    assert_eq!(sha_prefix(&again), want["big.bin"].sha);
    let _ = img;
}

#[test]
fn wrong_bytes_from_the_registry_are_eio_and_not_cached() {
    let name = "v6-none-64k";
    let d = image_dir(name);
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    let b = img.blobs()[0].clone();
    let good = std::fs::read(d.join("blobs").join(&b.blob_id)).unwrap();
    let mut bad = good.clone();
    // Flip bytes in the chunk data area (not in the ci array).
    for off in (0..b.ci_offset as usize).step_by(10_000) {
        bad[off] ^= 0xA5;
    }
    let srv = FakeServer::start("127.0.0.1", move |req| {
        if req.path.starts_with("/v2/") && req.path.contains("/blobs/") {
            range_reply(req, &bad)
        } else {
            Reply::new(200, "{}")
        }
    });
    let work = tempfile::tempdir().unwrap();
    for validate in [false, true] {
        let fs = RafsFs::open(
            &d.join("image.boot"),
            &v1_config(&srv.addr, "test/bad", Some(work.path()), validate),
        )
        .unwrap();
        let (bad_files, _) = read_tree(&fs, name);
        assert!(!bad_files.is_empty(), "wrong bytes not detected");
        let m = fs.metrics();
        assert!(m["device"]["verify_errors"].as_u64().unwrap() > 0);
    }
    // Nothing that failed verification reached the cache: every cached chunk (own file or
    // pack record) holds the bytes of the digest it is stored under.
    let mut files = 0;
    let cache = rafs_virtiofsd::storage::cache::ChunkCache::open(work.path(), 0).unwrap();
    for (algo, digest, data) in cache.digest_chunks() {
        let got = match algo {
            rafs_virtiofsd::rafs::Digester::Blake3 => blake3::hash(&data).to_hex().to_string(),
            rafs_virtiofsd::rafs::Digester::Sha256 => sha_full(&data),
        };
        assert_eq!(got, hex::encode(digest), "a cached chunk holds wrong bytes");
        files += 1;
    }
    assert!(files > 0, "nothing good was cached either");
    drop(good);
}

/// A READ whose chunks are all cached is served on the queue thread, so it is answered even
/// while the only pool thread waits on a stalled registry for a cold chunk. (Before warm
/// reads were served inline, it queued behind the stalled fetch until that timed out.)
#[test]
fn warm_reads_are_answered_while_the_pool_waits_on_a_stalled_registry() {
    use rafs_virtiofsd::fs::vfs::{FsTree, FsType};
    use rafs_virtiofsd::vhost_user::{self, pool::ThreadPool, DeviceConfig};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use vu_driver::{open_body, out_header, read_body, Driver, FUSE_OPEN, FUSE_READ};

    let _ = env_logger::builder().is_test(true).try_init();
    let name = "v6-zstd-64k-base";
    let d = image_dir(name);
    let img = RafsImage::open(&d.join("image.boot")).unwrap();
    let blob = std::fs::read(d.join("blobs").join(&img.blobs()[0].blob_id)).unwrap();
    let stall = Arc::new(AtomicBool::new(false));
    let srv = {
        let stall = stall.clone();
        FakeServer::start("127.0.0.1", move |req| {
            if req.path.contains("/blobs/") {
                let t0 = Instant::now();
                while stall.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(20) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                range_reply(req, &blob)
            } else {
                Reply::new(200, "{}")
            }
        })
    };
    let work = tempfile::tempdir().unwrap();
    let mut cfg = v1_config(&srv.addr, "test/stall", Some(work.path()), false);
    cfg.amplify_io = 0;
    let fs = RafsFs::open(&d.join("image.boot"), &cfg).unwrap();
    let tree = Arc::new(FsTree::new());
    tree.mount_backend(
        Box::new(fs),
        FsType::Rafs,
        "stall",
        serde_json::Value::Null,
        "/r",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vhost.sock");
    let mut listener = vhost_user::listen(&sock).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (tree, stop) = (tree.clone(), stop.clone());
        let cfg = DeviceConfig {
            num_request_queues: 1,
            // One worker and no extras: a stalled fetch holds the whole pool.
            pool: Some(
                ThreadPool::with_limits("stall-pool", 1, 0, Duration::from_secs(1)).unwrap(),
            ),
        };
        std::thread::spawn(move || vhost_user::serve(&mut listener, tree, cfg, stop, &|_| {}))
    };

    let mut drv = Driver::connect(&sock, 2);
    let mem = drv.mem.clone();
    drv.init();
    let r = drv.lookup(1, 1, "r");
    let cold_name = top_level_file_besides_big_bin(name);
    let warm = drv.lookup(1, r, "big.bin");
    let cold = drv.lookup(1, r, &cold_name);
    let mut open = |ino: u64| {
        let (err, rp) = drv.call(1, FUSE_OPEN, ino, &open_body(libc::O_RDONLY as u32));
        assert_eq!(err, 0);
        mem.u64_at(rp + 16)
    };
    let (fw, fc) = (open(warm), open(cold));
    // Warm the first 2 KiB of big.bin.
    let (err, rp) = drv.call(1, FUSE_READ, warm, &read_body(fw, 0, 2048));
    assert_eq!(err, 0);
    let first = mem.read(rp + 16, 2048);

    stall.store(true, Ordering::Relaxed);
    let (cold_head, _, _) = drv.send(1, FUSE_READ, cold, &read_body(fc, 0, 2048));
    let early = drv.queues[1].wait_used(Duration::from_millis(300));
    assert!(
        early.is_none(),
        "the cold read did not wait for the registry: {early:?}"
    );
    let t0 = Instant::now();
    let (warm_head, warm_rp, _) = drv.send(1, FUSE_READ, warm, &read_body(fw, 0, 2048));
    let (id, _) = drv.queues[1]
        .wait_used(Duration::from_secs(10))
        .expect("no reply");
    assert_eq!(
        id,
        u32::from(warm_head),
        "the cold read (head {cold_head}) finished first: the warm one waited for the pool"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let (len, err, _) = out_header(&mem, warm_rp);
    assert_eq!((len, err), (16 + 2048, 0));
    assert_eq!(mem.read(warm_rp + 16, 2048), first);
    // Release the registry: the cold read completes too.
    stall.store(false, Ordering::Relaxed);
    let (id, _) = drv.queues[1]
        .wait_used(Duration::from_secs(20))
        .expect("cold read never answered");
    assert_eq!(id, u32::from(cold_head));
    drop(drv);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap().unwrap();
}
