//! Helpers shared by the builder test files (each includes this with `#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rafs_virtiofsd::rafs::manifest::{manifest, LocalBlobs, ManifestOptions};
use rafs_virtiofsd::rafs::RafsImage;

pub fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/builder_tools")
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn rafs_image() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rafs-image"))
}

pub fn small_tree(out: &Path) {
    run(Command::new("python3")
        .arg(tools().join("mktree.py"))
        .arg(out)
        .arg("2")
        .args(["--big", "1", "--files", "150", "--chunk", "65536"]));
}

pub fn source_manifest(dir: &Path, flags: &[&str]) -> String {
    run(Command::new("python3")
        .arg(tools().join("treemanifest.py"))
        .arg(dir)
        .args(flags))
}

pub fn image_manifest(boot: &Path, blobs: &Path, opts: ManifestOptions) -> String {
    let img = RafsImage::open(boot).expect("open bootstrap");
    manifest(&img, opts, &mut LocalBlobs::new(blobs)).expect("manifest")
}

pub fn assert_same(got: &str, want: &str, what: &str) {
    if got != want {
        for (a, b) in got.lines().zip(want.lines()) {
            if a != b {
                eprintln!("got:  {a}\nwant: {b}");
            }
        }
        panic!(
            "{what}: manifests differ ({} vs {} lines)",
            got.lines().count(),
            want.lines().count()
        );
    }
}

/// Spawn a nydusd-style FUSE daemon (`cmd`, already given everything but its output), wait
/// for its mount at `mnt`, and return `treemanifest.py MNT FLAGS` of the mounted tree. The
/// daemon is unmounted and killed afterwards; its output goes to `log`, shown if it never
/// mounted.
pub fn mounted_manifest(cmd: &mut Command, mnt: &Path, log: &Path, flags: &[&str]) -> String {
    let f = std::fs::File::create(log).unwrap();
    let mut child = cmd
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let mut mounted = false;
    for _ in 0..100 {
        if Command::new("mountpoint")
            .arg("-q")
            .arg(mnt)
            .status()
            .unwrap()
            .success()
        {
            mounted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let m = if mounted {
        Command::new("python3")
            .arg(tools().join("treemanifest.py"))
            .arg(mnt)
            .args(flags)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let _ = Command::new("umount").arg(mnt).status();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        mounted,
        "{:?} did not mount {}: {}",
        cmd.get_program(),
        mnt.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    m
}

/// Mount `boot` with a nydusd-style FUSE daemon (`argv`: the program and its leading
/// arguments, e.g. `[nydusd, "--rlimit-nofile", "0"]` or `[rafs-virtiofsd, "fuse"]`) over
/// `backend` (nydusd's `device.backend` JSON), with a blobcache in `work/cache`, and return
/// `treemanifest.py MNT FLAGS` of the mounted tree ([`mounted_manifest`]).
pub fn served_manifest(
    argv: &[&str],
    backend: serde_json::Value,
    boot: &Path,
    work: &Path,
    flags: &[&str],
) -> String {
    let mnt = work.join("mnt");
    let cache = work.join("cache");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&cache).unwrap();
    let cfg = work.join("daemon.json");
    let c = serde_json::json!({
        "device": {
            "backend": backend,
            "cache": {"type": "blobcache", "config": {"work_dir": cache}}
        },
        "mode": "direct", "digest_validate": false, "iostats_files": false, "enable_xattr": true
    });
    std::fs::write(&cfg, c.to_string()).unwrap();
    mounted_manifest(
        Command::new(argv[0])
            .args(&argv[1..])
            .arg("--config")
            .arg(&cfg)
            .arg("--mountpoint")
            .arg(&mnt)
            .arg("--bootstrap")
            .arg(boot)
            .args(["--log-level", "warn"]),
        &mnt,
        &work.join("daemon.log"),
        flags,
    )
}
