//! Builder features beyond a plain build: chunk dictionary (against upstream's own
//! bootstrap), prefetch table and chunk order, parent bootstrap with whiteouts, per-layer
//! blobs with inlined bootstrap + ToC, and `merge` with OCI whiteouts.

#[path = "common/builder.rs"]
mod builder_common;
use builder_common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rafs_virtiofsd::rafs::manifest::ManifestOptions;
use rafs_virtiofsd::rafs::toc::{self, Toc};
use rafs_virtiofsd::rafs::{blob_features, ChunkRef, RafsImage};
use sha2::Digest;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name)
}

fn random_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `small2` of the fixtures README, rebuilt against upstream's own bootstrap as the chunk
/// dictionary: only the 6 new chunks (5 of new_random.bin, 1 of size_1) go to the new blob,
/// as with upstream (fixture v6-chunkdict-64k also has 6).
#[test]
fn chunk_dict_against_upstream_bootstrap() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("small2");
    small_tree(&src);
    std::fs::write(src.join("new_random.bin"), random_bytes(300_000, 7)).unwrap();
    let size1 = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain(walk_files(&src))
        .find(|p| p.file_name().is_some_and(|n| n == "size_1"))
        .expect("size_1");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&size1)
        .unwrap()
        .write_all(b"changed\n")
        .unwrap();
    let dup1 = walk_files(&src)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "dup1"))
        .unwrap();
    std::fs::remove_file(dup1).unwrap();

    let base = fixture("v6-zstd-64k-base");
    let blobs = t.path().join("blobs");
    let boot = t.path().join("image.boot");
    let json = t.path().join("out.json");
    run(rafs_image()
        .arg("create")
        .args(["--chunk-size", "0x10000", "--chunk-dict"])
        .arg(format!("bootstrap={}", base.join("image.boot").display()))
        .arg("--bootstrap")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg("--output-json")
        .arg(&json)
        .arg(&src));
    let img = RafsImage::open(&boot).unwrap();
    let b = img.blobs();
    assert_eq!(b.len(), 2, "dict blob + new blob");
    let dict_id = std::fs::read_dir(base.join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    assert_eq!(b[0].blob_id, dict_id.to_string_lossy());
    assert_eq!(b[1].chunk_count, 6);
    // The new blob holds exactly the new chunks: random data is stored raw.
    let newblob = std::fs::metadata(blobs.join(&b[1].blob_id)).unwrap().len();
    assert_eq!(
        b[1].ci_offset,
        300_000 + 9,
        "chunk data = new_random.bin + size_1"
    );
    assert_eq!(newblob, 300_000 + 9 + b[1].ci_compressed_size + 4096);
    assert_eq!(newblob, b[1].compressed_size);
    // Reads back (dict blob next to the new one).
    std::fs::copy(base.join("blobs").join(&dict_id), blobs.join(&dict_id)).unwrap();
    assert_same(
        &image_manifest(&boot, &blobs, ManifestOptions::default()),
        &source_manifest(&src, &[]),
        "chunk dict",
    );
    run(rafs_image()
        .arg("check")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs));
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A tree 95% shared with the dictionary image: the new blob holds only the new chunks.
#[test]
fn chunk_dict_95_percent_shared() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    std::fs::create_dir(&a).unwrap();
    for i in 0..19 {
        std::fs::write(a.join(format!("f{i}")), random_bytes(65536, i + 1)).unwrap();
    }
    let dict_blobs = t.path().join("dblobs");
    run(rafs_image()
        .arg("create")
        .args(["--chunk-size", "0x10000", "--bootstrap"])
        .arg(t.path().join("dict.boot"))
        .arg("--blob-dir")
        .arg(&dict_blobs)
        .arg(&a));
    // b = a + one new 64 KiB file (5% of the data).
    let b = t.path().join("b");
    std::fs::create_dir(&b).unwrap();
    for i in 0..19 {
        std::fs::write(b.join(format!("g{i}")), random_bytes(65536, i + 1)).unwrap();
    }
    std::fs::write(b.join("new"), random_bytes(65536, 999)).unwrap();
    let blobs = t.path().join("blobs");
    let boot = t.path().join("b.boot");
    run(rafs_image()
        .arg("create")
        .args(["--chunk-size", "0x10000", "--chunk-dict"])
        .arg(format!(
            "bootstrap={}",
            t.path().join("dict.boot").display()
        ))
        .arg("--bootstrap")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&b));
    let img = RafsImage::open(&boot).unwrap();
    let nb = &img.blobs()[1];
    assert_eq!(nb.chunk_count, 1);
    let size = std::fs::metadata(blobs.join(&nb.blob_id)).unwrap().len();
    // One raw 64 KiB chunk + one 16-byte v1 ci entry (stored raw, zstd cannot shrink it)
    // + the 4 KiB ci header.
    assert_eq!(size, 65536 + 16 + 4096);
    for e in std::fs::read_dir(&dict_blobs).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), blobs.join(e.file_name())).unwrap();
    }
    assert_same(
        &image_manifest(&boot, &blobs, ManifestOptions::default()),
        &source_manifest(&b, &[]),
        "95% dict",
    );
}

