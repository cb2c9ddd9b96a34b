//! tar input written by Go's archive/tar (PAX format, as containerd, buildkit, ko and crane
//! write OCI layers): builds and reads back to exactly the source tree.
//!
//! The tar and its source manifest are committed under tests/fixtures/tars/: the tree is
//! `mktree.py OUT 5 --big 1 --files 60 --chunk 65536`, written with
//! `go run hack/gotar/main.go OUT go-archive-tar.tar` (Go 1.19), and the manifest is
//! `treemanifest.py OUT`. Go is not needed to run this test.

use std::path::Path;
use std::process::Command;

use rafs_virtiofsd::rafs::manifest::{manifest, LocalBlobs, ManifestOptions};
use rafs_virtiofsd::rafs::RafsImage;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tars");

#[test]
fn go_archive_tar_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let boot = t.path().join("image.boot");
    let blobs = t.path().join("blobs");
    for fs_version in ["6", "5"] {
        let out = Command::new(env!("CARGO_BIN_EXE_rafs-image"))
            .args(["create", "-t", "tar-rafs", "--fs-version", fs_version])
            .arg("--bootstrap")
            .arg(&boot)
            .arg("--blob-dir")
            .arg(&blobs)
            .arg(Path::new(DIR).join("go-archive-tar.tar"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "v{fs_version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let img = RafsImage::open(&boot).unwrap();
        let got = manifest(
            &img,
            ManifestOptions::default(),
            &mut LocalBlobs::new(&blobs),
        )
        .unwrap();
        let want = std::fs::read_to_string(Path::new(DIR).join("go-archive-tar.manifest")).unwrap();
        if got != want {
            for (a, b) in got.lines().zip(want.lines()) {
                if a != b {
                    eprintln!("got:  {a}\nwant: {b}");
                }
            }
            panic!("v{fs_version}: Go tar does not read back as its source tree");
        }
    }
}
