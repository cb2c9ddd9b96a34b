//! Interop with upstream nydus-image: images we build must pass upstream `nydus-image check`
//! (which loads the bootstrap with validation, walks the chunk table and the blobs' ci
//! arrays), upstream `unpack` must read our data back, upstream `create` must accept our
//! bootstrap as `--chunk-dict` / `--parent-bootstrap`, and upstream `merge` must accept our
//! per-layer bootstraps.
//!
//! With NYDUSD=/path/to/nydusd as well, upstream nydusd mounts our images (FUSE, localfs
//! backend) and the mounted tree must equal the source tree (treemanifest, incl. xattrs and
//! nanosecond mtimes).
//!
//! Needs upstream binaries: NYDUS_IMAGE=/path/to/nydus-image and/or NYDUSD=/path/to/nydusd
//! (hack/test.sh sets them from PATH). A test whose binary is missing reports itself skipped
//! (tests/common/skip.rs) and does nothing. (Upstream `nydus-image unpack` panics with "not
//! implemented" on v6 images, even upstream's own, so it is not used.)

#[path = "common/builder.rs"]
mod builder_common;
use builder_common::*;
#[path = "common/skip.rs"]
mod skip;
use skip::skip;

use std::path::{Path, PathBuf};
use std::process::Command;

use rafs_virtiofsd::rafs::manifest::{manifest, LocalBlobs, ManifestOptions};
use rafs_virtiofsd::rafs::{toc, RafsImage};
use sha2::Digest;

/// The upstream binary named by `var`, if it exists.
fn upstream(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).exists() => Some(PathBuf::from(p)),
        _ => None,
    }
}

const NO_NYDUS_IMAGE: &str = "no upstream nydus-image (set NYDUS_IMAGE or put it on PATH)";
const NO_NYDUSD: &str = "no upstream nydusd (set NYDUSD or put it on PATH)";

/// Upstream nydus-image, or None after reporting the running test skipped.
fn nydus_image() -> Option<PathBuf> {
    let p = upstream("NYDUS_IMAGE");
    if p.is_none() {
        skip(NO_NYDUS_IMAGE);
    }
    p
}

fn build(src: &Path, dir: &Path, args: &[&str]) -> (PathBuf, PathBuf) {
    let boot = dir.join("image.boot");
    let blobs = dir.join("blobs");
    run(rafs_image()
        .arg("create")
        .args(args)
        .arg("--bootstrap")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(src));
    (boot, blobs)
}

/// Upstream nydusd, or None after reporting the running test skipped.
fn nydusd() -> Option<PathBuf> {
    let p = upstream("NYDUSD");
    if p.is_none() {
        skip(NO_NYDUSD);
    }
    p
}

/// Mount `boot` with upstream nydusd and return the treemanifest of the mounted tree.
fn nydusd_manifest(
    nydusd: &Path,
    boot: &Path,
    blobs: &Path,
    work: &Path,
    flags: &[&str],
) -> String {
    builder_common::served_manifest(
        &[nydusd.to_str().unwrap(), "--rlimit-nofile", "0"],
        serde_json::json!({"type": "localfs", "config": {"dir": blobs}}),
        boot,
        work,
        flags,
    )
}

fn upstream_check(ni: &Path, boot: &Path, blobs: &Path) {
    let out = run(Command::new(ni)
        .arg("check")
        .arg(boot)
        .arg("--blob-dir")
        .arg(blobs)
        .arg("-v"));
    assert!(out.contains("RAFS filesystem metadata is valid"), "{out}");
}

/// The option sets both interop tests build a small tree with.
const VARIANTS: [&[&str]; 5] = [
    &["--chunk-size", "0x10000"],
    &[
        "--compressor",
        "lz4_block",
        "--digester",
        "sha256",
        "--chunk-size",
        "0x10000",
    ],
    &["--compressor", "none"],
    &["--compressor", "gzip", "--chunk-size", "0x4000"],
    &["--fs-version", "5", "--chunk-size", "0x10000"],
];

#[test]
fn upstream_check_accepts_our_images() {
    let Some(ni) = nydus_image() else { return };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    small_tree(&src);
    for (i, args) in VARIANTS.iter().enumerate() {
        let (boot, blobs) = build(&src, &t.path().join(format!("o{i}")), args);
        upstream_check(&ni, &boot, &blobs);
    }
}

/// Upstream nydusd serves our images: data through the blob's ci array (v6).
#[test]
fn nydusd_mounts_our_images() {
    let Some(nd) = nydusd() else { return };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    small_tree(&src);
    for (i, args) in VARIANTS.iter().enumerate() {
        let d = t.path().join(format!("o{i}"));
        let (boot, blobs) = build(&src, &d, args);
        assert_same(
            &nydusd_manifest(&nd, &boot, &blobs, &d, &[]),
            &source_manifest(&src, &[]),
            &format!("nydusd mount of our {args:?} image"),
        );
    }
}