#[test]
fn prefetch_table_and_chunk_order() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    small_tree(&src);
    let boot = t.path().join("image.boot");
    let blobs = t.path().join("blobs");
    let mut child = rafs_image()
        .arg("create")
        .args([
            "--chunk-size",
            "0x10000",
            "--prefetch-policy",
            "fs",
            "--bootstrap",
        ])
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&src)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"/big.bin\n/d00\n/does-not-exist\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let img = RafsImage::open(&boot).unwrap();
    let big = img.lookup_path(b"/big.bin").unwrap().unwrap();
    let d00 = img.lookup_path(b"/d00").unwrap().unwrap();
    assert_eq!(img.prefetch_inodes().unwrap(), vec![big.ino, d00.ino]);
    // big.bin's data comes first in the blob.
    let chunks = img.file_chunks(big.ino, 0, big.size).unwrap();
    match chunks[0].chunk {
        ChunkRef::Indexed { ci_index, .. } => assert_eq!(ci_index, 0),
        other => panic!("{other:?}"),
    }
    let j = run(rafs_image().arg("inspect").arg(&boot).arg("--output-json"));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["prefetch"][0]["path"], "big.bin");
    assert_eq!(v["prefetch"][1]["path"], "d00");
}

fn cp_tree(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

#[test]
fn parent_bootstrap_with_oci_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    small_tree(&src);
    let blobs = t.path().join("blobs");
    let pboot = t.path().join("parent.boot");
    run(rafs_image()
        .args(["create", "--chunk-size", "0x10000", "--bootstrap"])
        .arg(&pboot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&src));
    // Upper layer: delete big.bin, make d00 opaque with one new file, add a file.
    let up = t.path().join("up");
    std::fs::create_dir_all(up.join("d00")).unwrap();
    std::fs::write(up.join(".wh.big.bin"), b"").unwrap();
    std::fs::write(up.join("d00/.wh..wh..opq"), b"").unwrap();
    std::fs::write(up.join("d00/fresh"), b"fresh data").unwrap();
    std::fs::write(up.join("added.txt"), random_bytes(100_000, 5)).unwrap();
    // Directory attributes come from the upper layer, as with overlayfs.
    let boot = t.path().join("image.boot");
    run(rafs_image()
        .args(["create", "--chunk-size", "0x10000", "--parent-bootstrap"])
        .arg(&pboot)
        .arg("--bootstrap")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&up));
    // Expected: the source with the same changes.
    let exp = t.path().join("exp");
    cp_tree(&src, &exp);
    std::fs::remove_file(exp.join("big.bin")).unwrap();
    std::fs::remove_dir_all(exp.join("d00")).unwrap();
    cp_tree(&up.join("d00"), &exp.join("d00"));
    std::fs::remove_file(exp.join("d00/.wh..wh..opq")).unwrap();
    cp_tree(&up.join("added.txt"), &exp.join("added.txt"));
    // Root and d00 attributes come from the upper layer (restore after edits).
    for (from, to) in [
        (up.as_path(), exp.as_path()),
        (&up.join("d00"), &exp.join("d00")),
    ] {
        run(Command::new("touch").arg("-h").arg("-r").arg(from).arg(to));
        let m = std::fs::metadata(from).unwrap();
        std::fs::set_permissions(to, m.permissions()).unwrap();
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(to, Some(m.uid()), Some(m.gid())).unwrap();
    }
    let img = RafsImage::open(&boot).unwrap();
    assert_eq!(img.blobs().len(), 2);
    let got = image_manifest(
        &boot,
        &blobs,
        ManifestOptions {
            no_xattr: true,
            ..Default::default()
        },
    );
    assert_same(
        &got,
        &source_manifest(&exp, &["--no-xattr"]),
        "parent + whiteouts",
    );
}

