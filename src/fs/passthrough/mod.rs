//! Our own writable passthrough of a host directory: a fuse-backend-rs [`FileSystem`] that is
//! the container's overlay upper and every shared volume (see docs/architecture.md).
//!
//! - [`inode`]: the inode store (identity by dev/ino/mount id, file handles, a bounded fd LRU).
//! - [`creds`]: per-thread credential switching and the CAP_FSETID drop for killpriv_v2.
//! - [`state`]: the session state exported to bytes and imported by a fresh process.
//! - [`sys`]: the raw syscalls.
//!
//! Containment: every host path the daemon opens is one component beneath an fd it holds,
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (`O_NOFOLLOW` single-component
//! `openat` before Linux 5.6); `.` and `..` are never resolved on the host; inodes are
//! reopened by file handle or through `/proc/self/fd`, never by path; only regular files and
//! directories are ever opened for I/O, so a guest cannot make the daemon open a device node
//! or a FIFO on the host.

pub mod creds;
pub mod inode;
pub mod state;
pub mod sys;

use std::any::Any;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid, FOPEN_IN_KILL_SUIDGID,
    WRITE_KILL_PRIV,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::api::{BackendFileSystem, VFS_MAX_INO};
use parking_lot::{Mutex, RwLock};

use self::creds::{CredGuard, NoFsetidGuard};
use self::inode::{FdCache, Inode, InodeKey, InodeStore, ROOT_ID};
use self::sys::errno;

/// Errors creating a passthrough filesystem.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// The source is missing or is not a directory.
    #[error("passthrough source {0:?} is not a directory")]
    NotADirectory(String),
    /// The share root (or /proc/self/fd) could not be opened.
    #[error("cannot open passthrough source {path:?}: {source}")]
    Open {
        /// The shared directory.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Exported state could not be imported.
    #[error("cannot import passthrough state: {0}")]
    Import(String),
}

/// Passthrough options.
#[derive(Clone, Debug)]
pub struct Config {
    /// The shared host directory.
    pub root: PathBuf,
    /// Entry (dentry) timeout handed to the guest.
    pub entry_timeout: Duration,
    /// Attribute timeout handed to the guest.
    pub attr_timeout: Duration,
    /// Serve extended attributes.
    pub xattr: bool,
    /// Most O_PATH fds kept open for inodes that have a file handle.
    pub max_cached_fds: usize,
    /// Most fds pinned for inodes without a handle.
    pub max_pinned_fds: usize,
}

impl Config {
    /// Defaults for `root`: 5 s timeouts, xattrs on, 256 cached fds, 8192 pinned.
    pub fn new(root: &Path) -> Self {
        Config {
            root: root.to_path_buf(),
            entry_timeout: Duration::from_secs(5),
            attr_timeout: Duration::from_secs(5),
            xattr: true,
            max_cached_fds: 256,
            max_pinned_fds: InodeStore::MAX_PINNED,
        }
    }
}

/// An open file or directory of the guest.
pub struct HandleData {
    /// The node id it was opened on.
    pub inode: u64,
    /// The open flags on the host.
    pub flags: i32,
    /// The host fd; `None` when it could not be reopened after an import (EIO then).
    pub file: Option<Arc<OwnedFd>>,
    /// Serialises readdir on a directory handle (seek + getdents).
    dir_lock: Mutex<()>,
}

/// Restores the thread's umask on drop.
struct UmaskGuard(Option<u32>);

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            sys::set_umask(m);
        }
    }
}

/// A path naming an inode for the xattr calls ([`PassthroughFs::xattr_path`]); keeps the
/// inode's fd open and, when the path is relative to `/proc/self/fd`, moves the thread's
/// cwd back to `/` on drop.
struct XattrPath {
    _fd: Arc<OwnedFd>,
    path: CString,
    in_proc: bool,
}

impl XattrPath {
    fn as_ptr(&self) -> *const libc::c_char {
        self.path.as_ptr()
    }
}

impl Drop for XattrPath {
    fn drop(&mut self) {
        if self.in_proc {
            // SAFETY: NUL-terminated literal path; only this thread's cwd changes.
            unsafe { libc::chdir(c"/".as_ptr()) };
        }
    }
}

/// The FUSE options negotiated at INIT (the bits of `FsOptions`); WRITEBACK_CACHE and
/// DONT_MASK change how requests are served.
#[derive(Default)]
struct Session(AtomicU64);

impl Session {
    fn has(&self, o: FsOptions) -> bool {
        FsOptions::from_bits_truncate(self.0.load(Ordering::Relaxed)).contains(o)
    }

    fn set(&self, o: FsOptions) {
        self.0.store(o.bits(), Ordering::Relaxed);
    }

    fn get(&self) -> FsOptions {
        FsOptions::from_bits_truncate(self.0.load(Ordering::Relaxed))
    }
}

/// The passthrough filesystem.
pub struct PassthroughFs {
    cfg: Config,
    /// The root's fd (O_PATH), also pinned in the root inode.
    root_fd: Arc<OwnedFd>,
    /// `/proc/self/fd`, to reopen inodes without a handle.
    proc_self_fd: Option<OwnedFd>,
    inodes: InodeStore,
    fd_cache: FdCache,
    handles: RwLock<HashMap<u64, Arc<HandleData>>>,
    next_handle: AtomicU64,
    session: Session,
    /// Whether the thread-private umask (unshare CLONE_FS) works on this host.
    umask_ok: AtomicBool,
}