#[test]
fn upstream_create_uses_our_bootstrap_as_dict_and_parent() {
    let Some(ni) = nydus_image() else { return };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    small_tree(&src);
    let (boot, blobs) = build(&src, &t.path().join("ours"), &["--chunk-size", "0x10000"]);
    // Same tree with a chunk dict = ours: upstream writes no new chunk.
    let up = t.path().join("up");
    std::fs::create_dir_all(&up).unwrap();
    run(Command::new(&ni)
        .args(["create", "--chunk-size", "0x10000", "--chunk-dict"])
        .arg(format!("bootstrap={}", boot.display()))
        .arg("--bootstrap")
        .arg(up.join("image.boot"))
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&src));
    let img = RafsImage::open(&up.join("image.boot")).unwrap();
    let ours = RafsImage::open(&boot).unwrap();
    assert_eq!(
        img.blobs()[0].blob_id,
        ours.blobs()[0].blob_id,
        "dict blob reused"
    );
    let m = manifest(
        &img,
        ManifestOptions::default(),
        &mut LocalBlobs::new(&blobs),
    )
    .unwrap();
    let want = source_manifest(&src, &[]);
    let blind_root = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with(". d "))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_same(
        &blind_root(&m),
        &blind_root(&want),
        "upstream build with our chunk dict",
    );
    // Parent bootstrap.
    let layer = t.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    std::fs::write(layer.join("new.txt"), b"new file in the upper layer\n").unwrap();
    run(Command::new(&ni)
        .args(["create", "--chunk-size", "0x10000", "--parent-bootstrap"])
        .arg(&boot)
        .arg("--bootstrap")
        .arg(t.path().join("child.boot"))
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&layer));
    upstream_check(&ni, &t.path().join("child.boot"), &blobs);
}

/// Two tar layers (the second with whiteouts) built by us with inlined bootstraps, their
/// blobs stored by digest in `<t>/blobs`, merged by upstream (`merged.boot`) and by us
/// (`ours.boot`). Returns (upstream merge, our merge, blob dir).
fn merge_layers(ni: &Path, t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let l1 = t.join("l1");
    small_tree(&l1);
    let l2 = t.join("l2");
    std::fs::create_dir_all(l2.join("d00")).unwrap();
    std::fs::write(l2.join(".wh.big.bin"), b"").unwrap();
    std::fs::write(l2.join("d00/.wh..wh..opq"), b"").unwrap();
    std::fs::write(l2.join("d00/fresh"), b"fresh\n").unwrap();
    let blobs = t.join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    let (mut boots, mut digests, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    for (i, l) in [&l1, &l2].iter().enumerate() {
        let tar = t.join(format!("l{i}.tar"));
        run(Command::new("python3")
            .arg(tools().join("mktar.py"))
            .arg(l)
            .arg(&tar));
        let blob = t.join(format!("l{i}.blob"));
        run(rafs_image()
            .args([
                "create",
                "-t",
                "tar-rafs",
                "--blob-inline-meta",
                "--features",
                "blob-toc",
                "--whiteout-spec",
                "none",
                "--chunk-size",
                "0x10000",
                "--blob",
            ])
            .arg(&blob)
            .arg(&tar));
        let data = std::fs::read(&blob).unwrap();
        let d = hex::encode(sha2::Sha256::digest(&data));
        std::fs::write(blobs.join(&d), &data).unwrap();
        let bp = t.join(format!("l{i}.boot"));
        std::fs::write(&bp, toc::extract_bootstrap(&data).unwrap()).unwrap();
        // Upstream checks the per-layer blob itself (bootstrap from the ToC).
        boots.push(bp);
        sizes.push(data.len().to_string());
        digests.push(d);
    }
    let merged = t.join("merged.boot");
    run(Command::new(ni)
        .arg("merge")
        .arg("--bootstrap")
        .arg(&merged)
        .arg("--blob-digests")
        .arg(digests.join(","))
        .arg("--blob-sizes")
        .arg(sizes.join(","))
        .args(&boots));
    let ours = t.join("ours.boot");
    run(rafs_image()
        .arg("merge")
        .arg("--bootstrap")
        .arg(&ours)
        .arg("--blob-digests")
        .arg(digests.join(","))
        .arg("--blob-sizes")
        .arg(sizes.join(","))
        .args(&boots));
    (merged, ours, blobs)
}

#[test]
fn upstream_merge_of_our_layers() {
    let Some(ni) = nydus_image() else { return };
    let t = tempfile::tempdir().unwrap();
    let (merged, ours, blobs) = merge_layers(&ni, t.path());
    upstream_check(&ni, &merged, &blobs);
    // And our merge of the same layers passes upstream check too.
    upstream_check(&ni, &ours, &blobs);
    let a = manifest(
        &RafsImage::open(&merged).unwrap(),
        ManifestOptions::default(),
        &mut LocalBlobs::new(&blobs),
    )
    .unwrap();
    let b = manifest(
        &RafsImage::open(&ours).unwrap(),
        ManifestOptions::default(),
        &mut LocalBlobs::new(&blobs),
    )
    .unwrap();
    assert_same(&b, &a, "our merge vs upstream merge");
}

/// Upstream nydusd mounts our merge and upstream's merge of the same layers alike.
#[test]
fn nydusd_serves_our_merge_like_upstream_merge() {
    let (ni, nd) = (upstream("NYDUS_IMAGE"), upstream("NYDUSD"));
    let (Some(ni), Some(nd)) = (&ni, &nd) else {
        let missing = [(ni.is_none(), NO_NYDUS_IMAGE), (nd.is_none(), NO_NYDUSD)];
        let missing: Vec<&str> = missing.iter().filter(|m| m.0).map(|m| m.1).collect();
        skip(&missing.join("; "));
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (merged, ours, blobs) = merge_layers(ni, t.path());
    let mine = nydusd_manifest(nd, &ours, &blobs, &t.path().join("n1"), &["--mtime-sec"]);
    let theirs = nydusd_manifest(nd, &merged, &blobs, &t.path().join("n2"), &["--mtime-sec"]);
    assert_same(&mine, &theirs, "nydusd: our merge vs upstream merge");
}
