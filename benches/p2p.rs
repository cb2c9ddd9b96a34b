//! P2P benchmark (run by hack/bench-p2p.sh, which puts the registry behind a slow link):
//! host B's time to first byte and to read a whole image, straight from the registry and
//! through its dfdaemon peer after host A read the image, with the registry's bytes per host.
//!
//! Inputs (the script sets them): `DFDAEMON`; `RV_P2P_REGISTRY` (`host:port` of the slow
//! registry) and `RV_P2P_REGISTRY_LOG` (its access log); `RV_P2P_LINK` (how the link is
//! shaped, printed); `RV_P2P_SRC` (the tree to build the image from; default a 64 MiB
//! mktree.py tree).
//!
//! Every host is the RAFS code of our daemon in this process with its own cache dir; the
//! peers are real dfdaemons on 127.0.0.1, .2 and .3, scheduled by the stand-in of
//! tests/common/dragonfly.rs.

#[path = "../tests/common/dragonfly.rs"]
mod dragonfly;
#[path = "../tests/rafs_support/mod.rs"]
mod rafs_support;
#[path = "../tests/common/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dragonfly::{standin, wait_for, walk, Dfdaemon};
use fuse_backend_rs::api::filesystem::FileSystem;
use rafs_support::{ctx, lookup_path, read_all, VecWriter};
use rafs_virtiofsd::config::RafsConfig;
use rafs_virtiofsd::fs::rafs::RafsFs;
use rafs_virtiofsd::rafs::RafsImage;

struct Run {
    who: &'static str,
    via: &'static str,
    ttfb: Duration,
    all: Duration,
    registry_bytes: u64,
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set (run hack/bench-p2p.sh)"))
}

fn registry_bytes(log: &Path, ids: &[String]) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    ids.iter()
        .map(|id| registry::served_bytes_in(&text, id))
        .sum()
}

fn open(boot: &Path, reg: &str, proxy: Option<(&Dfdaemon, bool)>, cache: &Path) -> RafsFs {
    std::fs::create_dir_all(cache).unwrap();
    let proxy = match proxy {
        Some((p, prefetch)) => serde_json::json!({
            "url": p.proxy_url(), "ping_url": p.ping_url(), "fallback": true,
            "check_interval": 5, "use_http": false, "prefetch": prefetch
        }),
        None => serde_json::json!({"url": ""}),
    };
    let c = serde_json::json!({
        "device": {
            "backend": {"type": "registry", "config": {
                "host": reg, "repo": "bench/p2p", "scheme": "http",
                "timeout": 60, "connect_timeout": 5, "retry_limit": 2, "proxy": proxy
            }},
            "cache": {"type": "blobcache", "config": {"work_dir": cache}}
        },
        "mode": "direct", "digest_validate": true, "iostats_files": false, "enable_xattr": true
    });
    RafsFs::open(boot, &RafsConfig::from_str(&c.to_string()).unwrap()).unwrap()
}

fn lookup(fs: &RafsFs, rel: &Path) -> (u64, u64) {
    lookup_path(fs, rel).unwrap_or_else(|e| panic!("{}: {e}", rel.display()))
}

/// The first file of at least 4 KiB: the one whose first byte is timed.
fn first_file(files: &[PathBuf]) -> &Path {
    files
        .iter()
        .find(|f| std::fs::metadata(f).unwrap().len() >= 4096)
        .expect("a file of at least 4 KiB")
}