fn mktar(dir: &Path, out: &Path) {
    run(Command::new("python3")
        .arg(tools().join("mktar.py"))
        .arg(dir)
        .arg(out));
}

/// A merged bootstrap reads back as the tree `exp` (whole-second mtimes, owners ignored:
/// tar layers) and passes `check` against the blobs in `blobs`.
fn assert_merged_tree(merged: &Path, blobs: &Path, exp: &Path, what: &str) {
    let opts = ManifestOptions {
        mtime_sec: true,
        no_owner: true,
        ..Default::default()
    };
    assert_same(
        &image_manifest(merged, blobs, opts),
        &source_manifest(exp, &["--mtime-sec", "--no-owner"]),
        what,
    );
    run(rafs_image()
        .arg("check")
        .arg(merged)
        .arg("--blob-dir")
        .arg(blobs));
}

fn sha256_file(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn inline_meta_layers_and_merge() {
    let t = tempfile::tempdir().unwrap();
    let l1 = t.path().join("l1");
    small_tree(&l1);
    let l2 = t.path().join("l2");
    std::fs::create_dir_all(l2.join("d00")).unwrap();
    std::fs::write(l2.join(".wh.big.bin"), b"").unwrap();
    std::fs::write(l2.join(".wh.hard_b"), b"").unwrap();
    std::fs::write(l2.join("d00/.wh..wh..opq"), b"").unwrap();
    std::fs::write(l2.join("d00/fresh"), b"fresh data\n").unwrap();
    std::fs::write(l2.join("added.txt"), b"added\n").unwrap();
    let layers = t.path().join("layers");
    std::fs::create_dir(&layers).unwrap();
    let mut digests = Vec::new();
    let mut sizes = Vec::new();
    let mut boots = Vec::new();
    for (i, l) in [&l1, &l2].iter().enumerate() {
        let tar = t.path().join(format!("l{i}.tar"));
        mktar(l, &tar);
        let blob = t.path().join(format!("l{i}.blob"));
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
        // The ToC parses, its bootstrap has the placeholder id and the layer features.
        let toc = Toc::from_blob(&data, None).unwrap();
        let names: Vec<String> = toc
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(e.name_bytes()).into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "image.blob",
                "blob.meta",
                "blob.meta.header",
                "blob.digest",
                "image.boot"
            ]
        );
        let boot = toc::extract_bootstrap(&data).unwrap();
        let img = RafsImage::from_bytes(boot.clone()).unwrap();
        let b = &img.blobs()[0];
        assert_eq!(b.blob_id, "x".repeat(64));
        let want = blob_features::CAP_TAR_TOC
            | blob_features::HAS_TAR_HEADER
            | blob_features::HAS_TOC
            | blob_features::INLINED_FS_META
            | blob_features::INLINED_CHUNK_DIGEST
            | blob_features::ALIGNED;
        assert_eq!(b.features, want);
        // `check` accepts the layer blob directly (bootstrap from the ToC, data from itself).
        run(rafs_image()
            .arg("check")
            .arg(&blob)
            .arg("--blob")
            .arg(&blob));
        let bp = t.path().join(format!("l{i}.boot"));
        std::fs::write(&bp, &boot).unwrap();
        boots.push(bp);
        let d = sha256_file(&blob);
        std::fs::copy(&blob, layers.join(&d)).unwrap();
        sizes.push(data.len().to_string());
        digests.push(d);
    }
    let merged = t.path().join("merged.boot");
    run(rafs_image()
        .arg("merge")
        .arg("--bootstrap")
        .arg(&merged)
        .arg("--blob-digests")
        .arg(
            digests
                .iter()
                .map(|d| format!("sha256:{d}"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("--blob-sizes")
        .arg(sizes.join(","))
        .args(&boots));
    let img = RafsImage::open(&merged).unwrap();
    let ids: Vec<&str> = img.blobs().iter().map(|b| b.blob_id.as_str()).collect();
    assert_eq!(ids, digests.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    for b in img.blobs() {
        assert_eq!(b.features & blob_features::INLINED_FS_META, 0);
    }
    // Expected flattened tree.
    let exp = t.path().join("exp");
    cp_tree(&l1, &exp);
    std::fs::remove_file(exp.join("big.bin")).unwrap();
    std::fs::remove_file(exp.join("hard_b")).unwrap();
    std::fs::remove_dir_all(exp.join("d00")).unwrap();
    cp_tree(&l2.join("d00"), &exp.join("d00"));
    std::fs::remove_file(exp.join("d00/.wh..wh..opq")).unwrap();
    cp_tree(&l2.join("added.txt"), &exp.join("added.txt"));
    run(Command::new("touch").arg("-h").arg("-r").arg(&l2).arg(&exp));
    run(Command::new("touch")
        .arg("-h")
        .arg("-r")
        .arg(l2.join("d00"))
        .arg(exp.join("d00")));
    std::fs::set_permissions(&exp, std::fs::metadata(&l2).unwrap().permissions()).unwrap();
    assert_merged_tree(&merged, &layers, &exp, "merged");
}

/// Our `merge` on upstream's own per-layer blobs (fixture v6-layers-merged) gives the tree of
/// upstream's merged bootstrap and the same blob table.
#[test]
fn merge_upstream_layers_matches_upstream_merge() {
    let fx = fixture("v6-layers-merged");
    let upstream = RafsImage::open(&fx.join("image.boot")).unwrap();
    let t = tempfile::tempdir().unwrap();
    let mut boots = Vec::new();
    let mut digests = Vec::new();
    let mut sizes = Vec::new();
    for (i, b) in upstream.blobs().iter().enumerate() {
        let data = std::fs::read(fx.join("blobs").join(&b.blob_id)).unwrap();
        let boot = toc::extract_bootstrap(&data).unwrap();
        let p = t.path().join(format!("layer{i}.boot"));
        std::fs::write(&p, boot).unwrap();
        boots.push(p);
        digests.push(b.blob_id.clone());
        sizes.push(data.len().to_string());
    }
    let merged = t.path().join("merged.boot");
    run(rafs_image()
        .arg("merge")
        .arg("--bootstrap")
        .arg(&merged)
        .arg("--blob-digests")
        .arg(digests.join(","))
        .arg("--blob-sizes")
        .arg(sizes.join(","))
        .args(&boots));
    let ours = RafsImage::open(&merged).unwrap();
    assert_eq!(ours.blobs(), upstream.blobs());
    assert_eq!(ours.flags(), upstream.flags());
    let want = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests/merged.manifest"),
    )
    .unwrap();
    let opts = ManifestOptions {
        mtime_sec: true,
        ..Default::default()
    };
    assert_same(
        &image_manifest(&merged, &fx.join("blobs"), opts),
        &want,
        "our merge of upstream layers",
    );
    run(rafs_image()
        .arg("check")
        .arg(&merged)
        .arg("--blob-dir")
        .arg(fx.join("blobs")));
}

/// Our build of the fixtures' `small` tree has the same superblock flags, blob-table shape
/// (chunk count, uncompressed size, features, ci sizes), chunk table size and inode counts as
/// upstream's build of the same tree with the same flags.
#[test]
fn same_shape_as_upstream_builds() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("small");
    small_tree(&src);
    for (fx, args) in [
        ("v6-zstd-64k-base", &["--chunk-size", "0x10000"][..]),
        (
            "v6-lz4-sha256-64k",
            &[
                "--compressor",
                "lz4_block",
                "--digester",
                "sha256",
                "--chunk-size",
                "0x10000",
            ],
        ),
        (
            "v6-none-64k",
            &["--compressor", "none", "--chunk-size", "0x10000"],
        ),
        (
            "v5-zstd-64k",
            &["--fs-version", "5", "--chunk-size", "0x10000"],
        ),
    ] {
        let d = t.path().join(fx);
        let boot = d.join("image.boot");
        run(rafs_image()
            .arg("create")
            .args(args)
            .arg("--bootstrap")
            .arg(&boot)
            .arg("--blob-dir")
            .arg(d.join("blobs"))
            .arg(&src));
        let ours = RafsImage::open(&boot).unwrap();
        let up = RafsImage::open(&fixture(fx).join("image.boot")).unwrap();
        assert_eq!(ours.flags(), up.flags(), "{fx}: flags");
        assert_eq!(ours.chunk_size(), up.chunk_size(), "{fx}");
        assert_eq!(ours.inode_count(), up.inode_count(), "{fx}: inode count");
        let (a, b) = (&ours.blobs()[0], &up.blobs()[0]);
        assert_eq!(
            (
                a.chunk_count,
                a.uncompressed_size,
                a.features,
                a.compressor,
                a.digester,
                a.ci_uncompressed_size,
                a.ci_compressor
            ),
            (
                b.chunk_count,
                b.uncompressed_size,
                b.features,
                b.compressor,
                b.digester,
                b.ci_uncompressed_size,
                b.ci_compressor
            ),
            "{fx}: blob table entry"
        );
        assert_eq!(
            ours.chunk_table().unwrap().len(),
            up.chunk_table().unwrap().len(),
            "{fx}: chunk table"
        );
        if let (Some(o), Some(u)) = (ours.v6_tables(), up.v6_tables()) {
            assert_eq!(o.0.inos, u.0.inos, "{fx}: sb.inos");
            assert_eq!(o.0.root_nid, u.0.root_nid, "{fx}: root nid");
            assert_eq!(o.0.meta_blkaddr, u.0.meta_blkaddr, "{fx}: meta_blkaddr");
            assert_eq!(o.0.blocks, u.0.blocks, "{fx}: sb.blocks");
            let slots = |d: &[rafs_virtiofsd::rafs::layout::DeviceSlot]| -> Vec<(u32, u32)> {
                d.iter().map(|s| (s.blocks, s.mapped_blkaddr)).collect()
            };
            assert_eq!(slots(o.2), slots(u.2), "{fx}: device table");
        }
    }
}

/// RAFS v5 builds take a v5 dictionary (walked inode by inode).
#[test]
fn chunk_dict_v5() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    std::fs::create_dir(&a).unwrap();
    for i in 0..5 {
        std::fs::write(a.join(format!("f{i}")), random_bytes(40000, i + 1)).unwrap();
    }
    let blobs = t.path().join("blobs");
    let v5 = ["--fs-version", "5", "--chunk-size", "0x10000"];
    run(rafs_image()
        .arg("create")
        .args(v5)
        .arg("--bootstrap")
        .arg(t.path().join("dict.boot"))
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&a));
    std::fs::write(a.join("new"), random_bytes(1000, 77)).unwrap();
    let boot = t.path().join("b.boot");
    run(rafs_image()
        .arg("create")
        .args(v5)
        .arg("--chunk-dict")
        .arg(format!(
            "bootstrap={}",
            t.path().join("dict.boot").display()
        ))
        .arg("--bootstrap")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&a));
    let img = RafsImage::open(&boot).unwrap();
    assert_eq!(img.blobs().len(), 2);
    assert_eq!(img.blobs()[1].chunk_count, 1);
    // A v5 blob is just the chunk data: the 1000 new (incompressible) bytes.
    assert_eq!(
        std::fs::metadata(blobs.join(&img.blobs()[1].blob_id))
            .unwrap()
            .len(),
        1000
    );
    assert_same(
        &image_manifest(&boot, &blobs, ManifestOptions::default()),
        &source_manifest(&a, &[]),
        "v5 dict",
    );
}

