//! The RAFS filesystem: a read-only fuse-backend-rs [`FileSystem`] over one RAFS image
//! (bootstrap), reading file data through the storage layer ([`ChunkReader`]).
//!
//! * Inodes are the reader's inode numbers (v6 nids, v5 inode indexes): stable, non-zero,
//!   below 2^56, so the fs can be mounted in a `Vfs`. Nothing is allocated per lookup, so
//!   `forget` has nothing to do.
//! * The image is immutable: entries and attributes are cached by the guest for a long time,
//!   and open files keep their page cache.
//! * A read fetches only the chunks it overlaps and writes the requested window straight
//!   into the FUSE reply (see [`ChunkReader::write_chunk_range`]).
//! * Every modifying operation fails with EROFS. Storage errors are EIO; the fs keeps serving.
//! * With `enable_xattr` off, getxattr answers ENODATA and listxattr an empty list (never
//!   ENOSYS: the kernel would then turn xattrs off for the whole virtio-fs connection,
//!   passthrough mounts included).

use std::any::Any;
use std::ffi::CStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry as FuseDirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::api::BackendFileSystem;

use super::vfs::WarmReads;
use crate::config::{BackendConfig, CacheType, ConfigError, RafsConfig};
use crate::rafs::layout::PLACEHOLDER_BLOB_ID;
use crate::rafs::{InodeAttr, RafsError, RafsImage, RafsVersion};
use crate::storage::cache::ChunkCache;
use crate::storage::device::{BlobDevice, DeviceOptions};
use crate::storage::localfs::LocalFsBackend;
use crate::storage::registry::RegistryBackend;
use crate::storage::{BlobBackend, ChunkReader, StorageError};

/// How long the guest may cache entries and attributes (the image never changes).
pub const CACHE_TIMEOUT: Duration = Duration::from_secs(86400 * 365);

/// Errors from opening a RAFS filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RafsFsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("bootstrap: {0}")]
    Image(#[from] RafsError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    BlobId(String),
}

/// Per-filesystem counters, exported by [`RafsFs::metrics`].
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    errors: AtomicU64,
    lookups: AtomicU64,
}

/// A mounted RAFS image.
pub struct RafsFs {
    bootstrap: PathBuf,
    image: Arc<RafsImage>,
    device: Arc<BlobDevice>,
    backend: Arc<dyn BlobBackend>,
    registry: Option<Arc<RegistryBackend>>,
    localfs: Option<Arc<LocalFsBackend>>,
    cache: Option<Arc<ChunkCache>>,
    enable_xattr: bool,
    counters: Counters,
    /// Tells background prefetch to stop (set on drop / destroy).
    stop: Arc<std::sync::atomic::AtomicBool>,
    readahead: Readahead,
}

/// Sequential-read detection and background readahead.
///
/// A read that starts where the previous read of the same inode ended extends a streak;
/// from the second sequential read on, the chunks of the next `window` bytes after it are
/// queued for two background workers, which fetch them through the device (so the guest's
/// next reads find them cached, or join their fetch in flight). The queue is bounded;
/// when it is full, readahead is skipped rather than delaying the read.
struct Readahead {
    /// ino -> (end of the last read, sequential streak, end of what was queued).
    state: parking_lot::Mutex<std::collections::HashMap<u64, (u64, u32, u64)>>,
    window: u64,
    tx: Option<crossbeam_channel::Sender<crate::rafs::ChunkRef>>,
    queued: AtomicU64,
}

/// Entries kept in the sequential-read table before it is cleared.
const READAHEAD_TRACKED: usize = 4096;

