//! Builder round trips: trees made by mktree.py (and tars made from them) are built with
//! `rafs-image create`, read back through the reader, and must give the same treemanifest
//! as the source, for v6 and v5, every compressor and digester. Also: determinism,
//! `check` / `inspect` / `unpack`, and fsck.erofs on the v6 bootstrap when installed.

#[path = "common/builder.rs"]
mod builder_common;
use builder_common::*;
#[path = "common/skip.rs"]
mod skip;
use skip::skip;

use std::path::{Path, PathBuf};
use std::process::Command;

use rafs_virtiofsd::rafs::manifest::ManifestOptions;
use rafs_virtiofsd::rafs::RafsImage;

fn mktree(out: &Path, seed: u32, extra: &[&str]) {
    run(Command::new("python3")
        .arg(tools().join("mktree.py"))
        .arg(out)
        .arg(seed.to_string())
        .args(extra));
}

fn small_tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    mktree(
        &src,
        2,
        &["--big", "1", "--files", "150", "--chunk", "65536"],
    );
    src
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

#[test]
fn dir_round_trip_every_format() {
    let t = tempfile::tempdir().unwrap();
    let src = small_tree(t.path());
    let want = source_manifest(&src, &[]);
    for (i, args) in [
        &["--chunk-size", "0x10000"][..],
        &[
            "--chunk-size",
            "0x10000",
            "--compressor",
            "lz4_block",
            "--digester",
            "sha256",
        ],
        &["--chunk-size", "0x10000", "--compressor", "none"],
        &["--chunk-size", "0x10000", "--compressor", "gzip"],
        &["--chunk-size", "4096", "--compressor", "zstd"],
        &[],
        &["--fs-version", "5", "--chunk-size", "0x10000"],
        &[
            "--fs-version",
            "5",
            "--compressor",
            "lz4_block",
            "--digester",
            "sha256",
        ],
        &[
            "--fs-version",
            "5",
            "--compressor",
            "none",
            "--chunk-size",
            "0x4000",
        ],
    ]
    .iter()
    .enumerate()
    {
        let d = t.path().join(format!("out{i}"));
        let (boot, blobs) = build(&src, &d, args);
        let got = image_manifest(&boot, &blobs, ManifestOptions::default());
        assert_same(&got, &want, &format!("{args:?}"));
        let check = run(rafs_image()
            .arg("check")
            .arg(&boot)
            .arg("--blob-dir")
            .arg(&blobs));
        assert!(check.starts_with("OK:"), "{check}");
    }
}

#[test]
fn output_is_deterministic_and_blob_named_by_sha256() {
    let t = tempfile::tempdir().unwrap();
    let src = small_tree(t.path());
    let (b1, d1) = build(&src, &t.path().join("a"), &["--chunk-size", "0x10000"]);
    let (b2, d2) = build(&src, &t.path().join("b"), &["--chunk-size", "0x10000"]);
    assert_eq!(std::fs::read(&b1).unwrap(), std::fs::read(&b2).unwrap());
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&d1), names(&d2));
    let n = names(&d1);
    assert_eq!(n.len(), 1);
    use sha2::Digest;
    let data = std::fs::read(d1.join(&n[0])).unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&data)), n[0]);
    // File size is a multiple of 4 KiB (nydusd requirement).
    assert_eq!(std::fs::metadata(&b1).unwrap().len() % 4096, 0);
}

#[test]
fn tar_and_targz_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let src = small_tree(t.path());
    let tar = t.path().join("layer.tar");
    run(Command::new("python3")
        .arg(tools().join("mktar.py"))
        .arg(&src)
        .arg(&tar));
    // Python's tarfile stores whole-second mtimes.
    let want = source_manifest(&src, &["--mtime-sec"]);
    let sec = ManifestOptions {
        mtime_sec: true,
        ..Default::default()
    };
    let (boot, blobs) = build(
        &tar,
        &t.path().join("tar"),
        &["-t", "tar-rafs", "--chunk-size", "0x10000"],
    );
    assert_same(&image_manifest(&boot, &blobs, sec), &want, "tar-rafs");
    let gz = t.path().join("layer.tar.gz");
    let f = std::fs::File::create(&gz).unwrap();
    let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    std::io::copy(&mut std::fs::File::open(&tar).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();
    let (boot, blobs) = build(
        &gz,
        &t.path().join("gz"),
        &["-t", "targz-rafs", "--chunk-size", "0x10000"],
    );
    assert_same(&image_manifest(&boot, &blobs, sec), &want, "targz-rafs");
}