/// Time to the first 4 KiB of [`first_file`], and to read every file (checked against the
/// source).
fn read_image(fs: &RafsFs, src: &Path, files: &[PathBuf]) -> (Duration, Duration) {
    let t0 = Instant::now();
    let (ino, _) = lookup(fs, first_file(files).strip_prefix(src).unwrap());
    let mut w = VecWriter::default();
    let n = fs.read(&ctx(), ino, 0, &mut w, 4096, 0, None, 0).unwrap();
    assert!(n > 0 && w.data.len() == n);
    let ttfb = t0.elapsed();
    for f in files {
        let (ino, size) = lookup(fs, f.strip_prefix(src).unwrap());
        let got = read_all(fs, ino, size, 128 * 1024).unwrap();
        assert!(
            got == std::fs::read(f).unwrap(),
            "{}: wrong bytes",
            f.display()
        );
    }
    (ttfb, t0.elapsed())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("p2p: a benchmark; run it with hack/bench-p2p.sh");
        return;
    }
    let bin = std::ffi::OsString::from(env("DFDAEMON"));
    let reg = env("RV_P2P_REGISTRY");
    let log = PathBuf::from(env("RV_P2P_REGISTRY_LOG"));
    let link = std::env::var("RV_P2P_LINK").unwrap_or_default();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let src = match std::env::var_os("RV_P2P_SRC") {
        Some(s) => PathBuf::from(s),
        None => {
            let s = w.join("src");
            let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/builder_tools");
            let st = Command::new("python3")
                .arg(tools.join("mktree.py"))
                .arg(&s)
                .args(["21", "--big", "64", "--files", "300"])
                .status()
                .unwrap();
            assert!(st.success());
            s
        }
    };
    let (boot, blobs) = (w.join("image.boot"), w.join("blobs"));
    let st = Command::new(env!("CARGO_BIN_EXE_rafs-image"))
        .arg("create")
        .arg("--bootstrap")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "rafs-image create");
    let img = RafsImage::open(&boot).unwrap();
    let mut ids = Vec::new();
    let mut blob_bytes = 0;
    for b in img.blobs() {
        let data = std::fs::read(blobs.join(&b.blob_id)).unwrap();
        blob_bytes += data.len() as u64;
        registry::push_blob_http(&reg, "bench/p2p", &data, None);
        ids.push(b.blob_id.clone());
    }
    let files = walk(&src);
    let file_bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();

    let rt = dragonfly::runtime();
    let (sched, sched_addr) = standin::serve(&rt);
    let sa = sched_addr.to_string();
    let peer_a = Dfdaemon::start(&bin, "127.0.0.1", "bench-a", &sa, false);
    let peer_b = Dfdaemon::start(&bin, "127.0.0.2", "bench-b", &sa, false);
    let peer_c = Dfdaemon::start(&bin, "127.0.0.3", "bench-c", &sa, false);
    wait_for("peers announced", 30, || {
        let st = sched.state.lock().unwrap();
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .iter()
            .all(|ip| st.host_of(ip).is_some())
    });
    let host_a = sched.state.lock().unwrap().host_of("127.0.0.1").unwrap();

    let mut runs = Vec::new();
    let mut measure = |who, via, fs: RafsFs, settle: &mut dyn FnMut()| {
        let before = registry_bytes(&log, &ids);
        let (ttfb, all) = read_image(&fs, &src, &files);
        settle();
        runs.push(Run {
            who,
            via,
            ttfb,
            all,
            registry_bytes: registry_bytes(&log, &ids) - before,
        });
    };
    measure(
        "B alone",
        "registry",
        open(&boot, &reg, None, &w.join("b-direct")),
        &mut || {},
    );
    // Host A first: its peer then fetches the whole blob (the prefetch it is asked for).
    measure(
        "A, first",
        "its dfdaemon, prefetch",
        open(&boot, &reg, Some((&peer_a, true)), &w.join("a")),
        &mut || {
            wait_for("host A's peer holds the blob", 600, || {
                sched
                    .state
                    .lock()
                    .unwrap()
                    .finished_hosts()
                    .contains(&host_a)
            })
        },
    );
    measure(
        "B after A",
        "its dfdaemon, prefetch",
        open(&boot, &reg, Some((&peer_b, true)), &w.join("b-p2p")),
        &mut || {},
    );
    measure(
        "C after A",
        "its dfdaemon, no prefetch header",
        open(&boot, &reg, Some((&peer_c, false)), &w.join("c-plain")),
        &mut || {},
    );

    println!(
        "\nP2P benchmark: registry behind {link}; image of {} files, {:.1} MiB, in {:.1} MiB of blobs; \
         first byte: the first 4 KiB of {}\n",
        files.len(),
        file_bytes as f64 / 1048576.0,
        blob_bytes as f64 / 1048576.0,
        first_file(&files).strip_prefix(&src).unwrap().display()
    );
    println!("| host | reads through | first byte | all files | bytes from the registry |");
    println!("|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {:.3} s | {:.2} s | {:.1} MiB ({:.0}% of the blobs) |",
            r.who,
            r.via,
            r.ttfb.as_secs_f64(),
            r.all.as_secs_f64(),
            r.registry_bytes as f64 / 1048576.0,
            r.registry_bytes as f64 * 100.0 / blob_bytes as f64
        );
    }
    let (alone, p2p) = (&runs[0], &runs[2]);
    let less = |a: f64, b: f64| (1.0 - b / a) * 100.0;
    println!(
        "\nhost B with P2P against alone: first byte {:.2}x ({:+.0}%), all files {:.2}x ({:+.0}%), \
         registry bytes -{:.0}% (the seeds: -80% network latency)",
        alone.ttfb.as_secs_f64() / p2p.ttfb.as_secs_f64(),
        -less(alone.ttfb.as_secs_f64(), p2p.ttfb.as_secs_f64()),
        alone.all.as_secs_f64() / p2p.all.as_secs_f64(),
        -less(alone.all.as_secs_f64(), p2p.all.as_secs_f64()),
        less(alone.registry_bytes as f64, p2p.registry_bytes as f64),
    );
    drop((peer_a, peer_b, peer_c));
    drop(rt);
}
