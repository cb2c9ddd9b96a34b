//! The passthrough's FUSE session state as bytes: what a fresh process needs to go on serving
//! the same guest (see docs/architecture.md, "Exported state").
//!
//! The state holds the negotiated INIT options (all `FsOptions` bits), every inode the guest knows (node id, host
//! identity, file handle, lookup count) and every open handle (handle id, node id, host open
//! flags). It is JSON with a version number, so it can be read by eye and checked in tests.
//!
//! An import reopens each inode by its file handle and each open handle from its inode. What
//! cannot come back:
//! - inodes without a file handle (a filesystem that makes none, an unnamed O_TMPFILE): their
//!   node ids answer EBADF;
//! - a handle whose file was unlinked while open: it answers EIO.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::BufRead;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::inode::{InodeKey, MountFd, ROOT_ID};
use super::sys::{self, FileHandle};
use super::{HandleData, PassthroughError, PassthroughFs};

/// Current format version.
pub const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct InodeState {
    id: u64,
    key: InodeKey,
    kind: u32,
    /// (handle type, hex bytes), absent for inodes without a handle.
    handle: Option<(i32, String)>,
    refs: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct HandleState {
    fh: u64,
    inode: u64,
    flags: i32,
}

/// The exported state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PassthroughState {
    version: u32,
    root: InodeKey,
    /// The FUSE INIT options negotiated with the guest (`FsOptions` bits).
    init_options: u64,
    next_id: u64,
    next_handle: u64,
    inodes: Vec<InodeState>,
    handles: Vec<HandleState>,
}

impl PassthroughState {
    /// Node ids in the state.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// The negotiated FUSE INIT options (`FsOptions` bits).
    pub fn init_options(&self) -> u64 {
        self.init_options
    }

    /// Open handles in the state.
    pub fn handle_count(&self) -> usize {
        self.handles.len()
    }
}

/// The mount point of `mnt_id` from /proc/self/mountinfo.
fn mount_point_of(mnt_id: u64) -> Option<String> {
    let f = std::fs::File::from(crate::procfs::open(c"self/mountinfo", libc::O_RDONLY).ok()?);
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        let mut it = line.split(' ');
        if it.next()?.parse::<u64>().ok()? != mnt_id {
            continue;
        }
        let mp = it.nth(3)?;
        // Octal escapes (\040 for space) as the kernel writes them.
        let mut out = Vec::new();
        let b = mp.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && i + 3 < b.len() {
                if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).ok()?, 8) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        return String::from_utf8(out).ok();
    }
    None
}

impl PassthroughFs {
    /// Exports the session state.
    pub fn export_state(&self) -> PassthroughState {
        let root = self.inodes.get(ROOT_ID).map(|i| i.key).unwrap_or(InodeKey {
            dev: 0,
            ino: 0,
            mnt: 0,
        });
        let inodes = self
            .inodes
            .all()
            .into_iter()
            .filter(|i| i.id != ROOT_ID)
            .map(|i| InodeState {
                id: i.id,
                key: i.key,
                kind: i.kind,
                handle: i
                    .handle
                    .as_ref()
                    .map(|(h, _)| (h.kind, hex::encode(&h.bytes))),
                refs: i.refs.load(Ordering::Acquire),
            })
            .collect();
        let mut handles: Vec<HandleState> = self
            .handles
            .read()
            .iter()
            .map(|(fh, h)| HandleState {
                fh: *fh,
                inode: h.inode,
                flags: h.flags,
            })
            .collect();
        handles.sort_by_key(|h| h.fh);
        PassthroughState {
            version: STATE_VERSION,
            root,
            init_options: self.session.get().bits(),
            next_id: self.inodes.next_id(),
            next_handle: self.next_handle.load(Ordering::Relaxed),
            inodes,
            handles,
        }
    }