/// `--blob-inline-meta` without `--features blob-toc`: the older per-layer shape with the
/// bootstrap stored raw before a trailing `image.boot` tar header, no ToC.
#[test]
fn inline_meta_without_toc() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), random_bytes(100_000, 3)).unwrap();
    let blob = t.path().join("layer.blob");
    run(rafs_image()
        .args(["create", "--blob-inline-meta", "--blob"])
        .arg(&blob)
        .arg(&src));
    let data = std::fs::read(&blob).unwrap();
    assert!(Toc::from_blob(&data, None).is_err(), "no ToC expected");
    let boot = toc::extract_bootstrap(&data).unwrap();
    // Stored raw: the tail of the blob is the bootstrap followed by its tar header.
    assert_eq!(
        &data[data.len() - 512 - boot.len()..data.len() - 512],
        &boot[..]
    );
    let img = RafsImage::from_bytes(boot).unwrap();
    let b = &img.blobs()[0];
    assert_eq!(
        b.features,
        blob_features::CAP_TAR_TOC
            | blob_features::HAS_TAR_HEADER
            | blob_features::INLINED_FS_META
            | blob_features::ALIGNED
    );
    run(rafs_image()
        .arg("check")
        .arg(&blob)
        .arg("--blob")
        .arg(&blob));
}

