//! Pack files of the shared chunk cache: small content-addressed chunks, many to a file.
//!
//! A chunk file per small chunk costs a create, a write and a rename when it is cached, and
//! an open (once the open-file LRU is full) when it is read warm: for an image of many small
//! files that is most of the read path (docs/cache.md). Chunks of at most [`PACK_MAX`]
//! bytes whose digest is known go to packs instead:
//!
//! ```text
//! packs/<algo>/<xx>.pack   chunk bytes, appended          (xx: first digest byte, hex)
//! packs/<algo>/<xx>.idx    48-byte records, appended: digest, offset, size, crc
//! packs/<algo>/<xx>.lock   flock taken by appenders
//! ```
//!
//! * Still content-addressed and shared: every process on the host appends to and reads
//!   the same 256 shards per digest algorithm, so a chunk is stored once per host.
//! * Appends are serialised across processes by the shard's `flock`; the appender re-reads
//!   the index under it, so a chunk is appended once.
//! * Crash-safe: the bytes are written before their record, so a kill leaves at most bytes
//!   no record names (dead space). A torn record fails its CRC and is skipped; a torn tail
//!   (not a whole record) is cut by the next appender. A record's bytes are still verified
//!   by the cache's caller the first time a process reads them, so even a record whose
//!   bytes were lost (power failure) is never served.
//! * Bounded fds: two per shard in use, whatever the number of chunks.
//! * Eviction is per shard: removing `.idx` then `.pack` drops a 256th of the small chunks.
//!   A process whose index file was removed (link count 0) starts over from the new one;
//!   open files keep serving what they hold.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::rafs::Digester;

/// Largest chunk kept in a pack; larger ones get a file of their own.
pub const PACK_MAX: u32 = 64 << 10;
/// Directory of the packs inside the cache directory.
pub const PACK_DIR: &str = "packs";
/// Bytes of one index record.
const REC: usize = 48;
/// A shard's pack mtime (the eviction clock) is bumped at most this often by reads.
const TOUCH_EVERY: Duration = Duration::from_secs(30);
/// Digest algorithms with packs, in shard order.
const ALGOS: [Digester; 2] = [Digester::Blake3, Digester::Sha256];

/// A chunk as the packs know it: the digest's algorithm, the digest and the size.
#[derive(Clone, Copy, Debug)]
pub struct PackKey<'a> {
    pub algo: Digester,
    pub digest: &'a [u8; 32],
    pub size: u32,
}

impl PackKey<'_> {
    fn shard(&self) -> usize {
        let a = ALGOS.iter().position(|x| *x == self.algo).unwrap_or(0);
        a * 256 + usize::from(self.digest[0])
    }

    /// In-memory identity: the hash-table key (digest bytes 8..16) and a tag (bytes 16..20)
    /// with the size, checked on every lookup. 96 digest bits and the size, close to the
    /// cache's 128-bit path ids, in 16 bytes a chunk (a 1M-chunk image: about 24 MB).
    fn id(&self) -> (u64, u32, u32) {
        let key = u64::from_le_bytes(self.digest[8..16].try_into().unwrap_or_default());
        let tag = u32::from_le_bytes(self.digest[16..20].try_into().unwrap_or_default());
        (key, tag, self.size)
    }
}

#[derive(Clone, Copy)]
struct Entry {
    offset: u64,
    verified: bool,
}

/// One hash-table slot of [`Index`]: 16 bytes.
#[derive(Clone, Copy)]
struct Slot {
    /// Offset << 1 | verified.
    offset_verified: u64,
    tag: u32,
    size: u32,
}

/// A shard's known chunks. Two chunks whose keys collide share a slot, the later one
/// winning; a lookup of the other then misses (its tag or size differs) and the chunk is
/// fetched and appended again: never a wrong byte, at worst a refetch.
#[derive(Default)]
struct Index(HashMap<u64, Slot>);

impl Index {
    fn get(&self, k: &PackKey) -> Option<Entry> {
        let (key, tag, size) = k.id();
        let s = self
            .0
            .get(&key)
            .filter(|s| s.tag == tag && s.size == size)?;
        Some(Entry {
            offset: s.offset_verified >> 1,
            verified: s.offset_verified & 1 == 1,
        })
    }

    fn contains(&self, k: &PackKey) -> bool {
        self.get(k).is_some()
    }

