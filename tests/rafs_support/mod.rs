//! Helpers shared by the RAFS fs and storage integration tests: fixtures, manifests, a
//! collecting FUSE writer, and an in-process FUSE mount.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::{Context, FileSystem, ZeroCopyWriter};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::{Vfs, VfsOptions};
use fuse_backend_rs::common::file_buf::FileVolatileSlice;
use fuse_backend_rs::common::file_traits::FileReadWriteVolatile;
use fuse_backend_rs::transport::FuseSession;
use rafs_virtiofsd::config::RafsConfig;
use rafs_virtiofsd::fs::rafs::RafsFs;
use rafs_virtiofsd::rafs::manifest::ChunkSource;
use rafs_virtiofsd::rafs::{FileChunk, RafsError, RafsImage};
use rafs_virtiofsd::storage::ChunkReader;
use sha2::{Digest, Sha256};

#[path = "../common/skip.rs"]
pub mod skip;

pub const FIXTURES: [&str; 8] = [
    "v5-zstd-64k",
    "v6-chunkdict-64k",
    "v6-layers-merged",
    "v6-lz4-sha256-64k",
    "v6-none-64k",
    "v6-prefetch-64k",
    "v6-zstd-64k-base",
    "v6-zstd-blake3-1m",
];

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn image_dir(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// (expected manifest, treemanifest flags) of a fixture.
pub fn want_manifest(name: &str) -> (String, String) {
    let dir = image_dir(name);
    let tree = std::fs::read_to_string(dir.join("TREE")).unwrap();
    let flags = std::fs::read_to_string(dir.join("MANIFEST_FLAGS")).unwrap_or_default();
    let m = std::fs::read_to_string(
        fixtures()
            .join("manifests")
            .join(format!("{}.manifest", tree.trim())),
    )
    .unwrap();
    (m, flags)
}

/// nydus-image writes 0 as the root mtime for directory sources; blind that one field.
pub fn blind_root_mtime(m: &str) -> String {
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
}

pub fn assert_same_manifest(name: &str, got: &str, want: &str) {
    let (g, w) = (blind_root_mtime(got), blind_root_mtime(want));
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
}

pub fn config(blobs: &Path, validate: bool) -> RafsConfig {
    let mut c = RafsConfig::localfs(blobs);
    c.digest_validate = validate;
    c.enable_xattr = true;
    c
}

pub fn open(name: &str, validate: bool) -> RafsFs {
    let d = image_dir(name);
    RafsFs::open(&d.join("image.boot"), &config(&d.join("blobs"), validate)).unwrap()
}

/// Reads chunks through the RAFS fs's storage device.
pub struct DeviceSource<'a>(pub &'a RafsFs);

impl ChunkSource for DeviceSource<'_> {
    fn chunk_data(&mut self, _img: &RafsImage, c: &FileChunk) -> Result<Vec<u8>, RafsError> {
        self.0
            .device()
            .read_chunk(&c.chunk)
            .map(|d| d.to_vec())
            .map_err(|e| RafsError::corrupt(e.to_string()))
    }
}

#[derive(Default)]
pub struct VecWriter {
    pub data: Vec<u8>,
    /// Bytes that arrived through `write_from` (pread from a file, the zero-copy path).
    pub from_file: usize,
}

impl io::Write for VecWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.data.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for VecWriter {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let start = self.data.len();
        self.data.resize(start + count, 0);
        // SAFETY: the slice covers `count` bytes of our own, just-resized Vec.
        let s = unsafe { FileVolatileSlice::from_mut_slice(&mut self.data[start..]) };
        let n = f.read_at_volatile(s, off)?;
        self.data.truncate(start + n);
        self.from_file += n;
        Ok(n)
    }
    fn available_bytes(&self) -> usize {
        usize::MAX
    }
}

pub fn ctx() -> Context {
    Context::default()
}

pub fn cstr(s: &[u8]) -> CString {
    CString::new(s).unwrap()
}

/// Parsed manifest line: type, mode, owner, size, sha256 prefix, symlink target (hex).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub kind: String,
    pub mode: String,
    pub owner: String,
    pub size: String,
    pub target: String,
    pub sha: String,
    pub xattrs: String,
}

pub fn parse_manifest(m: &str) -> BTreeMap<String, Line> {
    m.lines()
        .map(|l| {
            // path may not contain spaces in these trees except escaped; split from the right.
            let f: Vec<&str> = l.rsplitn(12, ' ').collect();
            let f: Vec<&str> = f.into_iter().rev().collect();
            (
                f[0].to_string(),
                Line {
                    kind: f[1].into(),
                    mode: f[2].into(),
                    owner: f[3].into(),
                    size: f[4].into(),
                    target: f[8].into(),
                    sha: f[9].into(),
                    xattrs: f[10].into(),
                },
            )
        })
        .collect()
}

