//! RAFS images mounted in the daemon's tree, at start-up (CLI) and at run time (API),
//! checked through FUSE mode against the fixtures' tree manifests.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// In-repo copies of ../shared/fixtures.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A committed fixture (a missing one is a broken checkout: the test fails).
fn fixture(name: &str) -> PathBuf {
    let p = Path::new(FIXTURES).join("images").join(name);
    assert!(
        p.join("image.boot").exists(),
        "fixture {} not found",
        p.display()
    );
    p
}

/// The manifest of `dir`, without the root line (upstream stores mtime 0 for the root).
fn manifest_of(dir: &Path) -> String {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/builder_tools/treemanifest.py"
        ))
        .arg(dir)
        .output()
        .expect("run treemanifest.py");
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

fn expected(tree: &str) -> String {
    let p = Path::new(FIXTURES)
        .join("manifests")
        .join(format!("{tree}.manifest"));
    strip_root(&std::fs::read_to_string(p).unwrap())
}

/// A v1 config reading the fixture's blobs, with the chunk cache in `cache` (never in the
/// shared fixture directory).
fn config_for(img: &Path, cache: &Path) -> String {
    serde_json::json!({
        "device": {
            "backend": {"type": "localfs", "config": {"dir": img.join("blobs")}},
            "cache": {"type": "blobcache", "config": {"work_dir": cache}}
        },
        "mode": "direct",
        "digest_validate": true,
        "enable_xattr": true
    })
    .to_string()
}

/// `--bootstrap` and `--config` values for `img`, with the config (and cache) in `dir`.
fn standalone_args(img: &Path, dir: &Path) -> (String, String) {
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, config_for(img, dir)).unwrap();
    (
        img.join("image.boot").display().to_string(),
        cfg.display().to_string(),
    )
}

struct Fuse {
    d: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl Fuse {
    fn start(extra: &[&str]) -> Fuse {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let mnt = dir.path().join("mnt").display().to_string();
        let api = dir.path().join("api.sock").display().to_string();
        let mut args = vec![
            "fuse",
            "--mountpoint",
            &mnt,
            "--apisock",
            &api,
            "-l",
            "warn",
        ];
        args.extend_from_slice(extra);
        let d = Daemon::spawn(&args);
        assert!(wait_running(
            &dir.path().join("api.sock"),
            Duration::from_secs(10)
        ));
        Fuse { d: Some(d), dir }
    }
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    fn api(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        if let Some(mut d) = self.d.take() {
            if d.signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
                .is_none()
            {
                let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
            }
        }
    }
}

#[test]
fn rafs_mounted_through_the_api_matches_its_manifest() {
    let img = fixture("v6-zstd-64k-base");
    let cache = tempfile::tempdir().unwrap();
    let f = Fuse::start(&[]);
    let body = serde_json::json!({
        "fs_type": "rafs",
        "source": img.join("image.boot"),
        "config": config_for(&img, cache.path()),
    })
    .to_string();
    let r = http(
        &f.api(),
        "POST",
        "/api/v1/mount?mountpoint=%2Frafs%2Fc1%2Flowerdir",
        Some(&body),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));

    let lower = f.mnt().join("rafs/c1/lowerdir");
    assert_eq!(manifest_of(&lower), expected("small"));
    // SEEK_DATA/SEEK_HOLE on an image file: all data, the hole at the end (the Vfs does not
    // forward LSEEK; the dispatcher answers it).
    {
        use std::os::fd::AsRawFd;
        let big = std::fs::read_dir(&lower)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let size = std::fs::metadata(&big).unwrap().len() as i64;
        let fh = std::fs::File::open(&big).unwrap();
        // SAFETY: lseek on an open fd.
        let (d, h) = unsafe {
            (
                libc::lseek(fh.as_raw_fd(), 0, libc::SEEK_DATA),
                libc::lseek(fh.as_raw_fd(), 0, libc::SEEK_HOLE),
            )
        };
        assert_eq!((d, h), (0, size), "{}", big.display());
    }