/// Builds `tar-rafs` images from tars that `tool` makes of a small tree with each of `formats`
/// (extra `tool` arguments) and compares them with the tree. Reports a skip without `tool`.
fn tar_round_trip(tool: &str, formats: &[&[&str]]) {
    if Command::new(tool).arg("--version").output().is_err() {
        skip(&format!("{tool} not installed"));
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = small_tree(t.path());
    for (i, args) in formats.iter().enumerate() {
        let out = t.path().join(format!("{tool}{i}.tar"));
        run(Command::new(tool)
            .args(*args)
            .arg("-cf")
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg("."));
        let (boot, blobs) = build(
            &out,
            &t.path().join(format!("o{i}")),
            &["-t", "tar-rafs", "--chunk-size", "0x10000"],
        );
        // GNU-format tar keeps whole-second mtimes only.
        let opts = ManifestOptions {
            mtime_sec: args[0] == "--format=gnu" || tool == "bsdtar",
            ..Default::default()
        };
        let flags: &[&str] = if opts.mtime_sec {
            &["--mtime-sec"]
        } else {
            &[]
        };
        // The root directory's mtime/attrs come from the "./" entry.
        assert_same(
            &image_manifest(&boot, &blobs, opts),
            &source_manifest(&src, flags),
            &format!("{tool} {args:?}"),
        );
    }
}

#[test]
fn gnu_tar_round_trip() {
    tar_round_trip(
        "tar",
        &[
            &[
                "--format=gnu",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
            ],
            &[
                "--format=posix",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
            ],
        ],
    );
}

#[test]
fn bsdtar_round_trip() {
    tar_round_trip("bsdtar", &[&["--xattrs", "--numeric-owner"]]);
}

#[test]
fn inspect_check_unpack() {
    let t = tempfile::tempdir().unwrap();
    let src = small_tree(t.path());
    let (boot, blobs) = build(&src, &t.path().join("o"), &["--chunk-size", "0x10000"]);
    let j = run(rafs_image().arg("inspect").arg(&boot).arg("--output-json"));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["fs_version"], 6);
    assert_eq!(v["blobs"].as_array().unwrap().len(), 1);
    assert_eq!(v["chunk_table_entries"], v["blobs"][0]["chunk_count"]);
    let text = run(rafs_image().arg("inspect").arg(&boot));
    assert!(text.contains("chunk table entries"), "{text}");

    // unpack → extract → same tree.
    let tar = t.path().join("out.tar");
    run(rafs_image()
        .arg("unpack")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg("--output")
        .arg(&tar));
    let (boot2, blobs2) = build(
        &tar,
        &t.path().join("o2"),
        &["-t", "tar-rafs", "--chunk-size", "0x10000"],
    );
    assert_same(
        &image_manifest(&boot2, &blobs2, ManifestOptions::default()),
        &source_manifest(&src, &[]),
        "unpack + tar-rafs",
    );

    // Corrupt one byte of chunk data: check fails with a precise error.
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut data = std::fs::read(&blob).unwrap();
    data[100] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    let out = rafs_image()
        .arg("check")
        .arg(&boot)
        .arg("--blob-dir")
        .arg(&blobs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chunk"), "{err}");
    // Without blobs the metadata check still passes.
    run(rafs_image().arg("check").arg(&boot));
    // A truncated bootstrap is rejected.
    let b = std::fs::read(&boot).unwrap();
    let bad = t.path().join("bad.boot");
    std::fs::write(&bad, &b[..b.len() - 4096]).unwrap();
    assert!(!rafs_image()
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap()
        .status
        .success());
}

/// Decompress every chunk of the blob into its uncompressed offset: the "uncompressed
/// blob" an EROFS extra device holds.
fn uncompressed_device(boot: &Path, blobs: &Path, out: &Path) {
    let img = RafsImage::open(boot).unwrap();
    let blob = &img.blobs()[0];
    let data = std::fs::read(blobs.join(&blob.blob_id)).unwrap();
    let mut dev = vec![0u8; blob.uncompressed_size as usize];
    for c in img.chunk_table().unwrap() {
        let raw = &data[c.compressed_offset as usize..][..c.compressed_size as usize];
        let plain = if c.compressed {
            rafs_virtiofsd::rafs::codec::decompress(
                blob.compressor,
                raw,
                c.uncompressed_size as usize,
            )
            .unwrap()
        } else {
            raw.to_vec()
        };
        dev[c.uncompressed_offset as usize..][..plain.len()].copy_from_slice(&plain);
    }
    std::fs::write(out, dev).unwrap();
}

#[test]
fn fsck_erofs_accepts_and_extracts_v6() {
    if Command::new("fsck.erofs").arg("-V").output().is_err() {
        skip("fsck.erofs (erofs-utils) not installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = small_tree(t.path());
    let (boot, blobs) = build(&src, &t.path().join("o"), &["--chunk-size", "0x10000"]);
    let dev = t.path().join("dev0");
    uncompressed_device(&boot, &blobs, &dev);
    let ext = t.path().join("extract");
    run(Command::new("fsck.erofs")
        .arg(format!("--device={}", dev.display()))
        .arg(format!("--extract={}", ext.display()))
        .arg("--preserve")
        .arg(&boot));
    // The kernel format has no notion of our chunk dedup etc.; compare the data, names,
    // types, modes, owners and link targets (erofs-utils may not restore every xattr /
    // timestamp / device on extraction).
    let flags = ["--no-xattr", "--no-mtime"];
    let strip = |m: String| -> String {
        m.lines()
            .filter(|l| {
                !l.contains(" c ") && !l.contains(" b ") && !l.contains(" p ") && !l.contains(" s ")
            })
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                // Drop nlink / hard-link group (extraction may not keep links).
                format!("{} {} {} {} {} {}\n", f[0], f[1], f[2], f[3], f[4], f[9])
            })
            .collect()
    };
    assert_same(
        &strip(source_manifest(&ext, &flags)),
        &strip(source_manifest(&src, &flags)),
        "fsck.erofs --extract",
    );
}

/// GNU tar sparse entries in every format (old GNU 'S' headers, PAX 0.0 / 0.1 / 1.0) read
/// back with their holes as zeros.
#[test]
fn gnu_tar_sparse_entries() {
    if Command::new("tar").arg("--version").output().is_err() {
        skip("GNU tar not installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(5 << 20).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(&[7u8; 10000], 1 << 20).unwrap();
    f.write_all_at(b"tail", (5 << 20) - 4).unwrap();
    drop(f);
    let g = std::fs::File::create(src.join("allhole")).unwrap();
    g.set_len(3 << 20).unwrap();
    drop(g);
    std::fs::write(src.join("plain"), b"plain file").unwrap();
    let want = source_manifest(&src, &["--mtime-sec", "--no-xattr"]);
    let opts = ManifestOptions {
        mtime_sec: true,
        no_xattr: true,
        ..Default::default()
    };
    for args in [
        &["--format=gnu"][..],
        &["--format=posix", "--sparse-version=0.0"],
        &["--format=posix", "--sparse-version=0.1"],
        &["--format=posix", "--sparse-version=1.0"],
    ] {
        let tar = t.path().join("s.tar");
        run(Command::new("tar")
            .args(args)
            .arg("--sparse")
            .arg("--numeric-owner")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg("."));
        let d = t.path().join(args.join("_"));
        let (boot, blobs) = build(&tar, &d, &["-t", "tar-rafs", "--chunk-size", "0x10000"]);
        assert_same(
            &image_manifest(&boot, &blobs, opts),
            &want,
            &format!("{args:?}"),
        );
    }
}

/// A 512-byte ustar/GNU header with the given fields; numeric fields given as raw bytes so
/// that empty fields (as GNU tar / Python write for fifo devices) can be expressed.
fn raw_header(name: &[u8], typeflag: u8, size: u64, link: &[u8], gnu: bool, dev: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0001750\0");
    h[116..124].copy_from_slice(b"0001750\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    if gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..265].copy_from_slice(b"ustar\x0000");
    }
    h[329..329 + dev.len().min(8)].copy_from_slice(&dev[..dev.len().min(8)]);
    h[337..337 + dev.len().min(8)].copy_from_slice(&dev[..dev.len().min(8)]);
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&c| u64::from(c)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn padded(mut v: Vec<u8>) -> Vec<u8> {
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn pax(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3;
        let mut len = body + 1;
        while len.to_string().len() + body != len {
            len = len.to_string().len() + body;
        }
        out.extend_from_slice(format!("{len} ").as_bytes());
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// Hand-made tar with what real producers write and upstream rejects: fifo with empty
/// device fields, PAX xattr with a binary value, GNU long name and long link, hard link.
#[test]
fn hand_made_tar_edge_cases() {
    let t = tempfile::tempdir().unwrap();
    let long = vec![b'n'; 180];
    let mut tar = Vec::new();
    tar.extend(raw_header(b"./", b'5', 0, b"", false, b""));
    tar.extend(raw_header(b"fifo", b'6', 0, b"", true, b"\0\0\0\0\0\0\0\0"));
    let rec = pax(&[
        (b"SCHILY.xattr.user.bin", &[0, 0xff, b'\n', b'=', 1]),
        (b"mtime", b"1700000000.5"),
    ]);
    tar.extend(raw_header(
        b"PaxHeaders/f",
        b'x',
        rec.len() as u64,
        b"",
        false,
        b"",
    ));
    tar.extend(padded(rec));
    tar.extend(raw_header(b"f", b'0', 5, b"", false, b""));
    tar.extend(padded(b"hello".to_vec()));
    let mut lname = long.clone();
    lname.push(0);
    tar.extend(raw_header(
        b"././@LongLink",
        b'L',
        lname.len() as u64,
        b"",
        true,
        b"",
    ));
    tar.extend(padded(lname));
    tar.extend(raw_header(b"ignored-short-name", b'0', 3, b"", true, b""));
    tar.extend(padded(b"abc".to_vec()));
    tar.extend(raw_header(b"hl", b'1', 0, b"f", false, b""));
    let mut target = vec![b't'; 300];
    target.push(0);
    tar.extend(raw_header(
        b"././@LongLink",
        b'K',
        target.len() as u64,
        b"",
        true,
        b"",
    ));
    tar.extend(padded(target));
    tar.extend(raw_header(b"sym", b'2', 0, b"x", true, b""));
    tar.extend(vec![0u8; 1024]);
    let p = t.path().join("hand.tar");
    std::fs::write(&p, &tar).unwrap();
    let (boot, blobs) = build(&p, &t.path().join("o"), &["-t", "tar-rafs"]);
    let img = RafsImage::open(&boot).unwrap();
    let fifo = img.lookup_path(b"/fifo").unwrap().unwrap();
    assert_eq!(fifo.mode & libc::S_IFMT, libc::S_IFIFO);
    let f = img.lookup_path(b"/f").unwrap().unwrap();
    assert_eq!(
        img.get_xattr(f.ino, b"user.bin").unwrap().unwrap(),
        vec![0, 0xff, b'\n', b'=', 1]
    );
    assert_eq!(
        (f.mtime, f.mtime_nsec, f.nlink),
        (1_700_000_000, 500_000_000, 2)
    );
    let hl = img.lookup_path(b"/hl").unwrap().unwrap();
    assert_eq!(hl.ino, f.ino);
    let mut lp = b"/".to_vec();
    lp.extend_from_slice(&long);
    assert!(img.lookup_path(&lp).unwrap().is_some());
    let sym = img.lookup_path(b"/sym").unwrap().unwrap();
    assert_eq!(img.readlink(sym.ino).unwrap(), vec![b't'; 300]);
    let m = image_manifest(&boot, &blobs, ManifestOptions::default());
    assert_eq!(m.lines().count(), 6, "{m}");

    // Malformed tars are errors, and leave no temporary blob behind.
    for (i, bad) in [
        tar[..700].to_vec(), // truncated inside data
        {
            let mut b = tar.clone();
            b[600] ^= 0x55; // header checksum broken
            b
        },
        raw_header(b"hl", b'1', 0, b"missing", false, b""), // link to nothing
    ]
    .iter()
    .enumerate()
    {
        let p = t.path().join(format!("bad{i}.tar"));
        std::fs::write(&p, bad).unwrap();
        let d = t.path().join(format!("bad{i}"));
        let out = rafs_image()
            .args(["create", "-t", "tar-rafs", "--bootstrap"])
            .arg(d.join("b"))
            .arg("--blob-dir")
            .arg(&d)
            .arg(&p)
            .output()
            .unwrap();
        assert!(!out.status.success(), "bad tar {i} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("tar") || err.contains("read"), "{err}");
        let left: Vec<_> = std::fs::read_dir(&d)
            .map(|r| r.count())
            .into_iter()
            .collect();
        assert!(
            left.is_empty() || left[0] == 0,
            "temporary files left in {}",
            d.display()
        );
    }
}
