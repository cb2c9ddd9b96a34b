//! [`BlobDevice`]: the [`ChunkReader`] of one RAFS instance. It resolves chunk references
//! through each blob's ci array (loaded once per blob, single-flight), fetches compressed
//! ranges from the backend (merging neighbours up to `amplify_io`), decompresses, verifies
//! (CRC-32C whenever recorded; the digest when `digest_validate` is on) and caches.
//!
//! Lookup order for one chunk: the in-memory LRU of decompressed chunks, the shared host
//! chunk cache (if configured), then the backend. A chunk that fails verification is never
//! returned or cached.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use fuse_backend_rs::api::filesystem::ZeroCopyWriter;
use parking_lot::{Condvar, Mutex};

use super::cache::{CacheKey, ChunkCache, ChunkLock};
use super::flight::SingleFlight;
use super::{BlobBackend, ChunkReader, Result, StorageError};
use crate::rafs::ci::{self, ChunkInfoArray};
use crate::rafs::codec;
use crate::rafs::layout::{TocEntry, MAX_CHUNK_SIZE, PLACEHOLDER_BLOB_ID};
use crate::rafs::toc::Toc;
use crate::rafs::{blob_features, BlobInfo, ChunkInfo, ChunkRef, RafsImage, RafsVersion};

/// Default bound of the in-memory cache of decompressed chunks.
pub const DEFAULT_MEM_CACHE: u64 = 32 << 20;

/// How a [`BlobDevice`] behaves.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Verify each chunk's digest before serving it.
    pub digest_validate: bool,
    /// Merge backend reads of neighbouring chunks up to this many compressed bytes.
    pub amplify_io: u64,
    /// Where `<blob_id>.blob.meta` files may be found (nydusd's cache `work_dir`).
    pub work_dir: Option<PathBuf>,
    /// Bound of the in-memory LRU of decompressed chunks (0 disables it).
    pub mem_cache_bytes: u64,
    /// Keep chunks in the shared cache as the blob stores them (compressed), and
    /// decompress on each read that misses the in-memory LRU (nydusd's
    /// `cache.compressed`): less disk, more CPU per warm read.
    pub cache_compressed: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            digest_validate: false,
            amplify_io: crate::config::DEFAULT_AMPLIFY_IO,
            work_dir: None,
            mem_cache_bytes: DEFAULT_MEM_CACHE,
            cache_compressed: false,
        }
    }
}

/// Counters of one device.
#[derive(Default)]
pub struct DeviceMetrics {
    /// Chunks requested.
    pub chunk_reads: AtomicU64,
    /// Served from the in-memory LRU.
    pub mem_hits: AtomicU64,
    /// Served from the shared host cache.
    pub cache_hits: AtomicU64,
    /// Chunks fetched from the backend (amplified neighbours included).
    pub chunk_fetches: AtomicU64,
    /// Backend requests and compressed bytes fetched.
    pub backend_reads: AtomicU64,
    pub backend_bytes: AtomicU64,
    /// Chunks that failed CRC or digest verification.
    pub verify_errors: AtomicU64,
    /// ci arrays loaded (from blob.meta or the backend).
    pub ci_loads: AtomicU64,
    /// ci arrays taken from a valid `<work_dir>/<blob_id>.blob.meta` or from the copy kept
    /// in the shared cache.
    pub ci_from_meta: AtomicU64,
}

/// Digest and crc of a chunk by (blob index, ci index), from the bootstrap chunk table.
type ChunkTable = HashMap<(u32, u32), ([u8; 32], Option<u32>)>;
/// Decompressed chunk and its last-use tick, by (blob index, compressed offset).
type MemMap = HashMap<(u32, u64), (Arc<Vec<u8>>, u64)>;

/// A small LRU of decompressed chunks.
struct MemCache {
    cap: u64,
    used: u64,
    tick: u64,
    map: MemMap,
}

impl MemCache {
    fn contains(&self, k: &(u32, u64)) -> bool {
        self.map.contains_key(k)
    }

    fn get(&mut self, k: &(u32, u64)) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|e| {
            e.1 = t;
            e.0.clone()
        })
    }

    fn insert(&mut self, k: (u32, u64), v: Arc<Vec<u8>>) {
        let len = v.len() as u64;
        if len > self.cap {
            return;
        }
        self.tick += 1;
        if let Some(old) = self.map.insert(k, (v, self.tick)) {
            self.used -= old.0.len() as u64;
        }
        self.used += len;
        while self.used > self.cap {
            let Some((&victim, _)) = self.map.iter().min_by_key(|(_, e)| e.1) else {
                break;
            };
            if let Some(e) = self.map.remove(&victim) {
                self.used -= e.0.len() as u64;
            }
        }
    }
}

/// Per-blob lazily loaded state.
struct BlobState {
    info: BlobInfo,
    /// The ci array once loaded (read without a lock on every chunk lookup).
    ci_ready: std::sync::OnceLock<Arc<ChunkInfoArray>>,
    /// Held while loading, which makes loading single-flight.
    ci: Mutex<Option<Arc<ChunkInfoArray>>>,
    /// The `blob.digest` array (v6 with INLINED_CHUNK_DIGEST), loaded on demand.
    digests: Mutex<Option<Arc<Vec<u8>>>>,
}

/// The chunk reader of one RAFS instance.
pub struct BlobDevice {
    version: RafsVersion,
    blobs: Vec<BlobState>,
    backend: Arc<dyn BlobBackend>,
    opts: DeviceOptions,
    /// v6 bootstrap chunk table: digest and crc by (blob index, ci index).
    table: OnceLock<ChunkTable>,
    /// Records of the bootstrap chunk table, kept until the table is first needed.
    table_src: Mutex<Option<Vec<ChunkInfo>>>,
    flights: SingleFlight<(u32, u64), Arc<Vec<u8>>>,
    /// Chunks being fetched as amplified neighbours of another chunk; a reader of one waits
    /// for that fetch instead of starting its own.
    pending: Mutex<std::collections::HashSet<(u32, u64)>>,
    pending_cv: Condvar,
    mem: Mutex<MemCache>,
    cache: Option<Arc<ChunkCache>>,
    metrics: DeviceMetrics,
}