/// XATTR_SIZE_MAX and XATTR_LIST_MAX: the largest xattr value and name list Linux has.
const XATTR_MAX: usize = 65536;

/// Runs a get/list xattr call with a buffer of `size` bytes (at most [`XATTR_MAX`]: a guest
/// asking for 4 GiB gets no more), or with none when `size` is 0. Returns the bytes, or
/// `Err(n)` with the size the caller asked about.
fn xattr_call(
    size: u32,
    call: impl FnOnce(*mut libc::c_void, usize) -> isize,
) -> io::Result<Result<Vec<u8>, u32>> {
    if size == 0 {
        let n = sys::check_size(call(std::ptr::null_mut(), 0))?;
        return Ok(Err(n as u32));
    }
    let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
    let n = sys::check_size(call(buf.as_mut_ptr().cast(), buf.len()))?;
    buf.truncate(n);
    Ok(Ok(buf))
}

/// The S_IFMT of `mode`.
fn kind_of(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

/// Rejects names the guest must not use (empty, `.`/`..`, with `/`, too long).
fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b.len() > 255 || b.contains(&b'/') {
        return Err(errno(libc::EINVAL));
    }
    if b == b"." || b == b".." {
        return Err(errno(libc::EPERM));
    }
    Ok(())
}

/// A `File` view of an fd, without taking ownership.
fn as_file(fd: &OwnedFd) -> ManuallyDrop<File> {
    // SAFETY: the File is never dropped (ManuallyDrop), so `fd` stays owned by its owner,
    // which outlives this borrow at every call site.
    ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) })
}

/// ESTALE (the host inode is gone) becomes ENOENT, as on a local filesystem.
fn stale_to_enoent(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ESTALE) {
        errno(libc::ENOENT)
    } else {
        e
    }
}

