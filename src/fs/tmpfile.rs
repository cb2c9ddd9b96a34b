//! O_TMPFILE on passthrough shares: the FUSE_TMPFILE request (opcode 51).
//!
//! fuse-backend-rs 0.14's `Server` answers opcode 51 with ENOSYS (after which the guest
//! kernel never asks again and `open(O_TMPFILE)` fails with EOPNOTSUPP), and its
//! `PassthroughFs` can only hold inodes it reached by name, while an O_TMPFILE file has no
//! name. So the daemon serves these files itself, in a [`Dispatcher`] in front of the
//! `Server`:
//! - FUSE_TMPFILE on a passthrough directory opens that host directory *beneath the share
//!   root* (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`)
//!   and creates a real O_TMPFILE there, owned by the caller. The file gets a node id from a
//!   range the VFS never hands out (pseudo-fs index 0, inode numbers from 2^55), and its fd is
//!   kept in [`TmpFiles`].
//! - Requests whose node id is in that range (GETATTR, SETATTR, OPEN, READ, WRITE, FLUSH,
//!   FSYNC, FALLOCATE, LSEEK, the xattr calls, RELEASE, FORGET, STATFS) go to a second
//!   `Server` over [`TmpFiles`], which serves them on the kept fd.
//! - FUSE_LINK whose old node is a tmpfile links the kept fd into the target directory
//!   (`linkat` of `/proc/self/fd/N` with `AT_SYMLINK_FOLLOW`): what `linkat(fd, "", dir,
//!   name, AT_EMPTY_PATH)` in the guest and overlayfs copy-up do. The reply names the same
//!   node id, so the new dentry shares the open file's page cache in the guest. The target
//!   must be on the same share (EXDEV otherwise).
//! - BATCH_FORGET is split between the table and the VFS.
//!
//! A tmpfile's fd is closed when the guest forgets the node, or at the next INIT/DESTROY (a
//! new guest); an unlinked one then disappears on the host, as on a local filesystem. At most
//! [`MAX_TMPFILES`] are open at once (ENFILE beyond), so a guest cannot use them to exhaust
//! the daemon's fds.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::mem::{size_of, ManuallyDrop};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, Attr, BatchForgetIn, CreateIn, EntryOut, ForgetOne, FsOptions, InHeader,
    LinkIn, OpenOptions, OpenOut, OutHeader, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::api::server::{MetricsHook, Server};
use fuse_backend_rs::api::{Vfs, VFS_MAX_INO};
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{FsCacheReqHandler, Reader, Writer};
use parking_lot::Mutex;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::ByteValued;

use super::vfs::{FsType, MountRecord};

/// The FUSE opcode of an O_TMPFILE create (protocol 7.37), unknown to fuse-backend-rs 0.14.
pub const FUSE_TMPFILE: u32 = 51;
const FUSE_LINK: u32 = 13;
const FUSE_INIT: u32 = 26;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;

/// First node id of the tmpfile range: VFS index 0 (the pseudo fs, whose own inode numbers
/// are small counters) with bit 55 set.
const TMP_NODEID_BASE: u64 = 1 << 55;
/// Tmpfiles (and, separately, their open handles) the daemon keeps at once.
pub const MAX_TMPFILES: usize = 4096;
/// Same timeouts the passthrough fs uses.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest name a request may carry (NAME_MAX plus slack for the NUL).
const MAX_NAME: usize = 4096;

