//! The pseudo-fs composition: one fuse-backend-rs [`Vfs`] whose read-only pseudo root holds
//! passthrough and RAFS filesystems mounted at arbitrary paths, at start-up (CLI) or at run
//! time (HTTP API), plus the bookkeeping the API reports (mount table, per-fs counters).
//!
//! The same [`FsTree`] is served by the vhost-user device and by FUSE mode, and it outlives
//! VMM connections, so a reconnecting VMM finds the same mounts.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fuse_backend_rs::abi::fuse_abi::{FsOptions, InHeader, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::MetricsHook;
use fuse_backend_rs::api::{BackFileSystem, Vfs, VfsOptions};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::dispatch::Dispatcher;
use super::passthrough::{Config as PassthroughConfig, PassthroughError, PassthroughFs};
use super::rafs::RafsFs;
use crate::config::RafsConfig;

/// Bits of a VFS inode number that select the backend filesystem (fuse-backend-rs layout).
const VFS_INDEX_SHIFT: u32 = 56;
/// FUSE opcode of READ.
const FUSE_READ: u32 = 15;
/// FUSE opcode of WRITE.
const FUSE_WRITE: u32 = 16;
/// Size of a FUSE out header, subtracted from READ replies to count payload bytes.
const OUT_HEADER_LEN: u32 = 16;
/// Size of a FUSE in header plus a write_in, subtracted from WRITE requests.
const WRITE_HEADERS_LEN: u32 = 40 + 40;

/// The kinds of filesystem that can be mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    /// A writable passthrough of a host directory.
    Passthrough,
    /// A read-only Nydus RAFS image.
    Rafs,
}

impl FsType {
    /// Parses the API's `fs_type` (nydusd spellings accepted).
    pub fn parse(s: &str) -> Result<Self, MountError> {
        match s {
            "passthrough_fs" | "passthrough" | "passthroughfs" => Ok(FsType::Passthrough),
            "rafs" => Ok(FsType::Rafs),
            other => Err(MountError::UnknownFsType(other.to_string())),
        }
    }

    /// The name reported as `backend_type` by `GET /api/v1/daemon` (nydusd's spelling).
    pub fn backend_type(self) -> &'static str {
        match self {
            FsType::Passthrough => "PassthroughFs",
            FsType::Rafs => "Rafs",
        }
    }
}

/// Errors of mount and umount operations; each maps to an HTTP status in the API.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `fs_type` is not one we know.
    #[error("unknown fs_type {0:?} (expected passthrough_fs, passthrough, passthroughfs or rafs)")]
    UnknownFsType(String),
    /// The mountpoint is not an absolute, normalised path.
    #[error("invalid mountpoint {0:?}: {1}")]
    BadMountpoint(String, &'static str),
    /// Something is already mounted there.
    #[error("mountpoint {0} is already mounted")]
    AlreadyMounted(String),
    /// Nothing is mounted there.
    #[error("mountpoint {0} is not mounted")]
    NotMounted(String),
    /// The passthrough filesystem could not be created.
    #[error(transparent)]
    Passthrough(#[from] PassthroughError),
    /// The RAFS filesystem could not be created (bad config, bad bootstrap, ...).
    #[error("cannot mount RAFS: {0}")]
    Rafs(String),
    /// The VFS refused the mount or umount.
    #[error("vfs error: {0}")]
    Vfs(String),
    /// The source is outside every `--allowed-root`.
    #[error("source {0:?} is outside the allowed roots ({1}); see --allowed-root")]
    NotAllowed(String, String),
    /// A passthrough asked of a session that serves RAFS only ([`FsTree::rafs_only`]).
    #[error("this daemon serves RAFS only (FUSE mode started with --bootstrap and without --shared-dir: read-only, zero-message open); a passthrough needs a daemon started with --shared-dir or with neither")]
    RafsOnly,
    /// Under `--sandbox chroot`, a path the daemon cannot reach.
    #[error("{0:?} is outside the chroot {1} (--sandbox chroot: sources and config paths must lie under it, given without \"..\")")]
    OutsideChroot(String, String),
}

impl MountError {
    /// The HTTP status the API answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            MountError::UnknownFsType(_) | MountError::BadMountpoint(..) | MountError::RafsOnly => {
                400
            }
            MountError::NotMounted(_) => 404,
            MountError::NotAllowed(..) | MountError::OutsideChroot(..) => 403,
            MountError::AlreadyMounted(_) => 409,
            MountError::Passthrough(_) | MountError::Rafs(_) | MountError::Vfs(_) => 500,
        }
    }
}