    let info = http(&f.api(), "GET", "/api/v1/daemon", None).json();
    let b = &info["backend_collection"]["/rafs/c1/lowerdir"];
    assert_eq!(b["backend_type"], "Rafs");
    assert_eq!(b["config"]["device"]["backend"]["type"], "localfs");
    let m = http(&f.api(), "GET", "/api/v1/metrics", None).json();
    let m = &m["/rafs/c1/lowerdir"];
    assert!(m["read_bytes"].as_u64().unwrap() > 0, "{m}");
    assert!(m["backend"].is_object(), "RAFS metrics missing: {m}");

    // A second mount at the same place is refused; DELETE leaves an empty dir.
    let r = http(
        &f.api(),
        "POST",
        "/api/v1/mount?mountpoint=/rafs/c1/lowerdir",
        Some(&body),
    );
    assert_eq!(r.status, 409);
    let r = http(
        &f.api(),
        "DELETE",
        "/api/v1/mount?mountpoint=/rafs/c1/lowerdir",
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(std::fs::read_dir(&lower).unwrap().count(), 0);
}

#[test]
fn bad_rafs_config_is_a_json_error() {
    let img = fixture("v6-zstd-64k-base");
    let f = Fuse::start(&[]);
    for config in ["{not json", r#"{"device":{"backend":{"type":"nope"}}}"#] {
        let body = serde_json::json!({"fs_type": "rafs", "source": img.join("image.boot"), "config": config}).to_string();
        let r = http(
            &f.api(),
            "POST",
            "/api/v1/mount?mountpoint=/rafs/x/lowerdir",
            Some(&body),
        );
        assert!(r.status >= 400, "config {config:?} accepted");
        assert!(
            r.json()["message"].as_str().unwrap().contains("config"),
            "{:?}",
            r.json()
        );
    }
}

#[test]
fn standalone_bootstrap_at_virtual_mountpoint() {
    let img = fixture("v5-zstd-64k");
    let cfgdir = tempfile::tempdir().unwrap();
    let (boot, cfg) = standalone_args(&img, cfgdir.path());
    let tree = std::fs::read_to_string(img.join("TREE")).unwrap();
    let f = Fuse::start(&[
        "--bootstrap",
        &boot,
        "--config",
        &cfg,
        "--virtual-mountpoint",
        "/img",
    ]);
    assert_eq!(manifest_of(&f.mnt().join("img")), expected(tree.trim()));
}

/// nydusd's `/api/v1/metrics/backend` and `/api/v1/metrics/blobcache`, and Prometheus text on
/// `/metrics`, after a real read through FUSE.
#[test]
fn backend_blobcache_and_prometheus_metrics() {
    let img = fixture("v6-zstd-64k-base");
    let cache = tempfile::tempdir().unwrap();
    let f = Fuse::start(&[]);
    let body = serde_json::json!({
        "fs_type": "rafs",
        "source": img.join("image.boot"),
        "config": config_for(&img, cache.path()),
    })
    .to_string();
    let r = http(
        &f.api(),
        "POST",
        "/api/v1/mount?mountpoint=/rafs/m1/lowerdir",
        Some(&body),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let data = std::fs::read(f.mnt().join("rafs/m1/lowerdir/big.bin")).unwrap();
    assert_eq!(data.len(), 1_048_576);

    // One RAFS instance: the object itself; `id` selects by mountpoint.
    let b = http(&f.api(), "GET", "/api/v1/metrics/backend", None);
    assert_eq!(b.status, 200);
    let b = b.json();
    assert_eq!(b["backend_type"], "localfs", "{b}");
    assert!(b["read_count"].as_u64().unwrap() > 0, "{b}");
    let by_id = http(
        &f.api(),
        "GET",
        "/api/v1/metrics/backend?id=%2Frafs%2Fm1%2Flowerdir",
        None,
    )
    .json();
    assert_eq!(by_id["backend_type"], "localfs");
    let missing = http(&f.api(), "GET", "/api/v1/metrics/backend?id=/nope", None);
    assert_eq!(missing.status, 404);
    assert!(missing.json()["message"].is_string());

    let c = http(&f.api(), "GET", "/api/v1/metrics/blobcache", None);
    assert_eq!(c.status, 200);
    let c = c.json();
    assert!(c["total"].as_u64().unwrap() > 0, "{c}");
    assert!(c["underlying_files"].as_array().unwrap().len() == 1, "{c}");

    let p = http(&f.api(), "GET", "/metrics", None);
    assert_eq!(p.status, 200);
    let text = String::from_utf8(p.body).unwrap();
    let sample = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("mountpoint=\"/rafs/m1/lowerdir\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} sample in:\n{text}"))
    };
    assert!(
        sample("rafs_virtiofsd_fs_read_bytes{") >= 1_048_576,
        "{text}"
    );
    // The per-fs `backend` object holds RafsFs::metrics(), whose own `backend` is storage's.
    assert!(
        sample("rafs_virtiofsd_fs_backend_backend_read_count{") > 0,
        "{text}"
    );
    assert!(
        sample("rafs_virtiofsd_fs_backend_chunk_reads{") > 0,
        "{text}"
    );
}

