//! Errors of the RAFS reader and of the on-disk structure codecs.

use std::path::PathBuf;

use super::codec::CodecError;

/// Every way reading a RAFS bootstrap, ci array or ToC can fail. Malformed input always maps
/// to one of these; the reader never panics on bad bytes.
#[derive(Debug, thiserror::Error)]
pub enum RafsError {
    /// The file could not be opened, mapped or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A structure or table extends past the end of its buffer.
    #[error("truncated {what}: need {need} bytes at offset {offset}, have {have}")]
    Truncated {
        what: &'static str,
        offset: u64,
        need: u64,
        have: u64,
    },
    /// A magic number does not match.
    #[error("bad magic in {what}: {found:#x}")]
    BadMagic { what: &'static str, found: u64 },
    /// The image is structurally invalid (bad offsets, counts, flags, ordering...).
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The image uses a feature this reader refuses (zran, batch, tarfs, encryption...).
    #[error("unsupported image feature: {0}")]
    Unsupported(String),
    /// An inode number that does not name an inode of this image.
    #[error("no inode {0} in this image")]
    NoSuchInode(u64),
    /// An operation on an inode of the wrong type (readdir on a file, readlink on a dir...).
    #[error("inode {ino} is not a {expected}")]
    WrongType { ino: u64, expected: &'static str },
    /// Chunk data read from a blob failed verification (crc32, digest, size).
    #[error("bad chunk data: {0}")]
    BadData(String),
    /// Decompression of a ci array or an inlined bootstrap failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl RafsError {
    /// The errno a FUSE client should see for this error.
    pub fn errno(&self) -> i32 {
        match self {
            RafsError::NoSuchInode(_) => libc::ENOENT,
            RafsError::WrongType { expected, .. } => match *expected {
                "directory" => libc::ENOTDIR,
                _ => libc::EINVAL,
            },
            _ => libc::EIO,
        }
    }

    /// Shorthand for [`RafsError::Corrupt`].
    pub fn corrupt(msg: impl Into<String>) -> Self {
        RafsError::Corrupt(msg.into())
    }
}

/// Result alias of the rafs module.
pub type Result<T> = std::result::Result<T, RafsError>;
