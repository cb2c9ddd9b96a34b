//! Storage: blob backends, the host blob cache, and chunk decoding (decompress + verify).
//!
//! The RAFS filesystem reads file data only through [`ChunkReader`]. Backends implement
//! [`BlobBackend`]: a range read of a blob by id. Everything between (ci arrays, cache,
//! single-flight, amplification, verification) lives behind these two traits.

pub mod cache;
pub mod device;
pub mod flight;
pub mod localfs;
pub mod pack;
pub mod registry;

use std::sync::Arc;

use crate::rafs::ChunkRef;

/// Errors from the storage layer. Each maps to an errno for the guest (mostly EIO).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob {blob_id}: {source}")]
    Io {
        blob_id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {0} not found")]
    BlobNotFound(String),
    #[error("blob index {0} is not in the blob table")]
    NoSuchBlob(u32),
    #[error("blob {blob_id}: chunk {index}: {reason}")]
    BadChunk {
        blob_id: String,
        index: u32,
        reason: String,
    },
    #[error("blob {blob_id}: chunk {index}: {kind} mismatch")]
    Verify {
        blob_id: String,
        index: u32,
        kind: &'static str,
    },
    #[error("blob {blob_id}: bad chunk-info array: {reason}")]
    BadCi { blob_id: String, reason: String },
    #[error("backend: {0}")]
    Backend(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl StorageError {
    /// The errno a guest sees for this error.
    pub fn errno(&self) -> i32 {
        libc::EIO
    }
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// A place blobs come from: a local dir, an OCI registry, a proxy.
pub trait BlobBackend: Send + Sync {
    /// Short name for metrics and logs ("localfs", "registry").
    fn kind(&self) -> &'static str;
    /// Fill `buf` with the bytes of blob `blob_id` at `offset`. A short blob is an error.
    fn read_range(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Size of the blob in bytes.
    fn blob_size(&self, blob_id: &str) -> Result<u64>;
}

/// What the RAFS filesystem reads file data through: decompressed, verified chunk bytes.
pub trait ChunkReader: Send + Sync {
    /// The whole uncompressed chunk referenced by `chunk`, verified per policy.
    fn read_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>>;

    /// Write bytes `[offset, offset + len)` of the chunk into a FUSE reply; returns the
    /// bytes written. Implementations may serve cached chunks straight from a file into
    /// the reply buffers; the default goes through [`ChunkReader::read_chunk`].
    fn write_chunk_range(
        &self,
        chunk: &ChunkRef,
        offset: usize,
        len: usize,
        w: &mut dyn fuse_backend_rs::api::filesystem::ZeroCopyWriter,
    ) -> Result<usize> {
        let data = self.read_chunk(chunk)?;
        write_window(&data, offset, len, w)
    }
}

/// Write `data[offset..offset + len]` (clamped to the data) into `w`.
pub fn write_window(
    data: &[u8],
    offset: usize,
    len: usize,
    w: &mut dyn std::io::Write,
) -> Result<usize> {
    let start = offset.min(data.len());
    let end = offset.saturating_add(len).min(data.len());
    w.write_all(&data[start..end])
        .map_err(|source| StorageError::Io {
            blob_id: String::new(),
            source,
        })?;
    Ok(end - start)
}
