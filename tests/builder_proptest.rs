//! Property test: random trees with every edge case the format must carry are built with
//! the builder (v5 / v6, every compressor and digester), read back through the reader and
//! compared with the source by treemanifest (metadata, xattrs, link targets, content).
//! Needs root (mknod, chown, trusted.* xattrs), like the rest of the suite.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use rafs_virtiofsd::rafs::builder::{self, BuildOptions};
use rafs_virtiofsd::rafs::manifest::{manifest, LocalBlobs, ManifestOptions};
use rafs_virtiofsd::rafs::{Compressor, Digester, RafsImage, RafsVersion};

const CHUNK: u64 = 16384;

#[derive(Debug, Clone)]
enum Kind {
    File { len: u64, seed: u8 },
    Dir,
    Symlink { len: usize },
    Fifo,
    Chr { major: u32, minor: u32 },
    Blk { major: u32, minor: u32 },
    HardLink { target: usize },
}

#[derive(Debug, Clone)]
struct Entry {
    name: Vec<u8>,
    parent: usize,
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    xattrs: Vec<(u8, Vec<u8>, Vec<u8>)>,
}

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(prop::sample::select(b"abcxyz019-_.".to_vec()), 1..12),
        2 => prop::collection::vec(1u8..=255, 1..16).prop_map(|v| v.into_iter().map(|c| if c == b'/' { b'~' } else { c }).collect()),
        1 => Just(vec![b'N'; 255]),
        1 => (0u8..26).prop_map(|c| { let mut v = vec![b'a' + c; 254]; v.push(0xff); v }),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn size_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(4095),
        Just(4096),
        Just(4097),
        Just(CHUNK - 1),
        Just(CHUNK),
        Just(CHUNK + 1),
        Just(3 * CHUNK + 12345),
        0u64..70000,
    ]
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => (size_strategy(), any::<u8>()).prop_map(|(len, seed)| Kind::File { len, seed }),
        3 => Just(Kind::Dir),
        2 => prop_oneof![1usize..300, Just(4095usize), 3000usize..4095].prop_map(|len| Kind::Symlink { len }),
        1 => Just(Kind::Fifo),
        1 => (0u32..4096, 0u32..1_000_000).prop_map(|(major, minor)| Kind::Chr { major, minor }),
        1 => (0u32..300, 0u32..300).prop_map(|(major, minor)| Kind::Blk { major, minor }),
        2 => (0usize..1000).prop_map(|target| Kind::HardLink { target }),
    ]
}

fn xattr_strategy() -> impl Strategy<Value = Vec<(u8, Vec<u8>, Vec<u8>)>> {
    prop::collection::vec(
        (
            0u8..3,
            prop::collection::vec(prop::sample::select(b"abcdef._-".to_vec()), 1..20),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                prop::collection::vec(any::<u8>(), 1000..1200),
            ],
        ),
        0..3,
    )
}

