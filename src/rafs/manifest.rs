//! Whole-tree walk of an image producing the line format of `treemanifest.py`
//! (../shared/tools/treemanifest.py), plus [`LocalBlobs`], a small verified chunk reader over a
//! directory of blob files. Used by the fixture tests, round-trip tests and
//! `rafs-image check`/`unpack`.
//!
//! The walk is iterative (an explicit stack) and refuses directory loops, so a malicious image
//! can neither overflow the stack nor make it spin.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ci::{self, ChunkInfoArray};
use super::codec;
use super::error::{RafsError, Result};
use super::image::RafsImage;
use super::layout::PLACEHOLDER_BLOB_ID;
use super::toc;
use super::types::*;

/// Where file data comes from during a walk.
pub trait ChunkSource {
    /// The whole uncompressed, verified bytes of `chunk` (exactly `chunk.len` bytes).
    fn chunk_data(&mut self, image: &RafsImage, chunk: &FileChunk) -> Result<Vec<u8>>;
}

/// treemanifest.py flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManifestOptions {
    pub no_xattr: bool,
    pub no_owner: bool,
    pub no_mtime: bool,
    pub mtime_sec: bool,
}

impl ManifestOptions {
    /// Parse whitespace-separated treemanifest.py flags (`--mtime-sec` ...); unknown flags
    /// are an error.
    pub fn from_flags(flags: &str) -> std::result::Result<Self, String> {
        let mut o = ManifestOptions::default();
        for f in flags.split_whitespace() {
            match f {
                "--no-xattr" => o.no_xattr = true,
                "--no-owner" => o.no_owner = true,
                "--no-mtime" => o.no_mtime = true,
                "--mtime-sec" => o.mtime_sec = true,
                _ => return Err(format!("unknown manifest flag {f}")),
            }
        }
        Ok(o)
    }
}

/// One entry met by [`walk`]: its path relative to the root (`.` for the root) and attrs.
#[derive(Clone, Debug)]
pub struct WalkEntry {
    pub path: Vec<u8>,
    pub attr: InodeAttr,
}

/// Visit every entry of the tree, depth-first, parents before children, each directory's
/// entries in on-disk order. Fails on a directory reached twice (a loop or a directory hard
/// link) and on entries whose dirent and inode disagree.
pub fn walk(img: &RafsImage, f: &mut dyn FnMut(&WalkEntry) -> Result<()>) -> Result<()> {
    let root = img.getattr(img.root_ino())?;
    let mut seen_dirs: HashSet<u64> = HashSet::new();
    seen_dirs.insert(root.ino);
    let mut stack = vec![WalkEntry {
        path: b".".to_vec(),
        attr: root,
    }];
    while let Some(e) = stack.pop() {
        f(&e)?;
        if e.attr.mode & libc::S_IFMT != libc::S_IFDIR {
            continue;
        }
        let mut dents: Vec<DirEntry> = Vec::new();
        img.readdir(e.attr.ino, 0, &mut |d| {
            if d.name != b"." && d.name != b".." {
                dents.push(d);
            }
            true
        })?;
        let mut children = Vec::with_capacity(dents.len());
        for d in dents {
            let n = d.name;
            let attr = img.getattr(d.ino)?;
            let dt = super::layout::dt_of_file_type(super::layout::file_type_of_mode(attr.mode));
            if d.file_type != u32::from(libc::DT_UNKNOWN) && d.file_type != dt {
                return Err(RafsError::corrupt(format!(
                    "entry {:?}: dirent type {} but inode {} has mode {:#o}",
                    String::from_utf8_lossy(&n),
                    d.file_type,
                    d.ino,
                    attr.mode
                )));
            }
            if attr.mode & libc::S_IFMT == libc::S_IFDIR && !seen_dirs.insert(attr.ino) {
                return Err(RafsError::corrupt(format!(
                    "directory inode {} reached twice (loop)",
                    attr.ino
                )));
            }
            let path = if e.path == b"." {
                n
            } else {
                let mut p = e.path.clone();
                p.push(b'/');
                p.extend_from_slice(&n);
                p
            };
            children.push(WalkEntry { path, attr });
        }
        // Reverse so that the first child is popped first.
        stack.extend(children.into_iter().rev());
    }
    Ok(())
}

