//! The request dispatcher in front of fuse-backend-rs's `Server`, used by both transports.
//!
//! fuse-backend-rs 0.14's `Server` answers a few opcodes that a 6.x guest sends with ENOSYS,
//! after which the guest kernel turns the feature off for the whole connection. The
//! dispatcher serves those itself on the passthrough filesystem the node id belongs to:
//! - FUSE_TMPFILE (51): `open(O_TMPFILE)` and overlayfs copy-up;
//! - FUSE_COPY_FILE_RANGE (47): server-side copies;
//! - FUSE_SYNCFS (50): `syncfs(2)` / `sync -f` (on the pseudo root: every passthrough);
//! - FUSE_LSEEK (46) with SEEK_DATA/SEEK_HOLE: the `Vfs` does not forward it (its default
//!   answer, ENOSYS, turns SEEK_DATA/SEEK_HOLE off for the connection). Passthrough files
//!   get the host's answer; RAFS files, which have no holes, the generic one.
//!
//! And it answers GETXATTR/LISTXATTR on the read-only pseudo tree (the mountpoint
//! directories) with "no xattrs" instead of ENOSYS, which would turn xattrs off for every
//! mount of the connection (POSIX ACL checks ask for them on every directory).
//!
//! Everything else goes to the `Server` unchanged.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, Write};
use std::mem::size_of;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    CopyFileRangeIn, CreateIn, EntryOut, GetxattrIn, GetxattrOut, InHeader, LseekIn, LseekOut,
    OpenOut, OutHeader, WriteOut,
};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use fuse_backend_rs::api::server::{MetricsHook, Server};
use fuse_backend_rs::api::{Vfs, VFS_MAX_INO};
use fuse_backend_rs::transport::{FsCacheReqHandler, Reader, Writer};
use parking_lot::Mutex;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::ByteValued;

use super::passthrough::sys::errno;
use super::passthrough::PassthroughFs;
use super::vfs::{FsType, MountRecord};

/// FUSE opcodes served here.
pub const FUSE_GETXATTR: u32 = 22;
/// LISTXATTR.
pub const FUSE_LISTXATTR: u32 = 23;
/// LSEEK (7.24).
pub const FUSE_LSEEK: u32 = 46;
/// COPY_FILE_RANGE (7.28).
pub const FUSE_COPY_FILE_RANGE: u32 = 47;
/// SYNCFS (7.34).
pub const FUSE_SYNCFS: u32 = 50;
/// TMPFILE (7.37).
pub const FUSE_TMPFILE: u32 = 51;
/// FLUSH: answered with ENOSYS in a RAFS-only session (see [`Dispatcher::rafs_only`]).
pub const FUSE_FLUSH: u32 = 25;

/// Bits of a VFS node id that select the backend filesystem.
const VFS_INDEX_SHIFT: u32 = 56;
/// Longest name a request may carry (NAME_MAX plus slack for the NUL).
const MAX_NAME: usize = 4096;

/// Routes each FUSE request (see the module docs).
pub struct Dispatcher {
    vfs: Arc<Vfs>,
    server: Server<Arc<Vfs>>,
    mounts: Arc<Mutex<BTreeMap<String, MountRecord>>>,
    rafs_only: bool,
}

impl Dispatcher {
    /// A dispatcher over `vfs` with its mount table.
    pub fn new(vfs: Arc<Vfs>, mounts: Arc<Mutex<BTreeMap<String, MountRecord>>>) -> Self {
        Dispatcher {
            server: Server::new(vfs.clone()),
            vfs,
            mounts,
            rafs_only: false,
        }
    }

    /// A dispatcher for a session that can only ever hold RAFS (read-only) mounts: FLUSH,
    /// a no-op there, is answered with ENOSYS, after which the kernel stops sending it (one
    /// request less per `close`). A session with a passthrough must keep FLUSH (close
    /// errors, lock release), and the kernel's switch is per connection.
    pub fn rafs_only(mut self) -> Self {
        self.rafs_only = true;
        self
    }