pub fn sha_prefix(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))[..24].to_string()
}

/// (inode, size) of `rel`, a path relative to the image root.
pub fn lookup_path(fs: &RafsFs, rel: &Path) -> io::Result<(u64, u64)> {
    let mut ino = fs.image().root_ino();
    let mut size = 0;
    for c in rel.components() {
        let e = fs.lookup(&ctx(), ino, &cstr(c.as_os_str().as_encoded_bytes()))?;
        ino = e.inode;
        size = e.attr.st_size as u64;
    }
    Ok((ino, size))
}

pub fn read_all(fs: &RafsFs, ino: u64, size: u64, step: u32) -> io::Result<Vec<u8>> {
    let mut w = VecWriter::default();
    let mut off = 0;
    while off < size {
        let n = fs.read(&ctx(), ino, 0, &mut w, step, off, None, 0)?;
        assert!(n > 0, "short read at {off} of {size}");
        off += n as u64;
    }
    // Reads past EOF return nothing.
    assert_eq!(fs.read(&ctx(), ino, 0, &mut w, step, size, None, 0)?, 0);
    Ok(w.data)
}

pub fn copy_fixture(name: &str, to: &Path) -> PathBuf {
    let src = image_dir(name);
    std::fs::create_dir_all(to.join("blobs")).unwrap();
    std::fs::copy(src.join("image.boot"), to.join("image.boot")).unwrap();
    for e in std::fs::read_dir(src.join("blobs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("blobs").join(e.file_name())).unwrap();
    }
    to.to_path_buf()
}

/// Read every regular file; return (paths that failed with EIO, paths read fine). Any file
/// that reads must have the right content.
pub fn read_tree(fs: &RafsFs, name: &str) -> (Vec<String>, Vec<String>) {
    let (want, _) = want_manifest(name);
    let want = parse_manifest(&want);
    let (mut bad, mut good) = (Vec::new(), Vec::new());
    for (p, l) in &want {
        // Non-UTF-8 names are escaped in manifests; they are covered by the walk tests.
        if l.kind != "f" || l.size == "0" || p.contains('\\') {
            continue;
        }
        let mut ino = fs.image().root_ino();
        for comp in p.split('/') {
            ino = fs
                .lookup(&ctx(), ino, &cstr(comp.as_bytes()))
                .unwrap()
                .inode;
        }
        match read_all(fs, ino, l.size.parse().unwrap(), 128 * 1024) {
            Ok(d) => {
                assert_eq!(sha_prefix(&d), l.sha, "{p}: wrong data served");
                good.push(p.clone());
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{p}");
                bad.push(p.clone());
            }
        }
    }
    (bad, good)
}

pub struct Mounted {
    pub mnt: PathBuf,
    session: FuseSession,
    threads: Vec<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Mounted {
    /// Mounts `fs`, or reports the running test skipped and returns None without /dev/fuse.
    pub fn new(fs: RafsFs) -> Option<Mounted> {
        if !Path::new("/dev/fuse").exists() {
            skip::skip("/dev/fuse not available");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut session = FuseSession::new(&mnt, "rafs-test", "", true).unwrap();
        session.set_allow_other(true);
        session.mount().unwrap();
        let vfs = Vfs::new(VfsOptions::default());
        vfs.mount(Box::new(fs), "/").unwrap();
        let server = Arc::new(Server::new(Arc::new(vfs)));
        let mut threads = Vec::new();
        for _ in 0..4 {
            let mut ch = session.new_channel().unwrap();
            let server = server.clone();
            threads.push(std::thread::spawn(move || {
                while let Ok(Some((r, w))) = ch.get_request() {
                    let _ = server.handle_message(r, w.into(), None, None);
                }
            }));
        }
        Some(Mounted {
            mnt,
            session,
            threads,
            _dir: dir,
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.session.umount();
        let _ = self.session.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// treemanifest.py: `$TREEMANIFEST`, else the in-repo copy (always there: a missing one
/// fails the test rather than skipping the exact comparison).
pub fn treemanifest() -> PathBuf {
    let p = std::env::var_os("TREEMANIFEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // In-repo copy of ../shared/tools/treemanifest.py.
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/builder_tools/treemanifest.py"
            ))
        });
    assert!(p.is_file(), "treemanifest.py not found at {}", p.display());
    p
}
