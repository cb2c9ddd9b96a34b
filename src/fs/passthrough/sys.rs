//! Thin, typed wrappers over the Linux syscalls the passthrough needs. Every raw call is
//! here, so the rest of the module works with `OwnedFd`, `CStr` and `io::Result`.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use fuse_backend_rs::abi::fuse_abi::stat64;

/// The largest file handle the kernel hands out (MAX_HANDLE_SZ).
pub const MAX_HANDLE_SZ: usize = 128;

/// An empty path, for the `*at(fd, "", AT_EMPTY_PATH)` forms.
pub const EMPTY: &CStr = c"";

pub fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a freshly returned fd.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: `fd` was just returned by the kernel to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Set once the kernel said openat2 is unknown (before 5.6): then single-component
/// `openat(O_NOFOLLOW)` is used, which cannot leave the parent either.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens one path component `name` beneath `dir`: never through a symlink or a magic link,
/// never above `dir` (openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). With `O_PATH |
/// O_NOFOLLOW` a trailing symlink is opened itself.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let mut how: libc::open_how = unsafe_zeroed_open_how();
        how.flags = flags as u64;
        how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            u64::from(mode)
        } else {
            0
        };
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        // SAFETY: `how` is a valid open_how of the size passed, `name` is NUL-terminated.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            return owned(r as libc::c_int);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        NO_OPENAT2.store(true, Ordering::Relaxed);
    }
    if name.to_bytes().contains(&b'/') || name.to_bytes() == b".." {
        return Err(errno(libc::EXDEV));
    }
    // SAFETY: valid dirfd and NUL-terminated name.
    owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })
}

fn unsafe_zeroed_open_how() -> libc::open_how {
    // SAFETY: open_how is plain integers; all-zero is its documented default.
    unsafe { std::mem::zeroed() }
}

/// `openat(dir, name, flags)` for names the daemon itself controls (e.g. `/proc/self/fd`).
pub fn openat(dir: RawFd, name: &CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: NUL-terminated name; the kernel validates `dir`.
    owned(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// statx of `fd` itself (`AT_EMPTY_PATH`): the attributes and the mount id.
pub fn statx_fd(fd: BorrowedFd<'_>) -> io::Result<(stat64, u64)> {
    let mut sx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `sx` is a writable statx buffer; the empty path is NUL-terminated.
    cvt(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            sx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx filled the buffer (it was zeroed before, too).
    let sx = unsafe { sx.assume_init() };
    let mut st: stat64 = zeroed_stat();
    st.st_dev = libc::makedev(sx.stx_dev_major, sx.stx_dev_minor);
    st.st_ino = sx.stx_ino;
    st.st_nlink = u64::from(sx.stx_nlink);
    st.st_mode = u32::from(sx.stx_mode);
    st.st_uid = sx.stx_uid;
    st.st_gid = sx.stx_gid;
    st.st_rdev = libc::makedev(sx.stx_rdev_major, sx.stx_rdev_minor);
    st.st_size = sx.stx_size as i64;
    st.st_blksize = i64::from(sx.stx_blksize);
    st.st_blocks = sx.stx_blocks as i64;
    st.st_atime = sx.stx_atime.tv_sec;
    st.st_atime_nsec = i64::from(sx.stx_atime.tv_nsec);
    st.st_mtime = sx.stx_mtime.tv_sec;
    st.st_mtime_nsec = i64::from(sx.stx_mtime.tv_nsec);
    st.st_ctime = sx.stx_ctime.tv_sec;
    st.st_ctime_nsec = i64::from(sx.stx_ctime.tv_nsec);
    let mnt_id = if sx.stx_mask & libc::STATX_MNT_ID != 0 {
        sx.stx_mnt_id
    } else {
        0
    };
    Ok((st, mnt_id))
}

/// fstat of an fd (works on O_PATH fds too).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<stat64> {
    let mut st = MaybeUninit::<stat64>::zeroed();
    // SAFETY: writable stat buffer, NUL-terminated empty path.
    cvt(unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: filled by the kernel.
    Ok(unsafe { st.assume_init() })
}

pub fn zeroed_stat() -> stat64 {
    // SAFETY: stat64 is plain integers.
    unsafe { std::mem::zeroed() }
}

/// A kernel file handle (`name_to_handle_at`), as bytes: type and opaque handle.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle {
    /// `handle_type` of `struct file_handle`.
    pub kind: i32,
    /// `f_handle`, `handle_bytes` long.
    pub bytes: Vec<u8>,
}

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// The file handle and mount id of `fd` itself. `Ok(None)` when the filesystem cannot
/// produce handles (EOPNOTSUPP), so the caller keeps an fd instead.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<Option<(FileHandle, u64)>> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mnt_id: libc::c_int = 0;
    // SAFETY: `raw` is a file_handle with room for MAX_HANDLE_SZ bytes, as its
    // handle_bytes says; `mnt_id` is writable; the empty path is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &mut raw as *mut RawHandle,
            &mut mnt_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EOVERFLOW) => Ok(None),
            _ => Err(e),
        };
    }
    let n = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(Some((
        FileHandle {
            kind: raw.handle_type,
            bytes: raw.f_handle[..n].to_vec(),
        },
        mnt_id as u64,
    )))
}

/// Opens the inode behind `handle` on the mount of `mount_fd` (needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, h: &FileHandle, flags: i32) -> io::Result<OwnedFd> {
    if h.bytes.len() > MAX_HANDLE_SZ {
        return Err(errno(libc::EINVAL));
    }
    let mut raw = RawHandle {
        handle_bytes: h.bytes.len() as u32,
        handle_type: h.kind,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: `raw` is a valid file_handle of `handle_bytes` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut raw as *mut RawHandle,
            flags | libc::O_CLOEXEC,
        )
    };
    owned(cvt_long(r)? as libc::c_int)
}

