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
