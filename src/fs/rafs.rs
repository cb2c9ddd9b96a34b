//! The RAFS filesystem: a read-only fuse-backend-rs [`FileSystem`] over one RAFS image
//! (bootstrap), reading file data through the storage layer.
//!
//! Skeleton: the public seam (open, metrics, the FileSystem/BackendFileSystem impls) is in
//! place; the operations are filled in once the reader lands.

use std::any::Any;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fuse_backend_rs::api::filesystem::{Entry, FileSystem};
use fuse_backend_rs::api::BackendFileSystem;

use crate::config::{ConfigError, RafsConfig};
use crate::storage::StorageError;

/// Errors from opening a RAFS filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RafsFsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Unsupported(String),
}

/// Per-filesystem counters, exported by [`RafsFs::metrics`].
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    errors: AtomicU64,
    chunk_fetches: AtomicU64,
    chunk_hits: AtomicU64,
}

/// A mounted RAFS image.
pub struct RafsFs {
    bootstrap: PathBuf,
    counters: Counters,
}

impl RafsFs {
    /// Opens the bootstrap at `bootstrap` and sets up storage per `config`.
    pub fn open(bootstrap: &Path, config: &RafsConfig) -> Result<RafsFs, RafsFsError> {
        let _ = config;
        Err(RafsFsError::Unsupported(format!(
            "{}: RAFS reader not available in this build yet",
            bootstrap.display()
        )))
    }

    /// Per-fs counters: reads, bytes, errors, chunk fetches and cache hits.
    pub fn metrics(&self) -> serde_json::Value {
        let c = &self.counters;
        serde_json::json!({
            "bootstrap": self.bootstrap.display().to_string(),
            "reads": c.reads.load(Ordering::Relaxed),
            "read_bytes": c.read_bytes.load(Ordering::Relaxed),
            "errors": c.errors.load(Ordering::Relaxed),
            "chunk_fetches": c.chunk_fetches.load(Ordering::Relaxed),
            "chunk_hits": c.chunk_hits.load(Ordering::Relaxed),
        })
    }
}

impl FileSystem for RafsFs {
    type Inode = u64;
    type Handle = u64;
}

impl BackendFileSystem for RafsFs {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