    fn insert(&mut self, k: &PackKey, e: Entry) {
        let (key, tag, size) = k.id();
        self.0.insert(
            key,
            Slot {
                offset_verified: e.offset << 1 | u64::from(e.verified),
                tag,
                size,
            },
        );
    }

    fn remove(&mut self, k: &PackKey) {
        if self.contains(k) {
            self.0.remove(&k.id().0);
        }
    }
}

#[derive(Default)]
struct Shard {
    pack: Option<Arc<File>>,
    idx: Option<File>,
    /// Index bytes parsed so far.
    parsed: u64,
    map: Index,
    touched: Option<Instant>,
}

impl Shard {
    fn reset(&mut self) {
        *self = Shard::default();
    }
}

/// Where a chunk's bytes are: a file, and the offset in it (0 for a chunk's own file).
pub struct Location {
    pub path: PathBuf,
    pub offset: u64,
}

/// The packs of one cache directory.
pub struct Packs {
    dir: PathBuf,
    shards: Vec<Mutex<Shard>>,
}

fn record(digest: &[u8; 32], offset: u64, size: u32) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[..32].copy_from_slice(digest);
    r[32..40].copy_from_slice(&offset.to_le_bytes());
    r[40..44].copy_from_slice(&size.to_le_bytes());
    let crc = crc32c::crc32c(&r[..44]);
    r[44..48].copy_from_slice(&crc.to_le_bytes());
    r
}

/// A record's digest, offset and size, or `None` when its CRC is wrong.
fn parse(r: &[u8]) -> Option<([u8; 32], u64, u32)> {
    let crc = u32::from_le_bytes(r[44..48].try_into().ok()?);
    if crc32c::crc32c(&r[..44]) != crc {
        return None;
    }
    let digest: [u8; 32] = r[..32].try_into().ok()?;
    let offset = u64::from_le_bytes(r[32..40].try_into().ok()?);
    let size = u32::from_le_bytes(r[40..44].try_into().ok()?);
    Some((digest, offset, size))
}