    /// Exports the session state as bytes.
    pub fn export_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.export_state()).unwrap_or_default()
    }

    /// Imports state exported by another process serving the same share. The filesystem
    /// must be fresh (no session yet). Returns how many inodes and handles came back.
    pub fn import_bytes(&self, bytes: &[u8]) -> Result<(usize, usize), PassthroughError> {
        let st: PassthroughState =
            serde_json::from_slice(bytes).map_err(|e| PassthroughError::Import(e.to_string()))?;
        self.import_state(&st)
    }

    /// Imports exported state (see [`Self::import_bytes`]).
    pub fn import_state(&self, st: &PassthroughState) -> Result<(usize, usize), PassthroughError> {
        if st.version != STATE_VERSION {
            return Err(PassthroughError::Import(format!(
                "state version {} (this build reads {STATE_VERSION})",
                st.version
            )));
        }
        let root = self
            .inodes
            .get(ROOT_ID)
            .ok_or_else(|| PassthroughError::Import("no root".into()))?;
        if root.key.dev != st.root.dev || root.key.ino != st.root.ino {
            return Err(PassthroughError::Import(format!(
                "state is of another share (root {}:{}, this one {}:{})",
                st.root.dev, st.root.ino, root.key.dev, root.key.ino
            )));
        }
        self.session
            .set(fuse_backend_rs::abi::fuse_abi::FsOptions::from_bits_truncate(st.init_options));

        let root_mount = root.handle.as_ref().map(|(_, m)| m.clone());
        let mut mounts: HashMap<u64, Option<Arc<MountFd>>> = HashMap::new();
        if let Some(m) = &root_mount {
            mounts.insert(m.mnt_id, Some(m.clone()));
        }
        let root_path = self.cfg.root.clone();
        let mut n_inodes = 0;
        for i in &st.inodes {
            if i.id == ROOT_ID {
                continue;
            }
            let Some((kind, hexbytes)) = &i.handle else {
                continue;
            };
            let Ok(bytes) = hex::decode(hexbytes) else {
                continue;
            };
            let h = FileHandle { kind: *kind, bytes };
            let m = mounts
                .entry(i.key.mnt)
                .or_insert_with(|| {
                    let mp = mount_point_of(i.key.mnt)?;
                    // Only mounts beneath the share.
                    if !std::path::Path::new(&mp).starts_with(&root_path) {
                        return None;
                    }
                    let c = CString::new(mp).ok()?;
                    let fd: OwnedFd =
                        sys::openat(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_NONBLOCK).ok()?;
                    self.inodes.mount_fd(i.key.mnt, || Ok(fd)).ok()
                })
                .clone();
            let Some(m) = m else { continue };
            // The handle must still name that inode.
            let Ok(fd) = sys::open_by_handle(m.fd.as_fd(), &h, libc::O_PATH) else {
                continue;
            };
            match sys::statx_fd(fd.as_fd()) {
                Ok((s, _)) if s.st_ino == i.key.ino && s.st_dev == i.key.dev => {}
                _ => continue,
            }
            let (inode, _) =
                self.inodes
                    .insert(i.key, i.kind, Some((h, m)), None, Some(i.id), i.refs.max(1));
            self.fd_cache.put(inode.id, Arc::new(fd));
            n_inodes += 1;
        }
        self.inodes.set_next_id(st.next_id);

        let mut n_handles = 0;
        let mut table = HashMap::new();
        for h in &st.handles {
            let file = self.inodes.get(h.inode).and_then(|node| {
                let mut f = h.flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL);
                if f & libc::O_TMPFILE == libc::O_TMPFILE {
                    f &= !libc::O_TMPFILE;
                }
                if node.is_dir() {
                    f = libc::O_RDONLY | libc::O_DIRECTORY;
                }
                self.open_inode(&node, f).ok().map(Arc::new)
            });
            if file.is_some() {
                n_handles += 1;
            }
            table.insert(
                h.fh,
                Arc::new(HandleData {
                    inode: h.inode,
                    flags: h.flags,
                    file,
                    dir_lock: Mutex::new(()),
                }),
            );
        }
        self.handles.write().extend(table);
        self.next_handle
            .store(st.next_handle.max(1), Ordering::Relaxed);
        Ok((n_inodes, n_handles))
    }
}