/// SHA-256 of a regular file's content, read through `src`, checking chunk coverage.
pub fn file_sha256(
    img: &RafsImage,
    attr: &InodeAttr,
    src: &mut dyn ChunkSource,
) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut pos = 0u64;
    for c in img.file_chunks(attr.ino, 0, attr.size)? {
        if c.file_offset < pos {
            return Err(RafsError::corrupt(format!(
                "inode {}: overlapping chunks at {}",
                attr.ino, c.file_offset
            )));
        }
        // Holes (v5 HAS_HOLE) read as zeros.
        let zeros = vec![0u8; (c.file_offset - pos).min(1 << 20) as usize];
        while pos < c.file_offset {
            let n = (c.file_offset - pos).min(zeros.len() as u64);
            h.update(&zeros[..n as usize]);
            pos += n;
        }
        let data = src.chunk_data(img, &c)?;
        if data.len() != c.len as usize {
            return Err(RafsError::BadData(format!(
                "inode {}: chunk at {} has {} bytes, expected {}",
                attr.ino,
                c.file_offset,
                data.len(),
                c.len
            )));
        }
        h.update(&data);
        pos += u64::from(c.len);
    }
    if pos > attr.size {
        return Err(RafsError::corrupt(format!(
            "inode {}: chunks cover {pos} bytes of a {}-byte file",
            attr.ino, attr.size
        )));
    }
    let zeros = [0u8; 4096];
    while pos < attr.size {
        let n = (attr.size - pos).min(4096);
        h.update(&zeros[..n as usize]);
        pos += n;
    }
    Ok(h.finalize().into())
}

/// Decode bytes as UTF-8 with Python's `backslashreplace`: invalid bytes become `\xNN`.
pub fn py_backslashreplace(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        s.push_str(chunk.valid());
        for c in chunk.invalid() {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

/// Linux `major()` of an encoded dev_t.
pub fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// Linux `minor()` of an encoded dev_t.
pub fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// The treemanifest.py output (one line per entry, sorted by path bytes, each ending in
/// `\n`) for the tree of `img`, reading file contents through `src`.
pub fn manifest(
    img: &RafsImage,
    opts: ManifestOptions,
    src: &mut dyn ChunkSource,
) -> Result<String> {
    let mut entries: Vec<WalkEntry> = Vec::new();
    walk(img, &mut |e| {
        entries.push(e.clone());
        Ok(())
    })?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    // Hard-link groups: regular files with nlink > 1, grouped by inode, named by the
    // smallest path.
    let mut groups: HashMap<u64, Vec<u8>> = HashMap::new();
    for e in &entries {
        if e.attr.mode & libc::S_IFMT == libc::S_IFREG && e.attr.nlink > 1 {
            groups.entry(e.attr.ino).or_insert_with(|| e.path.clone());
        }
    }
    let mut out = String::new();
    let mut digests: BTreeMap<u64, String> = BTreeMap::new();
    for e in &entries {
        let a = &e.attr;
        let fmt = a.mode & libc::S_IFMT;
        let kind = match fmt {
            libc::S_IFREG => "f",
            libc::S_IFDIR => "d",
            libc::S_IFLNK => "l",
            libc::S_IFCHR => "c",
            libc::S_IFBLK => "b",
            libc::S_IFIFO => "p",
            libc::S_IFSOCK => "s",
            _ => return Err(RafsError::corrupt(format!("inode {}: bad mode", a.ino))),
        };
        let target = if kind == "l" {
            hex::encode(img.readlink(a.ino)?)
        } else {
            "-".into()
        };
        let digest = if kind == "f" {
            match digests.get(&a.ino) {
                Some(d) => d.clone(),
                None => {
                    let d = hex::encode(file_sha256(img, a, src)?)[..24].to_string();
                    digests.insert(a.ino, d.clone());
                    d
                }
            }
        } else {
            "-".into()
        };
        let xa = if opts.no_xattr || kind == "l" {
            "-".to_string()
        } else {
            let mut names = img.list_xattrs(a.ino)?;
            names.sort();
            let mut parts = Vec::with_capacity(names.len());
            for n in names {
                let v = img.get_xattr(a.ino, &n)?.unwrap_or_default();
                parts.push(format!("{}={}", py_backslashreplace(&n), hex::encode(v)));
            }
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join(",")
            }
        };
        let owner = if opts.no_owner {
            "-:-".to_string()
        } else {
            format!("{}:{}", a.uid, a.gid)
        };
        let mtime = if opts.no_mtime || kind == "l" {
            "-".to_string()
        } else if opts.mtime_sec {
            a.mtime.to_string()
        } else {
            (u128::from(a.mtime) * 1_000_000_000 + u128::from(a.mtime_nsec)).to_string()
        };
        let size = if kind == "d" {
            "-".to_string()
        } else {
            a.size.to_string()
        };
        let nlink = if kind == "d" {
            "-".to_string()
        } else {
            a.nlink.to_string()
        };
        let rdev = if kind == "c" || kind == "b" {
            let d = u64::from(a.rdev);
            format!("{},{}", dev_major(d), dev_minor(d))
        } else {
            "-".into()
        };
        let mode = if kind == "l" {
            "-".to_string()
        } else {
            format!("{:o}", a.mode & 0o7777)
        };
        let grp = if kind == "f" && a.nlink > 1 {
            groups
                .get(&a.ino)
                .map_or("-".to_string(), |p| py_backslashreplace(p))
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{} {kind} {mode} {owner} {size} {mtime} {rdev} {nlink} {target} {digest} {xa} {grp}\n",
            py_backslashreplace(&e.path)
        ));
    }
    Ok(out)
}

