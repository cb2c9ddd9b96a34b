//! `--sandbox chroot`: the fallback where namespaces are not allowed (a container without
//! CAP_SYS_ADMIN, or a seccomp profile that forbids `unshare`), as in virtiofsd: the
//! daemon chroots into one directory, the chroot root.
//!
//! What it needs from before the chroot is opened first and kept as fds: `/proc`
//! ([`crate::procfs`]; the passthrough reopens inodes through `self/fd`) and the sockets
//! (bound by the daemon before [`super::enter`]). Everything it opens later must lie under
//! the root, and host paths given later (API mount sources, config paths) are mapped below
//! it by the daemon ([`crate::fs::FsTree::host_path`]).
//!
//! A chroot alone is a weaker fence than the namespace: the host's mounts stay the
//! daemon's, and an fd to a directory outside the root could lead out. The daemon keeps
//! one such fd, `/proc`; what it reaches there is fenced by the dropped capabilities (no
//! CAP_SYS_PTRACE: `/proc/<other pid>/root` is refused) and, where the kernel has it, by
//! Landlock, applied first with the root as the only writable tree.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::SandboxError;

/// Chroots the process into `root` and makes `/` its cwd. `root` must be canonical.
pub fn enter(root: &Path) -> Result<(), SandboxError> {
    if !crate::procfs::init() {
        log::warn!("sandbox: no /proc before the chroot; the passthrough serves no xattrs");
    }
    let c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Setup(format!("path with NUL: {}", root.display())))?;
    let fail = |what: &str| {
        SandboxError::Setup(format!(
            "{what} {}: {}",
            root.display(),
            std::io::Error::last_os_error()
        ))
    };
    // SAFETY: NUL-terminated path.
    if unsafe { libc::chdir(c.as_ptr()) } != 0 {
        return Err(fail("chdir"));
    }
    // SAFETY: NUL-terminated path.
    if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        return Err(fail("chroot"));
    }
    // SAFETY: NUL-terminated path.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(fail("chdir / in"));
    }
    log::info!("sandbox: chroot into {}", root.display());
    Ok(())
}
