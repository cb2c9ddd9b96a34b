//! The inode store: which host inode each FUSE node id names, how to reach it again, and how
//! many lookups the guest holds on it.
//!
//! - An inode is identified by (st_dev, st_ino, mount id): the same host file reached twice
//!   (hard links, a second lookup) gets one node id.
//! - It is remembered by its kernel file handle (`name_to_handle_at`) and the mount it lives
//!   on. The O_PATH fds used to operate on it live in a bounded LRU ([`FdCache`]); an evicted
//!   one is reopened with `open_by_handle_at`. So the daemon's fd count does not grow with the
//!   number of inodes the guest has looked up.
//! - An inode whose filesystem cannot make handles (or a nameless O_TMPFILE) keeps its fd
//!   pinned. Pinned fds are counted and capped ([`InodeStore::MAX_PINNED`] by default).
//! - Mount fds (needed by `open_by_handle_at`) are shared by the inodes of one mount and
//!   closed when the last of them is forgotten, so a reconnect or a host umount leaves none.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};

use super::sys::FileHandle;

/// Node id of the share root (FUSE_ROOT_ID).
pub const ROOT_ID: u64 = 1;

/// What identifies a host inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct InodeKey {
    /// st_dev of the host inode.
    pub dev: u64,
    /// st_ino of the host inode.
    pub ino: u64,
    /// Mount id (statx STATX_MNT_ID), 0 when the kernel does not tell.
    pub mnt: u64,
}

/// An fd on a host mount, for `open_by_handle_at` (must not be O_PATH).
pub struct MountFd {
    /// The mount id.
    pub mnt_id: u64,
    /// A read-only fd of a directory or regular file on that mount.
    pub fd: OwnedFd,
}

/// One host inode the guest knows.
pub struct Inode {
    /// The FUSE node id.
    pub id: u64,
    /// Host identity.
    pub key: InodeKey,
    /// `st_mode & S_IFMT`.
    pub kind: u32,
    /// File handle and its mount, when the filesystem makes handles.
    pub handle: Option<(FileHandle, Arc<MountFd>)>,
    /// The fd kept for inodes without a handle (or nameless tmpfiles).
    pub pinned: Mutex<Option<Arc<OwnedFd>>>,
    /// Lookups the guest holds.
    pub refs: AtomicU64,
}

impl Inode {
    /// Whether the inode is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<InodeKey, u64>,
}

/// All inodes of one passthrough share.
pub struct InodeStore {
    maps: RwLock<Maps>,
    next_id: AtomicU64,
    pinned: AtomicUsize,
    max_pinned: usize,
    mounts: Mutex<HashMap<u64, Weak<MountFd>>>,
}

impl InodeStore {
    /// Default cap on pinned fds.
    pub const MAX_PINNED: usize = 8192;

    /// An empty store that pins at most `max_pinned` fds.
    pub fn new(max_pinned: usize) -> Self {
        InodeStore {
            maps: RwLock::new(Maps::default()),
            next_id: AtomicU64::new(ROOT_ID + 1),
            pinned: AtomicUsize::new(0),
            max_pinned,
            mounts: Mutex::new(HashMap::new()),
        }
    }

    /// The inode of node id `id`.
    pub fn get(&self, id: u64) -> Option<Arc<Inode>> {
        self.maps.read().by_id.get(&id).cloned()
    }

    /// Number of inodes held.
    pub fn len(&self) -> usize {
        self.maps.read().by_id.len()
    }