fn bad(info: &ChunkInfo, blob_id: &str, reason: impl Into<String>) -> StorageError {
    StorageError::BadChunk {
        blob_id: blob_id.to_string(),
        index: info.index,
        reason: reason.into(),
    }
}

impl BlobDevice {
    /// A device for `image`'s blobs. `blob_ids` gives the id to fetch each blob-table entry by
    /// (same length as `image.blobs()`; it replaces placeholder ids of inlined bootstraps).
    pub fn new(
        image: &RafsImage,
        blob_ids: Vec<String>,
        backend: Arc<dyn BlobBackend>,
        cache: Option<Arc<ChunkCache>>,
        opts: DeviceOptions,
    ) -> Result<BlobDevice> {
        if blob_ids.len() != image.blobs().len() {
            return Err(StorageError::Backend(format!(
                "{} blob ids for {} blobs",
                blob_ids.len(),
                image.blobs().len()
            )));
        }
        let mut blobs = Vec::new();
        for (b, id) in image.blobs().iter().zip(blob_ids) {
            if id == PLACEHOLDER_BLOB_ID || id.is_empty() {
                return Err(StorageError::Backend(format!(
                    "blob {} has no usable id (placeholder of an inlined bootstrap)",
                    b.index
                )));
            }
            let mut info = b.clone();
            info.blob_id = id;
            blobs.push(BlobState {
                info,
                ci_ready: std::sync::OnceLock::new(),
                ci: Mutex::new(None),
                digests: Mutex::new(None),
            });
        }
        let table_src = if image.version() == RafsVersion::V6 {
            match image.chunk_table() {
                Ok(t) => Some(t),
                Err(e) => {
                    log::warn!("bootstrap chunk table unreadable ({e}); digests come from blobs");
                    None
                }
            }
        } else {
            None
        };
        Ok(BlobDevice {
            version: image.version(),
            blobs,
            backend,
            mem: Mutex::new(MemCache {
                cap: opts.mem_cache_bytes,
                used: 0,
                tick: 0,
                map: HashMap::new(),
            }),
            opts,
            table: OnceLock::new(),
            table_src: Mutex::new(table_src),
            flights: SingleFlight::default(),
            pending: Mutex::new(std::collections::HashSet::new()),
            pending_cv: Condvar::new(),
            cache,
            metrics: DeviceMetrics::default(),
        })
    }

    pub fn metrics(&self) -> &DeviceMetrics {
        &self.metrics
    }

    /// The backend this device reads from.
    pub fn backend(&self) -> &Arc<dyn BlobBackend> {
        &self.backend
    }

