//! `localfs` backend: blobs are files named by blob id in `dir`, then in each of `alt_dirs`
//! (searched in order; the path is `<alt_dir>/<blob_id>`, the id joined once), or the single
//! `blob_file` for ids found nowhere else.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{BlobBackend, Result, StorageError};
use crate::config::LocalFsConfig;

/// Counters of the localfs backend.
#[derive(Default)]
pub struct LocalFsMetrics {
    pub read_count: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_errors: AtomicU64,
}

/// A directory (plus alternates) of blob files.
pub struct LocalFsBackend {
    dirs: Vec<PathBuf>,
    blob_file: Option<PathBuf>,
    /// Open files by blob id; a missing blob is not remembered, so it can appear later.
    files: Mutex<HashMap<String, Arc<File>>>,
    metrics: LocalFsMetrics,
}

/// A blob id is used as a file name: refuse anything that could name another file.
pub fn check_blob_id(blob_id: &str) -> Result<()> {
    let ok = !blob_id.is_empty()
        && blob_id.len() <= 128
        && blob_id != "."
        && blob_id != ".."
        && blob_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b':');
    if ok {
        Ok(())
    } else {
        Err(StorageError::Backend(format!(
            "invalid blob id {blob_id:?}"
        )))
    }
}

impl LocalFsBackend {
    /// A backend over `cfg`'s directories / blob file.
    pub fn new(cfg: &LocalFsConfig) -> LocalFsBackend {
        let mut dirs = Vec::new();
        dirs.extend(cfg.dir.iter().cloned());
        dirs.extend(cfg.alt_dirs.iter().cloned());
        LocalFsBackend {
            dirs,
            blob_file: cfg.blob_file.clone(),
            files: Mutex::new(HashMap::new()),
            metrics: LocalFsMetrics::default(),
        }
    }

    /// A backend over one directory.
    pub fn from_dir(dir: &Path) -> LocalFsBackend {
        Self::new(&LocalFsConfig {
            dir: Some(dir.to_path_buf()),
            ..Default::default()
        })
    }

    pub fn metrics(&self) -> &LocalFsMetrics {
        &self.metrics
    }

    /// Counters as nydusd-style JSON.
    pub fn metrics_json(&self) -> serde_json::Value {
        let m = &self.metrics;
        serde_json::json!({
            "backend_type": "localfs",
            "read_count": m.read_count.load(Ordering::Relaxed),
            "read_amount_total": m.read_bytes.load(Ordering::Relaxed),
            "read_errors": m.read_errors.load(Ordering::Relaxed),
        })
    }

    /// The path a blob id resolves to, if any candidate exists.
    pub fn blob_path(&self, blob_id: &str) -> Result<PathBuf> {
        check_blob_id(blob_id)?;
        let name = blob_id.strip_prefix("sha256:").unwrap_or(blob_id);
        for d in &self.dirs {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        match &self.blob_file {
            Some(f) if f.is_file() => Ok(f.clone()),
            _ => Err(StorageError::BlobNotFound(blob_id.to_string())),
        }
    }

    fn file(&self, blob_id: &str) -> Result<Arc<File>> {
        if let Some(f) = self.files.lock().get(blob_id) {
            return Ok(f.clone());
        }
        let path = self.blob_path(blob_id)?;
        let f = Arc::new(File::open(&path).map_err(|source| StorageError::Io {
            blob_id: blob_id.to_string(),
            source,
        })?);
        self.files.lock().insert(blob_id.to_string(), f.clone());
        Ok(f)
    }
}

impl BlobBackend for LocalFsBackend {
    fn kind(&self) -> &'static str {
        "localfs"
    }

    fn read_range(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.metrics.read_count.fetch_add(1, Ordering::Relaxed);
        let r = self.file(blob_id).and_then(|f| {
            f.read_exact_at(buf, offset)
                .map_err(|source| StorageError::Io {
                    blob_id: blob_id.to_string(),
                    source,
                })
        });
        match &r {
            Ok(()) => {
                self.metrics
                    .read_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.metrics.read_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    fn blob_size(&self, blob_id: &str) -> Result<u64> {
        let f = self.file(blob_id)?;
        f.metadata()
            .map(|m| m.len())
            .map_err(|source| StorageError::Io {
                blob_id: blob_id.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_alt_dirs_and_blob_file() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("one"), b"0123456789").unwrap();
        std::fs::write(b.join("two"), b"abcdef").unwrap();
        let single = t.path().join("single");
        std::fs::write(&single, b"SINGLE").unwrap();
        let be = LocalFsBackend::new(&LocalFsConfig {
            dir: Some(a.clone()),
            alt_dirs: vec![b.clone()],
            blob_file: Some(single),
        });
        let mut buf = [0u8; 4];
        be.read_range("one", 3, &mut buf).unwrap();
        assert_eq!(&buf, b"3456");
        // Found in the alternate dir, with the id joined once.
        be.read_range("two", 1, &mut buf).unwrap();
        assert_eq!(&buf, b"bcde");
        assert_eq!(be.blob_size("two").unwrap(), 6);
        // Unknown ids fall back to blob_file.
        be.read_range("three", 0, &mut buf).unwrap();
        assert_eq!(&buf, b"SING");
        // Short reads are errors.
        assert!(be.read_range("two", 4, &mut buf).is_err());
        // Path tricks are refused.
        assert!(be.read_range("../a/one", 0, &mut buf).is_err());
        assert!(be.read_range("..", 0, &mut buf).is_err());
        assert_eq!(be.metrics().read_count.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn missing_blob() {
        let t = tempfile::tempdir().unwrap();
        let be = LocalFsBackend::from_dir(t.path());
        let mut buf = [0u8; 1];
        assert!(matches!(
            be.read_range("nope", 0, &mut buf),
            Err(StorageError::BlobNotFound(_))
        ));
        // A blob that appears later is found.
        std::fs::write(t.path().join("nope"), b"x").unwrap();
        be.read_range("nope", 0, &mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }
}