impl PassthroughFs {
    /// A passthrough of `cfg.root`.
    pub fn new(cfg: Config) -> Result<Self, PassthroughError> {
        let path = cfg.root.display().to_string();
        if !cfg.root.is_dir() {
            return Err(PassthroughError::NotADirectory(path));
        }
        let c = CString::new(cfg.root.as_os_str().as_encoded_bytes()).map_err(|_| {
            PassthroughError::Open {
                path: path.clone(),
                source: errno(libc::EINVAL),
            }
        })?;
        let root_fd =
            sys::openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
                PassthroughError::Open {
                    path: path.clone(),
                    source: e,
                }
            })?;
        let proc_self_fd = crate::procfs::open(c"self/fd", libc::O_PATH | libc::O_DIRECTORY).ok();
        let fs = PassthroughFs {
            inodes: InodeStore::new(cfg.max_pinned_fds),
            fd_cache: FdCache::new(cfg.max_cached_fds),
            cfg,
            root_fd: Arc::new(root_fd),
            proc_self_fd,
            handles: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            session: Session::default(),
            umask_ok: AtomicBool::new(true),
        };
        fs.insert_root()
            .map_err(|e| PassthroughError::Open { path, source: e })?;
        Ok(fs)
    }

    fn insert_root(&self) -> io::Result<()> {
        let (st, mnt) = sys::statx_fd(self.root_fd.as_fd())?;
        let key = InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
            mnt,
        };
        let handle = self.handle_for(self.root_fd.as_fd(), libc::S_IFDIR)?;
        self.inodes.reserve_pin()?;
        self.inodes.insert(
            key,
            libc::S_IFDIR,
            handle,
            Some(self.root_fd.clone()),
            Some(ROOT_ID),
            1,
        );
        Ok(())
    }

    /// The share root.
    pub fn root(&self) -> &Path {
        &self.cfg.root
    }

    /// Inodes, cached fds, pinned fds, open handles and mount fds held (for tests and metrics).
    pub fn counts(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.inodes.len(),
            self.fd_cache.len(),
            self.inodes.pinned_count(),
            self.handles.read().len(),
            self.inodes.mount_count(),
        )
    }

    fn inode(&self, id: u64) -> io::Result<Arc<Inode>> {
        self.inodes.get(id).ok_or_else(|| errno(libc::EBADF))
    }

    /// The file handle of `fd` and a shared fd of its mount, when the filesystem makes
    /// handles and the mount can be opened (directories and regular files only).
    fn handle_for(
        &self,
        fd: BorrowedFd<'_>,
        kind: u32,
    ) -> io::Result<Option<(sys::FileHandle, Arc<inode::MountFd>)>> {
        let Some((h, mnt_id)) = sys::name_to_handle(fd)? else {
            return Ok(None);
        };
        let m = self.inodes.mount_fd(mnt_id, || {
            if kind == libc::S_IFDIR {
                self.reopen_fd(fd, libc::O_RDONLY | libc::O_DIRECTORY)
            } else if kind == libc::S_IFREG {
                self.reopen_fd(fd, libc::O_RDONLY | libc::O_NONBLOCK)
            } else {
                Err(errno(libc::EOPNOTSUPP))
            }
        });
        match m {
            Ok(m) => Ok(Some((h, m))),
            Err(_) => Ok(None),
        }
    }

    /// Reopens the inode of an O_PATH fd through /proc/self/fd.
    fn reopen_fd(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        let (proc, name) = self.proc_entry(fd.as_raw_fd())?;
        sys::openat(proc, &name, flags)
    }

    /// `/proc/self/fd` and the entry naming `fd` in it, for the *at calls that reach an
    /// inode through its O_PATH fd.
    fn proc_entry(&self, fd: std::os::fd::RawFd) -> io::Result<(std::os::fd::RawFd, CString)> {
        let proc = self
            .proc_self_fd
            .as_ref()
            .ok_or_else(|| errno(libc::ENOTSUP))?;
        let name = CString::new(fd.to_string()).map_err(|_| errno(libc::EINVAL))?;
        Ok((proc.as_raw_fd(), name))
    }

    /// An fd of an open guest handle on `id`, if any (for inodes whose host file is gone).
    fn open_fd_of(&self, id: u64) -> Option<Arc<OwnedFd>> {
        self.handles
            .read()
            .values()
            .find(|h| h.inode == id)
            .and_then(|h| h.file.clone())
    }

    /// An O_PATH (or open) fd of inode `id`.
    fn inode_fd(&self, id: u64) -> io::Result<Arc<OwnedFd>> {
        let inode = self.inode(id)?;
        self.fd_of(&inode)
    }

    fn fd_of(&self, inode: &Inode) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = inode.pinned.lock().clone() {
            return Ok(fd);
        }
        if let Some(fd) = self.fd_cache.get(inode.id) {
            return Ok(fd);
        }
        let Some((h, m)) = &inode.handle else {
            return Err(errno(libc::EBADF));
        };
        match sys::open_by_handle(m.fd.as_fd(), h, libc::O_PATH) {
            Ok(fd) => {
                let fd = Arc::new(fd);
                self.fd_cache.put(inode.id, fd.clone());
                Ok(fd)
            }
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                // Deleted on the host; an open guest handle still reaches it.
                self.open_fd_of(inode.id).ok_or_else(|| errno(libc::ENOENT))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens inode `id` for I/O with `flags` (regular files and directories only).
    fn open_inode(&self, inode: &Inode, flags: i32) -> io::Result<OwnedFd> {
        match inode.kind {
            libc::S_IFREG | libc::S_IFDIR => {}
            libc::S_IFLNK => return Err(errno(libc::ELOOP)),
            _ => return Err(errno(libc::ENXIO)),
        }
        // O_NOFOLLOW was for the guest's own walk; here it would refuse the /proc magic link.
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
        if let Some((h, m)) = &inode.handle {
            match sys::open_by_handle(m.fd.as_fd(), h, flags) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                    if let Some(fd) = self.open_fd_of(inode.id) {
                        return self.reopen_fd(fd.as_fd(), flags);
                    }
                    return Err(errno(libc::ENOENT));
                }
                Err(e) => return Err(e),
            }
        }
        let fd = self.fd_of(inode)?;
        self.reopen_fd(fd.as_fd(), flags)
    }

    fn entry(&self, inode: &Inode, st: stat64) -> Entry {
        Entry {
            inode: inode.id,
            generation: 0,
            attr: st,
            attr_flags: 0,
            attr_timeout: self.cfg.attr_timeout,
            entry_timeout: self.cfg.entry_timeout,
        }
    }

    /// Registers the host inode of `fd` (O_PATH or open) with one lookup.
    fn register(&self, fd: Arc<OwnedFd>, st: stat64, mnt: u64, pin: bool) -> io::Result<Entry> {
        let key = InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
            mnt,
        };
        let kind = kind_of(st.st_mode);
        let mut replace = false;
        let mut handle = None;
        if let Some(inode) = self.inodes.lookup_key(&key) {
            match self.same_file(&inode, kind, fd.as_fd())? {
                Ok(()) => {
                    if pin {
                        self.pin(&inode, fd)?;
                    }
                    return Ok(self.entry(&inode, st));
                }
                Err(h) => {
                    // The host reused a deleted file's inode number.
                    self.forget_one(inode.id, 1);
                    replace = true;
                    handle = h;
                }
            }
        }
        if handle.is_none() && !pin {
            handle = self.handle_for(fd.as_fd(), kind)?;
        }
        let pinned = if handle.is_none() {
            self.inodes.reserve_pin()?;
            Some(fd.clone())
        } else {
            None
        };
        let had_pin = pinned.is_some();
        let (inode, new) = self
            .inodes
            .insert_or_replace(key, kind, handle, pinned, None, 1, replace);
        if new {
            if !had_pin {
                self.fd_cache.put(inode.id, fd);
            }
        } else if had_pin {
            self.inodes.release_pin();
        }
        Ok(self.entry(&inode, st))
    }

    /// Whether `fd` is the file `inode` names. An inode whose fd is open (pinned or cached)
    /// cannot have had its number reused; otherwise the file handles (which carry the
    /// generation) must match. On a mismatch, returns the new file's handle.
    #[allow(clippy::type_complexity)]
    fn same_file(
        &self,
        inode: &Inode,
        kind: u32,
        fd: BorrowedFd<'_>,
    ) -> io::Result<Result<(), Option<(sys::FileHandle, Arc<inode::MountFd>)>>> {
        if inode.kind == kind
            && (inode.pinned.lock().is_some() || self.fd_cache.get(inode.id).is_some())
        {
            return Ok(Ok(()));
        }
        if inode.kind == kind && inode.handle.is_none() {
            return Ok(Ok(()));
        }
        let new = self.handle_for(fd, kind)?;
        match (&inode.handle, &new) {
            (Some((a, _)), Some((b, _))) if a == b && inode.kind == kind => Ok(Ok(())),
            _ => Ok(Err(new)),
        }
    }

    /// Keeps `fd` pinned in `inode` (a tmpfile linked in, or looked up again).
    fn pin(&self, inode: &Inode, fd: Arc<OwnedFd>) -> io::Result<()> {
        let mut p = inode.pinned.lock();
        if p.is_none() && inode.handle.is_none() {
            self.inodes.reserve_pin()?;
            *p = Some(fd);
        }
        Ok(())
    }

    /// `.` is the parent itself; `..` is the root at the root, and elsewhere only an inode
    /// this share already knows (a directory moved out of the share by the host cannot lead
    /// the guest out with it).
    fn lookup_dots(&self, parent: u64, dotdot: bool) -> io::Result<Entry> {
        let pfd = self.inode_fd(parent)?;
        let target = if !dotdot || parent == ROOT_ID {
            self.inode(parent)?
        } else {
            let fd = sys::openat(pfd.as_raw_fd(), c"..", libc::O_PATH | libc::O_NOFOLLOW)?;
            let (st, mnt) = sys::statx_fd(fd.as_fd())?;
            let key = InodeKey {
                dev: st.st_dev,
                ino: st.st_ino,
                mnt,
            };
            let i = self
                .inodes
                .lookup_key(&key)
                .ok_or_else(|| errno(libc::EACCES))?;
            return Ok(self.entry(&i, st));
        };
        target.refs.fetch_add(1, Ordering::AcqRel);
        let st = sys::fstat(self.fd_of(&target)?.as_fd())?;
        Ok(self.entry(&target, st))
    }

    fn do_lookup(&self, parent: u64, name: &CStr) -> io::Result<Entry> {
        match name.to_bytes() {
            b"." => return self.lookup_dots(parent, false),
            b".." => return self.lookup_dots(parent, true),
            _ => check_name(name)?,
        }
        let pfd = self.inode_fd(parent)?;
        let fd = sys::open_beneath(pfd.as_fd(), name, libc::O_PATH, 0)?;
        let (st, mnt) = sys::statx_fd(fd.as_fd())?;
        self.register(Arc::new(fd), st, mnt, false)
    }

    fn forget_one(&self, id: u64, count: u64) {
        if let Some(inode) = self.inodes.forget(id, count) {
            self.fd_cache.remove(inode.id);
        }
    }

    fn handle(&self, fh: u64) -> io::Result<Arc<HandleData>> {
        self.handles
            .read()
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))
    }

    fn handle_file(&self, fh: u64) -> io::Result<Arc<OwnedFd>> {
        self.handle(fh)?
            .file
            .clone()
            .ok_or_else(|| errno(libc::EIO))
    }

    /// A new guest handle on `fd` (shared with the inode's cached or pinned fd after a
    /// create, so no dup is needed).
    fn new_handle(&self, inode: u64, flags: i32, fd: Arc<OwnedFd>) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(
            fh,
            Arc::new(HandleData {
                inode,
                flags,
                file: Some(fd),
                dir_lock: Mutex::new(()),
            }),
        );
        fh
    }

    /// Host open flags for a guest open.
    fn host_flags(&self, flags: u32) -> i32 {
        let mut f = flags as i32;
        f &= !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT);
        if self.session.has(FsOptions::WRITEBACK_CACHE) {
            // The guest's page cache may read back around partial writes, and appends are
            // positioned by the guest.
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        f | libc::O_CLOEXEC
    }

    /// Sets the thread umask for a create: the guest's umask when it left masking to us
    /// (FUSE_DONT_MASK, so a default ACL can override it), else 0 (already applied). Returns
    /// the mask to apply by hand (when the thread cannot have its own umask) and a guard that
    /// puts the thread's umask back, so other work on this thread (cache files) keeps it.
    fn create_umask(&self, umask: u32) -> (u32, UmaskGuard) {
        let want = if self.session.has(FsOptions::DONT_MASK) {
            umask & 0o7777
        } else {
            0
        };
        if self.umask_ok.load(Ordering::Relaxed) && sys::thread_private_fs() {
            (0, UmaskGuard(Some(sys::set_umask(want))))
        } else {
            self.umask_ok.store(false, Ordering::Relaxed);
            (want, UmaskGuard(None))
        }
    }

    /// Creates an entry with the caller's ids and looks it up.
    fn make_entry(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        umask: u32,
        make: impl FnOnce(BorrowedFd<'_>, u32) -> io::Result<()>,
    ) -> io::Result<Entry> {
        check_name(name)?;
        let pfd = self.inode_fd(parent)?;
        let (manual_mask, _u) = self.create_umask(umask);
        {
            let _c = CredGuard::switch(ctx.uid, ctx.gid)?;
            make(pfd.as_fd(), manual_mask)?;
        }
        self.do_lookup(parent, name)
    }

    /// Serves FUSE_TMPFILE: an unnamed file in directory `parent`, owned by the caller.
    pub fn tmpfile(
        &self,
        ctx: &Context,
        parent: u64,
        args: &CreateIn,
    ) -> io::Result<(Entry, u64, OpenOptions)> {
        let pfd = self.inode_fd(parent)?;
        let (mask, _u) = self.create_umask(args.umask);
        let flags = (self.host_flags(args.flags) & !libc::O_TRUNC) | libc::O_TMPFILE;
        let fd = {
            let _c = CredGuard::switch(ctx.uid, ctx.gid)?;
            sys::open_beneath(pfd.as_fd(), c".", flags, args.mode & !mask & 0o7777)?
        };
        let (st, mnt) = sys::statx_fd(fd.as_fd())?;
        let fd = Arc::new(fd);
        let e = self.register(fd.clone(), st, mnt, true)?;
        let fh = self.new_handle(e.inode, flags & !libc::O_TMPFILE, fd);
        Ok((e, fh, OpenOptions::empty()))
    }

    /// Serves FUSE_COPY_FILE_RANGE.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    ) -> io::Result<usize> {
        let a = self.handle_file(fh_in)?;
        let b = self.handle_file(fh_out)?;
        let mut oi = off_in as i64;
        let mut oo = off_out as i64;
        // SAFETY: valid fds and offsets owned by this frame.
        let n = unsafe {
            libc::copy_file_range(
                a.as_raw_fd(),
                &mut oi,
                b.as_raw_fd(),
                &mut oo,
                len as usize,
                flags as u32,
            )
        };
        sys::check_size(n)
    }

    /// Serves FUSE_SYNCFS.
    pub fn syncfs(&self, inode: u64) -> io::Result<()> {
        let i = self.inode(inode)?;
        let fd = match &i.handle {
            Some((_, m)) => m.fd.try_clone()?,
            None => self.open_inode(&*self.inode(ROOT_ID)?, libc::O_RDONLY | libc::O_DIRECTORY)?,
        };
        // SAFETY: valid fd.
        sys::check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(|_| ())
    }

    /// An xattr path for inode `id`: entry `N` of `/proc/self/fd` for its fd `N`. The xattr
    /// calls follow the magic link to the inode itself and never open it, so FIFOs and
    /// device nodes are safe here too. Where the thread has its own cwd (unshare CLONE_FS)
    /// the path is relative to `/proc/self/fd`, made the thread's cwd until the returned
    /// guard drops: that works under `--sandbox chroot` too, where no `/proc` path exists.
    /// Otherwise it is the absolute `/proc/self/fd/N`.
    fn xattr_path(&self, id: u64) -> io::Result<XattrPath> {
        if !self.cfg.xattr {
            return Err(errno(libc::ENOSYS));
        }
        let inode = self.inode(id)?;
        if inode.kind == libc::S_IFLNK {
            // Following the magic link of a symlink would reach its target: symlinks carry no
            // xattrs here (EPERM, as Linux gives for user.* on a symlink).
            return Err(errno(libc::EPERM));
        }
        let Some(proc) = self.proc_self_fd.as_ref() else {
            return Err(errno(libc::ENOTSUP));
        };
        let fd = self.fd_of(&inode)?;
        // SAFETY: plain syscall on a valid directory fd (O_PATH works for fchdir).
        let in_proc = sys::thread_private_fs() && unsafe { libc::fchdir(proc.as_raw_fd()) } == 0;
        let p = if in_proc {
            CString::new(fd.as_raw_fd().to_string())
        } else {
            CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        }
        .map_err(|_| errno(libc::EINVAL))?;
        Ok(XattrPath {
            _fd: fd,
            path: p,
            in_proc,
        })
    }

    fn stat_inode(&self, id: u64, fh: Option<u64>) -> io::Result<stat64> {
        if let Some(fh) = fh {
            if let Ok(f) = self.handle_file(fh) {
                return sys::fstat(f.as_fd());
            }
        }
        let fd = self.inode_fd(id)?;
        sys::fstat(fd.as_fd()).map_err(stale_to_enoent)
    }

    /// Forgets the whole session (INIT of a new guest, DESTROY).
    fn reset_session(&self) {
        self.handles.write().clear();
        self.fd_cache.clear();
        self.inodes.clear_but_root();
    }
}