    /// Counters as JSON.
    pub fn metrics_json(&self) -> serde_json::Value {
        let m = &self.metrics;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "chunk_reads": l(&m.chunk_reads),
            "mem_hits": l(&m.mem_hits),
            "cache_hits": l(&m.cache_hits),
            "chunk_fetches": l(&m.chunk_fetches),
            "backend_reads": l(&m.backend_reads),
            "backend_bytes": l(&m.backend_bytes),
            "verify_errors": l(&m.verify_errors),
            "ci_loads": l(&m.ci_loads),
            "ci_from_meta": l(&m.ci_from_meta),
        })
    }

    fn blob(&self, index: u32) -> Result<&BlobState> {
        self.blobs
            .get(index as usize)
            .ok_or(StorageError::NoSuchBlob(index))
    }

    /// The blob id chunk `blob_index` is fetched by.
    pub fn blob_id(&self, blob_index: u32) -> Result<&str> {
        Ok(&self.blob(blob_index)?.info.blob_id)
    }

    fn table(&self) -> &ChunkTable {
        self.table.get_or_init(|| {
            let src = self.table_src.lock().take().unwrap_or_default();
            src.into_iter()
                .map(|c| {
                    (
                        (c.blob_index, c.index),
                        (c.digest.unwrap_or_default(), c.crc32),
                    )
                })
                .collect()
        })
    }

    /// The ci array of blob `index`, loaded on first use: from `<work_dir>/<blob_id>.blob.meta`
    /// when that file is valid, else by a range read of the blob.
    pub fn ci_array(&self, index: u32) -> Result<Arc<ChunkInfoArray>> {
        let b = self.blob(index)?;
        if let Some(a) = b.ci_ready.get() {
            return Ok(a.clone());
        }
        let mut slot = b.ci.lock();
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let info = &b.info;
        let arr = match self.ci_from_meta_file(info) {
            Some(a) => {
                self.metrics.ci_from_meta.fetch_add(1, Ordering::Relaxed);
                a
            }
            None => {
                let kept = self.cache.as_ref().and_then(|c| c.get_meta(&info.blob_id));
                let kept = kept.and_then(|raw| match ChunkInfoArray::parse(info, &raw) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        log::debug!("kept ci of {} unusable: {e}", info.blob_id);
                        None
                    }
                });
                match kept {
                    Some(a) => {
                        self.metrics.ci_from_meta.fetch_add(1, Ordering::Relaxed);
                        a
                    }
                    None => self.fetch_ci(info)?,
                }
            }
        };
        self.metrics.ci_loads.fetch_add(1, Ordering::Relaxed);
        let arr = Arc::new(arr);
        *slot = Some(arr.clone());
        let _ = b.ci_ready.set(arr.clone());
        Ok(arr)
    }

    /// Range-read and parse a blob's ci array; keep the raw bytes in the shared cache.
    fn fetch_ci(&self, info: &BlobInfo) -> Result<ChunkInfoArray> {
        let (off, len) = ci::ci_range(info);
        if len > (64 << 20) + 4096 {
            return Err(StorageError::BadCi {
                blob_id: info.blob_id.clone(),
                reason: format!("ci array of {len} bytes is too large"),
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.backend_read(&info.blob_id, off, &mut buf)?;
        let arr = ChunkInfoArray::parse(info, &buf).map_err(|e| StorageError::BadCi {
            blob_id: info.blob_id.clone(),
            reason: e.to_string(),
        })?;
        if let Some(c) = &self.cache {
            if let Err(e) = c.put_meta(&info.blob_id, &buf) {
                log::debug!("keeping the ci of {}: {e}", info.blob_id);
            }
        }
        Ok(arr)
    }

    fn ci_from_meta_file(&self, info: &BlobInfo) -> Option<ChunkInfoArray> {
        let dir = self.opts.work_dir.as_ref()?;
        let p = dir.join(format!("{}.blob.meta", info.blob_id));
        let mut f = std::fs::File::open(&p).ok()?;
        let want = crate::rafs::layout::round_up(info.ci_uncompressed_size, 4096) + 4096;
        let len = f.metadata().ok()?.len();
        if len < want || want > (64 << 20) {
            log::debug!("{}: too short for a blob.meta, ignored", p.display());
            return None;
        }
        let mut data = vec![0u8; want as usize];
        f.read_exact(&mut data).ok()?;
        match ChunkInfoArray::parse_blob_meta(info, &data) {
            Ok(a) => Some(a),
            Err(e) => {
                log::debug!(
                    "{}: invalid ({e}), fetching the ci from the blob",
                    p.display()
                );
                None
            }
        }
    }

    fn backend_read(&self, blob_id: &str, off: u64, buf: &mut [u8]) -> Result<()> {
        self.metrics.backend_reads.fetch_add(1, Ordering::Relaxed);
        self.backend.read_range(blob_id, off, buf)?;
        self.metrics
            .backend_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Resolve a chunk reference to its full description (with digest/crc where known).
    pub fn chunk_info(&self, r: &ChunkRef) -> Result<ChunkInfo> {
        let mut c = match *r {
            ChunkRef::Inline(c) => c,
            ChunkRef::Indexed {
                blob_index,
                ci_index,
                ..
            } => {
                let arr = self.ci_array(blob_index)?;
                arr.get(ci_index).map_err(|e| StorageError::BadCi {
                    blob_id: self
                        .blob(blob_index)
                        .map(|b| b.info.blob_id.clone())
                        .unwrap_or_default(),
                    reason: e.to_string(),
                })?
            }
        };
        if c.uncompressed_size > MAX_CHUNK_SIZE || c.compressed_size > 2 * MAX_CHUNK_SIZE {
            let id = self.blob(c.blob_index)?.info.blob_id.clone();
            return Err(bad(&c, &id, "chunk larger than 16 MiB"));
        }
        if self.version == RafsVersion::V6 && (c.digest.is_none() || c.crc32.is_none()) {
            if let Some((d, crc)) = self.table().get(&(c.blob_index, c.index)) {
                if c.digest.is_none() && d.iter().any(|&x| x != 0) {
                    c.digest = Some(*d);
                }
                if c.crc32.is_none() {
                    c.crc32 = *crc;
                }
            }
        }
        Ok(c)
    }

    /// The digest of `c`, from the chunk itself or the blob's `blob.digest` array.
    fn digest_of(&self, c: &ChunkInfo) -> Result<Option<[u8; 32]>> {
        if c.digest.is_some() {
            return Ok(c.digest);
        }
        let b = self.blob(c.blob_index)?;
        let f = b.info.features;
        if f & blob_features::INLINED_CHUNK_DIGEST == 0 || f & blob_features::HAS_TOC == 0 {
            return Ok(None);
        }
        let digests = self.blob_digests(b)?;
        let i = c.index as usize * 32;
        Ok(digests.get(i..i + 32).map(|s| {
            let mut a = [0u8; 32];
            a.copy_from_slice(s);
            a
        }))
    }

    /// Load a blob's `blob.digest` section through its ToC with range reads.
    fn blob_digests(&self, b: &BlobState) -> Result<Arc<Vec<u8>>> {
        let mut slot = b.digests.lock();
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let info = &b.info;
        let err = |reason: String| StorageError::BadCi {
            blob_id: info.blob_id.clone(),
            reason,
        };
        let size = self.backend.blob_size(&info.blob_id)?;
        let tail = if info.toc_size > 0 {
            u64::from(info.toc_size)
        } else {
            size.min(4096)
        };
        if tail > size {
            return Err(err("ToC larger than the blob".into()));
        }
        let mut buf = vec![0u8; tail as usize];
        self.backend_read(&info.blob_id, size - tail, &mut buf)?;
        let toc = Toc::parse(&buf, Some(info.toc_digest)).map_err(|e| err(e.to_string()))?;
        let e = toc
            .find(crate::rafs::layout::TOC_ENTRY_BLOB_DIGEST)
            .ok_or_else(|| err("ToC has no blob.digest".into()))?;
        let want = u64::from(info.chunk_count) * 32;
        if e.uncompressed_size != want || e.compressed_size > want + 4096 {
            return Err(err(format!("blob.digest of {} bytes", e.uncompressed_size)));
        }
        let mut raw = vec![0u8; e.compressed_size as usize];
        self.backend_read(&info.blob_id, e.compressed_offset, &mut raw)?;
        let local = TocEntry {
            compressed_offset: 0,
            ..*e
        };
        let d = Toc::read_entry(&raw, &local).map_err(|e| err(e.to_string()))?;
        let d = Arc::new(d);
        *slot = Some(d.clone());
        Ok(d)
    }

    /// Check decompressed `data` against `c`: size, CRC-32C when recorded, digest when
    /// `digest_validate` is on (a chunk without any known digest then fails).
    pub fn verify(&self, c: &ChunkInfo, data: &[u8], with_digest: bool) -> Result<()> {
        let b = self.blob(c.blob_index)?;
        let id = &b.info.blob_id;
        let fail = |kind: &'static str| {
            self.metrics.verify_errors.fetch_add(1, Ordering::Relaxed);
            StorageError::Verify {
                blob_id: id.clone(),
                index: c.index,
                kind,
            }
        };
        if data.len() != c.uncompressed_size as usize {
            return Err(fail("size"));
        }
        if let Some(crc) = c.crc32 {
            if codec::crc32c(data) != crc {
                return Err(fail("crc32c"));
            }
        }
        if with_digest {
            let Some(d) = self.digest_of(c)? else {
                return Err(bad(
                    c,
                    id,
                    "digest validation is on but the chunk has no digest",
                ));
            };
            if codec::digest(b.info.digester, data) != d {
                return Err(fail("digest"));
            }
        }
        Ok(())
    }

    /// Decompress one chunk's payload.
    fn decode(&self, c: &ChunkInfo, raw: &[u8]) -> Result<Vec<u8>> {
        let b = self.blob(c.blob_index)?;
        let mut out = vec![0u8; c.uncompressed_size as usize];
        if c.compressed {
            codec::decompress_into(b.info.compressor, raw, &mut out)
                .map_err(|e| bad(c, &b.info.blob_id, e.to_string()))?;
        } else if raw.len() == out.len() {
            out.copy_from_slice(raw);
        } else {
            return Err(bad(
                c,
                &b.info.blob_id,
                "stored chunk with sizes that differ",
            ));
        }
        Ok(out)
    }

    /// The key of `c` in the shared cache: its digest when known, else blob id + offset.
    fn cache_key(&self, c: &ChunkInfo) -> Result<CacheKey> {
        let b = self.blob(c.blob_index)?;
        let key = match self.digest_of(c).ok().flatten() {
            Some(d) => CacheKey::Digest {
                algo: b.info.digester,
                digest: d,
                size: c.uncompressed_size,
            },
            None => CacheKey::Blob {
                blob_id: b.info.blob_id.clone(),
                uncompressed_offset: c.uncompressed_offset,
                size: c.uncompressed_size,
            },
        };
        Ok(if self.opts.cache_compressed {
            CacheKey::Compressed {
                chunk: Box::new(key),
                compressor: if c.compressed {
                    b.info.compressor
                } else {
                    crate::rafs::Compressor::None
                },
            }
        } else {
            key
        })
    }

    /// Neighbours of `c` to fetch in the same backend request (contiguous compressed ranges,
    /// total at most `amplify_io`), not already cached.
    /// The chosen neighbours are claimed: marked pending in this process, and (with the
    /// shared cache) their fetch locks taken without waiting, so other threads and processes
    /// wait for this fetch instead of duplicating it.
    fn neighbours(&self, c: &ChunkInfo) -> (Vec<ChunkInfo>, Vec<ChunkLock>) {
        let mut out = Vec::new();
        let mut locks = Vec::new();
        let limit = self.opts.amplify_io;
        if limit <= u64::from(c.compressed_size) {
            return (out, locks);
        }
        let Ok(arr) = self.ci_array_if_v6(c) else {
            return (out, locks);
        };
        let Some(arr) = arr else {
            return (out, locks);
        };
        let mut total = u64::from(c.compressed_size);
        let mut end = c.compressed_offset + u64::from(c.compressed_size);
        let mut next = c.index + 1;
        while (next as usize) < arr.len() {
            let Ok(mut n) = arr.get(next) else { break };
            if n.compressed_offset != end || total + u64::from(n.compressed_size) > limit {
                break;
            }
            if n.uncompressed_size > MAX_CHUNK_SIZE {
                break;
            }
            let nk = (n.blob_index, n.compressed_offset);
            if self.mem.lock().map.contains_key(&nk) || self.flights.is_running(&nk) {
                break;
            }
            if let Some((d, crc)) = self.table().get(&(n.blob_index, n.index)) {
                if n.digest.is_none() && d.iter().any(|&x| x != 0) {
                    n.digest = Some(*d);
                }
                if n.crc32.is_none() {
                    n.crc32 = *crc;
                }
            }
            if let Some(cache) = &self.cache {
                let Ok(k) = self.cache_key(&n) else { break };
                if cache.contains(&k) {
                    break;
                }
                let Some(l) = cache.try_lock_chunk(&k) else {
                    break;
                };
                // Another process may have stored it just before we locked.
                if cache.contains(&k) {
                    break;
                }
                locks.push(l);
            }
            if !self.pending.lock().insert(nk) {
                break;
            }
            total += u64::from(n.compressed_size);
            end += u64::from(n.compressed_size);
            out.push(n);
            next += 1;
        }
        (out, locks)
    }

    /// Wait while chunk `key` is being fetched as another chunk's neighbour.
    fn wait_pending(&self, key: &(u32, u64)) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        let mut p = self.pending.lock();
        while p.contains(key) && std::time::Instant::now() < deadline {
            self.pending_cv
                .wait_for(&mut p, std::time::Duration::from_millis(100));
        }
    }

    fn ci_array_if_v6(&self, c: &ChunkInfo) -> Result<Option<Arc<ChunkInfoArray>>> {
        if self.version != RafsVersion::V6 {
            return Ok(None);
        }
        self.ci_array(c.blob_index).map(Some)
    }

    /// Fetch `c` (and amplified neighbours) from the backend; verify; cache.
    fn fetch(&self, c: &ChunkInfo) -> Result<Arc<Vec<u8>>> {
        let b = self.blob(c.blob_index)?;
        let id = b.info.blob_id.clone();
        let (extra, _locks) = self.neighbours(c);
        // Unclaim the neighbours however this fetch ends (after the locks' release order
        // does not matter: the cache is re-checked under the lock by waiters).
        struct Unclaim<'a> {
            dev: &'a BlobDevice,
            keys: Vec<(u32, u64)>,
        }
        impl Drop for Unclaim<'_> {
            fn drop(&mut self) {
                let mut p = self.dev.pending.lock();
                for k in &self.keys {
                    p.remove(k);
                }
                self.dev.pending_cv.notify_all();
            }
        }
        let _unclaim = Unclaim {
            dev: self,
            keys: extra
                .iter()
                .map(|n| (n.blob_index, n.compressed_offset))
                .collect(),
        };
        let total: u64 = u64::from(c.compressed_size)
            + extra
                .iter()
                .map(|n| u64::from(n.compressed_size))
                .sum::<u64>();
        let mut raw = vec![0u8; total as usize];
        self.backend_read(&id, c.compressed_offset, &mut raw)?;
        self.metrics
            .chunk_fetches
            .fetch_add(1 + extra.len() as u64, Ordering::Relaxed);
        let validate = self.opts.digest_validate;
        let first = &raw[..c.compressed_size as usize];
        let data = self.decode(c, first)?;
        self.verify(c, &data, validate)?;
        let data = Arc::new(data);
        self.store(c, &data, first);
        let mut pos = c.compressed_size as usize;
        for n in &extra {
            let r = &raw[pos..pos + n.compressed_size as usize];
            pos += n.compressed_size as usize;
            match self
                .decode(n, r)
                .and_then(|d| self.verify(n, &d, validate).map(|_| d))
            {
                Ok(d) => self.store(n, &Arc::new(d), r),
                Err(e) => log::warn!("amplified read: {e}"),
            }
        }
        Ok(data)
    }

    /// Keep a verified chunk (`data`; `raw` as the blob stores it): in the shared cache
    /// when there is one (later reads are then served from its file by pread, straight
    /// into the reply), else, or if that fails (e.g. disk full), in the in-memory LRU. A
    /// compressed cache keeps `raw`, and the LRU keeps `data` too.
    fn store(&self, c: &ChunkInfo, data: &Arc<Vec<u8>>, raw: &[u8]) {
        if let Some(cache) = &self.cache {
            if let Ok(k) = self.cache_key(c) {
                let compressed = matches!(k, CacheKey::Compressed { .. });
                match cache.insert(&k, if compressed { raw } else { data }) {
                    Ok(()) if !compressed => return,
                    Ok(()) => {}
                    Err(e) => log::debug!("chunk cache insert failed: {e}"),
                }
            }
        }
        self.mem
            .lock()
            .insert((c.blob_index, c.compressed_offset), data.clone());
    }

    /// Verified bytes of chunk `c` from the shared cache, if there.
    fn cached(&self, c: &ChunkInfo) -> Option<Arc<Vec<u8>>> {
        let cache = self.cache.as_ref()?;
        let key = self.cache_key(c).ok()?;
        let validate = self.opts.digest_validate;
        let content_key = match &key {
            CacheKey::Compressed { chunk, .. } => chunk.as_ref(),
            k => k,
        };
        // A cached chunk is checked by its crc, or by its digest when that is its key or
        // validation is on; a corrupt file is dropped and the chunk refetched.
        let by_digest =
            validate || (c.crc32.is_none() && matches!(content_key, CacheKey::Digest { .. }));
        if let CacheKey::Compressed { .. } = key {
            let out = std::cell::RefCell::new(None);
            cache.get(&key, &|raw: &[u8]| match self.decode(c, raw) {
                Ok(d) if self.verify(c, &d, by_digest).is_ok() => {
                    *out.borrow_mut() = Some(d);
                    true
                }
                _ => false,
            })?;
            let data = Arc::new(out.into_inner()?);
            self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.mem
                .lock()
                .insert((c.blob_index, c.compressed_offset), data.clone());
            return Some(data);
        }
        let data = cache.get(&key, &|d: &[u8]| self.verify(c, d, by_digest).is_ok())?;
        self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(Arc::new(data))
    }

    /// The whole verified chunk.
    fn get(&self, c: &ChunkInfo) -> Result<Arc<Vec<u8>>> {
        self.metrics.chunk_reads.fetch_add(1, Ordering::Relaxed);
        let key = (c.blob_index, c.compressed_offset);
        if let Some(d) = self.mem.lock().get(&key) {
            self.metrics.mem_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        let (r, _) = self.flights.run(key, || {
            self.wait_pending(&key);
            if let Some(d) = self.mem.lock().get(&key) {
                return Ok(d);
            }
            if let Some(d) = self.cached(c) {
                return Ok(d);
            }
            match &self.cache {
                Some(cache) => {
                    // Across processes: one fetch per chunk, others wait for the file.
                    let ck = self.cache_key(c)?;
                    let _lock = cache.lock_chunk(&ck);
                    if let Some(d) = self.cached(c) {
                        return Ok(d);
                    }
                    self.fetch(c)
                }
                None => self.fetch(c),
            }
        });
        r
    }
}