/// The per-thread credential switch: effective (and so filesystem) uid/gid of the calling
/// thread only. Raw syscalls: glibc's wrappers would change every thread of the process.
pub fn set_thread_creds(uid: u32, gid: u32) -> io::Result<()> {
    // gid first, while euid is still 0 and CAP_SETGID is effective.
    // SAFETY: plain syscalls on the calling thread; -1 keeps the real and saved ids.
    cvt_long(unsafe { libc::syscall(libc::SYS_setresgid, -1i64, gid as i64, -1i64) })?;
    // SAFETY: as above.
    if let Err(e) =
        cvt_long(unsafe { libc::syscall(libc::SYS_setresuid, -1i64, uid as i64, -1i64) })
    {
        // SAFETY: as above; back to the saved gid 0.
        unsafe { libc::syscall(libc::SYS_setresgid, -1i64, 0i64, -1i64) };
        return Err(e);
    }
    Ok(())
}

/// Back to euid/egid 0 on the calling thread (the kernel restores the effective
/// capabilities from the permitted set when euid returns to 0).
pub fn restore_thread_creds() {
    // SAFETY: plain syscalls on the calling thread.
    let r1 = unsafe { libc::syscall(libc::SYS_setresuid, -1i64, 0i64, -1i64) };
    // SAFETY: as above.
    let r2 = unsafe { libc::syscall(libc::SYS_setresgid, -1i64, 0i64, -1i64) };
    if r1 < 0 || r2 < 0 {
        // Serving further requests with a guest's ids would be a privilege mix-up.
        log::error!(
            "cannot restore thread credentials: {}",
            io::Error::last_os_error()
        );
        std::process::abort();
    }
}

/// Drops the calling thread's supplementary groups (so a switched thread holds only the
/// caller's gid, as FUSE tells no supplementary groups).
pub fn clear_thread_groups() -> io::Result<()> {
    // SAFETY: plain syscall on the calling thread with an empty list.
    cvt_long(unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) })
        .map(|_| ())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets or clears one capability in the calling thread's effective set. Used to drop
/// CAP_FSETID around a write or truncate that must clear setuid/setgid (killpriv_v2).
pub fn set_thread_effective_cap(cap: u32, on: bool) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires; pid 0 is this thread.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    })?;
    let (i, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    if on {
        data[i].effective |= bit & data[i].permitted;
    } else {
        data[i].effective &= !bit;
    }
    // SAFETY: as above.
    cvt_long(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) })
        .map(|_| ())
}

/// Gives the calling thread its own umask (unshare CLONE_FS), once per thread.
pub fn thread_private_fs() -> bool {
    thread_local! {
        static DONE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    }
    DONE.with(|d| {
        if let Some(v) = d.get() {
            return v;
        }
        // SAFETY: plain syscall; CLONE_FS only separates cwd/root/umask of this thread.
        let ok = unsafe { libc::unshare(libc::CLONE_FS) } == 0;
        if !ok {
            log::warn!(
                "unshare(CLONE_FS) failed ({}); creates use the process umask",
                io::Error::last_os_error()
            );
        }
        d.set(Some(ok));
        ok
    })
}

/// Sets the calling thread's umask (after [`thread_private_fs`]).
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid dirfd and NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(|_| ())
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: valid dirfd and NUL-terminated name.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(|_| ())
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings and a valid dirfd.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(|_| ())
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: valid dirfd and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(|_| ())
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: valid dirfds and NUL-terminated names.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            old.as_ptr(),
            newdir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(|_| ())
}

/// Links the inode of `fd` (an O_PATH or regular fd) as `name` in `dir`.
pub fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fds and NUL-terminated names. AT_EMPTY_PATH links the fd's own inode
    // (needs CAP_DAC_READ_SEARCH, which the daemon holds while not switched).
    cvt(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(|_| ())
}

pub fn readlinkat(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: writable buffer of the given length; empty path reads the fd's own link.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn fchownat_empty(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd and empty path.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(|_| ())
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(|_| ())
}

pub fn fchmodat(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated name.
    cvt(unsafe { libc::fchmodat(dir, name.as_ptr(), mode, 0) }).map(|_| ())
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: i64) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::ftruncate64(fd.as_raw_fd(), len) }).map(|_| ())
}

pub fn utimensat(
    dir: RawFd,
    name: &CStr,
    times: &[libc::timespec; 2],
    flags: i32,
) -> io::Result<()> {
    // SAFETY: NUL-terminated name and a two-element timespec array.
    cvt(unsafe { libc::utimensat(dir, name.as_ptr(), times.as_ptr(), flags) }).map(|_| ())
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs64> {
    let mut st = MaybeUninit::<libc::statvfs64>::zeroed();
    // SAFETY: writable buffer.
    cvt(unsafe { libc::fstatvfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled by the kernel.
    Ok(unsafe { st.assume_init() })
}

/// Reads directory entries at `offset` into `buf`; returns the bytes filled.
pub fn getdents(fd: BorrowedFd<'_>, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid fd.
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), offset as i64, libc::SEEK_SET) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: writable buffer of the given length.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    Ok(cvt_long(n)? as usize)
}

/// Converts a libc return into `io::Result`.
pub fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    cvt(r)
}

/// Converts a libc ssize_t return into `io::Result`.
pub fn check_size(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