impl BackendFileSystem for PassthroughFs {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        let st = sys::fstat(self.root_fd.as_fd())?;
        let root = self.inode(ROOT_ID)?;
        Ok((self.entry(&root, st), VFS_MAX_INO))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Parses linux_dirent64 records: (d_ino, d_off, d_type, name).
fn dirents(buf: &[u8]) -> impl Iterator<Item = (u64, u64, u8, &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos + 19 > buf.len() {
            return None;
        }
        let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().ok()?);
        let off = u64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().ok()?);
        let reclen = u16::from_ne_bytes(buf[pos + 16..pos + 18].try_into().ok()?) as usize;
        let ty = buf[pos + 18];
        if reclen < 19 || pos + reclen > buf.len() {
            return None;
        }
        let name = &buf[pos + 19..pos + reclen];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        pos += reclen;
        Some((ino, off, ty, &name[..end]))
    })
}

impl PassthroughFs {
    fn do_readdir(
        &self,
        inode: u64,
        fh: u64,
        size: u32,
        offset: u64,
        mut add: impl FnMut(DirEntry, Option<Entry>) -> io::Result<usize>,
        plus: bool,
    ) -> io::Result<()> {
        let h = self.handle(fh)?;
        if h.inode != inode {
            return Err(errno(libc::EBADF));
        }
        let file = h.file.clone().ok_or_else(|| errno(libc::EIO))?;
        let _g = h.dir_lock.lock();
        let mut buf = vec![0u8; (size as usize).clamp(512, 128 * 1024)];
        let mut off = offset;
        loop {
            let n = sys::getdents(file.as_fd(), off, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            for (ino, doff, ty, name) in dirents(&buf[..n]) {
                let de = DirEntry {
                    ino,
                    offset: doff,
                    type_: u32::from(ty),
                    name,
                };
                let dot = name == b"." || name == b"..";
                let looked = if plus && !dot {
                    let cname = CString::new(name).map_err(|_| errno(libc::EINVAL))?;
                    match self.do_lookup(inode, &cname) {
                        Ok(e) => Some(e),
                        // Gone since getdents: skip it.
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT)) => {
                            off = doff;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    None
                };
                let id = looked.as_ref().map(|e| e.inode);
                let used = add(de, looked)?;
                if used == 0 {
                    if let Some(id) = id {
                        self.forget_one(id, 1);
                    }
                    return Ok(());
                }
                off = doff;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
impl FileSystem for PassthroughFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // A new guest: whatever the old session held goes.
        self.reset_session();
        self.session.set(capable);
        Ok(capable)
    }

    fn destroy(&self) {
        self.reset_session();
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.do_lookup(parent, name)
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.forget_one(inode, count)
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        for (i, c) in requests {
            self.forget_one(i, c)
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        Ok((self.stat_inode(inode, handle)?, self.cfg.attr_timeout))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let node = self.inode(inode)?;
        let hdata = handle.and_then(|h| self.handle(h).ok());
        let hfile = hdata.as_ref().and_then(|h| h.file.clone());
        let fd = match &hfile {
            Some(f) => f.clone(),
            None => self.fd_of(&node).map_err(stale_to_enoent)?,
        };
        let kill = valid.contains(SetattrValid::KILL_SUIDGID);
        if valid.contains(SetattrValid::MODE) {
            match &hfile {
                Some(f) => sys::fchmod(f.as_fd(), attr.st_mode & 0o7777)?,
                None => {
                    if node.kind == libc::S_IFLNK {
                        return Err(errno(libc::EOPNOTSUPP));
                    }
                    let (proc, n) = self.proc_entry(fd.as_raw_fd())?;
                    sys::fchmodat(proc, &n, attr.st_mode & 0o7777)?;
                }
            }
        }
        if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
            let uid = if valid.contains(SetattrValid::UID) {
                attr.st_uid
            } else {
                u32::MAX
            };
            let gid = if valid.contains(SetattrValid::GID) {
                attr.st_gid
            } else {
                u32::MAX
            };
            sys::fchownat_empty(fd.as_fd(), uid, gid)?;
        }
        if valid.contains(SetattrValid::SIZE) {
            let _k = NoFsetidGuard::new(kill)?;
            let writable = hdata
                .as_ref()
                .is_some_and(|h| h.flags & libc::O_ACCMODE != libc::O_RDONLY);
            match &hfile {
                Some(f) if writable => sys::ftruncate(f.as_fd(), attr.st_size)?,
                _ => {
                    let w = self.open_inode(&node, libc::O_WRONLY | libc::O_NONBLOCK)?;
                    sys::ftruncate(w.as_fd(), attr.st_size)?;
                }
            }
        }
        if valid.intersects(
            SetattrValid::ATIME
                | SetattrValid::MTIME
                | SetattrValid::ATIME_NOW
                | SetattrValid::MTIME_NOW,
        ) {
            let omit = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            };
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            };
            let mut t = [omit, omit];
            if valid.contains(SetattrValid::ATIME_NOW) {
                t[0] = now;
            } else if valid.contains(SetattrValid::ATIME) {
                t[0] = libc::timespec {
                    tv_sec: attr.st_atime,
                    tv_nsec: attr.st_atime_nsec,
                };
            }
            if valid.contains(SetattrValid::MTIME_NOW) {
                t[1] = now;
            } else if valid.contains(SetattrValid::MTIME) {
                t[1] = libc::timespec {
                    tv_sec: attr.st_mtime,
                    tv_nsec: attr.st_mtime_nsec,
                };
            }
            if node.kind == libc::S_IFLNK {
                // utimensat(fd, "", AT_EMPTY_PATH) works on an O_PATH symlink fd (5.8+).
                sys::utimensat(fd.as_raw_fd(), sys::EMPTY, &t, libc::AT_EMPTY_PATH)?;
            } else {
                let (proc, n) = self.proc_entry(fd.as_raw_fd())?;
                sys::utimensat(proc, &n, &t, 0)?;
            }
        }
        Ok((sys::fstat(fd.as_fd())?, self.cfg.attr_timeout))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let fd = self.inode_fd(inode)?;
        sys::readlinkat(fd.as_fd())
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.make_entry(ctx, parent, name, 0, |p, _| {
            sys::symlinkat(linkname, p, name)
        })
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.make_entry(ctx, parent, name, umask, |p, m| {
            sys::mknodat(p, name, mode & !m, u64::from(rdev))
        })
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.make_entry(ctx, parent, name, umask, |p, m| {
            sys::mkdirat(p, name, mode & !m)
        })
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        check_name(name)?;
        let pfd = self.inode_fd(parent)?;
        sys::unlinkat(pfd.as_fd(), name, 0)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        check_name(name)?;
        let pfd = self.inode_fd(parent)?;
        sys::unlinkat(pfd.as_fd(), name, libc::AT_REMOVEDIR)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        check_name(oldname)?;
        check_name(newname)?;
        let valid = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !valid != 0 {
            return Err(errno(libc::EINVAL));
        }
        let a = self.inode_fd(olddir)?;
        let b = self.inode_fd(newdir)?;
        // A whiteout is a new inode: the caller owns it.
        let _c = if flags & libc::RENAME_WHITEOUT != 0 {
            Some(CredGuard::switch(ctx.uid, ctx.gid)?)
        } else {
            None
        };
        sys::renameat2(a.as_fd(), oldname, b.as_fd(), newname, flags)
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        check_name(newname)?;
        let node = self.inode(inode)?;
        let fd = self.fd_of(&node).map_err(stale_to_enoent)?;
        let pfd = self.inode_fd(newparent)?;
        sys::link_fd(fd.as_fd(), pfd.as_fd(), newname)?;
        self.do_lookup(newparent, newname)
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let node = self.inode(inode)?;
        let hf = self.host_flags(flags);
        let kill = fuse_flags & FOPEN_IN_KILL_SUIDGID != 0 && hf & libc::O_TRUNC != 0;
        let fd = {
            let _k = NoFsetidGuard::new(kill)?;
            self.open_inode(&node, hf)?
        };
        Ok((
            Some(self.new_handle(inode, hf, Arc::new(fd))),
            OpenOptions::empty(),
            None,
        ))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        check_name(name)?;
        let pfd = self.inode_fd(parent)?;
        let (mask, _u) = self.create_umask(args.umask);
        let hf = self.host_flags(args.flags) | libc::O_CREAT;
        let kill = args.fuse_flags & FOPEN_IN_KILL_SUIDGID != 0 && hf & libc::O_TRUNC != 0;
        let fd = {
            let _c = CredGuard::switch(ctx.uid, ctx.gid)?;
            let _k = NoFsetidGuard::new(kill && ctx.uid == 0)?;
            sys::open_beneath(pfd.as_fd(), name, hf, args.mode & !mask & 0o7777)?
        };
        let (st, mnt) = sys::statx_fd(fd.as_fd())?;
        if kind_of(st.st_mode) != libc::S_IFREG {
            return Err(errno(libc::EEXIST));
        }
        let fd = Arc::new(fd);
        let e = self.register(fd.clone(), st, mnt, false)?;
        let fh = self.new_handle(e.inode, hf & !libc::O_CREAT, fd);
        Ok((e, Some(fh), OpenOptions::empty(), None))
    }

    fn read(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let f = self.handle_file(handle)?;
        let mut file = as_file(&f);
        w.write_from(&mut *file, size as usize, offset)
    }

    fn write(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let f = self.handle_file(handle)?;
        let mut file = as_file(&f);
        let _k = NoFsetidGuard::new(fuse_flags & WRITE_KILL_PRIV != 0)?;
        r.read_to(&mut *file, size as usize, offset)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, handle: u64, _lock_owner: u64) -> io::Result<()> {
        self.handle(handle).map(|_| ())
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let f = self.handle_file(handle)?;
        // SAFETY: valid fd.
        let r = unsafe {
            if datasync {
                libc::fdatasync(f.as_raw_fd())
            } else {
                libc::fsync(f.as_raw_fd())
            }
        };
        sys::check(r).map(|_| ())
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let f = self.handle_file(handle)?;
        // SAFETY: valid fd.
        sys::check(unsafe {
            libc::fallocate64(f.as_raw_fd(), mode as i32, offset as i64, length as i64)
        })
        .map(|_| ())
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.handles.write().remove(&handle);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let fd = self.inode_fd(inode)?;
        sys::fstatvfs(fd.as_fd())
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let p = self.xattr_path(inode)?;
        // SAFETY: NUL-terminated strings and a buffer of the given length.
        sys::check(unsafe {
            libc::setxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags as i32,
            )
        })
        .map(|_| ())
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let p = self.xattr_path(inode)?;
        // SAFETY: NUL-terminated strings; `xattr_call` passes a writable buffer of the given
        // length, or null with length 0 to ask for the size.
        Ok(
            match xattr_call(size, |buf, len| unsafe {
                libc::getxattr(p.as_ptr(), name.as_ptr(), buf, len)
            })? {
                Ok(v) => GetxattrReply::Value(v),
                Err(n) => GetxattrReply::Count(n),
            },
        )
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let p = match self.xattr_path(inode) {
            Ok(x) => x,
            // Symlinks and special files list no xattrs.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return Ok(if size == 0 {
                    ListxattrReply::Count(0)
                } else {
                    ListxattrReply::Names(Vec::new())
                })
            }
            Err(e) => return Err(e),
        };
        // SAFETY: as in getxattr.
        Ok(
            match xattr_call(size, |buf, len| unsafe {
                libc::listxattr(p.as_ptr(), buf.cast(), len)
            })? {
                Ok(v) => ListxattrReply::Names(v),
                Err(n) => ListxattrReply::Count(n),
            },
        )
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        let p = self.xattr_path(inode)?;
        // SAFETY: NUL-terminated strings.
        sys::check(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) }).map(|_| ())
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let node = self.inode(inode)?;
        if !node.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let _ = flags;
        let fd = self.open_inode(&node, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
        Ok((
            Some(self.new_handle(inode, libc::O_RDONLY, Arc::new(fd))),
            OpenOptions::empty(),
        ))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(inode, handle, size, offset, |d, _| add_entry(d), false)
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(
            inode,
            handle,
            size,
            offset,
            |d, looked| {
                // `.` and `..`: no lookup, no attributes (the kernel skips them).
                let e = looked.unwrap_or(Entry {
                    inode: 0,
                    generation: 0,
                    attr: sys::zeroed_stat(),
                    attr_flags: 0,
                    attr_timeout: Duration::ZERO,
                    entry_timeout: Duration::ZERO,
                });
                add_entry(d, e)
            },
            true,
        )
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fsync(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.handles.write().remove(&handle);
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let st = self.stat_inode(inode, None)?;
        let mask = mask as i32;
        if mask == libc::F_OK {
            return Ok(());
        }
        let mode = st.st_mode;
        if ctx.uid == 0 {
            // Root may do anything but execute a file nobody may execute.
            if mask & libc::X_OK != 0 && kind_of(mode) != libc::S_IFDIR && mode & 0o111 == 0 {
                return Err(errno(libc::EACCES));
            }
            return Ok(());
        }
        let bits = if st.st_uid == ctx.uid {
            (mode >> 6) & 7
        } else if st.st_gid == ctx.gid {
            (mode >> 3) & 7
        } else {
            mode & 7
        } as i32;
        if mask & !bits & 7 != 0 {
            return Err(errno(libc::EACCES));
        }
        Ok(())
    }

    fn lseek(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let f = self.handle_file(handle)?;
        // SAFETY: valid fd.
        let r = unsafe { libc::lseek64(f.as_raw_fd(), offset as i64, whence as i32) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_missing_dir() {
        let r = PassthroughFs::new(Config::new(Path::new("/nonexistent/xyz")));
        assert!(matches!(r, Err(PassthroughError::NotADirectory(_))));
    }

    #[test]
    fn names_are_single_components() {
        for bad in ["", "a/b", "/", "."] {
            let c = CString::new(bad).unwrap();
            assert!(check_name(&c).is_err(), "{bad:?}");
        }
        assert!(check_name(c"ok").is_ok());
    }

    /// A guest asking for a 4 GiB xattr value or list gets the value, not a 4 GiB buffer.
    #[test]
    fn huge_xattr_sizes_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let fs = PassthroughFs::new(Config::new(d.path())).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        let ctx = Context::default();
        let e = fs.lookup(&ctx, ROOT_ID, c"f").unwrap();
        fs.setxattr(&ctx, e.inode, c"user.k", b"value", 0).unwrap();
        match fs.getxattr(&ctx, e.inode, c"user.k", u32::MAX).unwrap() {
            GetxattrReply::Value(v) => assert_eq!(v, b"value"),
            GetxattrReply::Count(_) => panic!("a value was asked for"),
        }
        match fs.listxattr(&ctx, e.inode, u32::MAX).unwrap() {
            ListxattrReply::Names(v) => assert_eq!(v, b"user.k\0"),
            ListxattrReply::Count(_) => panic!("names were asked for"),
        }
    }

    /// A create applies the guest's umask on the serving thread only for the create: the
    /// thread's own umask (used by e.g. cache files) is back afterwards.
    #[test]
    fn create_restores_the_thread_umask() {
        let d = tempfile::tempdir().unwrap();
        let fs = PassthroughFs::new(Config::new(d.path())).unwrap();
        fs.init(FsOptions::DONT_MASK).unwrap();
        std::thread::spawn(move || {
            assert!(sys::thread_private_fs());
            sys::set_umask(0o027);
            let ctx = Context::default();
            let e = fs.mkdir(&ctx, ROOT_ID, c"d", 0o777, 0o002).expect("mkdir");
            assert_eq!(e.attr.st_mode & 0o777, 0o775, "guest umask applied");
            let now = sys::set_umask(0o027);
            assert_eq!(now, 0o027, "thread umask restored");
        })
        .join()
        .unwrap();
    }
}
