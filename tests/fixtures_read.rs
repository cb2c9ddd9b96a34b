//! Upstream fixtures (built by nydus-image, see tests/fixtures/README.md) read byte-exact
//! against their treemanifest.py manifests, with every chunk's crc32c / digest verified.

use std::path::{Path, PathBuf};

use rafs_virtiofsd::rafs::layout::TocEntry;
use rafs_virtiofsd::rafs::manifest::{manifest, walk, LocalBlobs, ManifestOptions};
use rafs_virtiofsd::rafs::toc::{self, Toc};
use rafs_virtiofsd::rafs::{blob_features, RafsImage, RafsVersion};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn image_dir(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// The root's manifest line carries the source directory's mtime. nydus-image stores it for
/// tar sources but writes 0 for directory sources, so when the image says 0 that one field is
/// not compared.
fn root_mtime_blind(got: &str, want: &str) -> (String, String) {
    let field = |m: &str| -> Option<String> {
        m.lines()
            .find(|l| l.starts_with(". d "))
            .and_then(|l| l.split(' ').nth(5).map(str::to_string))
    };
    if field(got).as_deref() != Some("0") {
        return (got.to_string(), want.to_string());
    }
    let blind = |m: &str| -> String {
        m.lines()
            .map(|l| {
                if l.starts_with(". d ") {
                    let mut f: Vec<&str> = l.split(' ').collect();
                    f[5] = "ROOT-MTIME";
                    format!("{}\n", f.join(" "))
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    };
    (blind(got), blind(want))
}

fn check_image(name: &str) -> (RafsImage, LocalBlobs) {
    let dir = image_dir(name);
    let tree = std::fs::read_to_string(dir.join("TREE")).unwrap();
    let flags = std::fs::read_to_string(dir.join("MANIFEST_FLAGS")).unwrap_or_default();
    let opts = ManifestOptions::from_flags(&flags).unwrap();
    let want = std::fs::read_to_string(
        fixtures()
            .join("manifests")
            .join(format!("{}.manifest", tree.trim())),
    )
    .unwrap();
    let img = RafsImage::open(&dir.join("image.boot")).unwrap();
    let mut blobs = LocalBlobs::new(&dir.join("blobs"));
    let got = manifest(&img, opts, &mut blobs).unwrap();
    let (g, w) = root_mtime_blind(&got, &want);
    if g != w {
        for (a, b) in g.lines().zip(w.lines()) {
            if a != b {
                eprintln!("got:  {a}\nwant: {b}");
            }
        }
        panic!(
            "{name}: manifest differs ({} vs {} lines)",
            g.lines().count(),
            w.lines().count()
        );
    }
    // Every path resolves by lookup to the inode the walk found, and readdir resumes
    // correctly from every cookie.
    walk(&img, &mut |e| {
        let a = img.lookup_path(&e.path).unwrap().unwrap();
        assert_eq!(a, e.attr, "{:?}", String::from_utf8_lossy(&e.path));
        if a.mode & libc::S_IFMT == libc::S_IFDIR {
            let mut all = Vec::new();
            img.readdir(a.ino, 0, &mut |d| {
                all.push(d);
                true
            })
            .unwrap();
            for (k, d) in all.iter().enumerate() {
                let mut rest = Vec::new();
                img.readdir(a.ino, d.next_offset, &mut |d| {
                    rest.push(d.name);
                    rest.len() < 2
                })
                .unwrap();
                let want: Vec<Vec<u8>> = all[k + 1..]
                    .iter()
                    .take(2)
                    .map(|d| d.name.clone())
                    .collect();
                assert_eq!(rest, want);
            }
        }
        Ok(())
    })
    .unwrap();
    // Every chunk was verified by crc32c or digest.
    assert!(
        blobs.crcs_checked + blobs.digests_checked > 0,
        "{name}: nothing verified"
    );
    (img, blobs)
}

#[test]
fn v6_zstd_64k_base() {
    let (img, blobs) = check_image("v6-zstd-64k-base");
    assert_eq!(img.version(), RafsVersion::V6);
    assert_eq!(img.chunk_size(), 0x10000);
    assert!(img.explicit_uid_gid());
    assert!(
        blobs.digests_checked > 0,
        "v6 chunk-table digests were not used"
    );
}

#[test]
fn v6_none_64k() {
    check_image("v6-none-64k");
}

#[test]
fn v6_lz4_sha256_64k() {
    let (img, _) = check_image("v6-lz4-sha256-64k");
    assert_eq!(
        img.digester(),
        rafs_virtiofsd::rafs::Digester::Sha256,
        "digester flag"
    );
}

#[test]
fn v6_zstd_blake3_1m() {
    let (img, _) = check_image("v6-zstd-blake3-1m");
    assert_eq!(img.chunk_size(), 0x100000);
}

#[test]
fn v6_prefetch_64k() {
    let (img, _) = check_image("v6-prefetch-64k");
    let p = img.prefetch_inodes().unwrap();
    assert!(!p.is_empty(), "prefetch table is empty");
    for ino in p {
        img.getattr(ino).unwrap();
    }
}

#[test]
fn v6_chunkdict_64k() {
    let (img, _) = check_image("v6-chunkdict-64k");
    assert_eq!(img.blobs().len(), 2, "dict blob and new blob");
}

#[test]
fn v6_layers_merged() {
    let (img, _) = check_image("v6-layers-merged");
    // Each per-layer blob inlines its bootstrap; extract it through the ToC and open it.
    for b in img.blobs() {
        assert!(b.features & blob_features::HAS_TOC != 0);
        let blob =
            std::fs::read(image_dir("v6-layers-merged").join("blobs").join(&b.blob_id)).unwrap();
        let t = Toc::from_blob(&blob, Some(b)).unwrap();
        let names: Vec<String> = t
            .entries
            .iter()
            .map(|e: &TocEntry| String::from_utf8_lossy(e.name_bytes()).into_owned())
            .collect();
        assert!(names.contains(&"image.boot".to_string()), "{names:?}");
        let boot = toc::extract_bootstrap(&blob).unwrap();
        let inner = RafsImage::from_bytes(boot).unwrap();
        assert_eq!(inner.version(), RafsVersion::V6);
        let ib = &inner.blobs()[inner.blobs().len() - 1];
        assert_eq!(
            ib.blob_id,
            rafs_virtiofsd::rafs::layout::PLACEHOLDER_BLOB_ID
        );
        assert!(ib.features & blob_features::INLINED_FS_META != 0);
    }
}

#[test]
fn v5_zstd_64k() {
    let (img, _) = check_image("v5-zstd-64k");
    assert_eq!(img.version(), RafsVersion::V5);
}

#[test]
fn external_bootstraps_open() {
    // nydus-image also writes an (empty) `image.external` bootstrap next to each image.
    for name in ["v6-none-64k", "v6-zstd-64k-base"] {
        let img = RafsImage::open(&image_dir(name).join("image.external")).unwrap();
        assert!(img.blobs().is_empty());
        let mut n = 0;
        img.readdir(img.root_ino(), 0, &mut |_| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 2, ". and ..");
    }
}

/// Upstream writes only extended inodes; rewrite two of them in the compact form (same nid)
/// and read them back: attrs from the 32-byte form (mtime 0, rdev 0) and the chunk-index
/// array moved to follow the shorter inode.
#[test]
fn compact_inodes_read() {
    use rafs_virtiofsd::rafs::layout::{InodeCompact, V6Inode};
    use rafs_virtiofsd::rafs::manifest::file_sha256;
    let dir = image_dir("v6-zstd-64k-base");
    let mut b = std::fs::read(dir.join("image.boot")).unwrap();
    let img = RafsImage::from_bytes(b.clone()).unwrap();
    let meta = u64::from(img.v6_tables().unwrap().0.meta_blkaddr) * 4096;
    for path in ["fifo", "d01/size_4097"] {
        let a = img.lookup_path(path.as_bytes()).unwrap().unwrap();
        let off = (meta + a.ino * 32) as usize;
        let e = V6Inode::parse(&b[off..]).unwrap();
        assert!(e.extended && e.i_xattr_icount == 0);
        let c = InodeCompact {
            i_format: e.i_format & !1,
            i_xattr_icount: 0,
            i_mode: e.i_mode,
            i_nlink: e.i_nlink as u16,
            i_size: e.i_size as u32,
            i_u: e.i_u,
            i_ino: e.i_ino,
            i_uid: e.i_uid as u16,
            i_gid: e.i_gid as u16,
        };
        if e.i_mode as u32 & libc::S_IFMT == libc::S_IFREG {
            let n = e.i_size.div_ceil(u64::from(img.chunk_size())) as usize * 8;
            b.copy_within(off + 64..off + 64 + n, off + 32);
        }
        c.write_to(&mut b[off..]);
    }
    let img2 = RafsImage::from_bytes(b).unwrap();
    let fifo = img2.lookup_path(b"fifo").unwrap().unwrap();
    assert_eq!(fifo.mode & libc::S_IFMT, libc::S_IFIFO);
    assert_eq!((fifo.mtime, fifo.rdev), (0, 0));
    let f = img2.lookup_path(b"d01/size_4097").unwrap().unwrap();
    let orig = img.lookup_path(b"d01/size_4097").unwrap().unwrap();
    assert_eq!(
        (f.size, f.mode, f.uid % 65536, f.mtime),
        (4097, orig.mode, orig.uid % 65536, 0)
    );
    let mut src = LocalBlobs::new(&dir.join("blobs"));
    assert_eq!(
        file_sha256(&img2, &f, &mut src).unwrap(),
        file_sha256(&img, &orig, &mut src).unwrap()
    );
}