/// `--whiteout-spec overlayfs` with a parent: char 0:0 devices delete, and
/// `trusted.overlay.opaque=y` makes a directory opaque.
#[test]
fn parent_with_overlayfs_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("lower");
    std::fs::create_dir_all(lower.join("d")).unwrap();
    std::fs::write(lower.join("d/old"), b"old").unwrap();
    std::fs::write(lower.join("gone"), b"gone").unwrap();
    std::fs::write(lower.join("kept"), b"kept").unwrap();
    let blobs = t.path().join("blobs");
    let pboot = t.path().join("p.boot");
    run(rafs_image()
        .arg("create")
        .arg("--bootstrap")
        .arg(&pboot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&lower));
    let upper = t.path().join("upper");
    std::fs::create_dir_all(upper.join("d")).unwrap();
    std::fs::write(upper.join("d/new"), b"new").unwrap();
    {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(upper.join("d").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings and a 1-byte value buffer.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(r, 0, "setting trusted.* xattrs needs root");
    }
    run(Command::new("mknod")
        .arg(upper.join("gone"))
        .args(["c", "0", "0"]));
    let boot = t.path().join("b.boot");
    run(rafs_image()
        .args([
            "create",
            "--whiteout-spec",
            "overlayfs",
            "--parent-bootstrap",
        ])
        .arg(&pboot)
        .arg("--bootstrap")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&upper));
    let img = RafsImage::open(&boot).unwrap();
    assert!(img.lookup_path(b"/gone").unwrap().is_none());
    assert!(img.lookup_path(b"/kept").unwrap().is_some());
    assert!(img.lookup_path(b"/d/old").unwrap().is_none());
    let d = img.lookup_path(b"/d").unwrap().unwrap();
    assert!(img
        .get_xattr(d.ino, b"trusted.overlay.opaque")
        .unwrap()
        .is_none());
    let new = img.lookup_path(b"/d/new").unwrap().unwrap();
    let m = image_manifest(&boot, &blobs, ManifestOptions::default());
    assert!(m.contains("d/new f"), "{m}");
    assert_eq!(new.size, 3);
}