/// One mounted filesystem, as reported by the API.
#[derive(Debug, Clone)]
pub struct MountRecord {
    /// What kind of filesystem.
    pub fs_type: FsType,
    /// Host source (directory or bootstrap path).
    pub source: String,
    /// Normalised mountpoint in the pseudo tree.
    pub mountpoint: String,
    /// Seconds since the epoch when it was mounted.
    pub mounted_time: u64,
    /// The RAFS config with secrets removed (null for passthrough).
    pub config: Value,
    /// The VFS superblock index.
    pub fs_idx: u8,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    failed: AtomicU64,
    read_ops: AtomicU64,
    read_bytes: AtomicU64,
    write_ops: AtomicU64,
    write_bytes: AtomicU64,
}

impl Counters {
    fn reset(&self) {
        for c in [
            &self.requests,
            &self.failed,
            &self.read_ops,
            &self.read_bytes,
            &self.write_ops,
            &self.write_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "failed_requests": self.failed.load(Ordering::Relaxed),
            "read_ops": self.read_ops.load(Ordering::Relaxed),
            "read_bytes": self.read_bytes.load(Ordering::Relaxed),
            "write_ops": self.write_ops.load(Ordering::Relaxed),
            "write_bytes": self.write_bytes.load(Ordering::Relaxed),
        })
    }
}

/// Per-filesystem request counters, fed by fuse-backend-rs's [`MetricsHook`] from every
/// transport (virtio-fs queues and /dev/fuse).
pub struct FsMetrics {
    per_fs: Vec<Counters>,
}

thread_local! {
    /// (fs index, opcode, in length) of the request this thread is handling, set in
    /// `collect` and read in `release` (both run on the thread that handles the request).
    static CURRENT: Cell<(u8, u32, u32)> = const { Cell::new((0, 0, 0)) };
}

impl FsMetrics {
    fn new() -> Self {
        FsMetrics {
            per_fs: (0..256).map(|_| Counters::default()).collect(),
        }
    }
}

