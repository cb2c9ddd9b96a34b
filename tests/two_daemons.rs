//! Two rafs-virtiofsd processes (FUSE mode) share one cache dir and serve the same image from a
//! real registry, read in parallel: both trees are exact, and the registry serves about one
//! copy of the data, not two (measured from its access log).

#[path = "common/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use registry::Registry;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/images/v6-zstd-blake3-1m"
);
const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/manifests/big.manifest"
);
const TREEMANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/builder_tools/treemanifest.py"
);

struct Mounted {
    child: Child,
    mnt: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn is_mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

fn start(mnt: &Path, config: &Path) -> Mounted {
    std::fs::create_dir_all(mnt).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_rafs-virtiofsd"))
        .args(["fuse", "--log-level", "warn", "--mountpoint"])
        .arg(mnt)
        .arg("--config")
        .arg(config)
        .arg("--bootstrap")
        .arg(Path::new(FIXTURE).join("image.boot"))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let m = Mounted {
        child,
        mnt: mnt.to_path_buf(),
    };
    let t0 = Instant::now();
    while !is_mounted(mnt) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no FUSE mount at {mnt:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m
}

/// The tree manifest of `dir` (which reads every file), without the root line: nydus-image
/// stores mtime 0 for a directory source's root.
fn manifest(dir: &Path) -> String {
    let out = Command::new("python3")
        .arg(TREEMANIFEST)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    strip_root(&String::from_utf8(out.stdout).unwrap())
}

fn strip_root(m: &str) -> String {
    m.lines()
        .filter(|l| !l.starts_with(". "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn two_daemons_share_one_cache_and_fetch_once() {
    let reg = Registry::start(None);
    let blobs = Path::new(FIXTURE).join("blobs");
    let mut blob_bytes = 0u64;
    let mut ids = Vec::new();
    for e in std::fs::read_dir(&blobs).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        blob_bytes += data.len() as u64;
        ids.push(reg.push_blob("test/shared", &data));
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("cache");
    std::fs::create_dir_all(&work).unwrap();
    let config = tmp.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "device": {
                "backend": {"type": "registry", "config": {
                    "host": reg.host(), "repo": "test/shared", "scheme": "http",
                    "timeout": 10, "connect_timeout": 5, "retry_limit": 2
                }},
                "cache": {"type": "blobcache", "config": {"work_dir": work}}
            },
            "mode": "direct",
            "digest_validate": true,
            "enable_xattr": true,
            "fs_prefetch": {"enable": false}
        })
        .to_string(),
    )
    .unwrap();
    let a = start(&tmp.path().join("a"), &config);
    let b = start(&tmp.path().join("b"), &config);
    let (ma, mb) = std::thread::scope(|s| {
        let ta = s.spawn(|| manifest(&a.mnt));
        let tb = s.spawn(|| manifest(&b.mnt));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let want = strip_root(&std::fs::read_to_string(MANIFEST).unwrap());
    assert_eq!(ma, want, "daemon A's tree");
    assert_eq!(mb, want, "daemon B's tree");
    let served: u64 = ids.iter().map(|id| reg.served_bytes(id)).sum();
    // Everything was read twice (once per daemon); without the shared cache the registry
    // would serve about 2x the blob. Allow a little for the ci array and amplification.
    assert!(
        served <= blob_bytes + blob_bytes / 4,
        "registry served {served} bytes for a {blob_bytes}-byte blob read by two daemons"
    );
    assert!(served > 0, "nothing came from the registry");
    drop(a);
    drop(b);
}