/// A [`ChunkSource`] over a directory of blob files named by blob id (the layout of
/// nydus-image's `--blob-dir`). Loads each v6 blob's ci array once (from
/// `<blob_id>.blob.meta` if present, else from the blob), and verifies every chunk: its
/// size, its CRC-32C when recorded, and its digest when known (v5 records, the v6 bootstrap
/// chunk table, or the blob's `blob.digest`).
pub struct LocalBlobs {
    dir: PathBuf,
    files: HashMap<u32, File>,
    ci: HashMap<u32, ChunkInfoArray>,
    /// v6 chunk-table digests keyed by (blob index, ci index).
    table_digests: Option<HashMap<(u32, u32), [u8; 32]>>,
    /// Blob id overrides (e.g. for a bootstrap inlined in a blob, whose table has the
    /// placeholder id).
    ids: HashMap<u32, String>,
    /// Number of chunks verified by digest / by crc.
    pub digests_checked: u64,
    pub crcs_checked: u64,
}

impl LocalBlobs {
    /// Blobs are looked up as `dir/<blob_id>`.
    pub fn new(dir: &Path) -> Self {
        LocalBlobs {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            ci: HashMap::new(),
            table_digests: None,
            ids: HashMap::new(),
            digests_checked: 0,
            crcs_checked: 0,
        }
    }

    /// Read blob `blob_index` from file `name` in the directory instead of its blob id.
    pub fn with_blob_file(mut self, blob_index: u32, name: &str) -> Self {
        self.ids.insert(blob_index, name.to_string());
        self
    }

    fn path_of(&self, blob: &BlobInfo) -> Result<PathBuf> {
        let name = match self.ids.get(&blob.index) {
            Some(n) => n.clone(),
            None => {
                if blob.blob_id == PLACEHOLDER_BLOB_ID {
                    return Err(RafsError::corrupt(format!(
                        "blob {} has the placeholder id of an inlined bootstrap; name its file",
                        blob.index
                    )));
                }
                if blob.blob_id.is_empty()
                    || blob.blob_id.contains('/')
                    || blob.blob_id.starts_with('.')
                {
                    return Err(RafsError::corrupt(format!(
                        "blob {}: unusable blob id {:?}",
                        blob.index, blob.blob_id
                    )));
                }
                blob.blob_id.clone()
            }
        };
        Ok(self.dir.join(name))
    }

    fn file(&mut self, blob: &BlobInfo) -> Result<&File> {
        if !self.files.contains_key(&blob.index) {
            let p = self.path_of(blob)?;
            let f = File::open(&p).map_err(|source| RafsError::Io { path: p, source })?;
            self.files.insert(blob.index, f);
        }
        Ok(&self.files[&blob.index])
    }