/// Whether `nodeid` names a tmpfile served by [`TmpFiles`].
pub fn is_tmp_nodeid(nodeid: u64) -> bool {
    (TMP_NODEID_BASE..(1 << 56)).contains(&nodeid)
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

struct TmpInode {
    file: Arc<File>,
    lookups: u64,
    /// The VFS index of the share the file was created in (links stay within it).
    fs_idx: u8,
}

#[derive(Default)]
struct Table {
    inodes: HashMap<u64, TmpInode>,
    handles: HashMap<u64, Arc<File>>,
}

/// The daemon's O_TMPFILE files: a table of open host tmpfiles by node id, served as a
/// fuse-backend-rs [`FileSystem`].
pub struct TmpFiles {
    vfs: Arc<Vfs>,
    mounts: Arc<Mutex<BTreeMap<String, MountRecord>>>,
    table: Mutex<Table>,
    next_ino: AtomicU64,
    next_fh: AtomicU64,
}

impl TmpFiles {
    /// A table for the tree made of `vfs` and its mount table `mounts`.
    pub fn new(vfs: Arc<Vfs>, mounts: Arc<Mutex<BTreeMap<String, MountRecord>>>) -> Self {
        TmpFiles {
            vfs,
            mounts,
            table: Mutex::new(Table::default()),
            next_ino: AtomicU64::new(TMP_NODEID_BASE),
            next_fh: AtomicU64::new(1),
        }
    }

    /// How many tmpfiles are open.
    pub fn len(&self) -> usize {
        self.table.lock().inodes.len()
    }

    /// Whether no tmpfile is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every tmpfile (the guest went away).
    pub fn clear(&self) {
        let mut t = self.table.lock();
        t.inodes.clear();
        t.handles.clear();
    }

    fn file(&self, nodeid: u64) -> io::Result<Arc<File>> {
        self.table
            .lock()
            .inodes
            .get(&nodeid)
            .map(|i| i.file.clone())
            .ok_or_else(|| errno(libc::ENOENT))
    }

    fn handle(&self, fh: u64) -> io::Result<Arc<File>> {
        self.table
            .lock()
            .handles
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))
    }

    fn new_handle(&self, file: Arc<File>) -> io::Result<u64> {
        let mut t = self.table.lock();
        if t.handles.len() >= MAX_TMPFILES {
            return Err(errno(libc::ENFILE));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        t.handles.insert(fh, file);
        Ok(fh)
    }

    /// The host directory behind the VFS node `nodeid`, opened `O_PATH` beneath its share's
    /// root, with the share's VFS index. Read-only parts of the tree give EROFS.
    fn passthrough_dir(&self, nodeid: u64) -> io::Result<(u8, File)> {
        let (idx, inner) = if nodeid == ROOT_ID {
            // The guest's root: a passthrough mounted at "/" (standalone --shared-dir).
            match self
                .mounts
                .lock()
                .values()
                .find(|m| m.mountpoint == "/")
                .map(|m| m.fs_idx)
            {
                Some(i) => (i, ROOT_ID),
                None => return Err(errno(libc::EROFS)),
            }
        } else {
            ((nodeid >> 56) as u8, nodeid & VFS_MAX_INO)
        };
        if idx == 0 {
            return Err(errno(libc::EROFS));
        }
        let (mountpoint, source) = {
            let mounts = self.mounts.lock();
            let m = mounts
                .values()
                .find(|m| m.fs_idx == idx)
                .ok_or_else(|| errno(libc::ENOENT))?;
            if m.fs_type != FsType::Passthrough {
                return Err(errno(libc::EROFS));
            }
            (m.mountpoint.clone(), m.source.clone())
        };
        let (fs, _) = self
            .vfs
            .get_rootfs(&mountpoint)
            .ok()
            .flatten()
            .ok_or_else(|| errno(libc::ENOENT))?;
        let pfs = fs
            .as_any()
            .downcast_ref::<PassthroughFs>()
            .ok_or_else(|| errno(libc::EROFS))?;
        // The directory's current host path, then opened again strictly beneath the share
        // root: a guest racing renames or planting symlinks cannot move the result outside.
        let path = pfs.readlinkat_proc_file(inner)?;
        let root_path = std::fs::canonicalize(&source)?;
        let rel = path
            .strip_prefix(&root_path)
            .map_err(|_| errno(libc::ENOENT))?;
        let root = open_path(&root_path)?;
        let dir = open_beneath(&root, rel, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok((idx, dir))
    }

    /// FUSE_TMPFILE in directory `parent`: returns the entry and open replies.
    fn tmpfile(
        &self,
        ctx: &Context,
        parent: u64,
        args: &CreateIn,
    ) -> io::Result<(EntryOut, OpenOut)> {
        if self.len() >= MAX_TMPFILES {
            return Err(errno(libc::ENFILE));
        }
        let (fs_idx, dir) = self.passthrough_dir(parent)?;
        let mode = args.mode & !args.umask & 0o7777;
        let flags =
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC | (args.flags as i32 & libc::O_EXCL);
        // SAFETY: `dir` is a valid fd, the path is a NUL-terminated constant, and the
        // returned fd (checked) is owned by the File made from it.
        let file = unsafe {
            let fd = cvt(libc::openat(dir.as_raw_fd(), c".".as_ptr(), flags, mode))?;
            File::from_raw_fd(fd)
        };
        // Owned by the caller, as a create through the passthrough fs would be; a setgid
        // directory keeps the group the host kernel chose.
        let dir_mode = std::fs::metadata(format!("/proc/self/fd/{}", dir.as_raw_fd()))?.mode();
        let gid = if dir_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            ctx.gid
        };
        // SAFETY: plain syscalls on a valid fd owned by `file`.
        unsafe {
            cvt(libc::fchown(file.as_raw_fd(), ctx.uid, gid))?;
            if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
                // chown cleared them.
                cvt(libc::fchmod(file.as_raw_fd(), mode))?;
            }
        }
        let file = Arc::new(file);
        let st = fstat(&file)?;
        let nodeid = self.next_ino.fetch_add(1, Ordering::Relaxed);
        if !is_tmp_nodeid(nodeid) {
            return Err(errno(libc::ENFILE));
        }
        let fh = self.new_handle(file.clone())?;
        self.table.lock().inodes.insert(
            nodeid,
            TmpInode {
                file,
                lookups: 1,
                fs_idx,
            },
        );
        Ok((
            entry_out(nodeid, st),
            OpenOut {
                fh,
                open_flags: 0,
                passthrough: 0,
            },
        ))
    }

    /// FUSE_LINK of tmpfile `old` as `newparent/name`.
    fn link_tmp(&self, old: u64, newparent: u64, name: &CStr) -> io::Result<EntryOut> {
        let b = name.to_bytes();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return Err(errno(libc::EINVAL));
        }
        let (file, fs_idx) = {
            let t = self.table.lock();
            let i = t.inodes.get(&old).ok_or_else(|| errno(libc::ENOENT))?;
            (i.file.clone(), i.fs_idx)
        };
        let (idx, dir) = self.passthrough_dir(newparent)?;
        if idx != fs_idx {
            return Err(errno(libc::EXDEV));
        }
        let proc = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|_| errno(libc::EINVAL))?;
        // SAFETY: both paths are NUL-terminated and `dir` is a valid fd; the return is checked.
        cvt(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })?;
        let st = fstat(&file)?;
        let mut t = self.table.lock();
        match t.inodes.get_mut(&old) {
            Some(i) => i.lookups += 1,
            // Forgotten meanwhile: the link stands, the guest will look the name up again.
            None => return Err(errno(libc::ENOENT)),
        }
        Ok(entry_out(old, st))
    }

    fn forget_one(&self, nodeid: u64, count: u64) {
        let mut t = self.table.lock();
        if let Some(i) = t.inodes.get_mut(&nodeid) {
            i.lookups = i.lookups.saturating_sub(count);
            if i.lookups == 0 {
                t.inodes.remove(&nodeid);
            }
        }
    }
}