impl FsMetrics {
    /// Records the outcome of the request this thread just handled: `Ok(n)` is the reply
    /// length (READ payload bytes are counted), `Err` a request that could not be decoded
    /// or answered. fuse-backend-rs does not pass the reply header to the hook, so
    /// transports call this with what `Server::handle_message` returned.
    pub fn record_reply<E>(&self, r: &Result<usize, E>) {
        let (idx, opcode, _) = CURRENT.with(|c| c.get());
        let c = &self.per_fs[idx as usize];
        match r {
            Ok(n) if opcode == FUSE_READ => {
                c.read_bytes.fetch_add(
                    (*n as u64).saturating_sub(u64::from(OUT_HEADER_LEN)),
                    Ordering::Relaxed,
                );
            }
            Ok(_) => {}
            Err(_) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl MetricsHook for FsMetrics {
    fn collect(&self, ih: &InHeader) {
        let idx = (ih.nodeid >> VFS_INDEX_SHIFT) as u8;
        CURRENT.with(|c| c.set((idx, ih.opcode, ih.len)));
        let c = &self.per_fs[idx as usize];
        c.requests.fetch_add(1, Ordering::Relaxed);
        match ih.opcode {
            FUSE_READ => {
                c.read_ops.fetch_add(1, Ordering::Relaxed);
            }
            FUSE_WRITE => {
                c.write_ops.fetch_add(1, Ordering::Relaxed);
                c.write_bytes.fetch_add(
                    u64::from(ih.len.saturating_sub(WRITE_HEADERS_LEN)),
                    Ordering::Relaxed,
                );
            }
            _ => {}
        }
    }

    fn release(&self, _oh: Option<&OutHeader>) {}
}

/// The VFS options used for every transport: like nydusd in Kata (open/opendir served,
/// killpriv_v2, writeback), without DAX (no FUSE_SETUPMAPPING support), plus POSIX ACLs
/// with DONT_MASK (the passthrough applies the umask, so a default ACL can override it).
/// No POSIX_LOCKS/FLOCK_LOCKS: the guest kernel keeps locks locally (docs/architecture.md).
pub fn vfs_options() -> VfsOptions {
    let mut opts = VfsOptions {
        no_open: false,
        no_opendir: false,
        no_writeback: false,
        killpriv_v2: true,
        ..VfsOptions::default()
    };
    opts.out_opts.remove(FsOptions::PERFILE_DAX);
    opts.out_opts |= FsOptions::POSIX_ACL | FsOptions::DONT_MASK;
    opts
}

/// Checks that `mp` is an absolute path without `.`/`..` components and returns it in
/// normal form (no repeated or trailing slashes).
pub fn normalize_mountpoint(mp: &str) -> Result<String, MountError> {
    if !mp.starts_with('/') {
        return Err(MountError::BadMountpoint(mp.into(), "must be absolute"));
    }
    if mp.contains('\0') {
        return Err(MountError::BadMountpoint(mp.into(), "contains NUL"));
    }
    let mut out = String::new();
    for comp in mp.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." {
            return Err(MountError::BadMountpoint(
                mp.into(),
                "must not contain . or ..",
            ));
        }
        if comp.len() > 255 {
            return Err(MountError::BadMountpoint(mp.into(), "component too long"));
        }
        out.push('/');
        out.push_str(comp);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Removes secrets (registry auth, tokens, object-store keys) from a config before it is
/// reported by the API.
pub fn redact_secrets(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let lk = k.to_ascii_lowercase();
                if matches!(
                    lk.as_str(),
                    "auth" | "registry_token" | "access_key_id" | "access_key_secret" | "password"
                ) {
                    *val = Value::String(String::new());
                } else {
                    redact_secrets(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// A filesystem that can tell, without waiting on anything, whether a read would be served
/// from local files or memory only (a RAFS image whose chunks are all cached and verified).
pub trait WarmReads: Send + Sync {
    /// Whether reading `size` bytes at `offset` of inode `ino` needs no backend fetch.
    fn is_warm(&self, ino: u64, offset: u64, size: u32) -> bool;
}

/// Which READ and WRITE requests the device may serve inline on its queue thread, as
/// virtiofsd serves all of them, instead of handing them to the pool: those of local
/// filesystems (the passthroughs: they wait on the host's page cache or disk, never on a
/// registry) and warm reads of the filesystems that implement [`WarmReads`]. A hand-off to
/// the pool costs two thread wake-ups, more than a warm read itself.
#[derive(Default)]
pub struct InlineReads {
    local: [AtomicU64; 4],
    warm: parking_lot::RwLock<BTreeMap<u8, Arc<dyn WarmReads>>>,
}

/// The bits of a VFS node id below the filesystem index.
const VFS_INO_MASK: u64 = (1 << 56) - 1;

impl InlineReads {
    /// Whether VFS index `idx` is a local filesystem.
    pub fn is_local(&self, idx: u8) -> bool {
        self.local[(idx >> 6) as usize].load(Ordering::Relaxed) & (1 << (idx & 63)) != 0
    }

    /// Whether a READ of `size` bytes at `offset` of VFS node `nodeid` may be served inline.
    pub fn read_is_inline(&self, nodeid: u64, offset: u64, size: u32) -> bool {
        let idx = (nodeid >> 56) as u8;
        if self.is_local(idx) {
            return true;
        }
        let probe = self.warm.read().get(&idx).cloned();
        probe.is_some_and(|p| p.is_warm(nodeid & VFS_INO_MASK, offset, size))
    }

    fn set(&self, idx: u8, local: bool, warm: Option<Arc<dyn WarmReads>>) {
        let w = &self.local[(idx >> 6) as usize];
        if local {
            w.fetch_or(1 << (idx & 63), Ordering::Relaxed);
        } else {
            w.fetch_and(!(1 << (idx & 63)), Ordering::Relaxed);
        }
        let mut m = self.warm.write();
        match warm {
            Some(p) => m.insert(idx, p),
            None => m.remove(&idx),
        };
    }
}

/// Where a chrooted daemon's `/` is on the host, under the spelling it was given and its
/// canonical one (a host path may come in either).
#[derive(Debug, Clone)]
struct HostRoot {
    given: PathBuf,
    canonical: PathBuf,
}

impl HostRoot {
    fn new(root: &Path) -> Self {
        HostRoot {
            given: root.to_path_buf(),
            canonical: std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
        }
    }

    /// The chroot's view of the host path `p`. Lexical: `p` must be absolute, free of
    /// `..` (the kernel, not a string, would resolve those) and below the root.
    fn map(&self, p: &Path) -> Result<PathBuf, MountError> {
        let refuse = || {
            MountError::OutsideChroot(
                p.display().to_string(),
                self.canonical.display().to_string(),
            )
        };
        if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(refuse());
        }
        let rest = p
            .strip_prefix(&self.canonical)
            .or_else(|_| p.strip_prefix(&self.given))
            .map_err(|_| refuse())?;
        Ok(Path::new("/").join(rest))
    }
}

/// The daemon's filesystem tree: the [`Vfs`] plus its mount table and counters.
pub struct FsTree {
    vfs: Arc<Vfs>,
    mounts: Arc<Mutex<BTreeMap<String, MountRecord>>>,
    metrics: Arc<FsMetrics>,
    /// Where mount sources may lie (empty: anywhere).
    allowed_roots: Mutex<Vec<std::path::PathBuf>>,
    /// Under `--sandbox chroot`, where the daemon's `/` is on the host.
    host_root: Mutex<Option<HostRoot>>,
    /// Which reads and writes may be served inline (see [`InlineReads`]).
    inline: Arc<InlineReads>,
    /// Only RAFS mounts, ever ([`FsTree::rafs_only`]).
    rafs_only: bool,
}

impl Default for FsTree {
    fn default() -> Self {
        Self::new()
    }
}

impl FsTree {
    /// An empty tree (just the pseudo root).
    pub fn new() -> Self {
        Self::with_options(vfs_options(), false)
    }

    /// An empty tree that only ever holds RAFS mounts, as nydusd's RAFS daemons are (a FUSE
    /// daemon started with `--bootstrap` and without `--shared-dir`). Files open with zero messages (the kernel
    /// sends no OPEN or RELEASE, like nydusd's `no_open`), and FLUSH is turned off; with
    /// READDIRPLUS a cold small file then costs one READ, and a warm one (in the page cache,
    /// without AUTO_INVAL_DATA) none. Passthrough mounts are refused
    /// ([`MountError::RafsOnly`]): they need OPEN. Mount such a session read-only, so the
    /// kernel refuses writable opens itself.
    pub fn rafs_only() -> Self {
        let mut opts = vfs_options();
        opts.no_open = true;
        // An image never changes: no GETATTR before reads to see whether it did.
        opts.out_opts.remove(FsOptions::AUTO_INVAL_DATA);
        Self::with_options(opts, true)
    }

    fn with_options(opts: VfsOptions, rafs_only: bool) -> Self {
        FsTree {
            vfs: Arc::new(Vfs::new(opts)),
            mounts: Arc::new(Mutex::new(BTreeMap::new())),
            metrics: Arc::new(FsMetrics::new()),
            allowed_roots: Mutex::new(Vec::new()),
            host_root: Mutex::new(None),
            inline: Arc::new(InlineReads::default()),
            rafs_only,
        }
    }

    /// The VFS to hand to a fuse-backend-rs `Server`.
    pub fn vfs(&self) -> Arc<Vfs> {
        self.vfs.clone()
    }

    /// A request dispatcher for one connection: the VFS `Server` plus the opcodes it lacks
    /// (see [`super::dispatch`]).
    pub fn dispatcher(&self) -> Dispatcher {
        let d = Dispatcher::new(self.vfs.clone(), self.mounts.clone());
        if self.rafs_only {
            d.rafs_only()
        } else {
            d
        }
    }

    /// Forgets the guest's FUSE session (inodes, handles); mounts stay.
    pub fn end_session(&self) {
        FileSystem::destroy(&*self.vfs);
    }

    /// Which reads and writes the device may serve inline, kept current across mounts.
    pub fn inline_reads(&self) -> Arc<InlineReads> {
        self.inline.clone()
    }

    /// The metrics hook to pass to `Server::handle_message`.
    pub fn metrics_hook(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    /// Restricts mount sources to these trees (empty: anywhere).
    pub fn set_allowed_roots(&self, roots: Vec<std::path::PathBuf>) {
        *self.allowed_roots.lock() = roots
            .into_iter()
            .map(|r| std::fs::canonicalize(&r).unwrap_or(r))
            .collect();
    }

    /// Declares that the daemon's `/` is the host directory `root` (`--sandbox chroot`):
    /// from then on, mount sources and config paths, which callers give as host paths, are
    /// mapped into that view by [`FsTree::host_path`].
    pub fn set_host_root(&self, root: &Path) {
        *self.host_root.lock() = Some(HostRoot::new(root));
    }

    /// The path under which the daemon reaches the host path `p`: `p` itself, or under
    /// `--sandbox chroot` its place below the chroot, refused when it lies outside it.
    pub fn host_path(&self, p: &Path) -> Result<PathBuf, MountError> {
        match &*self.host_root.lock() {
            None => Ok(p.to_path_buf()),
            Some(r) => r.map(p),
        }
    }

    /// Refuses a source outside the allowed roots (resolved, so `..` and symlinks count).
    fn check_source(&self, source: &str) -> Result<(), MountError> {
        let roots = self.allowed_roots.lock();
        if roots.is_empty() {
            return Ok(());
        }
        let real = std::fs::canonicalize(source).unwrap_or_else(|_| Path::new(source).into());
        if roots.iter().any(|r| real.starts_with(r)) {
            return Ok(());
        }
        Err(MountError::NotAllowed(
            source.to_string(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ))
    }

    /// Mounts a filesystem of type `fs_type` from `source` at `mountpoint`. `config` is the
    /// RAFS config text (ignored for passthrough).
    pub fn mount(
        &self,
        fs_type: FsType,
        source: &str,
        config: &str,
        mountpoint: &str,
    ) -> Result<(), MountError> {
        let mp = normalize_mountpoint(mountpoint)?;
        if self.rafs_only && fs_type == FsType::Passthrough {
            return Err(MountError::RafsOnly);
        }
        // Cheap early check so a bad request does not open anything; mount_backend checks
        // again under the lock.
        if self.mounts.lock().contains_key(&mp) {
            return Err(MountError::AlreadyMounted(mp));
        }
        let inner = self.host_path(Path::new(source))?;
        let inner_str = inner.to_string_lossy();
        self.check_source(&inner_str)?;
        let (fs, cfg_json): (BackFileSystem, Value) = match fs_type {
            FsType::Passthrough => (
                Box::new(PassthroughFs::new(PassthroughConfig::new(&inner))?),
                Value::Null,
            ),
            FsType::Rafs => open_rafs(&inner, config, |p| self.host_path(p))?,
        };
        self.mount_backend(fs, fs_type, source, cfg_json, &mp)
    }

    /// Mounts an already created backend at `mountpoint`, recorded in the mount table as
    /// `fs_type` from `source` with `config` (shown by the API).
    pub fn mount_backend(
        &self,
        fs: BackFileSystem,
        fs_type: FsType,
        source: &str,
        config: Value,
        mountpoint: &str,
    ) -> Result<(), MountError> {
        let mp = normalize_mountpoint(mountpoint)?;
        if self.rafs_only && fs_type == FsType::Passthrough {
            return Err(MountError::RafsOnly);
        }
        // Held across the VFS mount so two racing mounts of one path cannot both succeed.
        let mut mounts = self.mounts.lock();
        if mounts.contains_key(&mp) {
            return Err(MountError::AlreadyMounted(mp));
        }
        let warm = fs.as_any().downcast_ref::<RafsFs>().map(|r| r.warm_reads());
        let fs: BackFileSystem = Box::new(super::mountroot::MountRootFs(fs));
        let fs_idx = self
            .vfs
            .mount(fs, &mp)
            .map_err(|e| MountError::Vfs(format!("{e:?}")))?;
        self.metrics.per_fs[fs_idx as usize].reset();
        self.inline
            .set(fs_idx, fs_type == FsType::Passthrough, warm);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        log::info!("mounted {} {source} at {mp}", fs_type.backend_type());
        mounts.insert(
            mp.clone(),
            MountRecord {
                fs_type,
                source: source.to_string(),
                mountpoint: mp,
                mounted_time: now,
                config,
                fs_idx,
            },
        );
        Ok(())
    }

    /// Unmounts whatever is mounted at `mountpoint`; the pseudo directory stays (empty).
    pub fn umount(&self, mountpoint: &str) -> Result<(), MountError> {
        let mp = normalize_mountpoint(mountpoint)?;
        let mut mounts = self.mounts.lock();
        if !mounts.contains_key(&mp) {
            return Err(MountError::NotMounted(mp));
        }
        self.vfs
            .umount(&mp)
            .map_err(|e| MountError::Vfs(format!("{e:?}")))?;
        if let Some(r) = mounts.remove(&mp) {
            self.inline.set(r.fs_idx, false, None);
        }
        log::info!("unmounted {mp}");
        Ok(())
    }

    /// A copy of the mount table.
    pub fn mounts(&self) -> Vec<MountRecord> {
        self.mounts.lock().values().cloned().collect()
    }

    /// `backend_collection` of `GET /api/v1/daemon`.
    pub fn backend_collection(&self) -> Value {
        let mut m = serde_json::Map::new();
        for r in self.mounts.lock().values() {
            m.insert(
                r.mountpoint.clone(),
                json!({
                    "backend_type": r.fs_type.backend_type(),
                    "mountpoint": r.mountpoint,
                    "source": r.source,
                    "mounted_time": r.mounted_time,
                    "config": r.config,
                }),
            );
        }
        Value::Object(m)
    }

    /// Per-filesystem counters for `GET /api/v1/metrics`.
    pub fn metrics_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for r in self.mounts.lock().values() {
            let mut v = self.metrics.per_fs[r.fs_idx as usize].to_json();
            if let Value::Object(o) = &mut v {
                o.insert("backend_type".into(), r.fs_type.backend_type().into());
                if let Some(extra) = backend_metrics(&self.vfs, &r.mountpoint) {
                    o.insert("backend".into(), extra);
                }
            }
            m.insert(r.mountpoint.clone(), v);
        }
        // The pseudo root's own counters, unless a filesystem is mounted at "/" (a FUSE
        // daemon's --bootstrap): that one's then stand under "/".
        m.entry("/")
            .or_insert_with(|| self.metrics.per_fs[0].to_json());
        Value::Object(m)
    }
}

impl FsTree {
    /// Metrics of RAFS instances as produced by `f`, for nydusd's `/api/v1/metrics/backend`
    /// and `/api/v1/metrics/blobcache`. With `id` (a mountpoint) the one instance; without,
    /// the only instance when there is one, else an object keyed by mountpoint.
    pub fn rafs_metrics_by(
        &self,
        id: Option<&str>,
        f: fn(&RafsFs) -> Value,
    ) -> Result<Value, MountError> {
        let mut all = serde_json::Map::new();
        for r in self.mounts() {
            if r.fs_type != FsType::Rafs || id.is_some_and(|i| i != r.mountpoint) {
                continue;
            }
            if let Ok(Some((fs, _))) = self.vfs.get_rootfs(&r.mountpoint) {
                if let Some(rafs) = fs.as_any().downcast_ref::<RafsFs>() {
                    all.insert(r.mountpoint.clone(), f(rafs));
                }
            }
        }
        match (id, all.len()) {
            (Some(i), 0) => Err(MountError::NotMounted(i.to_string())),
            (_, 1) => Ok(all
                .into_iter()
                .next()
                .map(|(_, v)| v)
                .unwrap_or(Value::Null)),
            _ => Ok(Value::Object(all)),
        }
    }
}

/// Filesystem-specific metrics (RAFS storage counters) if the backend offers them.
fn backend_metrics(vfs: &Vfs, mountpoint: &str) -> Option<Value> {
    let (fs, _) = vfs.get_rootfs(mountpoint).ok()??;
    rafs_metrics(fs.as_any())
}

fn rafs_metrics(fs: &dyn std::any::Any) -> Option<Value> {
    fs.downcast_ref::<RafsFs>().map(RafsFs::metrics)
}

/// The config text as JSON (JSON as is, TOML converted), secrets removed, for the API.
fn config_for_api(config: &str) -> Value {
    let mut v = serde_json::from_str::<Value>(config)
        .ok()
        .or_else(|| {
            toml::from_str::<toml::Value>(config)
                .ok()
                .and_then(|t| serde_json::to_value(t).ok())
        })
        .unwrap_or(Value::Null);
    redact_secrets(&mut v);
    v
}

/// Opens a RAFS filesystem. Returns the backend and its config (secrets removed) for the API.
fn open_rafs(
    bootstrap: &Path,
    config: &str,
    host_path: impl FnMut(&Path) -> Result<PathBuf, MountError>,
) -> Result<(BackFileSystem, Value), MountError> {
    let mut cfg =
        RafsConfig::from_str(config).map_err(|e| MountError::Rafs(format!("config: {e}")))?;
    cfg.map_paths(host_path)?;
    for f in &cfg.unknown_fields {
        log::warn!("RAFS config: ignoring unknown field {f}");
    }
    let fs = RafsFs::open(bootstrap, &cfg)
        .map_err(|e| MountError::Rafs(format!("{}: {e}", bootstrap.display())))?;
    Ok((Box::new(fs), config_for_api(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountpoints_are_normalised() {
        assert_eq!(normalize_mountpoint("/a//b/").unwrap(), "/a/b");
        assert_eq!(normalize_mountpoint("/").unwrap(), "/");
        assert!(normalize_mountpoint("a/b").is_err());
        assert!(normalize_mountpoint("/a/../b").is_err());
    }

    #[test]
    fn host_paths_map_below_the_chroot() {
        let d = tempfile::tempdir().unwrap();
        let t = FsTree::new();
        let p = d.path().join("a/b");
        assert_eq!(t.host_path(&p).unwrap(), p, "no chroot: unchanged");
        t.set_host_root(d.path());
        assert_eq!(t.host_path(&p).unwrap(), Path::new("/a/b"));
        assert_eq!(t.host_path(d.path()).unwrap(), Path::new("/"));
        for bad in [
            d.path().join("a/../../x"),
            PathBuf::from("/etc/passwd"),
            PathBuf::from("a/b"),
        ] {
            let e = t.host_path(&bad).unwrap_err();
            assert!(matches!(e, MountError::OutsideChroot(..)), "{bad:?}: {e}");
            assert_eq!(e.http_status(), 403);
        }
    }

    #[test]
    fn fs_types() {
        for t in ["passthrough_fs", "passthrough", "passthroughfs"] {
            assert_eq!(FsType::parse(t).unwrap(), FsType::Passthrough);
        }
        assert_eq!(FsType::parse("rafs").unwrap(), FsType::Rafs);
        assert!(FsType::parse("").is_err());
    }

    #[test]
    fn redacts() {
        let mut v = json!({"device":{"backend":{"config":{"auth":"c2VjcmV0","host":"h"}}}});
        redact_secrets(&mut v);
        assert_eq!(v["device"]["backend"]["config"]["auth"], "");
        assert_eq!(v["device"]["backend"]["config"]["host"], "h");
    }

    #[test]
    fn mount_umount_passthrough() {
        let d = tempfile::tempdir().unwrap();
        let t = FsTree::new();
        let src = d.path().to_str().unwrap();
        t.mount(FsType::Passthrough, src, "", "/containers")
            .unwrap();
        let e = t
            .mount(FsType::Passthrough, src, "", "/containers/")
            .unwrap_err();
        assert!(matches!(e, MountError::AlreadyMounted(_)));
        assert_eq!(t.mounts().len(), 1);
        assert_eq!(
            t.backend_collection()["/containers"]["backend_type"],
            "PassthroughFs"
        );
        t.umount("/containers").unwrap();
        assert!(matches!(
            t.umount("/containers").unwrap_err(),
            MountError::NotMounted(_)
        ));
        // A second mount at the same place works after the umount.
        t.mount(FsType::Passthrough, src, "", "/containers")
            .unwrap();
    }
}