/// A FUSE daemon without `--shared-dir` serves RAFS only, as nydusd's RAFS daemons do: the
/// mount is read-only, files open with zero messages and FLUSH is off, and an image's data
/// is never re-checked (no AUTO_INVAL_DATA). Reading a file whose dentry, ACL and pages are
/// cached then sends at most the GETATTR the kernel revalidates with (nydusd gets the same);
/// before, OPEN, FLUSH and RELEASE went out for every file too. A passthrough mount is
/// refused with a clear error.
#[test]
fn a_rafs_only_fuse_session_reads_a_file_with_one_request() {
    let img = fixture("v6-zstd-64k-base");
    let cfgdir = tempfile::tempdir().unwrap();
    let (boot, cfg) = standalone_args(&img, cfgdir.path());
    let f = Fuse::start(&["--bootstrap", &boot, "--config", &cfg]);
    let mut files = Vec::new();
    let mut stack = vec![f.mnt()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files.push(e.path());
            }
        }
    }
    assert!(files.len() >= 10, "{} files", files.len());
    let counts = || {
        let m = http(&f.api(), "GET", "/api/v1/metrics", None).json();
        let m = &m["/"];
        (
            m["requests"].as_u64().unwrap(),
            m["read_ops"].as_u64().unwrap(),
        )
    };
    let read_all = || -> usize { files.iter().map(|p| std::fs::read(p).unwrap().len()).sum() };
    // Cold: READs, plus the kernel's first look at each ACL and the one FLUSH that turns
    // FLUSH off; never an OPEN, FLUSH and RELEASE per file.
    let (r0, d0) = counts();
    let bytes = read_all();
    let (r1, d1) = counts();
    assert!(bytes > 0 && d1 > d0, "no READ counted");
    let other = (r1 - r0) - (d1 - d0);
    assert!(
        other < files.len() as u64,
        "{other} requests besides {} READs for {} files",
        d1 - d0,
        files.len()
    );
    // Warm: no READ, and about one request a file (the GETATTR; a few ACL looks besides).
    assert_eq!(read_all(), bytes);
    let (r2, d2) = counts();
    assert_eq!(d2, d1, "a warm pass read from the daemon");
    assert!(
        r2 - r1 < 2 * files.len() as u64,
        "{} requests for a warm pass over {} files",
        r2 - r1,
        files.len()
    );
    // Read-only: the kernel refuses a writable open itself.
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // A passthrough cannot join this session.
    let src = tempfile::tempdir().unwrap();
    let body = serde_json::json!({"fs_type": "passthrough_fs", "source": src.path(), "config": ""})
        .to_string();
    let r = http(
        &f.api(),
        "POST",
        "/api/v1/mount?mountpoint=/pt",
        Some(&body),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("--shared-dir"),
        "{:?}",
        r.json()
    );
}