fn entry_out(nodeid: u64, st: stat64) -> EntryOut {
    EntryOut {
        nodeid,
        generation: 0,
        entry_valid: TIMEOUT.as_secs(),
        attr_valid: TIMEOUT.as_secs(),
        entry_valid_nsec: TIMEOUT.subsec_nanos(),
        attr_valid_nsec: TIMEOUT.subsec_nanos(),
        attr: Attr::from(st),
    }
}

fn fstat(f: &File) -> io::Result<stat64> {
    // SAFETY: all-zero is a valid stat64; fstat64 fills it for a valid fd.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is a valid fd and `st` a valid out pointer.
    cvt(unsafe { libc::fstat64(f.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn open_path(p: &Path) -> io::Result<File> {
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| errno(libc::EINVAL))?;
    // SAFETY: NUL-terminated path; the checked fd is owned by the File.
    unsafe {
        let fd = cvt(libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        ))?;
        Ok(File::from_raw_fd(fd))
    }
}

/// Opens `rel` strictly beneath the directory `root`: no `..` out of it, no symlinks, no
/// /proc magic links.
fn open_beneath(root: &File, rel: &Path, flags: i32) -> io::Result<File> {
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| errno(libc::EINVAL))?;
    // SAFETY: all-zero is a valid open_how (no flags, no mode, no resolve bits).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dirfd, NUL-terminated path, `how` outlives the call and its size is
    // passed; the checked fd is owned by the File.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(File::from_raw_fd(fd as i32))
    }
}