impl BlobDevice {
    /// Makes sure chunk `chunk` is cached and verified, without reading it when it already
    /// is (readahead and prefetch: a warm chunk costs a set lookup, not a copy and a CRC).
    pub fn ensure_chunk(&self, chunk: &ChunkRef) -> Result<()> {
        let c = self.chunk_info(chunk)?;
        if self.info_is_warm(&c) {
            return Ok(());
        }
        self.get(&c).map(|_| ())
    }

    /// Whether chunk `chunk` can be served without a backend fetch and without reading it
    /// whole: it is in the memory LRU, or verified in the shared cache by this process.
    pub fn is_warm(&self, chunk: &ChunkRef) -> bool {
        self.chunk_info(chunk).is_ok_and(|c| self.info_is_warm(&c))
    }

    fn info_is_warm(&self, c: &ChunkInfo) -> bool {
        if self
            .mem
            .lock()
            .contains(&(c.blob_index, c.compressed_offset))
        {
            return true;
        }
        match (&self.cache, self.cache_key(c)) {
            (Some(cache), Ok(k)) => cache.is_verified(&k),
            _ => false,
        }
    }
}

impl ChunkReader for BlobDevice {
    fn read_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        let c = self.chunk_info(chunk)?;
        self.get(&c)
    }

    fn write_chunk_range(
        &self,
        chunk: &ChunkRef,
        offset: usize,
        len: usize,
        w: &mut dyn ZeroCopyWriter,
    ) -> Result<usize> {
        let c = self.chunk_info(chunk)?;
        let len = len.min((c.uncompressed_size as usize).saturating_sub(offset));
        if let Some(d) = self.mem.lock().get(&(c.blob_index, c.compressed_offset)) {
            self.metrics.chunk_reads.fetch_add(1, Ordering::Relaxed);
            self.metrics.mem_hits.fetch_add(1, Ordering::Relaxed);
            return super::write_window(&d, offset, len, w);
        }
        if let Some(cache) = self.cache.as_ref().filter(|_| !self.opts.cache_compressed) {
            let key = self.cache_key(&c)?;
            if let Some((file, base)) = cache.open_verified(&key) {
                // SAFETY: a File view of the cache's open fd that is never dropped (the Arc
                // keeps the fd open for the whole borrow).
                let mut f = std::mem::ManuallyDrop::new(unsafe {
                    <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(
                        std::os::fd::AsRawFd::as_raw_fd(&*file),
                    )
                });
                let f = &mut *f;
                let id = self.blob(c.blob_index)?.info.blob_id.clone();
                // Verified earlier by this process: pread straight into the reply buffers.
                self.metrics.chunk_reads.fetch_add(1, Ordering::Relaxed);
                self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                let mut done = 0;
                while done < len {
                    let n = w
                        .write_from(f, len - done, base + (offset + done) as u64)
                        .map_err(|source| StorageError::Io {
                            blob_id: id.clone(),
                            source,
                        })?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                if done == len {
                    return Ok(done);
                }
                return Err(StorageError::BadChunk {
                    blob_id: id,
                    index: c.index,
                    reason: "cached chunk file is short".into(),
                });
            }
        }
        let data = self.get(&c)?;
        super::write_window(&data, offset, len, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::localfs::LocalFsBackend;
    use std::path::Path;
    use std::time::Duration;

    fn fixture(name: &str) -> (RafsImage, PathBuf) {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/images")
            .join(name);
        (
            RafsImage::open(&d.join("image.boot")).unwrap(),
            d.join("blobs"),
        )
    }

    /// A backend that counts reads and is slow.
    struct Slow {
        inner: LocalFsBackend,
        reads: AtomicU64,
        delay: Duration,
    }

    impl BlobBackend for Slow {
        fn kind(&self) -> &'static str {
            "slow"
        }
        fn read_range(&self, id: &str, off: u64, buf: &mut [u8]) -> Result<()> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            self.inner.read_range(id, off, buf)
        }
        fn blob_size(&self, id: &str) -> Result<u64> {
            self.inner.blob_size(id)
        }
    }

    fn device(name: &str, opts: DeviceOptions, delay: Duration) -> (BlobDevice, Arc<Slow>) {
        let (img, blobs) = fixture(name);
        let slow = Arc::new(Slow {
            inner: LocalFsBackend::from_dir(&blobs),
            reads: AtomicU64::new(0),
            delay,
        });
        let ids = img.blobs().iter().map(|b| b.blob_id.clone()).collect();
        let dev = BlobDevice::new(&img, ids, slow.clone(), None, opts).unwrap();
        (dev, slow)
    }

    fn idx(ci_index: u32) -> ChunkRef {
        ChunkRef::Indexed {
            blob_index: 0,
            ci_index,
            blkaddr: 0,
        }
    }

    #[test]
    fn digest_only_verification() {
        let (dev, _) = device("v6-zstd-64k-base", DeviceOptions::default(), Duration::ZERO);
        let c = dev.chunk_info(&idx(0)).unwrap();
        assert!(c.digest.is_some(), "chunk table digest merged in");
        let data = dev.read_chunk(&idx(0)).unwrap();
        let mut c = c;
        c.crc32 = None;
        dev.verify(&c, &data, true).unwrap();
        let mut bad = data.to_vec();
        bad[0] ^= 1;
        // Without crc and without validation nothing can notice; with validation the digest does.
        dev.verify(&c, &bad, false).unwrap();
        assert!(matches!(
            dev.verify(&c, &bad, true),
            Err(StorageError::Verify { kind: "digest", .. })
        ));
        // Validation on but no digest known anywhere: refused, not served unverified.
        c.digest = None;
        assert!(matches!(
            dev.verify(&c, &data, true),
            Err(StorageError::BadChunk { .. })
        ));
    }

    #[test]
    fn amplification_merges_backend_reads() {
        let (img, _) = fixture("v6-zstd-64k-base");
        let n = img.blobs()[0].chunk_count;
        assert!(n > 8);
        let mut counts = Vec::new();
        for amplify in [0u64, 1 << 20] {
            let opts = DeviceOptions {
                amplify_io: amplify,
                ..Default::default()
            };
            let (dev, slow) = device("v6-zstd-64k-base", opts, Duration::ZERO);
            dev.ci_array(0).unwrap();
            let after_ci = slow.reads.load(Ordering::SeqCst);
            for i in 0..n {
                dev.read_chunk(&idx(i)).unwrap();
            }
            counts.push(slow.reads.load(Ordering::SeqCst) - after_ci);
        }
        assert_eq!(
            counts[0],
            u64::from(n),
            "one read per chunk without amplification"
        );
        assert!(counts[1] < counts[0] / 4, "amplified reads: {counts:?}");
    }

    #[test]
    fn concurrent_reads_of_one_chunk_fetch_once() {
        let opts = DeviceOptions {
            amplify_io: 0,
            ..Default::default()
        };
        let (dev, slow) = device("v6-zstd-64k-base", opts, Duration::from_millis(200));
        dev.ci_array(0).unwrap();
        let before = slow.reads.load(Ordering::SeqCst);
        let dev = Arc::new(dev);
        let ts: Vec<_> = (0..8)
            .map(|_| {
                let dev = dev.clone();
                std::thread::spawn(move || dev.read_chunk(&idx(3)).unwrap())
            })
            .collect();
        let outs: Vec<_> = ts.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(outs.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(slow.reads.load(Ordering::SeqCst) - before, 1);
    }

    /// A device over `blobs` with the shared `cache`, no amplification and no memory LRU (so
    /// every read goes to the cache or the backend), counting backend reads.
    fn cached_device(
        img: &RafsImage,
        blobs: &Path,
        cache: Arc<ChunkCache>,
        compressed: bool,
    ) -> (BlobDevice, Arc<Slow>) {
        let slow = Arc::new(Slow {
            inner: LocalFsBackend::from_dir(blobs),
            reads: AtomicU64::new(0),
            delay: Duration::ZERO,
        });
        let ids = img.blobs().iter().map(|b| b.blob_id.clone()).collect();
        let opts = DeviceOptions {
            amplify_io: 0,
            mem_cache_bytes: 0,
            cache_compressed: compressed,
            ..Default::default()
        };
        (
            BlobDevice::new(img, ids, slow.clone(), Some(cache), opts).unwrap(),
            slow,
        )
    }

    /// A new daemon on the cache in `dir` (made by `mk`) finds chunk 5's file corrupt,
    /// drops it, fetches the chunk once and serves `want`. Returns that cache.
    fn chunk_5_is_refetched(
        dir: &Path,
        mk: &dyn Fn(Arc<ChunkCache>) -> (BlobDevice, Arc<Slow>),
        want: &[u8],
    ) -> Arc<ChunkCache> {
        let cache = ChunkCache::open(dir, 0).unwrap();
        let (d, s) = mk(cache.clone());
        d.ci_array(0).unwrap();
        let base = s.reads.load(Ordering::SeqCst);
        assert_eq!(*d.read_chunk(&idx(5)).unwrap(), want);
        assert_eq!(s.reads.load(Ordering::SeqCst), base + 1);
        assert_eq!(cache.metrics().corrupt.load(Ordering::Relaxed), 1);
        cache
    }

    #[test]
    fn shared_cache_serves_and_dedups() {
        let t = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(t.path(), 0).unwrap();
        let (img, blobs) = fixture("v6-zstd-64k-base");
        let mk = |cache: Arc<ChunkCache>| cached_device(&img, &blobs, cache, false);
        let (d1, s1) = mk(cache.clone());
        let n = img.blobs()[0].chunk_count;
        let mut first = Vec::new();
        for i in 0..n {
            first.push(d1.read_chunk(&idx(i)).unwrap());
        }
        assert!(s1.reads.load(Ordering::SeqCst) > u64::from(n));
        // A second device (another daemon) over the same cache: no chunk fetch at all.
        let cache2 = ChunkCache::open(t.path(), 0).unwrap();
        let (d2, s2) = mk(cache2.clone());
        d2.ci_array(0).unwrap();
        let base = s2.reads.load(Ordering::SeqCst);
        for i in 0..n {
            assert_eq!(d2.read_chunk(&idx(i)).unwrap(), first[i as usize]);
        }
        assert_eq!(s2.reads.load(Ordering::SeqCst), base);
        assert_eq!(
            d2.metrics().cache_hits.load(Ordering::Relaxed),
            u64::from(n)
        );
        // Corrupt one cached chunk: detected, refetched, served right, stored again.
        let c5 = d2.chunk_info(&idx(5)).unwrap();
        let key = d2.cache_key(&c5).unwrap();
        let at = cache2.locate(&key).unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new()
                .write(true)
                .open(&at.path)
                .unwrap(),
            &vec![0u8; c5.uncompressed_size as usize],
            at.offset,
        )
        .unwrap();
        let cache3 = chunk_5_is_refetched(t.path(), &mk, &first[5]);
        let at = cache3.locate(&key).unwrap();
        let mut got = vec![0u8; c5.uncompressed_size as usize];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&at.path).unwrap(),
            &mut got,
            at.offset,
        )
        .unwrap();
        assert_eq!(got, *first[5]);
    }

    /// A reply writer that refuses the zero-copy file path.
    struct NoPread(Vec<u8>);
    impl std::io::Write for NoPread {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl ZeroCopyWriter for NoPread {
        fn write_from(
            &mut self,
            _f: &mut dyn fuse_backend_rs::file_traits::FileReadWriteVolatile,
            _count: usize,
            _off: u64,
        ) -> std::io::Result<usize> {
            panic!("a compressed cache file went to the reply as it is");
        }
        fn available_bytes(&self) -> usize {
            usize::MAX
        }
    }

    /// `cache.compressed`: the shared cache holds the chunks as the blob stores them
    /// (smaller files, under `z-<compressor>/`), a second daemon serves them without a
    /// fetch by decompressing and verifying them, and a corrupt one is refetched.
    #[test]
    fn a_compressed_cache_keeps_blob_bytes_and_serves_them_verified() {
        let t = tempfile::tempdir().unwrap();
        let (img, blobs) = fixture("v6-zstd-64k-base");
        let mk = |cache: Arc<ChunkCache>| cached_device(&img, &blobs, cache, true);
        let (d1, _) = mk(ChunkCache::open(t.path(), 0).unwrap());
        let n = img.blobs()[0].chunk_count;
        let mut first = Vec::new();
        let (mut plain, mut stored, mut zstd_files) = (0u64, 0u64, 0usize);
        for i in 0..n {
            let c = d1.chunk_info(&idx(i)).unwrap();
            first.push(d1.read_chunk(&idx(i)).unwrap());
            let key = d1.cache_key(&c).unwrap();
            assert!(matches!(key, CacheKey::Compressed { .. }));
            let p = ChunkCache::open(t.path(), 0).unwrap().path_of(&key);
            // Chunks the blob keeps uncompressed (too small to gain) are under z-none.
            let dir = if c.compressed { "/z-zstd/" } else { "/z-none/" };
            assert!(p.to_string_lossy().contains(dir), "{}", p.display());
            zstd_files += usize::from(c.compressed);
            plain += u64::from(c.uncompressed_size);
            stored += std::fs::metadata(&p).unwrap().len();
        }
        assert!(zstd_files > 0);
        assert!(
            stored < plain,
            "compressed files: {stored} of {plain} bytes"
        );
        // Another daemon on the same cache: every chunk from it, none fetched.
        let cache2 = ChunkCache::open(t.path(), 0).unwrap();
        let (d2, s2) = mk(cache2.clone());
        d2.ci_array(0).unwrap();
        let base = s2.reads.load(Ordering::SeqCst);
        for i in 0..n {
            assert_eq!(d2.read_chunk(&idx(i)).unwrap(), first[i as usize]);
            // The reply path copies decompressed bytes, never the file's.
            let mut w = NoPread(Vec::new());
            let len = d2.chunk_info(&idx(i)).unwrap().uncompressed_size as usize;
            d2.write_chunk_range(&idx(i), 0, len, &mut w).unwrap();
            assert_eq!(w.0, *first[i as usize]);
        }
        assert_eq!(s2.reads.load(Ordering::SeqCst), base);
        // A corrupt compressed file is dropped and the chunk refetched, right.
        let c5 = d2.chunk_info(&idx(5)).unwrap();
        let p = cache2.path_of(&d2.cache_key(&c5).unwrap());
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&p, b).unwrap();
        chunk_5_is_refetched(t.path(), &mk, &first[5]);
    }

    #[test]
    fn a_slow_fetch_does_not_block_cached_reads() {
        let t = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(t.path(), 0).unwrap();
        let (img, blobs) = fixture("v6-zstd-64k-base");
        let slow = Arc::new(Slow {
            inner: LocalFsBackend::from_dir(&blobs),
            reads: AtomicU64::new(0),
            delay: Duration::from_millis(1500),
        });
        let ids = img.blobs().iter().map(|b| b.blob_id.clone()).collect();
        let opts = DeviceOptions {
            amplify_io: 0,
            mem_cache_bytes: 0,
            ..Default::default()
        };
        let dev = Arc::new(BlobDevice::new(&img, ids, slow, Some(cache), opts).unwrap());
        let warm = dev.read_chunk(&idx(0)).unwrap();
        // Two slow fetches in flight...
        let bg: Vec<_> = [7u32, 8]
            .into_iter()
            .map(|i| {
                let dev = dev.clone();
                std::thread::spawn(move || dev.read_chunk(&idx(i)).unwrap())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // ...while a cached chunk is served at once.
        let t0 = std::time::Instant::now();
        assert_eq!(dev.read_chunk(&idx(0)).unwrap(), warm);
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        for b in bg {
            b.join().unwrap();
        }
    }

    /// A warm chunk costs readahead nothing: `ensure_chunk` neither reads nor verifies it
    /// again, and warm reads reuse one open file instead of opening it each time.
    #[test]
    fn warm_chunks_are_not_read_again() {
        let t = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(t.path(), 0).unwrap();
        let (img, blobs) = fixture("v6-zstd-64k-base");
        let ids = img.blobs().iter().map(|b| b.blob_id.clone()).collect();
        let opts = DeviceOptions {
            amplify_io: 0,
            mem_cache_bytes: 0,
            ..Default::default()
        };
        let backend = Arc::new(LocalFsBackend::from_dir(&blobs));
        let dev = BlobDevice::new(&img, ids, backend, Some(cache.clone()), opts).unwrap();
        dev.ensure_chunk(&idx(2)).unwrap();
        let reads = dev.metrics().chunk_reads.load(Ordering::Relaxed);
        let hits = cache.metrics().hits.load(Ordering::Relaxed);
        for _ in 0..10 {
            dev.ensure_chunk(&idx(2)).unwrap();
        }
        assert_eq!(dev.metrics().chunk_reads.load(Ordering::Relaxed), reads);
        assert_eq!(cache.metrics().hits.load(Ordering::Relaxed), hits);
        let key = dev.cache_key(&dev.chunk_info(&idx(2)).unwrap()).unwrap();
        let a = cache.open_verified(&key).unwrap();
        let b = cache.open_verified(&key).unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0), "one open file for a warm chunk");
    }
}