    /// Runs `f` on the passthrough filesystem mounted with VFS index `idx`.
    fn with_passthrough<T>(
        &self,
        idx: u8,
        f: impl FnOnce(&PassthroughFs) -> io::Result<T>,
    ) -> io::Result<T> {
        let mp = self
            .mounts
            .lock()
            .values()
            .find(|r| r.fs_idx == idx && r.fs_type == FsType::Passthrough)
            .map(|r| r.mountpoint.clone())
            .ok_or_else(|| errno(libc::EROFS))?;
        let (fs, _) = self
            .vfs
            .get_rootfs(&mp)
            .ok()
            .flatten()
            .ok_or_else(|| errno(libc::EROFS))?;
        let pt = fs
            .as_any()
            .downcast_ref::<PassthroughFs>()
            .ok_or_else(|| errno(libc::EROFS))?;
        f(pt)
    }

    /// The (VFS index, backend inode) of a guest node id. Node id 1 is the guest's root: the
    /// filesystem mounted at "/" when there is one (standalone `--shared-dir`), else the
    /// pseudo root (index 0).
    fn resolve(&self, nodeid: u64) -> (u8, u64) {
        if nodeid == 1 {
            if let Some(r) = self.mounts.lock().get("/") {
                return (r.fs_idx, 1);
            }
        }
        ((nodeid >> VFS_INDEX_SHIFT) as u8, nodeid & VFS_MAX_INO)
    }

    fn passthrough_indexes(&self) -> Vec<u8> {
        self.mounts
            .lock()
            .values()
            .filter(|r| r.fs_type == FsType::Passthrough)
            .map(|r| r.fs_idx)
            .collect()
    }