    fn read_at(&mut self, blob: &BlobInfo, off: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.path_of(blob)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= 1 << 30)
            .ok_or_else(|| RafsError::corrupt(format!("absurd read of {len} bytes")))?;
        let mut buf = vec![0u8; len];
        self.file(blob)?
            .read_exact_at(&mut buf, off)
            .map_err(|source| RafsError::Io { path, source })?;
        Ok(buf)
    }

    fn whole_blob(&mut self, blob: &BlobInfo) -> Result<Vec<u8>> {
        let path = self.path_of(blob)?;
        std::fs::read(&path).map_err(|source| RafsError::Io { path, source })
    }

    /// The ci array of a v6 blob (loaded once).
    pub fn ci_array(&mut self, img: &RafsImage, blob_index: u32) -> Result<&ChunkInfoArray> {
        if !self.ci.contains_key(&blob_index) {
            let blob = img
                .blobs()
                .get(blob_index as usize)
                .ok_or_else(|| RafsError::corrupt(format!("no blob {blob_index}")))?
                .clone();
            let meta = self.dir.join(format!("{}.blob.meta", blob.blob_id));
            let mut arr = if meta.is_file() && blob.blob_id != PLACEHOLDER_BLOB_ID {
                let data = std::fs::read(&meta).map_err(|source| RafsError::Io {
                    path: meta.clone(),
                    source,
                })?;
                ChunkInfoArray::parse_blob_meta(&blob, &data)?
            } else {
                let (off, len) = ci::ci_range(&blob);
                let data = self.read_at(&blob, off, len)?;
                ChunkInfoArray::parse(&blob, &data)?
            };
            if blob.features & blob_features::INLINED_CHUNK_DIGEST != 0
                && blob.features & blob_features::HAS_TOC != 0
            {
                let whole = self.whole_blob(&blob)?;
                arr.set_digests(toc::chunk_digests(&whole, &blob)?)?;
            }
            self.ci.insert(blob_index, arr);
        }
        Ok(&self.ci[&blob_index])
    }

    fn table_digest(&mut self, img: &RafsImage, blob: u32, ci: u32) -> Result<Option<[u8; 32]>> {
        if img.version() != RafsVersion::V6 {
            return Ok(None);
        }
        if self.table_digests.is_none() {
            let mut m = HashMap::new();
            for r in img.chunk_records() {
                let r = r?;
                m.insert((r.blob_index, r.index), r.digest);
            }
            self.table_digests = Some(m);
        }
        Ok(self
            .table_digests
            .as_ref()
            .and_then(|m| m.get(&(blob, ci)).copied()))
    }
}

impl ChunkSource for LocalBlobs {
    fn chunk_data(&mut self, img: &RafsImage, chunk: &FileChunk) -> Result<Vec<u8>> {
        let blob = img
            .blobs()
            .get(chunk.chunk.blob_index() as usize)
            .ok_or_else(|| RafsError::corrupt("chunk refers to a missing blob"))?
            .clone();
        let info = match chunk.chunk {
            ChunkRef::Inline(c) => c,
            ChunkRef::Indexed {
                blob_index,
                ci_index,
                blkaddr,
            } => {
                let mut c = self.ci_array(img, blob_index)?.get(ci_index)?;
                if u64::from(blkaddr) * 4096 != c.uncompressed_offset {
                    return Err(RafsError::corrupt(format!(
                        "blob {blob_index} chunk {ci_index}: blkaddr {blkaddr} disagrees with \
                         uncompressed offset {}",
                        c.uncompressed_offset
                    )));
                }
                if let Some(d) = self.table_digest(img, blob_index, ci_index)? {
                    if c.digest.is_some_and(|x| x != d) {
                        return Err(RafsError::corrupt(format!(
                            "blob {blob_index} chunk {ci_index}: chunk table and blob.digest disagree"
                        )));
                    }
                    c.digest = Some(d);
                }
                c
            }
        };
        if info.uncompressed_size != chunk.len {
            return Err(RafsError::corrupt(format!(
                "blob {} chunk {}: {} bytes but the file expects {}",
                blob.index, info.index, info.uncompressed_size, chunk.len
            )));
        }
        let raw = self.read_at(
            &blob,
            info.compressed_offset,
            u64::from(info.compressed_size),
        )?;
        let data = if info.compressed {
            codec::decompress(blob.compressor, &raw, info.uncompressed_size as usize).map_err(
                |e| RafsError::BadData(format!("blob {} chunk {}: {e}", blob.index, info.index)),
            )?
        } else {
            raw
        };
        if let Some(crc) = info.crc32 {
            if codec::crc32c(&data) != crc {
                return Err(RafsError::BadData(format!(
                    "blob {} chunk {}: crc32c mismatch",
                    blob.index, info.index
                )));
            }
            self.crcs_checked += 1;
        }
        if let Some(d) = info.digest {
            if codec::digest(blob.digester, &data) != d {
                return Err(RafsError::BadData(format!(
                    "blob {} chunk {}: digest mismatch",
                    blob.index, info.index
                )));
            }
            self.digests_checked += 1;
        }
        Ok(data)
    }
}

