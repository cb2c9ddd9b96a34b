//! The shared host chunk cache (`cache.type` blobcache/filecache, in `work_dir`).
//!
//! One directory, `<work_dir>/rafs-chunks/`, serves every daemon process on the host. Each
//! decompressed chunk is keyed by the chunk's digest when the image has one (so identical
//! chunks of different images and blobs are stored once), else by blob id and uncompressed
//! offset. Small content-addressed chunks are records in shared pack files
//! ([`crate::storage::pack`]); the others are one immutable file each. Layout, locking and
//! eviction are described in docs/cache.md.
//!
//! * Files appear atomically: written under `tmp/`, then renamed into place.
//! * Fetches are single-flight across processes: a fetcher holds an exclusive `flock` on one
//!   of [`LOCK_STRIPES`] lock files chosen by the key, and re-checks the cache under it.
//! * Every file is verified (by the caller's check: crc32c or digest) the first time this
//!   process reads it; a corrupt file is removed and the chunk refetched. Files verified
//!   once are then served by `pread` straight into the FUSE reply ([`ChunkCache::open_verified`]).
//! * With a size limit, inserting past it evicts the least recently used files (mtime is
//!   bumped on use). Removing a file never disturbs a reader that has it open.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::rafs::Digester;
use crate::storage::pack::{PackKey, Packs};

/// Name of the cache's directory inside `work_dir`. Upstream nydusd uses
/// `<blob_id>.blob.data`, `<blob_id>.blob.meta` and `<blob_id>.chunk_map` files directly in
/// `work_dir`; nothing of ours has those names.
pub const CACHE_DIR: &str = "rafs-chunks";
/// Number of lock files fetchers serialise on.
pub const LOCK_STRIPES: u64 = 1024;
/// Files used within this long are not evicted.
const EVICT_GRACE: Duration = Duration::from_secs(2);

/// A blob id usable as one path component: itself when it is a plain name, else (it came
/// from an untrusted bootstrap) the hex SHA-256 of it.
pub fn safe_name(blob_id: &str) -> String {
    if crate::storage::localfs::check_blob_id(blob_id).is_ok() {
        blob_id.to_string()
    } else {
        use sha2::Digest;
        format!(
            "h-{}",
            hex::encode(sha2::Sha256::digest(blob_id.as_bytes()))
        )
    }
}

/// What a cached chunk is stored under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// Content address: digest of the uncompressed chunk, and its size.
    Digest {
        algo: Digester,
        digest: [u8; 32],
        size: u32,
    },
    /// A chunk without a known digest: its place in its blob.
    Blob {
        blob_id: String,
        uncompressed_offset: u64,
        size: u32,
    },
    /// The chunk of `chunk` as its blob stores it, compressed with `compressor`
    /// (`cache.compressed`): a file of compressed bytes, decompressed on every read.
    Compressed {
        chunk: Box<CacheKey>,
        compressor: crate::rafs::Compressor,
    },
}

impl CacheKey {
    /// Path relative to the cache directory.
    fn rel_path(&self) -> PathBuf {
        match self {
            CacheKey::Digest { algo, digest, size } => {
                let h = hex::encode(digest);
                PathBuf::from(algo.name())
                    .join(&h[..2])
                    .join(format!("{h}-{size:x}"))
            }
            CacheKey::Blob {
                blob_id,
                uncompressed_offset,
                size,
            } => PathBuf::from("blob")
                .join(safe_name(blob_id))
                .join(format!("{uncompressed_offset:x}-{size:x}")),
            CacheKey::Compressed { chunk, compressor } => {
                PathBuf::from(format!("z-{}", compressor.name())).join(chunk.rel_path())
            }
        }
    }

    /// The pack key when this chunk lives in a pack (small, content-addressed,
    /// uncompressed).
    fn packed(&self) -> Option<PackKey<'_>> {
        match self {
            CacheKey::Digest { algo, digest, size } if Packs::takes(*algo, *size) => {
                Some(PackKey {
                    algo: *algo,
                    digest,
                    size: *size,
                })
            }
            _ => None,
        }
    }

    fn stripe(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        // DefaultHasher::new() uses fixed keys, so every process picks the same stripe.
        self.hash(&mut h);
        h.finish() % LOCK_STRIPES
    }
}