    /// Whether no inode is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pinned fds held.
    pub fn pinned_count(&self) -> usize {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Takes one more lookup on the inode with `key`, if known.
    pub fn lookup_key(&self, key: &InodeKey) -> Option<Arc<Inode>> {
        let maps = self.maps.read();
        let id = maps.by_key.get(key)?;
        let inode = maps.by_id.get(id)?.clone();
        // Under the read lock: a concurrent forget removes only under the write lock, after
        // checking the count again.
        inode.refs.fetch_add(1, Ordering::AcqRel);
        Some(inode)
    }

    /// Reserves a pinned-fd slot (ENFILE when the cap is reached).
    pub fn reserve_pin(&self) -> std::io::Result<()> {
        let n = self.pinned.fetch_add(1, Ordering::AcqRel);
        if n >= self.max_pinned {
            self.pinned.fetch_sub(1, Ordering::AcqRel);
            return Err(std::io::Error::from_raw_os_error(libc::ENFILE));
        }
        Ok(())
    }

    /// Returns a pinned-fd slot.
    pub fn release_pin(&self) {
        self.pinned.fetch_sub(1, Ordering::AcqRel);
    }

    /// Adds a new inode with one lookup, or, when another thread added the same key first,
    /// takes a lookup on that one. Returns the inode and whether it is the new one.
    pub fn insert(
        &self,
        key: InodeKey,
        kind: u32,
        handle: Option<(FileHandle, Arc<MountFd>)>,
        pinned: Option<Arc<OwnedFd>>,
        id: Option<u64>,
        refs: u64,
    ) -> (Arc<Inode>, bool) {
        self.insert_or_replace(key, kind, handle, pinned, id, refs, false)
    }

    /// Like [`Self::insert`]; with `replace` a new inode takes the key even when one holds it
    /// (the old one is a deleted file whose inode number the host reused; it keeps its node
    /// id until the guest forgets it).
    #[allow(clippy::too_many_arguments)]
    pub fn insert_or_replace(
        &self,
        key: InodeKey,
        kind: u32,
        handle: Option<(FileHandle, Arc<MountFd>)>,
        pinned: Option<Arc<OwnedFd>>,
        id: Option<u64>,
        refs: u64,
        replace: bool,
    ) -> (Arc<Inode>, bool) {
        let mut maps = self.maps.write();
        if !replace {
            if let Some(existing) = maps.by_key.get(&key).and_then(|i| maps.by_id.get(i)) {
                existing.refs.fetch_add(refs, Ordering::AcqRel);
                return (existing.clone(), false);
            }
        }
        let id = id.unwrap_or_else(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        let inode = Arc::new(Inode {
            id,
            key,
            kind,
            handle,
            pinned: Mutex::new(pinned),
            refs: AtomicU64::new(refs),
        });
        maps.by_key.insert(key, id);
        maps.by_id.insert(id, inode.clone());
        (inode, true)
    }

    /// Drops `count` lookups; the inode goes when none is left (never the root). Returns the
    /// removed inode.
    pub fn forget(&self, id: u64, count: u64) -> Option<Arc<Inode>> {
        if id == ROOT_ID {
            return None;
        }
        let inode = self.get(id)?;
        let mut cur = inode.refs.load(Ordering::Acquire);
        loop {
            let new = cur.saturating_sub(count);
            match inode
                .refs
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(v) => cur = v,
            }
        }
        let mut maps = self.maps.write();
        if inode.refs.load(Ordering::Acquire) != 0 {
            return None;
        }
        maps.by_id.remove(&id);
        if maps.by_key.get(&inode.key) == Some(&id) {
            maps.by_key.remove(&inode.key);
        }
        drop(maps);
        if inode.pinned.lock().take().is_some() {
            self.release_pin();
        }
        Some(inode)
    }

    /// Forgets every inode but the root (a new FUSE session).
    pub fn clear_but_root(&self) {
        let mut maps = self.maps.write();
        let removed: Vec<Arc<Inode>> = maps
            .by_id
            .iter()
            .filter(|(id, _)| **id != ROOT_ID)
            .map(|(_, i)| i.clone())
            .collect();
        maps.by_id.retain(|id, _| *id == ROOT_ID);
        maps.by_key.retain(|_, id| *id == ROOT_ID);
        drop(maps);
        for i in removed {
            if i.pinned.lock().take().is_some() {
                self.release_pin();
            }
        }
        self.next_id.store(ROOT_ID + 1, Ordering::Relaxed);
    }

    /// A snapshot of every inode (for export).
    pub fn all(&self) -> Vec<Arc<Inode>> {
        let mut v: Vec<_> = self.maps.read().by_id.values().cloned().collect();
        v.sort_by_key(|i| i.id);
        v
    }

    /// The next node id to hand out (for export).
    pub fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Sets the next node id (for import).
    pub fn set_next_id(&self, n: u64) {
        self.next_id.store(n.max(ROOT_ID + 1), Ordering::Relaxed);
    }

    /// The shared fd of mount `mnt_id`, opened with `open` when no inode holds one.
    pub fn mount_fd(
        &self,
        mnt_id: u64,
        open: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> std::io::Result<Arc<MountFd>> {
        let mut mounts = self.mounts.lock();
        if let Some(m) = mounts.get(&mnt_id).and_then(Weak::upgrade) {
            return Ok(m);
        }
        let m = Arc::new(MountFd {
            mnt_id,
            fd: open()?,
        });
        mounts.retain(|_, w| w.strong_count() > 0);
        mounts.insert(mnt_id, Arc::downgrade(&m));
        Ok(m)
    }

    /// Mount fds still open.
    pub fn mount_count(&self) -> usize {
        self.mounts
            .lock()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// A bounded LRU of O_PATH fds by node id.
pub struct FdCache {
    lru: Mutex<LruCache<u64, Arc<OwnedFd>>>,
}

impl FdCache {
    /// A cache of at most `cap` fds.
    pub fn new(cap: usize) -> Self {
        let cap = std::num::NonZeroUsize::new(cap.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        FdCache {
            lru: Mutex::new(LruCache::new(cap)),
        }
    }

    /// The cached fd of `id`.
    pub fn get(&self, id: u64) -> Option<Arc<OwnedFd>> {
        self.lru.lock().get(&id).cloned()
    }

    /// Caches `fd` for `id` (the least recently used one goes when full).
    pub fn put(&self, id: u64, fd: Arc<OwnedFd>) {
        self.lru.lock().put(id, fd);
    }

    /// Drops the fd of `id`.
    pub fn remove(&self, id: u64) {
        self.lru.lock().pop(&id);
    }

    /// Drops every fd.
    pub fn clear(&self) {
        self.lru.lock().clear();
    }

    /// Fds held.
    pub fn len(&self) -> usize {
        self.lru.lock().len()
    }

    /// Whether no fd is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Borrow helper so callers can pass an `Arc<OwnedFd>` where a `BorrowedFd` is wanted.
pub fn bfd(fd: &Arc<OwnedFd>) -> std::os::fd::BorrowedFd<'_> {
    fd.as_fd()
}