    /// SEEK_DATA/SEEK_HOLE on a file without holes (RAFS): data up to the size, then the
    /// hole at the end.
    fn lseek_without_holes(
        &self,
        ctx: &Context,
        nodeid: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let (st, _) = self.vfs.getattr(ctx, nodeid.into(), None)?;
        let size = st.st_size.max(0) as u64;
        match whence as i32 {
            libc::SEEK_DATA | libc::SEEK_HOLE if offset >= size => Err(errno(libc::ENXIO)),
            libc::SEEK_DATA => Ok(offset),
            libc::SEEK_HOLE => Ok(size),
            _ => Err(errno(libc::EINVAL)),
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
            Err(_) => return self.server.handle_message(r, w, vu_req, hook),
        };
        let body_len = (ih.len as usize).saturating_sub(size_of::<InHeader>());
        let (idx, ino) = self.resolve(ih.nodeid);
        let ctx = Context::from(&ih);
        let res: io::Result<Vec<u8>> = match ih.opcode {
            FUSE_TMPFILE => read_create(&mut peek, body_len).and_then(|args| {
                let (e, fh, opts) =
                    self.with_passthrough(idx, |pt| pt.tmpfile(&ctx, ino, &args))?;
                let mut eo = EntryOut::from(e);
                eo.nodeid |= u64::from(idx) << VFS_INDEX_SHIFT;
                let oo = OpenOut {
                    fh,
                    open_flags: opts.bits(),
                    passthrough: 0,
                };
                let mut v = eo.as_slice().to_vec();
                v.extend_from_slice(oo.as_slice());
                Ok(v)
            }),
            FUSE_COPY_FILE_RANGE => peek
                .read_obj::<CopyFileRangeIn>()
                .map_err(|_| errno(libc::EINVAL))
                .and_then(|a| {
                    if self.resolve(a.nodeid_out).0 != idx {
                        return Err(errno(libc::EXDEV));
                    }
                    let n = self.with_passthrough(idx, |pt| {
                        pt.copy_file_range(
                            a.fh_in,
                            a.offset_in,
                            a.fh_out,
                            a.offset_out,
                            a.len,
                            a.flags,
                        )
                    })?;
                    let out = WriteOut {
                        size: n.min(u32::MAX as usize) as u32,
                        padding: 0,
                    };
                    Ok(out.as_slice().to_vec())
                }),
            FUSE_SYNCFS => {
                let r = if idx == 0 {
                    // The pseudo root: every passthrough.
                    self.passthrough_indexes()
                        .into_iter()
                        .try_for_each(|i| self.with_passthrough(i, |pt| pt.syncfs(1)))
                } else {
                    self.with_passthrough(idx, |pt| pt.syncfs(ino))
                        .or_else(|e| match e.raw_os_error() {
                            // RAFS is read-only: nothing to sync.
                            Some(libc::EROFS) => Ok(()),
                            _ => Err(e),
                        })
                };
                r.map(|_| Vec::new())
            }
            FUSE_LSEEK => peek
                .read_obj::<LseekIn>()
                .map_err(|_| errno(libc::EINVAL))
                .and_then(|a| {
                    let off = match self
                        .with_passthrough(idx, |pt| pt.lseek(&ctx, ino, a.fh, a.offset, a.whence))
                    {
                        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                            self.lseek_without_holes(&ctx, ih.nodeid, a.offset, a.whence)
                        }
                        r => r,
                    }?;
                    Ok(LseekOut { offset: off }.as_slice().to_vec())
                }),
            // On purpose: the kernel then stops sending FLUSH on this connection.
            FUSE_FLUSH if self.rafs_only => return send(&mut w, &ih, hook, -libc::ENOSYS, &[]),
            FUSE_GETXATTR if idx == 0 => Err(errno(libc::ENODATA)),
            FUSE_LISTXATTR if idx == 0 => peek
                .read_obj::<GetxattrIn>()
                .map_err(|_| errno(libc::EINVAL))
                .map(|gi| {
                    if gi.size == 0 {
                        GetxattrOut {
                            size: 0,
                            padding: 0,
                        }
                        .as_slice()
                        .to_vec()
                    } else {
                        Vec::new()
                    }
                }),
            _ => return self.server.handle_message(r, w, vu_req, hook),
        };
        reply(&mut w, &ih, hook, res)
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

/// Writes the reply to a request served here, counted by `hook` like the server's own.
fn reply<S: BitmapSlice>(
    w: &mut Writer<'_, S>,
    ih: &InHeader,
    hook: Option<&dyn MetricsHook>,
    res: io::Result<Vec<u8>>,
) -> fuse_backend_rs::Result<usize> {
    let (error, payload) = match res {
        Ok(p) => (0, p),
        Err(e) => {
            // Never ENOSYS: the guest kernel would turn the feature off for good.
            let n = match e.raw_os_error() {
                Some(libc::ENOSYS) | None => libc::EIO,
                Some(n) => n,
            };
            (-n, Vec::new())
        }
    };
    send(w, ih, hook, error, &payload)
}

/// Writes the reply to `ih`: `error` (0 or a negative errno) and `payload`.
fn send<S: BitmapSlice>(
    w: &mut Writer<'_, S>,
    ih: &InHeader,
    hook: Option<&dyn MetricsHook>,
    error: i32,
    payload: &[u8],
) -> fuse_backend_rs::Result<usize> {
    if let Some(h) = hook {
        h.collect(ih);
    }
    let header = OutHeader {
        len: (size_of::<OutHeader>() + payload.len()) as u32,
        error,
        unique: ih.unique,
    };
    let mut msg = header.as_slice().to_vec();
    msg.extend_from_slice(payload);
    w.write_all(&msg)
        .map_err(fuse_backend_rs::Error::EncodeMessage)?;
    w.commit(None)
        .map_err(fuse_backend_rs::Error::EncodeMessage)?;
    if let Some(h) = hook {
        h.release(None);
    }
    Ok(w.bytes_written())
}