/// Holds a shard's append lock until dropped.
struct AppendLock(#[allow(dead_code)] File);

impl Packs {
    /// The packs under `cache_root` (directories are made on the first append).
    pub fn new(cache_root: &Path) -> Packs {
        Packs {
            dir: cache_root.join(PACK_DIR),
            shards: (0..ALGOS.len() * 256).map(|_| Mutex::default()).collect(),
        }
    }

    /// Whether a chunk of `size` bytes digested by `algo` goes to a pack.
    pub fn takes(algo: Digester, size: u32) -> bool {
        size <= PACK_MAX && ALGOS.contains(&algo)
    }

    /// The directory of the packs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, shard: usize, ext: &str) -> PathBuf {
        self.dir
            .join(ALGOS[shard / 256].name())
            .join(format!("{:02x}.{ext}", shard % 256))
    }

    /// Open the shard's files if they exist (`create`: make them).
    fn open(&self, shard: usize, s: &mut Shard, create: bool) -> io::Result<bool> {
        if s.idx.is_some() && s.pack.is_some() {
            return Ok(true);
        }
        if create {
            fs::create_dir_all(self.path(shard, "idx").parent().unwrap_or(&self.dir))?;
        }
        let opt = |p: PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(p)
        };
        // The index first: a pack without an index holds nothing.
        let idx = match opt(self.path(shard, "idx")) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(false),
            Err(e) => return Err(e),
        };
        let pack = match opt(self.path(shard, "pack")) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(false),
            Err(e) => return Err(e),
        };
        s.reset();
        s.idx = Some(idx);
        s.pack = Some(Arc::new(pack));
        Ok(true)
    }

    /// Read the records appended since the last look. A removed index (evicted by some
    /// process) is dropped with everything learnt from it, and the new one is read.
    fn refresh(&self, shard: usize, s: &mut Shard, create: bool) -> io::Result<bool> {
        if let Some(idx) = &s.idx {
            if idx.metadata()?.nlink() == 0 {
                s.reset();
            }
        }
        if !self.open(shard, s, create)? {
            return Ok(false);
        }
        let Some(idx) = &s.idx else {
            return Ok(false);
        };
        let len = idx.metadata()?.len();
        let whole = len - len % REC as u64;
        if whole > s.parsed {
            let mut buf = vec![0u8; (whole - s.parsed) as usize];
            idx.read_exact_at(&mut buf, s.parsed)?;
            for r in buf.chunks_exact(REC) {
                let Some((digest, offset, size)) = parse(r) else {
                    log::warn!(
                        "chunk cache: a damaged record in {}",
                        self.path(shard, "idx").display()
                    );
                    continue;
                };
                let k = PackKey {
                    algo: ALGOS[shard / 256],
                    digest: &digest,
                    size,
                };
                // A later copy (the earlier one was found corrupt) replaces it.
                if s.map.get(&k).is_none_or(|e| e.offset != offset) {
                    s.map.insert(
                        &k,
                        Entry {
                            offset,
                            verified: false,
                        },
                    );
                }
            }
            s.parsed = whole;
        }
        Ok(true)
    }

    /// The entry of `k`, reading new records when this process does not know it yet.
    fn lookup(&self, k: &PackKey) -> Option<(Arc<File>, Entry)> {
        let shard = k.shard();
        let mut s = self.shards[shard].lock();
        if !s.map.contains(k) {
            if let Err(e) = self.refresh(shard, &mut s, false) {
                log::debug!(
                    "chunk cache: pack index {}: {e}",
                    self.path(shard, "idx").display()
                );
            }
        }
        let e = s.map.get(k)?;
        Some((s.pack.clone()?, e))
    }

    /// Whether `k` is in a pack (not yet verified by this process, maybe).
    pub fn contains(&self, k: &PackKey) -> bool {
        self.lookup(k).is_some()
    }

    /// Whether this process has verified `k`'s bytes.
    pub fn is_verified(&self, k: &PackKey) -> bool {
        let s = self.shards[k.shard()].lock();
        s.map.get(k).is_some_and(|e| e.verified)
    }

    /// `k`'s pack and offset if this process has verified its bytes there (for `pread`
    /// into the reply). Bumps the pack's mtime, the eviction clock, now and then.
    pub fn open_verified(&self, k: &PackKey) -> Option<(Arc<File>, u64)> {
        let mut s = self.shards[k.shard()].lock();
        let e = s.map.get(k).filter(|e| e.verified)?;
        let f = s.pack.clone()?;
        if s.touched.is_none_or(|t| t.elapsed() >= TOUCH_EVERY) {
            let _ = f.set_modified(SystemTime::now());
            s.touched = Some(Instant::now());
        }
        Some((f, e.offset))
    }

    /// The bytes of `k` when `check` accepts them; then they count as verified. Bytes it
    /// rejects are forgotten (`Err`), so the chunk is fetched and appended again.
    pub fn get(&self, k: &PackKey, check: &dyn Fn(&[u8]) -> bool) -> Option<io::Result<Vec<u8>>> {
        let (f, e) = self.lookup(k)?;
        let mut data = vec![0u8; k.size as usize];
        let ok = f.read_exact_at(&mut data, e.offset).is_ok() && check(&data);
        let mut s = self.shards[k.shard()].lock();
        let same = s.map.get(k).is_some_and(|x| x.offset == e.offset);
        if !ok {
            if same {
                s.map.remove(k);
            }
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "corrupt chunk at {} in {}",
                    e.offset,
                    self.path(k.shard(), "pack").display()
                ),
            )));
        }
        if same {
            s.map.insert(
                k,
                Entry {
                    offset: e.offset,
                    verified: true,
                },
            );
        }
        Some(Ok(data))
    }

    fn lock_append(&self, shard: usize) -> io::Result<AppendLock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.path(shard, "lock"))?;
        // SAFETY: flock on a valid, owned fd; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(AppendLock(f))
    }

    /// Append verified `data` as `k` unless some process already has. `Ok(true)`: appended.
    pub fn insert(&self, k: &PackKey, data: &[u8]) -> io::Result<bool> {
        debug_assert_eq!(data.len(), k.size as usize);
        let shard = k.shard();
        let mut s = self.shards[shard].lock();
        fs::create_dir_all(self.path(shard, "idx").parent().unwrap_or(&self.dir))?;
        let _lock = self.lock_append(shard)?;
        self.refresh(shard, &mut s, true)?;
        if s.map.contains(k) {
            return Ok(false);
        }
        let (Some(pack), Some(idx)) = (s.pack.clone(), s.idx.as_ref()) else {
            return Err(io::Error::other("pack not open"));
        };
        let offset = pack.metadata()?.len();
        if let Err(e) = pack.write_all_at(data, offset) {
            // Disk full or the like: give the space back; nothing names it.
            let _ = pack.set_len(offset);
            return Err(e);
        }
        let mut at = idx.metadata()?.len();
        if at % REC as u64 != 0 {
            // A writer died in the middle of a record: cut it.
            at -= at % REC as u64;
            idx.set_len(at)?;
        }
        idx.write_all_at(&record(k.digest, offset, k.size), at)?;
        if s.parsed == at {
            s.parsed += REC as u64;
        }
        s.map.insert(
            k,
            Entry {
                offset,
                verified: true,
            },
        );
        s.touched = Some(Instant::now());
        Ok(true)
    }

    /// Remove the shard whose pack is `pack_path` (eviction). Returns whether it was one.
    pub fn evict(&self, pack_path: &Path) -> bool {
        let Some(shard) = (0..self.shards.len()).find(|&i| self.path(i, "pack") == pack_path)
        else {
            return false;
        };
        let mut s = self.shards[shard].lock();
        let Ok(_lock) = self.lock_append(shard) else {
            return false;
        };
        let removed = fs::remove_file(self.path(shard, "idx")).is_ok();
        let _ = fs::remove_file(pack_path);
        s.reset();
        removed
    }

    /// Every indexed chunk: algorithm, digest, and the bytes the pack holds for it
    /// (for checks of the store by tests and tools).
    pub fn chunks(&self) -> Vec<(Digester, [u8; 32], Vec<u8>)> {
        let mut out = Vec::new();
        for shard in 0..self.shards.len() {
            let (Ok(idx), Ok(pack)) = (
                fs::read(self.path(shard, "idx")),
                File::open(self.path(shard, "pack")),
            ) else {
                continue;
            };
            for r in idx.chunks_exact(REC) {
                let Some((digest, offset, size)) = parse(r) else {
                    continue;
                };
                let mut data = vec![0u8; size as usize];
                let n = pack.read_at(&mut data, offset).unwrap_or(0);
                data.truncate(n);
                out.push((ALGOS[shard / 256], digest, data));
            }
        }
        out
    }

    /// Bytes of packs that no index record names: appends a kill cut short (or copies
    /// replaced after a failed check). Dead space, never served.
    pub fn dead_bytes(&self) -> u64 {
        let mut dead = 0;
        for shard in 0..self.shards.len() {
            let (Ok(idx), Ok(m)) = (
                fs::read(self.path(shard, "idx")),
                fs::metadata(self.path(shard, "pack")),
            ) else {
                continue;
            };
            let named: u64 = idx
                .chunks_exact(REC)
                .filter_map(parse)
                .map(|(_, _, size)| u64::from(size))
                .sum();
            dead += m.len().saturating_sub(named);
        }
        dead
    }

    /// Where the newest copy of `k` is (for tests that damage it).
    pub fn locate(&self, k: &PackKey) -> Option<Location> {
        let (_, e) = self.lookup(k)?;
        Some(Location {
            path: self.path(k.shard(), "pack"),
            offset: e.offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> [u8; 32] {
        *blake3::hash(&[n]).as_bytes()
    }

    fn pk(digest: &[u8; 32], size: u32) -> PackKey<'_> {
        PackKey {
            algo: Digester::Blake3,
            digest,
            size,
        }
    }

    #[test]
    fn append_find_and_share_between_processes() {
        let t = tempfile::tempdir().unwrap();
        let a = Packs::new(t.path());
        let b = Packs::new(t.path());
        let d1 = key(1);
        let k1 = pk(&d1, 5);
        assert!(!a.contains(&k1));
        assert!(a.insert(&k1, b"hello").unwrap());
        assert!(a.is_verified(&k1));
        // Another process (another Packs) finds it, but has not verified it.
        assert!(b.contains(&k1));
        assert!(!b.is_verified(&k1));
        assert!(b.open_verified(&k1).is_none());
        // It does not append it again.
        assert!(!b.insert(&k1, b"hello").unwrap());
        let got = b.get(&k1, &|d| d == b"hello").unwrap().unwrap();
        assert_eq!(got, b"hello");
        let (f, off) = b.open_verified(&k1).unwrap();
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(a.chunks().len(), 1);
    }

    #[test]
    fn corrupt_bytes_are_refused_and_a_new_copy_wins() {
        let t = tempfile::tempdir().unwrap();
        let a = Packs::new(t.path());
        let d = key(2);
        let k = pk(&d, 4);
        a.insert(&k, b"good").unwrap();
        let loc = a.locate(&k).unwrap();
        let f = OpenOptions::new().write(true).open(&loc.path).unwrap();
        f.write_all_at(b"bad!", loc.offset).unwrap();
        let b = Packs::new(t.path());
        assert!(b.get(&k, &|d| d == b"good").unwrap().is_err());
        // Forgotten, so the caller fetches and appends again; the new copy is served.
        assert!(b.insert(&k, b"good").unwrap());
        // The record of the first copy still names it; appending bytes without a record
        // (a kill between the two writes) leaves dead space.
        assert_eq!(b.dead_bytes(), 0);
        let pack = OpenOptions::new().append(true).open(&loc.path).unwrap();
        std::io::Write::write_all(&mut &pack, b"cut").unwrap();
        assert_eq!(b.dead_bytes(), 3);
        let c = Packs::new(t.path());
        assert_eq!(c.get(&k, &|d| d == b"good").unwrap().unwrap(), b"good");
    }

    #[test]
    fn torn_tails_and_damaged_records_are_skipped() {
        let t = tempfile::tempdir().unwrap();
        let a = Packs::new(t.path());
        // One shard (the same first byte).
        let same = |n: u8| {
            let mut d = key(n);
            d[0] = 0x33;
            d
        };
        let (d1, d2, d3) = (same(3), same(4), same(5));
        let k = |d| pk(d, 3);
        a.insert(&k(&d1), b"one").unwrap();
        let idx = a.path(k(&d1).shard(), "idx");
        // A damaged record and a torn half record after it.
        let mut bytes = fs::read(&idx).unwrap();
        let mut bad = record(&d2, 0, 3);
        bad[40] ^= 1;
        bytes.extend_from_slice(&bad);
        bytes.extend_from_slice(&record(&d3, 0, 3)[..20]);
        fs::write(&idx, &bytes).unwrap();
        let b = Packs::new(t.path());
        assert!(b.contains(&k(&d1)));
        assert!(!b.contains(&k(&d2)));
        // The next append cuts the torn tail, and its record is found.
        assert!(b.insert(&k(&d3), b"two").unwrap());
        assert_eq!(fs::metadata(&idx).unwrap().len(), 3 * REC as u64);
        let c = Packs::new(t.path());
        assert_eq!(c.get(&k(&d3), &|_| true).unwrap().unwrap(), b"two");
        assert_eq!(c.get(&k(&d1), &|_| true).unwrap().unwrap(), b"one");
    }

    #[test]
    fn colliding_keys_miss_and_never_serve_each_other() {
        let t = tempfile::tempdir().unwrap();
        let a = Packs::new(t.path());
        // Same shard and hash key (bytes 0 and 8..16), other tags.
        let mut d1 = [7u8; 32];
        let mut d2 = [7u8; 32];
        d1[16] = 1;
        d2[16] = 2;
        assert!(a.insert(&pk(&d1, 4), b"one!").unwrap());
        assert!(a.open_verified(&pk(&d2, 4)).is_none());
        assert!(!a.is_verified(&pk(&d2, 4)));
        // The second takes the slot; the first then misses, and is appended again.
        assert!(a.insert(&pk(&d2, 4), b"two!").unwrap());
        let (f, off) = a.open_verified(&pk(&d2, 4)).unwrap();
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, off).unwrap();
        assert_eq!(&b, b"two!");
        assert!(a.open_verified(&pk(&d1, 4)).is_none());
        // Same key and tag, another size: another chunk too.
        assert!(a.open_verified(&pk(&d2, 5)).is_none());
        // A fresh process sees the later record of the key.
        let b2 = Packs::new(t.path());
        assert_eq!(
            b2.get(&pk(&d2, 4), &|d| d == b"two!").unwrap().unwrap(),
            b"two!"
        );
        assert!(b2.get(&pk(&d1, 4), &|d| d == b"one!").is_none());
    }

    #[test]
    fn an_evicted_shard_is_started_over() {
        let t = tempfile::tempdir().unwrap();
        let a = Packs::new(t.path());
        let b = Packs::new(t.path());
        let d = key(6);
        let k = pk(&d, 3);
        a.insert(&k, b"abc").unwrap();
        assert!(b.contains(&k));
        let (f, off) = a.open_verified(&k).unwrap();
        assert!(b.evict(&b.path(k.shard(), "pack")));
        // An open pack keeps serving what it held.
        let mut buf = [0u8; 3];
        f.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(&buf, b"abc");
        // The evicting process sees it gone; the other starts over at its next append.
        assert!(!b.contains(&k));
        assert!(a.insert(&k, b"abc").unwrap());
        assert!(b.contains(&k));
        assert_eq!(b.chunks().len(), 1);
    }
}