impl Readahead {
    fn new(
        device: &Arc<BlobDevice>,
        window: u64,
        stop: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        if window == 0 {
            return Readahead {
                state: Default::default(),
                window,
                tx: None,
                queued: AtomicU64::new(0),
            };
        }
        let (tx, rx) = crossbeam_channel::bounded::<crate::rafs::ChunkRef>(256);
        for i in 0..2 {
            let (rx, device, stop) = (rx.clone(), device.clone(), stop.clone());
            let _ = std::thread::Builder::new()
                .name(format!("rafs-readahead-{i}"))
                .spawn(move || {
                    while let Ok(c) = rx.recv() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Err(e) = device.ensure_chunk(&c) {
                            log::debug!("readahead: {e}");
                        }
                    }
                });
        }
        Readahead {
            state: Default::default(),
            window,
            tx: Some(tx),
            queued: AtomicU64::new(0),
        }
    }

    /// Note a read of `[offset, end)` of `ino` (file size `size`); queue readahead if it is
    /// sequential.
    fn note(&self, image: &RafsImage, ino: u64, offset: u64, end: u64, size: u64) {
        let Some(tx) = &self.tx else { return };
        let (from, to) = {
            let mut st = self.state.lock();
            if st.len() >= READAHEAD_TRACKED && !st.contains_key(&ino) {
                st.clear();
            }
            let e = st.entry(ino).or_insert((u64::MAX, 0, 0));
            if e.0 == offset {
                e.1 += 1;
            } else {
                e.1 = 0;
                e.2 = 0;
            }
            e.0 = end;
            if e.1 < 1 {
                return;
            }
            let from = end.max(e.2);
            let to = (end + self.window).min(size);
            // Top up only when less than half a window is queued ahead.
            if from >= to || e.2 > end + self.window / 2 {
                return;
            }
            e.2 = to;
            (from, to)
        };
        let Ok(chunks) = image.file_chunks(ino, from, to - from) else {
            return;
        };
        for c in chunks {
            if tx.try_send(c.chunk).is_err() {
                break;
            }
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Tells whether a read is served from chunks this process has already verified (in its
/// memory LRU or the shared cache), so the device can serve it on the queue thread. A chunk
/// evicted between this check and the read is fetched on the queue thread once: rare, and
/// no worse than a cold read there.
struct RafsWarmReads {
    image: Arc<RafsImage>,
    device: Arc<BlobDevice>,
}

impl WarmReads for RafsWarmReads {
    fn is_warm(&self, ino: u64, offset: u64, size: u32) -> bool {
        let Ok(a) = self.image.getattr(ino) else {
            return false;
        };
        if a.mode & libc::S_IFMT != libc::S_IFREG {
            return false;
        }
        if offset >= a.size || size == 0 {
            return true;
        }
        let end = a.size.min(offset + u64::from(size));
        match self.image.file_chunks(ino, offset, end - offset) {
            Ok(chunks) => chunks.iter().all(|fc| self.device.is_warm(&fc.chunk)),
            Err(_) => false,
        }
    }
}

impl Drop for RafsFs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn erofs<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::EROFS))
}

fn rafs_err(e: RafsError) -> io::Error {
    let errno = e.errno();
    if errno == libc::EIO {
        log::warn!("rafs: {e}");
    }
    io::Error::from_raw_os_error(errno)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The id to fetch each blob by. A per-layer inlined bootstrap carries the placeholder id
/// (64 × 'x'); its real id is taken from, in order: the localfs `blob_file`'s file name, or
/// the bootstrap's own file name when that is a 64-hex digest (a per-layer blob or
/// bootstrap named by its layer digest). Otherwise the open fails with a clear message.
pub fn resolve_blob_ids(
    image: &RafsImage,
    bootstrap: &Path,
    config: &RafsConfig,
) -> Result<Vec<String>, RafsFsError> {
    let from_blob_file = match &config.backend {
        BackendConfig::LocalFs(l) => l
            .blob_file
            .as_ref()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .map(str::to_string),
        _ => None,
    };
    let from_name = bootstrap
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_prefix("sha256:").unwrap_or(n).to_string())
        .filter(|n| is_hex64(n));
    image
        .blobs()
        .iter()
        .map(|b| {
            if b.blob_id != PLACEHOLDER_BLOB_ID {
                return Ok(b.blob_id.clone());
            }
            from_blob_file.clone().or(from_name.clone()).ok_or_else(|| {
                RafsFsError::BlobId(format!(
                    "blob {} has the placeholder id of an inlined bootstrap; set \
                     backend localfs blob_file, or name the bootstrap by its layer digest",
                    b.index
                ))
            })
        })
        .collect()
}