/// Borrows `f` as a `File` the fuse-backend-rs copy helpers can take `&mut` of, without
/// taking ownership of its fd.
fn borrowed(f: &File) -> ManuallyDrop<File> {
    // SAFETY: the fd stays open for as long as the caller holds `f` (the Arc in the table or
    // the handle), and ManuallyDrop never closes it.
    ManuallyDrop::new(unsafe { File::from_raw_fd(f.as_raw_fd()) })
}

fn xattr_name(name: &CStr) -> *const libc::c_char {
    name.as_ptr()
}

#[allow(clippy::too_many_arguments)]
impl FileSystem for TmpFiles {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::empty())
    }

    fn destroy(&self) {
        self.clear()
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.forget_one(inode, count)
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget_one(inode, count)
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let f = self.file(inode)?;
        Ok((fstat(&f)?, TIMEOUT))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: stat64,
        _handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let f = self.file(inode)?;
        let fd = f.as_raw_fd();
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
            // SAFETY: plain syscall on a valid fd.
            cvt(unsafe { libc::fchown(fd, uid, gid) })?;
        }
        if valid.contains(SetattrValid::MODE) {
            // SAFETY: plain syscall on a valid fd.
            cvt(unsafe { libc::fchmod(fd, attr.st_mode & 0o7777) })?;
        }
        if valid.contains(SetattrValid::SIZE) {
            // SAFETY: plain syscall on a valid fd.
            cvt(unsafe { libc::ftruncate64(fd, attr.st_size) })?;
        }
        if valid.intersects(SetattrValid::ATIME | SetattrValid::MTIME) {
            let t = |set: bool, now: bool, sec: i64, nsec: i64| libc::timespec {
                tv_sec: sec,
                tv_nsec: if !set {
                    libc::UTIME_OMIT
                } else if now {
                    libc::UTIME_NOW
                } else {
                    nsec
                },
            };
            let times = [
                t(
                    valid.contains(SetattrValid::ATIME),
                    valid.contains(SetattrValid::ATIME_NOW),
                    attr.st_atime,
                    attr.st_atime_nsec,
                ),
                t(
                    valid.contains(SetattrValid::MTIME),
                    valid.contains(SetattrValid::MTIME_NOW),
                    attr.st_mtime,
                    attr.st_mtime_nsec,
                ),
            ];
            // SAFETY: valid fd and a two-element timespec array.
            cvt(unsafe { libc::futimens(fd, times.as_ptr()) })?;
        }
        Ok((fstat(&f)?, TIMEOUT))
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        // The kept fd is O_RDWR and only used with pread/pwrite, so every open shares it;
        // the guest kernel enforces the access mode of its own file.
        let f = self.file(inode)?;
        Ok((Some(self.new_handle(f)?), OpenOptions::empty(), None))
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
        let f = self.handle(handle)?;
        let mut b = borrowed(&f);
        w.write_from(&mut *b, size as usize, offset)
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
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        let f = self.handle(handle)?;
        let mut b = borrowed(&f);
        r.read_to(&mut *b, size as usize, offset)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, handle: u64, _lock_owner: u64) -> io::Result<()> {
        self.handle(handle).map(|_| ())
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let f = self.handle(handle)?;
        if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }
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
        let f = self.handle(handle)?;
        // SAFETY: plain syscall on a valid fd.
        cvt(unsafe { libc::fallocate64(f.as_raw_fd(), mode as i32, offset as i64, length as i64) })
            .map(|_| ())
    }

    fn lseek(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let f = self.handle(handle)?;
        // SAFETY: plain syscall on a valid fd; only SEEK_DATA/SEEK_HOLE reach the daemon,
        // whose answers do not depend on the shared file position.
        let r = unsafe { libc::lseek64(f.as_raw_fd(), offset as i64, whence as i32) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
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
        self.table.lock().handles.remove(&handle);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let f = self.file(inode)?;
        // SAFETY: all-zero is a valid statvfs64, filled by the checked call.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out pointer.
        cvt(unsafe { libc::fstatvfs64(f.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let f = self.file(inode)?;
        // SAFETY: valid fd, NUL-terminated name, and a value buffer of the given length.
        cvt(unsafe {
            libc::fsetxattr(
                f.as_raw_fd(),
                xattr_name(name),
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
        let f = self.file(inode)?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: valid fd, NUL-terminated name, and a buffer of `size` bytes.
        let n = unsafe {
            libc::fgetxattr(
                f.as_raw_fd(),
                xattr_name(name),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            Ok(GetxattrReply::Count(n as u32))
        } else {
            buf.truncate(n as usize);
            Ok(GetxattrReply::Value(buf))
        }
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let f = self.file(inode)?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: valid fd and a buffer of `size` bytes.
        let n = unsafe { libc::flistxattr(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            Ok(ListxattrReply::Count(n as u32))
        } else {
            buf.truncate(n as usize);
            Ok(ListxattrReply::Names(buf))
        }
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        let f = self.file(inode)?;
        // SAFETY: valid fd and NUL-terminated name.
        cvt(unsafe { libc::fremovexattr(f.as_raw_fd(), xattr_name(name)) }).map(|_| ())
    }

    fn access(&self, _ctx: &Context, inode: u64, _mask: u32) -> io::Result<()> {
        self.file(inode).map(|_| ())
    }
}

/// Routes each FUSE request to the VFS `Server`, or serves it from [`TmpFiles`]
/// (see the module docs). Both transports (vhost-user and /dev/fuse) use it.
pub struct Dispatcher {
    vfs: Arc<Vfs>,
    vfs_server: Server<Arc<Vfs>>,
    tmp: Arc<TmpFiles>,
    tmp_server: Server<Arc<TmpFiles>>,
}

impl Dispatcher {
    /// A dispatcher over `vfs` and its tmpfile table.
    pub fn new(vfs: Arc<Vfs>, tmp: Arc<TmpFiles>) -> Self {
        Dispatcher {
            vfs_server: Server::new(vfs.clone()),
            vfs,
            tmp_server: Server::new(tmp.clone()),
            tmp,
        }
    }

    /// Serves one request; same contract as `Server::handle_message`.
    pub fn handle_message<S: BitmapSlice>(
        &self,
        r: Reader<'_, S>,
        mut w: Writer<'_, S>,
        vu_req: Option<&mut dyn FsCacheReqHandler>,
        hook: Option<&dyn MetricsHook>,
    ) -> fuse_backend_rs::Result<usize> {
        let mut peek = r.clone();
        let ih: InHeader = match peek.read_obj() {
            Ok(h) => h,
            // Let the server report the malformed request.
            Err(_) => return self.vfs_server.handle_message(r, w, vu_req, hook),
        };
        let body_len = (ih.len as usize).saturating_sub(size_of::<InHeader>());
        match ih.opcode {
            FUSE_TMPFILE => {
                let ctx = Context::from(&ih);
                let res = read_create(&mut peek, body_len).and_then(|args| {
                    let (e, o) = self.tmp.tmpfile(&ctx, ih.nodeid, &args)?;
                    let mut v = e.as_slice().to_vec();
                    v.extend_from_slice(o.as_slice());
                    Ok(v)
                });
                return reply(&mut w, &ih, hook, res);
            }
            FUSE_LINK => {
                if let Ok(li) = peek.read_obj::<LinkIn>() {
                    if is_tmp_nodeid(li.oldnodeid) {
                        let res =
                            read_name(&mut peek, body_len.saturating_sub(size_of::<LinkIn>()))
                                .and_then(|name| self.tmp.link_tmp(li.oldnodeid, ih.nodeid, &name))
                                .map(|e| e.as_slice().to_vec());
                        return reply(&mut w, &ih, hook, res);
                    }
                }
            }
            FUSE_BATCH_FORGET => {
                if let Some(reqs) = read_batch_forget(&mut peek, body_len) {
                    if reqs.iter().any(|f| is_tmp_nodeid(f.0)) {
                        let (ours, rest): (Vec<_>, Vec<_>) =
                            reqs.into_iter().partition(|f| is_tmp_nodeid(f.0));
                        let ctx = Context::from(&ih);
                        self.tmp.batch_forget(&ctx, ours);
                        if !rest.is_empty() {
                            self.vfs.batch_forget(
                                &ctx,
                                rest.into_iter().map(|(n, c)| (n.into(), c)).collect(),
                            );
                        }
                        return Ok(0);
                    }
                }
            }
            FUSE_INIT | FUSE_DESTROY => self.tmp.clear(),
            _ => {}
        }
        if is_tmp_nodeid(ih.nodeid) {
            self.tmp_server.handle_message(r, w, vu_req, hook)
        } else {
            self.vfs_server.handle_message(r, w, vu_req, hook)
        }
    }
}

fn read_create<S: BitmapSlice>(r: &mut Reader<'_, S>, body_len: usize) -> io::Result<CreateIn> {
    let args: CreateIn = r.read_obj().map_err(|_| errno(libc::EINVAL))?;
    // The name ("/" for a tmpfile dentry) is not used, only checked to be well formed.
    read_name(r, body_len.saturating_sub(size_of::<CreateIn>()))?;
    Ok(args)
}

/// Reads a NUL-terminated name of `len` bytes (trailing padding after the NUL allowed).
fn read_name<S: BitmapSlice>(r: &mut Reader<'_, S>, len: usize) -> io::Result<CString> {
    if len == 0 || len > MAX_NAME {
        return Err(errno(libc::EINVAL));
    }
    let mut buf = vec![0u8; len];
    io::Read::read_exact(r, &mut buf).map_err(|_| errno(libc::EINVAL))?;
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| errno(libc::EINVAL))?;
    buf.truncate(end);
    CString::new(buf).map_err(|_| errno(libc::EINVAL))
}

fn read_batch_forget<S: BitmapSlice>(
    r: &mut Reader<'_, S>,
    body_len: usize,
) -> Option<Vec<(u64, u64)>> {
    let hdr: BatchForgetIn = r.read_obj().ok()?;
    let max = body_len.saturating_sub(size_of::<BatchForgetIn>()) / size_of::<ForgetOne>();
    let n = (hdr.count as usize).min(max);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let f: ForgetOne = r.read_obj().ok()?;
        v.push((f.nodeid, f.nlookup));
    }
    Some(v)
}

/// Writes the reply to a request served here, counted by `hook` like the server's own.
fn reply<S: BitmapSlice>(
    w: &mut Writer<'_, S>,
    ih: &InHeader,
    hook: Option<&dyn MetricsHook>,
    res: io::Result<Vec<u8>>,
) -> fuse_backend_rs::Result<usize> {
    if let Some(h) = hook {
        h.collect(ih);
    }
    let (error, payload) = match res {
        Ok(p) => (0, p),
        Err(e) => {
            // Never ENOSYS: the guest kernel would turn O_TMPFILE off for good.
            let n = match e.raw_os_error() {
                Some(libc::ENOSYS) | None => libc::EIO,
                Some(n) => n,
            };
            (-n, Vec::new())
        }
    };
    let header = OutHeader {
        len: (size_of::<OutHeader>() + payload.len()) as u32,
        error,
        unique: ih.unique,
    };
    let mut msg = header.as_slice().to_vec();
    msg.extend_from_slice(&payload);
    w.write_all(&msg)
        .map_err(fuse_backend_rs::Error::EncodeMessage)?;
    w.commit(None)
        .map_err(fuse_backend_rs::Error::EncodeMessage)?;
    if let Some(h) = hook {
        h.release(None);
    }
    Ok(w.bytes_written())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_nodeids_never_collide_with_vfs_nodeids() {
        // Backend inodes carry their VFS index (>= 1) in the top byte; pseudo-fs inodes are
        // small counters under index 0.
        assert!(!is_tmp_nodeid(ROOT_ID));
        assert!(!is_tmp_nodeid(12345));
        assert!(!is_tmp_nodeid((1u64 << 56) | 1));
        assert!(!is_tmp_nodeid((255u64 << 56) | TMP_NODEID_BASE));
        assert!(is_tmp_nodeid(TMP_NODEID_BASE));
        assert!(is_tmp_nodeid(VFS_MAX_INO));
    }

    #[test]
    fn open_beneath_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("sub", d.path().join("rel")).unwrap();
        let root = open_path(d.path()).unwrap();
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        assert!(open_beneath(&root, Path::new(""), flags).is_ok());
        assert!(open_beneath(&root, Path::new("sub"), flags).is_ok());
        for bad in ["abs", "rel", "..", "sub/../..", "/etc", "/proc/self/root"] {
            assert!(
                open_beneath(&root, Path::new(bad), flags).is_err(),
                "{bad} must not resolve"
            );
        }
    }

    #[test]
    fn forget_closes_and_bounds_handles() {
        let vfs = Arc::new(Vfs::new(super::super::vfs::vfs_options()));
        let t = TmpFiles::new(vfs, Arc::new(Mutex::new(BTreeMap::new())));
        let f = Arc::new(tempfile::tempfile().unwrap());
        t.table.lock().inodes.insert(
            TMP_NODEID_BASE,
            TmpInode {
                file: f.clone(),
                lookups: 2,
                fs_idx: 1,
            },
        );
        let ctx = Context::default();
        t.forget(&ctx, TMP_NODEID_BASE, 1);
        assert_eq!(t.len(), 1);
        t.batch_forget(&ctx, vec![(TMP_NODEID_BASE, 1)]);
        assert!(t.is_empty());
        assert_eq!(Arc::strong_count(&f), 1, "the table let go of the fd");
        for _ in 0..MAX_TMPFILES {
            t.new_handle(f.clone()).unwrap();
        }
        let e = t.new_handle(f.clone()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENFILE));
        t.clear();
        assert_eq!(Arc::strong_count(&f), 1);
    }

    #[test]
    fn tmpfile_outside_a_passthrough_is_erofs() {
        let vfs = Arc::new(Vfs::new(super::super::vfs::vfs_options()));
        let t = TmpFiles::new(vfs, Arc::new(Mutex::new(BTreeMap::new())));
        let args = CreateIn {
            flags: (libc::O_RDWR | libc::O_TMPFILE) as u32,
            mode: 0o600,
            umask: 0,
            fuse_flags: 0,
        };
        let ctx = Context::default();
        for parent in [ROOT_ID, 7, (3u64 << 56) | 1] {
            let e = t.tmpfile(&ctx, parent, &args).unwrap_err();
            assert!(
                matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::ENOENT)),
                "{parent:#x}: {e}"
            );
        }
    }
}