/// Counters of the cache (this process's view).
#[derive(Default)]
pub struct CacheMetrics {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub inserts: AtomicU64,
    pub insert_errors: AtomicU64,
    pub corrupt: AtomicU64,
    pub evictions: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// A shared, persistent, verified, size-bounded chunk store.
pub struct ChunkCache {
    root: PathBuf,
    /// 0 = unbounded.
    limit: u64,
    /// Estimated bytes in the store (rescanned when it passes the limit).
    used: AtomicU64,
    /// Files this process has verified, by [`path_id`] (16 bytes each, not a path).
    verified: Mutex<HashSet<u128>>,
    /// Verified files kept open for warm reads (bounded), with when their mtime (the LRU
    /// clock of eviction) was last bumped.
    /// Keyed by the chunk key, not its path, so a warm read formats no path; the value
    /// keeps the file's [`path_id`] for eviction, which knows paths only.
    open_files: Mutex<lru::LruCache<CacheKey, OpenFile>>,
    evicting: Mutex<()>,
    /// Small content-addressed chunks, many to a file (storage::pack).
    packs: Packs,
    metrics: CacheMetrics,
}

/// A verified file kept open: the file, when its mtime was last bumped, its [`path_id`].
type OpenFile = (Arc<File>, std::time::Instant, u128);

pub use crate::storage::pack::Location;

/// A 128-bit identity of a cache file path (BLAKE3), so the verified set costs 16 bytes a
/// chunk however long the paths are.
fn path_id(p: &Path) -> u128 {
    let h = blake3::hash(p.as_os_str().as_encoded_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(b)
}

/// Verified chunk files one cache keeps open, at least: a warm read of an open one is one
/// `pread`, of a closed one an `open`, a `utimensat` and a `close` more.
pub const OPEN_FILES_MIN: usize = 256;
/// ... and at most.
pub const OPEN_FILES_MAX: usize = 4096;

/// How many chunk files a cache keeps open: an eighth of the soft RLIMIT_NOFILE (which the
/// daemon raises to the hard limit at start-up), within [`OPEN_FILES_MIN`]..=[`OPEN_FILES_MAX`].
/// With Debian's default hard limit of 1,048,576 (and 20,000 here) that is 4,096 (2,500):
/// the chunks of a 4 GiB (2.4 GiB) working set at 1 MiB a chunk.
pub fn open_files_cap() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit struct.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur as usize
    } else {
        0
    };
    (soft / 8).clamp(OPEN_FILES_MIN, OPEN_FILES_MAX)
}
/// A warm chunk's mtime is bumped at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(30);

/// Holds a fetch lock (exclusive `flock`) until dropped.
pub struct ChunkLock {
    _file: Option<File>,
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            walk(&p, f);
        } else if m.is_file() {
            f(&p, &m);
        }
    }
}

impl ChunkCache {
    /// Open (creating) the cache under `work_dir`, bounded to `size_limit` bytes (0: none).
    pub fn open(work_dir: &Path, size_limit: u64) -> io::Result<Arc<ChunkCache>> {
        let root = work_dir.join(CACHE_DIR);
        for d in ["tmp", "locks"] {
            fs::create_dir_all(root.join(d))?;
        }
        let c = ChunkCache {
            root: root.clone(),
            limit: size_limit,
            used: AtomicU64::new(0),
            verified: Mutex::new(HashSet::new()),
            open_files: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(open_files_cap())
                    .unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            evicting: Mutex::new(()),
            packs: Packs::new(&root),
            metrics: CacheMetrics::default(),
        };
        if c.limit > 0 {
            c.used.store(c.scan_usage(), Ordering::Relaxed);
        }
        Ok(Arc::new(c))
    }

