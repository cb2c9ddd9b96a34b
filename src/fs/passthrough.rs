//! Writable passthrough of a host directory, built on fuse-backend-rs `PassthroughFs`.
//!
//! Options chosen so that the share can be the upper and work dir of a guest kernel overlayfs
//! (see docs/architecture.md):
//! - `xattr = true`: `trusted.overlay.*`, `user.*` and `security.*` xattrs pass through;
//! - `writeback = true`: the guest may cache writes (FUSE writeback cache);
//! - `inode_file_handles = true`: every looked-up inode is remembered by its kernel *file
//!   handle* (`name_to_handle_at`) instead of an `O_PATH` fd, so the number of fds the daemon
//!   holds does not grow with the number of inodes the guest has looked up (fuse-backend-rs#130).
//!   Opening a handle again needs `CAP_DAC_READ_SEARCH` (the daemon runs as root under Kata).
//!   On a host filesystem that cannot produce file handles the library falls back to an
//!   `O_PATH` fd for that inode; then the fd count is bounded by `RLIMIT_NOFILE` (which the
//!   daemon raises to its hard limit) and by the guest's `FORGET`s.
//!
//! Containment: every lookup is a single path component (the VFS layer rejects names with
//! `/`), resolved with `openat(dirfd, name, O_NOFOLLOW)` relative to the parent's fd, and
//! `..` at the share root resolves to the root itself. Symlinks are never followed by the
//! daemon: they are returned to the guest, which resolves them in its own namespace.

use std::io;
use std::path::Path;
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

/// Errors creating a passthrough filesystem.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// The source is missing or is not a directory.
    #[error("passthrough source {0:?} is not a directory")]
    NotADirectory(String),
    /// The source path is not valid UTF-8 (fuse-backend-rs takes a `String`).
    #[error("passthrough source path is not valid UTF-8: {0:?}")]
    BadPath(std::path::PathBuf),
    /// fuse-backend-rs refused to create or import the filesystem.
    #[error("cannot create passthrough fs for {path:?}: {source}")]
    Create {
        /// The shared directory.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Creates a passthrough filesystem for the host directory `source`, ready to be mounted in
/// the [`Vfs`](fuse_backend_rs::api::Vfs).
pub fn new_passthrough(source: &Path) -> Result<PassthroughFs, PassthroughError> {
    let root = source
        .to_str()
        .ok_or_else(|| PassthroughError::BadPath(source.to_path_buf()))?
        .to_string();
    if !source.is_dir() {
        return Err(PassthroughError::NotADirectory(root));
    }
    let cfg = Config {
        root_dir: root.clone(),
        xattr: true,
        writeback: true,
        // Imported once here; `destroy()` re-imports (guest reconnects), `init()` must not.
        do_import: false,
        no_open: false,
        no_opendir: false,
        inode_file_handles: true,
        cache_policy: CachePolicy::Auto,
        entry_timeout: Duration::from_secs(5),
        attr_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let fs = PassthroughFs::new(cfg).map_err(|e| PassthroughError::Create {
        path: root.clone(),
        source: e,
    })?;
    fs.import().map_err(|e| PassthroughError::Create {
        path: root,
        source: e,
    })?;
    Ok(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_missing_dir() {
        let r = new_passthrough(Path::new("/nonexistent/xyz"));
        assert!(matches!(r, Err(PassthroughError::NotADirectory(_))));
    }

    #[test]
    fn creates_on_dir() {
        let d = tempfile::tempdir().unwrap();
        new_passthrough(d.path()).unwrap();
    }
}