fn entry_strategy() -> impl Strategy<Value = Entry> {
    (
        name_strategy(),
        0usize..1000,
        kind_strategy(),
        prop_oneof![0o7777u32..=0o7777, 0u32..0o7777],
        prop_oneof![Just(0u32), 1u32..70000, Just(4_000_000_000u32)],
        prop_oneof![Just(0u32), 1u32..70000, Just(u32::MAX - 1)],
        (0i64..4_000_000_000, 0i64..1_000_000_000),
        xattr_strategy(),
    )
        .prop_map(
            |(name, parent, kind, perm, uid, gid, mtime, xattrs)| Entry {
                name,
                parent,
                kind,
                perm,
                uid,
                gid,
                mtime,
                xattrs,
            },
        )
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_times(p: &Path, (sec, nsec): (i64, i64)) {
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let c = cpath(p);
    // SAFETY: valid path and a 2-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn data(len: u64, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|i| {
            if seed.is_multiple_of(2) {
                // compressible
                (i % 251) as u8 ^ seed
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

/// Materialize entries under `root`; returns nothing, the tree is what it is.
fn materialize(root: &Path, entries: &[Entry]) {
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    let mut deep = root.to_path_buf();
    for i in 0..40 {
        deep = deep.join(format!("deep{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    dirs.push(deep.clone());
    std::fs::write(deep.join("bottom"), b"bottom of the chain").unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut later_times: Vec<(PathBuf, (i64, i64))> = Vec::new();
    for e in entries {
        let parent = dirs[e.parent % dirs.len()].clone();
        let p = parent.join(OsStr::from_bytes(&e.name));
        if std::fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        let c = cpath(&p);
        match &e.kind {
            Kind::File { len, seed } => {
                std::fs::write(&p, data(*len, *seed)).unwrap();
                files.push(p.clone());
            }
            Kind::Dir => {
                std::fs::create_dir(&p).unwrap();
                dirs.push(p.clone());
            }
            Kind::Symlink { len } => {
                let t: Vec<u8> = (0..*len).map(|i| b"abc/xyz."[i % 8]).collect();
                std::os::unix::fs::symlink(OsStr::from_bytes(&t), &p).unwrap();
            }
            Kind::Fifo => {
                // SAFETY: valid path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            }
            Kind::Chr { major, minor } | Kind::Blk { major, minor } => {
                let t = if matches!(e.kind, Kind::Chr { .. }) {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                // SAFETY: valid path; we run as root.
                let r =
                    unsafe { libc::mknod(c.as_ptr(), t | 0o600, libc::makedev(*major, *minor)) };
                assert_eq!(r, 0, "mknod (tests need root)");
            }
            Kind::HardLink { target } => {
                if files.is_empty() {
                    continue;
                }
                let t = &files[target % files.len()];
                std::fs::hard_link(t, &p).unwrap();
                continue; // shares the target's metadata
            }
        }
        let is_link = matches!(e.kind, Kind::Symlink { .. });
        // SAFETY: valid path.
        unsafe { libc::lchown(c.as_ptr(), e.uid, e.gid) };
        if !is_link {
            // SAFETY: valid path.
            unsafe { libc::chmod(c.as_ptr(), e.perm) };
            for (ns, n, v) in &e.xattrs {
                let prefix: &[u8] = match ns {
                    0 => b"user.",
                    1 => b"trusted.",
                    _ => b"security.",
                };
                if *ns == 0 && !matches!(e.kind, Kind::File { .. } | Kind::Dir) {
                    continue; // user.* only on regular files and directories
                }
                let mut full = prefix.to_vec();
                full.extend_from_slice(n);
                let cn = CString::new(full).unwrap();
                // SAFETY: valid strings and buffer.
                unsafe { libc::lsetxattr(c.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
            }
        }
        later_times.push((p, e.mtime));
    }
    // Times last (creating children changes directory mtimes).
    for (p, t) in later_times.iter().rev() {
        set_times(p, *t);
    }
}

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/builder_tools")
}

fn source_manifest(dir: &Path) -> String {
    let out = Command::new("python3")
        .arg(tools().join("treemanifest.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn check_tree(entries: &[Entry], version: RafsVersion, compressor: Compressor, digester: Digester) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    materialize(&src, entries);
    let want = source_manifest(&src);
    let mut o = BuildOptions::new(&src);
    o.version = version;
    o.compressor = compressor;
    o.digester = digester;
    o.chunk_size = CHUNK as u32;
    o.bootstrap = Some(t.path().join("boot"));
    o.blob_dir = Some(t.path().join("blobs"));
    o.threads = 2;
    builder::create(&o).unwrap();
    let img = RafsImage::open(&t.path().join("boot")).unwrap();
    let mut blobs = LocalBlobs::new(&t.path().join("blobs"));
    let got = manifest(&img, ManifestOptions::default(), &mut blobs).unwrap();
    if got != want {
        for (a, b) in got.lines().zip(want.lines()) {
            if a != b {
                eprintln!("got:  {a}\nwant: {b}");
            }
        }
        panic!(
            "{version:?} {compressor} {digester}: manifests differ ({} vs {} lines)",
            got.lines().count(),
            want.lines().count()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 50, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(
        entries in prop::collection::vec(entry_strategy(), 1..60),
        v6 in any::<bool>(),
        comp in 0usize..4,
        sha in any::<bool>(),
    ) {
        let compressor = [Compressor::None, Compressor::Lz4Block, Compressor::Zstd, Compressor::Gzip][comp];
        let digester = if sha { Digester::Sha256 } else { Digester::Blake3 };
        let version = if v6 { RafsVersion::V6 } else { RafsVersion::V5 };
        check_tree(&entries, version, compressor, digester);
    }
}