impl RafsFs {
    /// Opens the bootstrap at `bootstrap` and sets up storage per `config`.
    pub fn open(bootstrap: &Path, config: &RafsConfig) -> Result<RafsFs, RafsFsError> {
        let image = Arc::new(RafsImage::open(bootstrap)?);
        type Backends = (
            Arc<dyn BlobBackend>,
            Option<Arc<RegistryBackend>>,
            Option<Arc<LocalFsBackend>>,
        );
        let (backend, registry, localfs): Backends = match &config.backend {
            BackendConfig::LocalFs(l) => {
                let b = Arc::new(LocalFsBackend::new(l));
                (b.clone(), None, Some(b))
            }
            BackendConfig::Registry(r) => {
                let b = Arc::new(RegistryBackend::new(r.to_options())?);
                (b.clone(), Some(b), None)
            }
        };
        let cache = match (&config.cache.kind, &config.cache.work_dir) {
            (CacheType::BlobCache, Some(dir)) => {
                match ChunkCache::open(dir, config.cache.size_limit) {
                    Ok(c) => {
                        c.clean_tmp();
                        Some(c)
                    }
                    Err(e) => {
                        log::warn!(
                            "chunk cache in {} unavailable ({e}); reading from the backend only",
                            dir.display()
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        let ids = resolve_blob_ids(&image, bootstrap, config)?;
        let opts = DeviceOptions {
            digest_validate: config.digest_validate || config.cache.validate,
            amplify_io: config.amplify_io,
            work_dir: config.cache.work_dir.clone(),
            cache_compressed: config.cache.compressed,
            ..Default::default()
        };
        let device = Arc::new(BlobDevice::new(
            &image,
            ids,
            backend.clone(),
            cache.clone(),
            opts,
        )?);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let device2 = device.clone();
        // Readahead covers twice the amplification size (at least 1 MiB); 0 turns it off
        // together with amplification.
        let readahead_window = if config.amplify_io == 0 {
            0
        } else {
            (config.amplify_io * 2).max(1 << 20)
        };
        let fs = RafsFs {
            bootstrap: bootstrap.to_path_buf(),
            image,
            device,
            backend,
            registry,
            localfs,
            cache,
            enable_xattr: config.enable_xattr,
            counters: Counters::default(),
            stop: stop.clone(),
            readahead: Readahead::new(&device2, readahead_window, &stop),
        };
        if config.fs_prefetch.enable {
            fs.start_prefetch(config);
        }
        Ok(fs)
    }

    /// The opened image.
    /// The warm-read probe of this image (see [`WarmReads`]).
    pub fn warm_reads(&self) -> Arc<dyn WarmReads> {
        Arc::new(RafsWarmReads {
            image: self.image.clone(),
            device: self.device.clone(),
        })
    }

    pub fn image(&self) -> &Arc<RafsImage> {
        &self.image
    }

    /// The chunk reader behind this fs.
    pub fn device(&self) -> &Arc<BlobDevice> {
        &self.device
    }

    /// Per-fs counters: reads, bytes, errors, chunk fetches and cache hits, plus the
    /// backend's and the shared cache's counters.
    pub fn metrics(&self) -> serde_json::Value {
        let c = &self.counters;
        let d = self.device.metrics();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let backend = match (&self.registry, &self.localfs) {
            (Some(r), _) => r.metrics().to_json("registry"),
            (_, Some(lf)) => lf.metrics_json(),
            _ => serde_json::json!({"backend_type": self.backend.kind()}),
        };
        serde_json::json!({
            "bootstrap": self.bootstrap.display().to_string(),
            "reads": l(&c.reads),
            "read_bytes": l(&c.read_bytes),
            "errors": l(&c.errors),
            "lookups": l(&c.lookups),
            "chunk_reads": l(&d.chunk_reads),
            "chunk_fetches": l(&d.chunk_fetches),
            "chunk_hits": l(&d.mem_hits) + l(&d.cache_hits),
            "readahead_chunks": l(&self.readahead.queued),
            "device": self.device.metrics_json(),
            "backend": backend,
            "blobcache": self.cache.as_ref().map(|c| c.metrics_json()),
        })
    }

    /// Backend counters in nydusd's `/api/v1/metrics/backend` shape (plus our extras).
    pub fn backend_metrics(&self) -> serde_json::Value {
        let mut v = match (&self.registry, &self.localfs) {
            (Some(r), _) => r.metrics().to_json("registry"),
            (_, Some(lf)) => lf.metrics_json(),
            _ => serde_json::json!({"backend_type": self.backend.kind()}),
        };
        if let serde_json::Value::Object(o) = &mut v {
            o.insert("id".into(), self.bootstrap.display().to_string().into());
        }
        v
    }

    /// Cache counters in nydusd's `/api/v1/metrics/blobcache` shape: `whole_hits` counts
    /// chunks served locally (memory or the shared cache), `total` all chunk requests,
    /// `prefetch_data_amount` bytes fetched by prefetch and readahead are not separated
    /// from demand reads and are reported as 0.
    pub fn blobcache_metrics(&self) -> serde_json::Value {
        let d = self.device.metrics();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "id": self.bootstrap.display().to_string(),
            "store_path": self.cache.as_ref().map(|c| c.root().display().to_string()),
            "underlying_files": self.image.blobs().iter().map(|b| b.blob_id.clone()).collect::<Vec<_>>(),
            "whole_hits": l(&d.mem_hits) + l(&d.cache_hits),
            "partial_hits": 0,
            "total": l(&d.chunk_reads),
            "entries_count": l(&d.chunk_fetches),
            "prefetch_data_amount": 0,
            "buffered_backend_size": l(&d.backend_bytes),
            "cache": self.cache.as_ref().map(|c| c.metrics_json()),
        })
    }

    fn attr(&self, ino: u64) -> io::Result<InodeAttr> {
        self.image.getattr(ino).map_err(rafs_err)
    }

    fn stat(a: &InodeAttr) -> stat64 {
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_ino = a.ino;
        st.st_mode = a.mode;
        st.st_nlink = a.nlink as _;
        st.st_uid = a.uid;
        st.st_gid = a.gid;
        st.st_rdev = u64::from(a.rdev) as _;
        st.st_size = a.size as i64;
        st.st_blksize = 4096;
        st.st_blocks = a.blocks as i64;
        st.st_mtime = a.mtime as i64;
        st.st_mtime_nsec = i64::from(a.mtime_nsec);
        st.st_ctime = a.mtime as i64;
        st.st_ctime_nsec = i64::from(a.mtime_nsec);
        st.st_atime = a.mtime as i64;
        st.st_atime_nsec = i64::from(a.mtime_nsec);
        st
    }

    fn entry(a: &InodeAttr) -> Entry {
        Entry {
            inode: a.ino,
            generation: 0,
            attr: Self::stat(a),
            attr_flags: 0,
            attr_timeout: CACHE_TIMEOUT,
            entry_timeout: CACHE_TIMEOUT,
        }
    }

    fn is_type(a: &InodeAttr, t: u32) -> bool {
        a.mode & libc::S_IFMT == t
    }

    /// Write file bytes `[offset, offset + size)` of regular file `ino` into `w`.
    fn read_file(
        &self,
        ino: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        let a = self.attr(ino)?;
        if Self::is_type(&a, libc::S_IFDIR) {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        if !Self::is_type(&a, libc::S_IFREG) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if offset >= a.size || size == 0 {
            return Ok(0);
        }
        let end = a.size.min(offset + u64::from(size));
        self.readahead.note(&self.image, ino, offset, end, a.size);
        let chunks = self
            .image
            .file_chunks(ino, offset, end - offset)
            .map_err(rafs_err)?;
        let mut pos = offset;
        let mut written = 0usize;
        for fc in &chunks {
            let c_end = fc.file_offset + u64::from(fc.len);
            if c_end <= pos {
                continue;
            }
            if fc.file_offset > pos {
                // A hole (v5 HAS_HOLE): zeros.
                let n = (fc.file_offset.min(end) - pos) as usize;
                w.write_all(&vec![0u8; n])?;
                written += n;
                pos += n as u64;
            }
            if pos >= end {
                break;
            }
            let in_chunk = (pos - fc.file_offset) as usize;
            let len = (c_end.min(end) - pos) as usize;
            let n = self
                .device
                .write_chunk_range(&fc.chunk, in_chunk, len, w)
                .map_err(|e| {
                    log::warn!("rafs read of inode {ino} at {pos}: {e}");
                    eio()
                })?;
            if n != len {
                log::warn!("rafs read of inode {ino} at {pos}: chunk shorter than its extent");
                return Err(eio());
            }
            written += n;
            pos += n as u64;
            if pos >= end {
                break;
            }
        }
        if pos < end {
            // Trailing hole, or chunks missing from the image.
            if self.image.version() == RafsVersion::V5 {
                let n = (end - pos) as usize;
                w.write_all(&vec![0u8; n])?;
                written += n;
            } else {
                log::warn!("rafs read of inode {ino}: no chunk covers offset {pos}");
                return Err(eio());
            }
        }
        Ok(written)
    }

    /// Background prefetch of the image's prefetch table (or everything).
    fn start_prefetch(&self, config: &RafsConfig) {
        let image = self.image.clone();
        let device = self.device.clone();
        let p = config.fs_prefetch.clone();
        let threads = p.threads_count.clamp(1, 64) as usize;
        let stop = self.stop.clone();
        let r = std::thread::Builder::new()
            .name("rafs-prefetch".into())
            .spawn(move || crate::fs::rafs::prefetch::run(image, device, p, threads, stop));
        if let Err(e) = r {
            log::warn!("cannot start prefetch: {e}");
        }
    }
}

pub(crate) mod prefetch {
    //! Background prefetch: files from the image's prefetch table (a lone root entry, or
    //! `prefetch_all`, means every file), fetched chunk by chunk at low priority through the
    //! same device, so on-demand reads of a chunk in flight share its fetch.
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::config::PrefetchConfig;
    use crate::rafs::{ChunkRef, RafsImage};
    use crate::storage::device::BlobDevice;
    use crate::storage::ChunkReader;

    fn collect(image: &RafsImage, ino: u64, out: &mut Vec<ChunkRef>, seen: &mut HashSet<u64>) {
        if !seen.insert(ino) || out.len() > 10_000_000 {
            return;
        }
        let Ok(a) = image.getattr(ino) else { return };
        match a.mode & libc::S_IFMT {
            libc::S_IFREG => {
                if let Ok(cs) = image.file_chunks(ino, 0, a.size) {
                    out.extend(cs.into_iter().map(|c| c.chunk));
                }
            }
            libc::S_IFDIR => {
                let mut kids = Vec::new();
                let _ = image.readdir(ino, 0, &mut |e| {
                    if e.name != b"." && e.name != b".." {
                        kids.push(e.ino);
                    }
                    true
                });
                for k in kids {
                    collect(image, k, out, seen);
                }
            }
            _ => {}
        }
    }

    /// Lower the calling thread's CPU and IO priority (best effort).
    fn lower_priority() {
        // SAFETY: plain syscalls on the calling thread; no memory is passed.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            // IOPRIO_WHO_PROCESS = 1; class IDLE = 3 << 13.
            libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13);
        }
    }

    pub fn run(
        image: Arc<RafsImage>,
        device: Arc<BlobDevice>,
        p: PrefetchConfig,
        threads: usize,
        stop: Arc<AtomicBool>,
    ) {
        lower_priority();
        let root = image.root_ino();
        let table = image.prefetch_inodes().unwrap_or_default();
        let roots: Vec<u64> = if p.prefetch_all || (table.len() == 1 && table[0] == root) {
            vec![root]
        } else {
            table
        };
        let mut chunks = Vec::new();
        let mut seen = HashSet::new();
        for r in roots {
            collect(&image, r, &mut chunks, &mut seen);
        }
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let chunks = Arc::new(chunks);
        let fetched = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let workers: Vec<_> = (0..threads)
            .filter_map(|i| {
                let (next, chunks, device, fetched, stop) = (
                    next.clone(),
                    chunks.clone(),
                    device.clone(),
                    fetched.clone(),
                    stop.clone(),
                );
                let rate = p.bandwidth_rate;
                std::thread::Builder::new()
                    .name(format!("rafs-prefetch-{i}"))
                    .spawn(move || {
                        lower_priority();
                        while !stop.load(Ordering::Relaxed) {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            let Some(c) = chunks.get(k) else { break };
                            match device.read_chunk(c) {
                                Ok(d) => {
                                    let total = fetched
                                        .fetch_add(d.len() as u64, Ordering::Relaxed)
                                        + d.len() as u64;
                                    if rate > 0 {
                                        // Stay under bandwidth_rate bytes per second overall.
                                        let due =
                                            Duration::from_secs_f64(total as f64 / rate as f64);
                                        while started.elapsed() < due
                                            && !stop.load(Ordering::Relaxed)
                                        {
                                            let left = due.saturating_sub(started.elapsed());
                                            std::thread::sleep(
                                                left.min(Duration::from_millis(100)),
                                            );
                                        }
                                    }
                                }
                                Err(e) => log::debug!("prefetch: {e}"),
                            }
                        }
                    })
                    .ok()
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        log::info!(
            "prefetch done: {} chunks, {} bytes in {:?}",
            chunks.len(),
            fetched.load(Ordering::Relaxed),
            started.elapsed()
        );
    }
}

impl FileSystem for RafsFs {
    type Inode = u64;
    type Handle = u64;

    fn destroy(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let p = self.attr(parent)?;
        if !Self::is_type(&p, libc::S_IFDIR) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        match self
            .image
            .lookup(parent, name.to_bytes())
            .map_err(rafs_err)?
        {
            Some(a) => Ok(Self::entry(&a)),
            None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    fn forget(&self, _ctx: &Context, _inode: u64, _count: u64) {}

    fn batch_forget(&self, _ctx: &Context, _requests: Vec<(u64, u64)>) {}

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        Ok((Self::stat(&self.attr(inode)?), CACHE_TIMEOUT))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        _inode: u64,
        _attr: stat64,
        _handle: Option<u64>,
        _valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        erofs()
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let a = self.attr(inode)?;
        if !Self::is_type(&a, libc::S_IFLNK) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.image.readlink(inode).map_err(rafs_err)
    }

    fn symlink(&self, _: &Context, _: &CStr, _: u64, _: &CStr) -> io::Result<Entry> {
        erofs()
    }

    fn mknod(&self, _: &Context, _: u64, _: &CStr, _: u32, _: u32, _: u32) -> io::Result<Entry> {
        erofs()
    }

    fn mkdir(&self, _: &Context, _: u64, _: &CStr, _: u32, _: u32) -> io::Result<Entry> {
        erofs()
    }

    fn unlink(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
        erofs()
    }

    fn rmdir(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
        erofs()
    }

    fn rename(&self, _: &Context, _: u64, _: &CStr, _: u64, _: &CStr, _: u32) -> io::Result<()> {
        erofs()
    }

    fn link(&self, _: &Context, _: u64, _: u64, _: &CStr) -> io::Result<Entry> {
        erofs()
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let f = flags as i32;
        if f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0 {
            return erofs();
        }
        let a = self.attr(inode)?;
        if Self::is_type(&a, libc::S_IFDIR) {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        Ok((None, OpenOptions::KEEP_CACHE, None))
    }

    fn create(
        &self,
        _: &Context,
        _: u64,
        _: &CStr,
        _: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        erofs()
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        match self.read_file(inode, w, size, offset) {
            Ok(n) => {
                self.counters
                    .read_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn write(
        &self,
        _: &Context,
        _: u64,
        _: u64,
        _: &mut dyn ZeroCopyReader,
        _: u32,
        _: u64,
        _: Option<u64>,
        _: bool,
        _: u32,
        _: u32,
    ) -> io::Result<usize> {
        erofs()
    }

    fn flush(&self, _: &Context, _: u64, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsync(&self, _: &Context, _: u64, _: bool, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn fallocate(&self, _: &Context, _: u64, _: u64, _: u32, _: u64, _: u64) -> io::Result<()> {
        erofs()
    }

    fn release(
        &self,
        _: &Context,
        _: u64,
        _: u32,
        _: u64,
        _: bool,
        _: bool,
        _: Option<u64>,
    ) -> io::Result<()> {
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        // SAFETY: statvfs64 is plain old data; all-zero is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        let bytes: u64 = self.image.blobs().iter().map(|b| b.uncompressed_size).sum();
        st.f_bsize = 4096;
        st.f_frsize = 4096;
        st.f_blocks = bytes.div_ceil(4096);
        st.f_files = self.image.inode_count();
        st.f_namemax = 255;
        Ok(st)
    }

    fn setxattr(&self, _: &Context, _: u64, _: &CStr, _: &[u8], _: u32) -> io::Result<()> {
        erofs()
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.attr(inode)?;
        if !self.enable_xattr {
            return Err(io::Error::from_raw_os_error(libc::ENODATA));
        }
        let v = self
            .image
            .get_xattr(inode, name.to_bytes())
            .map_err(rafs_err)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODATA))?;
        if size == 0 {
            Ok(GetxattrReply::Count(v.len() as u32))
        } else if (size as usize) < v.len() {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(GetxattrReply::Value(v))
        }
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.attr(inode)?;
        let mut buf = Vec::new();
        if self.enable_xattr {
            for n in self.image.list_xattrs(inode).map_err(rafs_err)? {
                buf.extend_from_slice(&n);
                buf.push(0);
            }
        }
        if size == 0 {
            Ok(ListxattrReply::Count(buf.len() as u32))
        } else if (size as usize) < buf.len() {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(buf))
        }
    }

    fn removexattr(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
        erofs()
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let a = self.attr(inode)?;
        if !Self::is_type(&a, libc::S_IFDIR) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok((None, OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut err = None;
        self.image
            .readdir(inode, offset, &mut |e| match add_entry(FuseDirEntry {
                ino: e.ino,
                offset: e.next_offset,
                type_: e.file_type,
                name: &e.name,
            }) {
                Ok(0) => false,
                Ok(_) => true,
                Err(x) => {
                    err = Some(x);
                    false
                }
            })
            .map_err(rafs_err)?;
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut err = None;
        self.image
            .readdir(inode, offset, &mut |e| {
                let a = match self.image.getattr(e.ino) {
                    Ok(a) => a,
                    Err(x) => {
                        err = Some(rafs_err(x));
                        return false;
                    }
                };
                match add_entry(
                    FuseDirEntry {
                        ino: e.ino,
                        offset: e.next_offset,
                        type_: e.file_type,
                        name: &e.name,
                    },
                    Self::entry(&a),
                ) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(x) => {
                        err = Some(x);
                        false
                    }
                }
            })
            .map_err(rafs_err)?;
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn fsyncdir(&self, _: &Context, _: u64, _: bool, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn releasedir(&self, _: &Context, _: u64, _: u32, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let a = self.attr(inode)?;
        let mask = mask as i32;
        if mask & libc::W_OK != 0 {
            return erofs();
        }
        if mask == libc::F_OK {
            return Ok(());
        }
        let mode = a.mode;
        let granted = if ctx.uid == 0 {
            // root may read anything, and execute if any x bit is set (or it is a directory).
            let x = Self::is_type(&a, libc::S_IFDIR) || mode & 0o111 != 0;
            libc::R_OK | if x { libc::X_OK } else { 0 }
        } else {
            let bits = if ctx.uid == a.uid {
                (mode >> 6) & 7
            } else if ctx.gid == a.gid {
                (mode >> 3) & 7
            } else {
                mode & 7
            };
            bits as i32
        };
        if mask & !granted & (libc::R_OK | libc::X_OK) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        Ok(())
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let a = self.attr(inode)?;
        // Images have no holes (v5 hole chunks aside, which read as data): all of
        // [0, size) is data and the only hole is the virtual one at EOF.
        match whence as i32 {
            libc::SEEK_DATA if offset < a.size => Ok(offset),
            libc::SEEK_HOLE if offset < a.size => Ok(a.size),
            libc::SEEK_DATA | libc::SEEK_HOLE => Err(io::Error::from_raw_os_error(libc::ENXIO)),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

impl BackendFileSystem for RafsFs {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        let root = self.attr(self.image.root_ino())?;
        // Inode numbers are nids (< bootstrap size / 32) or inode-table indexes.
        let max_ino = (self.image.as_bytes().len() as u64 / 32).max(root.ino) + 1;
        Ok((Self::entry(&root), max_ino))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