/// `merge --chunk-dict`, as nydus-image: per-layer blobs built against a chunk dictionary
/// reference the dictionary's blob as well as their own; the per-layer flags name each
/// layer's own blob, the dictionary's blob stays as it is, chunks keep pointing at it, and
/// the merged image reads back right from the dictionary's blob plus the layer blobs.
/// A dictionary of another chunk size, or a layer with two own blobs, is refused.
#[test]
fn merge_with_chunk_dict() {
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n);
    let a = p("a");
    std::fs::create_dir(&a).unwrap();
    for i in 0..8 {
        std::fs::write(a.join(format!("f{i}")), random_bytes(65536, i + 1)).unwrap();
    }
    let dict = p("dict.boot");
    let blobs = p("blobs");
    run(rafs_image()
        .args(["create", "--chunk-size", "0x10000", "--bootstrap"])
        .arg(&dict)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&a));
    let dict_id = RafsImage::open(&dict).unwrap().blobs()[0].blob_id.clone();
    let dict_arg = format!("bootstrap={}", dict.display());

    // Layer 1 shares all of a's data and adds a file; layer 2 adds one and deletes one.
    let l1 = p("l1");
    std::fs::create_dir(&l1).unwrap();
    for i in 0..8 {
        std::fs::write(l1.join(format!("g{i}")), random_bytes(65536, i + 1)).unwrap();
    }
    std::fs::write(l1.join("new1"), random_bytes(65536, 101)).unwrap();
    let l2 = p("l2");
    std::fs::create_dir(&l2).unwrap();
    std::fs::write(l2.join("new2"), random_bytes(65536, 102)).unwrap();
    std::fs::write(l2.join("copy"), random_bytes(65536, 3)).unwrap();
    std::fs::write(l2.join(".wh.g0"), b"").unwrap();
    let mut boots = Vec::new();
    let mut digests = Vec::new();
    for (i, l) in [&l1, &l2].iter().enumerate() {
        let tar = p(&format!("l{i}.tar"));
        mktar(l, &tar);
        let blob = p(&format!("l{i}.blob"));
        run(rafs_image()
            .args([
                "create",
                "-t",
                "tar-rafs",
                "--blob-inline-meta",
                "--features",
            ])
            .args([
                "blob-toc",
                "--whiteout-spec",
                "none",
                "--chunk-size",
                "0x10000",
            ])
            .arg("--chunk-dict")
            .arg(&dict_arg)
            .arg("--blob")
            .arg(&blob)
            .arg(&tar));
        let boot = toc::extract_bootstrap(&std::fs::read(&blob).unwrap()).unwrap();
        let img = RafsImage::from_bytes(boot.clone()).unwrap();
        let ids: Vec<&str> = img.blobs().iter().map(|b| b.blob_id.as_str()).collect();
        assert_eq!(ids, [dict_id.as_str(), &"x".repeat(64)], "layer {i}");
        let bp = p(&format!("l{i}.boot"));
        std::fs::write(&bp, &boot).unwrap();
        boots.push(bp);
        let d = sha256_file(&blob);
        std::fs::copy(&blob, blobs.join(&d)).unwrap();
        digests.push(d);
    }
    let digest_arg = digests
        .iter()
        .map(|d| format!("sha256:{d}"))
        .collect::<Vec<_>>()
        .join(",");
    let merged = p("merged.boot");
    run(rafs_image()
        .args(["merge", "--chunk-dict"])
        .arg(&dict_arg)
        .arg("--bootstrap")
        .arg(&merged)
        .arg("--blob-digests")
        .arg(&digest_arg)
        .args(&boots));
    let img = RafsImage::open(&merged).unwrap();
    let ids: Vec<&str> = img.blobs().iter().map(|b| b.blob_id.as_str()).collect();
    assert_eq!(ids, [dict_id.as_str(), &digests[0], &digests[1]]);
    let exp = p("exp");
    cp_tree(&l1, &exp);
    std::fs::remove_file(exp.join("g0")).unwrap();
    for f in ["new2", "copy"] {
        cp_tree(&l2.join(f), &exp.join(f));
    }
    run(Command::new("touch").arg("-h").arg("-r").arg(&l2).arg(&exp));
    std::fs::set_permissions(&exp, std::fs::metadata(&l2).unwrap().permissions()).unwrap();
    assert_merged_tree(&merged, &blobs, &exp, "merged with chunk dict");

    // A layer with its own separate blob: --blob-digests renames that blob (not the
    // dictionary's), which needs --chunk-dict to tell the two apart.
    let sep = p("sep.boot");
    run(rafs_image()
        .args(["create", "--chunk-size", "0x10000", "--chunk-dict"])
        .arg(&dict_arg)
        .arg("--bootstrap")
        .arg(&sep)
        .arg("--blob-dir")
        .arg(p("sepblobs"))
        .arg(&l1));
    let renamed = "ab".repeat(32);
    let merge_sep = |with_dict: bool| {
        let mut c = rafs_image();
        c.arg("merge");
        if with_dict {
            c.arg("--chunk-dict").arg(&dict_arg);
        }
        c.arg("--bootstrap")
            .arg(p("sep-merged.boot"))
            .arg("--blob-digests")
            .arg(format!("sha256:{renamed}"))
            .arg(&sep)
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let out = merge_sep(false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--chunk-dict"), "{err}");
    assert!(merge_sep(true).status.success());
    let img = RafsImage::open(&p("sep-merged.boot")).unwrap();
    let ids: Vec<&str> = img.blobs().iter().map(|b| b.blob_id.as_str()).collect();
    assert_eq!(ids, [dict_id.as_str(), renamed.as_str()]);

    // A dictionary of another chunk size is refused, naming the chunk size.
    let dict2 = p("dict2.boot");
    run(rafs_image()
        .args(["create", "--chunk-size", "0x20000", "--bootstrap"])
        .arg(&dict2)
        .arg("--blob-dir")
        .arg(p("blobs2"))
        .arg(&a));
    let out = rafs_image()
        .args(["merge", "--chunk-dict"])
        .arg(format!("bootstrap={}", dict2.display()))
        .arg("--bootstrap")
        .arg(p("bad.boot"))
        .arg("--blob-digests")
        .arg(&digest_arg)
        .args(&boots)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chunk size"), "{err}");
}

/// `create` makes a missing `--blob-dir` (and the missing parents of `--bootstrap` and
/// `--blob`), where upstream nydus-image fails.
#[test]
fn create_makes_missing_output_dirs() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    small_tree(&src);
    let blobs = t.path().join("a/b/blobs");
    let boot = t.path().join("c/d/image.boot");
    run(rafs_image()
        .arg("create")
        .arg("--bootstrap")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&src));
    assert_same(
        &image_manifest(&boot, &blobs, ManifestOptions::default()),
        &source_manifest(&src, &[]),
        "image built into a new --blob-dir",
    );
    let blob = t.path().join("e/f/image.blob");
    let boot2 = t.path().join("image2.boot");
    run(rafs_image()
        .arg("create")
        .arg("--bootstrap")
        .arg(&boot2)
        .arg("--blob")
        .arg(&blob)
        .arg(&src));
    // The blob by its id in a blob dir of its own: the image reads back whole.
    let id = RafsImage::open(&boot2).unwrap().blobs()[0].blob_id.clone();
    let by_id = t.path().join("g");
    std::fs::create_dir(&by_id).unwrap();
    std::fs::hard_link(&blob, by_id.join(id)).unwrap();
    assert_same(
        &image_manifest(&boot2, &by_id, ManifestOptions::default()),
        &source_manifest(&src, &[]),
        "image built with --blob into a new dir",
    );
}