/// Call every read-side API over the whole tree of `img`, ignoring errors (for fuzzing and
/// robustness sweeps: on a corrupt image it must return, never panic or hang). Stops after
/// 100,000 entries.
pub fn exercise_all(img: &RafsImage) {
    let _ = img.prefetch_inodes();
    let _ = img.chunk_table();
    let _ = img.getattr(img.root_ino());
    let mut n = 0u32;
    let _ = walk(img, &mut |e| {
        n += 1;
        if n > 100_000 {
            return Err(RafsError::corrupt("too many entries"));
        }
        let a = &e.attr;
        let _ = img.list_xattrs(a.ino);
        let _ = img.get_xattr(a.ino, b"user.plain");
        let _ = img.get_xattr(a.ino, b"system.posix_acl_access");
        match a.mode & libc::S_IFMT {
            libc::S_IFREG => {
                let _ = img.file_chunks(a.ino, 0, a.size);
                let _ = img.file_chunks(a.ino, a.size / 2, u64::MAX);
            }
            libc::S_IFLNK => {
                let _ = img.readlink(a.ino);
            }
            libc::S_IFDIR => {
                let _ = img.lookup(a.ino, b"..");
                let _ = img.lookup(a.ino, b".");
                let _ = img.lookup(a.ino, b"zzzz");
                let _ = img.lookup(a.ino, b"");
                let _ = img.readdir(a.ino, 3, &mut |_| true);
                let _ = img.readdir(a.ino, 1 << 16, &mut |_| true);
                let _ = img.readdir(a.ino, u64::MAX, &mut |_| true);
            }
            _ => {}
        }
        Ok(())
    });
}

/// The ci/ToC fuzz harness: `data` is a 256-byte v6 blob-table entry followed by blob bytes.
/// Runs the ToC, inlined-bootstrap, digest-array, ci-array and blob.meta parsers over it,
/// ignoring errors (must return, never panic).
pub fn exercise_blob(data: &[u8]) {
    use super::layout::BlobTableEntry;
    if data.len() < BlobTableEntry::SIZE {
        let _ = toc::Toc::from_blob(data, None);
        let _ = toc::extract_bootstrap(data);
        return;
    }
    let (entry, blob) = data.split_at(BlobTableEntry::SIZE);
    let Ok(e) = BlobTableEntry::parse(entry) else {
        return;
    };
    if let Ok(boot) = toc::extract_bootstrap(blob) {
        if let Ok(img) = RafsImage::from_bytes(boot) {
            exercise_all(&img);
        }
    }
    let Ok(info) = e.to_blob_info() else {
        return;
    };
    // Bound allocations: a table entry may legitimately ask for up to 400 MB of ci.
    if info.ci_uncompressed_size > 1 << 24 {
        return;
    }
    if let Ok(t) = toc::Toc::from_blob(blob, Some(&info)) {
        for e in &t.entries {
            let _ = toc::Toc::read_entry(blob, e);
        }
    }
    let digests = toc::chunk_digests(blob, &info);
    for mut a in [
        ChunkInfoArray::parse(&info, blob),
        ChunkInfoArray::parse_blob_meta(&info, blob),
    ]
    .into_iter()
    .flatten()
    {
        if let Ok(d) = &digests {
            let _ = a.set_digests(d.clone());
        }
        for k in 0..a.len().min(4096) as u32 {
            let _ = a.get(k);
        }
    }
}