    /// The cache directory (`<work_dir>/rafs-chunks`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    /// Counters as nydusd-like JSON.
    pub fn metrics_json(&self) -> serde_json::Value {
        let m = &self.metrics;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "work_dir": self.root.display().to_string(),
            "size_limit": self.limit,
            "used_bytes_estimate": self.used.load(Ordering::Relaxed),
            "hits": l(&m.hits),
            "misses": l(&m.misses),
            "inserts": l(&m.inserts),
            "insert_errors": l(&m.insert_errors),
            "corrupt": l(&m.corrupt),
            "evictions": l(&m.evictions),
            "bytes_written": l(&m.bytes_written),
        })
    }

    /// Absolute path of `key`'s own file (chunks that are not in a pack).
    pub fn path_of(&self, key: &CacheKey) -> PathBuf {
        self.root.join("data").join(key.rel_path())
    }

    /// Where `key`'s bytes are stored, if they are.
    pub fn locate(&self, key: &CacheKey) -> Option<Location> {
        if let Some(pk) = key.packed() {
            return self.packs.locate(&pk);
        }
        let path = self.path_of(key);
        path.is_file().then_some(Location { path, offset: 0 })
    }

    /// Every stored chunk whose key is its digest: algorithm, digest, and the bytes stored
    /// for it (in a file or a pack). For checks of the store by tests and tools.
    pub fn digest_chunks(&self) -> Vec<(Digester, [u8; 32], Vec<u8>)> {
        let mut out = self.packs.chunks();
        for algo in [Digester::Blake3, Digester::Sha256] {
            walk(&self.root.join("data").join(algo.name()), &mut |p, _| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let Some((h, _)) = name.split_once('-') else {
                    return;
                };
                let (Ok(d), Ok(data)) = (hex::decode(h), fs::read(p)) else {
                    return;
                };
                if let Ok(d) = <[u8; 32]>::try_from(d) {
                    out.push((algo, d, data));
                }
            });
        }
        out
    }

    /// The pack files of small chunks (storage::pack), for checks of the store.
    pub fn packs(&self) -> &Packs {
        &self.packs
    }

    /// Whether `key` is stored (unverified).
    pub fn contains(&self, key: &CacheKey) -> bool {
        match key.packed() {
            Some(pk) => self.packs.contains(&pk),
            None => self.path_of(key).is_file(),
        }
    }

    /// The bytes of `key` if cached and `check` accepts them. A file `check` rejects (or of
    /// the wrong size) is removed.
    pub fn get(&self, key: &CacheKey, check: &dyn Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        if let Some(pk) = key.packed() {
            return match self.packs.get(&pk, check) {
                Some(Ok(data)) => {
                    self.metrics.hits.fetch_add(1, Ordering::Relaxed);
                    Some(data)
                }
                Some(Err(e)) => {
                    log::warn!("chunk cache: {e}; fetching it again");
                    self.metrics.corrupt.fetch_add(1, Ordering::Relaxed);
                    self.metrics.misses.fetch_add(1, Ordering::Relaxed);
                    None
                }
                None => {
                    self.metrics.misses.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
        }
        let p = self.path_of(key);
        let mut f = match File::open(&p) {
            Ok(f) => f,
            Err(_) => {
                self.metrics.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let mut data = Vec::new();
        if f.read_to_end(&mut data).is_err() || !check(&data) {
            log::warn!("chunk cache: {} is corrupt; removing it", p.display());
            self.metrics.corrupt.fetch_add(1, Ordering::Relaxed);
            self.forget_file(&p);
            let _ = fs::remove_file(&p);
            self.metrics.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let _ = f.set_modified(SystemTime::now());
        self.verified.lock().insert(path_id(&p));
        self.metrics.hits.fetch_add(1, Ordering::Relaxed);
        Some(data)
    }

    /// An open file and the offset of `key`'s bytes in it, if this process has verified
    /// them before (for zero-copy reads). Packs and warm files stay open (at most
    /// [`open_files_cap`] files), so a warm read is one `pread`; stored bytes never change,
    /// so an open file stays right even if another process evicts it.
    pub fn open_verified(&self, key: &CacheKey) -> Option<(Arc<File>, u64)> {
        if let Some(pk) = key.packed() {
            let r = self.packs.open_verified(&pk);
            if r.is_some() {
                self.metrics.hits.fetch_add(1, Ordering::Relaxed);
            }
            return r;
        }
        self.open_file_verified(key).map(|f| (f, 0))
    }

    fn open_file_verified(&self, key: &CacheKey) -> Option<Arc<File>> {
        {
            let mut open = self.open_files.lock();
            if let Some((f, touched, _)) = open.get_mut(key) {
                if touched.elapsed() >= TOUCH_EVERY {
                    let _ = f.set_modified(SystemTime::now());
                    *touched = std::time::Instant::now();
                }
                self.metrics.hits.fetch_add(1, Ordering::Relaxed);
                return Some(f.clone());
            }
        }
        let p = self.path_of(key);
        let id = path_id(&p);
        if !self.verified.lock().contains(&id) {
            return None;
        }
        match File::open(&p) {
            Ok(f) => {
                self.metrics.hits.fetch_add(1, Ordering::Relaxed);
                // LRU clock for eviction.
                let _ = f.set_modified(SystemTime::now());
                let f = Arc::new(f);
                self.open_files
                    .lock()
                    .put(key.clone(), (f.clone(), std::time::Instant::now(), id));
                Some(f)
            }
            Err(_) => {
                self.verified.lock().remove(&id);
                None
            }
        }
    }

    /// Whether this process has verified `key` (it then serves it without reading it again).
    pub fn is_verified(&self, key: &CacheKey) -> bool {
        if let Some(pk) = key.packed() {
            return self.packs.is_verified(&pk);
        }
        self.open_files.lock().contains(key)
            || self.verified.lock().contains(&path_id(&self.path_of(key)))
    }

    /// Forgets what this process knew of the file at `p`.
    fn forget_file(&self, p: &Path) {
        let id = path_id(p);
        self.verified.lock().remove(&id);
        let mut open = self.open_files.lock();
        let key = open.iter().find(|(_, v)| v.2 == id).map(|(k, _)| k.clone());
        if let Some(k) = key {
            open.pop(&k);
        }
    }

    /// Take the cross-process fetch lock for `key` (best effort: without it, a fetch may be
    /// duplicated but nothing breaks).
    pub fn lock_chunk(&self, key: &CacheKey) -> ChunkLock {
        let p = self
            .root
            .join("locks")
            .join(format!("{:03x}", key.stripe()));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p);
        let file = match f {
            Ok(f) => {
                // SAFETY: flock on a valid, owned fd; no memory is involved.
                let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
                (r == 0).then_some(f)
            }
            Err(e) => {
                log::debug!("chunk cache: lock {}: {e}", p.display());
                None
            }
        };
        ChunkLock { _file: file }
    }

    /// Like [`ChunkCache::lock_chunk`] but never waits: `None` if another fetcher holds
    /// the stripe (used for amplified neighbours, so a fetcher never blocks while holding).
    pub fn try_lock_chunk(&self, key: &CacheKey) -> Option<ChunkLock> {
        let p = self
            .root
            .join("locks")
            .join(format!("{:03x}", key.stripe()));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .ok()?;
        // SAFETY: flock on a valid, owned fd; no memory is involved.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        (r == 0).then_some(ChunkLock { _file: Some(f) })
    }

    /// Store verified `data` under `key` (no-op if present).
    pub fn insert(&self, key: &CacheKey, data: &[u8]) -> io::Result<()> {
        let r = self.insert_inner(key, data);
        match &r {
            Ok(true) => {
                self.metrics.inserts.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let used =
                    self.used.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                if self.limit > 0 && used > self.limit {
                    self.evict();
                }
            }
            Ok(false) => {}
            Err(_) => {
                self.metrics.insert_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        r.map(|_| ())
    }

    fn insert_inner(&self, key: &CacheKey, data: &[u8]) -> io::Result<bool> {
        if self.limit > 0 && data.len() as u64 > self.limit {
            return Err(io::Error::other("chunk larger than the cache"));
        }
        if let Some(pk) = key.packed() {
            if data.len() != pk.size as usize {
                return Err(io::Error::other("chunk of the wrong size"));
            }
            return self.packs.insert(&pk, data);
        }
        let p = self.path_of(key);
        if p.is_file() {
            return Ok(false);
        }
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        self.write_atomically(&p, data)?;
        self.verified.lock().insert(path_id(&p));
        Ok(true)
    }

    fn scan_usage(&self) -> u64 {
        let mut total = 0;
        for d in ["data", crate::storage::pack::PACK_DIR] {
            walk(&self.root.join(d), &mut |_, m| total += m.len());
        }
        total
    }

    /// Bring the store under 90% of the limit, least recently used files first.
    fn evict(&self) {
        let Some(_g) = self.evicting.try_lock() else {
            return;
        };
        let mut files = Vec::new();
        walk(&self.root.join("data"), &mut |p, m| {
            let t = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.push((t, m.len(), p.to_path_buf()));
        });
        // A pack is evicted whole, with its index (a 256th of the small chunks).
        walk(self.packs.dir(), &mut |p, m| {
            if p.extension().is_some_and(|e| e == "pack") {
                let idx = fs::metadata(p.with_extension("idx")).map_or(0, |m| m.len());
                let t = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                files.push((t, m.len() + idx, p.to_path_buf()));
            }
        });
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let target = self.limit / 10 * 9;
        files.sort();
        let now = SystemTime::now();
        for (t, len, p) in files {
            if total <= target {
                break;
            }
            if now.duration_since(t).unwrap_or_default() < EVICT_GRACE {
                continue;
            }
            let removed = if p.starts_with(self.packs.dir()) {
                self.packs.evict(&p)
            } else {
                fs::remove_file(&p).is_ok()
            };
            if removed {
                total = total.saturating_sub(len);
                self.forget_file(&p);
                self.metrics.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.used.store(total, Ordering::Relaxed);
    }

    fn meta_path(&self, blob_id: &str) -> PathBuf {
        self.root
            .join("meta")
            .join(format!("{}.ci", safe_name(blob_id)))
    }

    /// The raw ci bytes of `blob_id` stored by [`ChunkCache::put_meta`], if intact (a
    /// SHA-256 trailer guards them; a damaged file is removed).
    pub fn get_meta(&self, blob_id: &str) -> Option<Vec<u8>> {
        use sha2::Digest;
        let p = self.meta_path(blob_id);
        let mut data = fs::read(&p).ok()?;
        if data.len() < 32 {
            let _ = fs::remove_file(&p);
            return None;
        }
        let body = data.len() - 32;
        let sum: [u8; 32] = sha2::Sha256::digest(&data[..body]).into();
        if sum[..] != data[body..] {
            log::warn!("chunk cache: {} is corrupt; removing it", p.display());
            self.metrics.corrupt.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(&p);
            return None;
        }
        data.truncate(body);
        Some(data)
    }

    /// Keep the raw ci bytes of `blob_id` (what was range-read from the blob), so a
    /// restarted daemon does not fetch them again.
    pub fn put_meta(&self, blob_id: &str, raw: &[u8]) -> io::Result<()> {
        use sha2::Digest;
        let p = self.meta_path(blob_id);
        if p.is_file() {
            return Ok(());
        }
        fs::create_dir_all(self.root.join("meta"))?;
        let mut data = raw.to_vec();
        data.extend_from_slice(&sha2::Sha256::digest(raw));
        self.write_atomically(&p, &data)
    }

    fn write_atomically(&self, p: &Path, data: &[u8]) -> io::Result<()> {
        // Unique per process (pid, and a random token: daemons in pid namespaces are all
        // pid 1) and per write in it (a process-wide counter: several caches over one
        // directory may live in one process).
        static TMP_SEQ: AtomicU64 = AtomicU64::new(0);
        static TOKEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let token = TOKEN.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            // RandomState is keyed from the OS's random source.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(u64::from(std::process::id()));
            h.finish()
        });
        let tmp = self.root.join("tmp").join(format!(
            "{}-{token:016x}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let res = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            drop(f);
            fs::rename(&tmp, p)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Remove temp files left by dead writers (older than a minute).
    pub fn clean_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(60))
                .unwrap_or(false);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk that gets a file of its own (no digest known).
    fn key(n: u8) -> CacheKey {
        CacheKey::Blob {
            blob_id: "blob".into(),
            uncompressed_offset: u64::from(n) << 20,
            size: 4,
        }
    }

    /// A small content-addressed chunk, which goes to a pack (shard `n`).
    fn pkey(n: u8) -> CacheKey {
        CacheKey::Digest {
            algo: Digester::Blake3,
            digest: [n; 32],
            size: 4,
        }
    }

    #[test]
    fn insert_get_persist() {
        let d = tempfile::tempdir().unwrap();
        // The same for a chunk with a file of its own and for one in a pack.
        for k in [key(1), pkey(1)] {
            let c = ChunkCache::open(d.path(), 0).unwrap();
            assert!(c.get(&k, &|_| true).is_none());
            c.insert(&k, b"abcd").unwrap();
            assert!(c.contains(&k));
            assert_eq!(c.get(&k, &|d| d == b"abcd").unwrap(), b"abcd");
            // A new instance (another process, a restart) sees it too, but must verify first.
            let c2 = ChunkCache::open(d.path(), 0).unwrap();
            assert!(c2.open_verified(&k).is_none());
            assert_eq!(c2.get(&k, &|_| true).unwrap(), b"abcd");
            assert!(c2.open_verified(&k).is_some());
        }
        // Nothing lands in upstream's file names.
        for e in fs::read_dir(d.path()).unwrap() {
            let n = e.unwrap().file_name().into_string().unwrap();
            assert_eq!(n, CACHE_DIR);
        }
    }

    #[test]
    fn small_digest_chunks_go_to_packs() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(d.path(), 0).unwrap();
        c.insert(&pkey(1), b"abcd").unwrap();
        let big = CacheKey::Digest {
            algo: Digester::Blake3,
            digest: [9; 32],
            size: crate::storage::pack::PACK_MAX + 1,
        };
        c.insert(
            &big,
            &vec![7u8; crate::storage::pack::PACK_MAX as usize + 1],
        )
        .unwrap();
        let l = c.locate(&pkey(1)).unwrap();
        assert!(l.path.starts_with(c.root().join("packs")));
        assert_eq!(c.locate(&big).unwrap().path, c.path_of(&big));
        assert!(!c.path_of(&pkey(1)).exists());
        // Another process verifies before it serves by pread, then serves at the offset.
        let c2 = ChunkCache::open(d.path(), 0).unwrap();
        assert!(c2.contains(&pkey(1)) && !c2.is_verified(&pkey(1)));
        assert!(c2.open_verified(&pkey(1)).is_none());
        assert!(c2.get(&pkey(1), &|d| d == b"bad!").is_none());
        assert_eq!(c2.metrics().corrupt.load(Ordering::Relaxed), 1);
        c2.insert(&pkey(1), b"abcd").unwrap();
        let (f, off) = c2.open_verified(&pkey(1)).unwrap();
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&*f, &mut b, off).unwrap();
        assert_eq!(&b, b"abcd");
        let mut all = c2.digest_chunks();
        all.sort_by_key(|x| x.1);
        assert_eq!(
            all.len(),
            3,
            "two copies of the refetched chunk, one big file"
        );
        // A pack that cannot be written is an insert error (the chunk then stays in memory).
        let d3 = tempfile::tempdir().unwrap();
        let c3 = ChunkCache::open(d3.path(), 0).unwrap();
        fs::write(c3.root().join("packs"), b"").unwrap();
        assert!(c3.insert(&pkey(2), b"abcd").is_err());
        assert_eq!(c3.metrics().insert_errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn packs_are_evicted_whole_by_size() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(d.path(), 100).unwrap();
        // Ten shards of 4 bytes and one 48-byte record each: the estimate (chunk bytes)
        // is 40, under the limit, so nothing is evicted yet.
        for n in 0..10u8 {
            c.insert(&pkey(n), b"abcd").unwrap();
        }
        assert_eq!(c.metrics().evictions.load(Ordering::Relaxed), 0);
        let old = SystemTime::now() - Duration::from_secs(100);
        for n in 0..5u8 {
            File::options()
                .write(true)
                .open(c.locate(&pkey(n)).unwrap().path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        // Past the limit: the store is rescanned, and the old packs go, index and all.
        let big = CacheKey::Digest {
            algo: Digester::Blake3,
            digest: [200; 32],
            size: 64,
        };
        c.insert(&big, &[1u8; 64]).unwrap();
        assert_eq!(c.metrics().evictions.load(Ordering::Relaxed), 5);
        for n in 0..5u8 {
            assert!(!c.contains(&pkey(n)), "old pack {n} kept");
            let p = c.root().join(format!("packs/blake3/{n:02x}.idx"));
            assert!(!p.exists());
        }
        for n in 5..10u8 {
            assert!(c.contains(&pkey(n)), "recent pack {n} evicted");
        }
        assert!(c.contains(&big));
    }

    #[test]
    fn corrupt_files_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(d.path(), 0).unwrap();
        c.insert(&key(2), b"good").unwrap();
        fs::write(c.locate(&key(2)).unwrap().path, b"bad!").unwrap();
        let c2 = ChunkCache::open(d.path(), 0).unwrap();
        assert!(c2.get(&key(2), &|d| d == b"good").is_none());
        assert!(!c2.contains(&key(2)));
        assert_eq!(c2.metrics().corrupt.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bounded_by_size() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(d.path(), 4 * 10).unwrap();
        for n in 0..10u8 {
            c.insert(&key(n), b"abcd").unwrap();
        }
        // One is open for warm reads.
        assert!(c.open_verified(&key(0)).is_some());
        // Age the first five so they are evictable (newer files are protected briefly).
        let old = SystemTime::now() - Duration::from_secs(100);
        for n in 0..5u8 {
            File::options()
                .write(true)
                .open(c.path_of(&key(n)))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        c.insert(&key(10), b"abcd").unwrap();
        assert!(c.metrics().evictions.load(Ordering::Relaxed) >= 1);
        assert!(c.scan_usage() <= 40);
        assert!(!c.contains(&key(0)));
        // What this process knew of an evicted file goes with it, open file included.
        assert!(!c.is_verified(&key(0)));
        assert!(c.open_verified(&key(0)).is_none());
        assert!(c.contains(&key(10)));
        // Chunks larger than the whole cache are refused, not stored.
        let big = vec![0u8; 41];
        assert!(c.insert(&key(11), &big).is_err());
    }

    #[test]
    fn meta_is_kept_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(d.path(), 0).unwrap();
        assert!(c.get_meta("blob1").is_none());
        c.put_meta("blob1", b"ci bytes").unwrap();
        assert_eq!(c.get_meta("blob1").unwrap(), b"ci bytes");
        let p = c.meta_path("blob1");
        let mut raw = fs::read(&p).unwrap();
        raw[0] ^= 1;
        fs::write(&p, raw).unwrap();
        assert!(c.get_meta("blob1").is_none());
        assert!(!p.exists());
        // Hostile ids never leave the cache directory.
        for id in ["../../etc/x", "a/b", ".."] {
            let p = c.meta_path(id);
            assert_eq!(p.parent().unwrap(), c.root().join("meta"));
            let k = CacheKey::Blob {
                blob_id: id.into(),
                uncompressed_offset: 0,
                size: 1,
            };
            assert!(c
                .path_of(&k)
                .starts_with(c.root().join("data").join("blob")));
            assert_eq!(
                c.path_of(&k).components().count(),
                c.root().join("data/blob/x/y").components().count()
            );
        }
    }

    #[test]
    fn unwritable_dir_is_an_insert_error() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(d.path(), 0).unwrap();
        fs::remove_dir_all(c.root().join("tmp")).unwrap();
        assert!(c.insert(&key(3), b"abcd").is_err());
        assert_eq!(c.metrics().insert_errors.load(Ordering::Relaxed), 1);
    }
}
