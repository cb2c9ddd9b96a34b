//! One OCI layer in, one per-layer RAFS blob out (inlined bootstrap and ToC, as nydusify's
//! converter writes it), streamed and verified; and the bootstrap layer (`image/image.boot`
//! in a gzip'd tar).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ConvertError;
use crate::rafs::builder::{self, BuildOptions, WhiteoutSpec};

/// A reader that hashes and counts what passes through and, at its end, fails unless the
/// bytes have the expected digest and size: a registry that lies is an error, never an
/// image.
pub struct Verifying<R> {
    inner: R,
    hash: Sha256,
    seen: u64,
    want_digest: String,
    want_size: Option<u64>,
    done: bool,
    /// Called with the running byte count (progress).
    pub on_read: Option<Box<dyn Fn(u64) + Send>>,
}

impl<R: Read> Verifying<R> {
    pub fn new(inner: R, digest: &str, size: Option<u64>) -> Self {
        Verifying {
            inner,
            hash: Sha256::new(),
            seen: 0,
            want_digest: digest.to_string(),
            want_size: size,
            done: false,
            on_read: None,
        }
    }

    /// Read to the end (the tar parser stops at the end-of-archive blocks) and verify.
    pub fn finish(mut self) -> Result<u64, ConvertError> {
        std::io::copy(&mut self, &mut std::io::sink())
            .map_err(|e| ConvertError::Io(format!("layer {}: {e}", self.want_digest)))?;
        Ok(self.seen)
    }
}

impl<R: Read> Read for Verifying<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.seen += n as u64;
        if let Some(f) = &self.on_read {
            f(self.seen);
        }
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        if self.want_size.is_some_and(|s| self.seen > s) {
            return Err(bad(format!(
                "blob {} is longer than its {} bytes",
                self.want_digest,
                self.want_size.unwrap()
            )));
        }
        if n == 0 {
            self.done = true;
            let got = format!("sha256:{}", hex::encode(self.hash.clone().finalize()));
            if got != self.want_digest {
                return Err(bad(format!(
                    "blob {} has digest {got}: the source sent wrong bytes",
                    self.want_digest
                )));
            }
            if self.want_size.is_some_and(|s| s != self.seen) {
                return Err(bad(format!(
                    "blob {} has {} bytes, not {}",
                    self.want_digest,
                    self.seen,
                    self.want_size.unwrap()
                )));
            }
        }
        Ok(n)
    }
}

/// The tar inside a layer stream: gzip and zstd are recognised by their magic bytes, so a
/// mislabelled media type does not matter.
pub fn decompressed<'a, R: Read + 'a>(r: R) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut b = BufReader::with_capacity(1 << 20, r);
    let head = b.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(b))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(b)?)
    } else {
        Box::new(b)
    })
}

/// A built per-layer blob.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BuiltLayer {
    /// Digest of the source layer.
    pub source_digest: String,
    /// Hex SHA-256 of the blob (its blob id and layer digest).
    pub blob_id: String,
    pub blob_size: u64,
    pub toc_digest: String,
    pub blob_path: PathBuf,
    pub bootstrap_path: PathBuf,
    /// Directories the layer's tar did not describe (see `MergeOptions::implicit_dirs`).
    #[serde(default)]
    pub implicit_dirs: Vec<Vec<u8>>,
    /// Whether this run built it (false: reused from the work dir).
    #[serde(skip)]
    pub built: bool,
}

/// Build settings shared by every layer of a conversion.
#[derive(Clone, Debug)]
pub struct LayerSettings {
    pub base: BuildOptions,
    /// Key of the settings (fs version, compressor, chunk size, dictionary): a layer built
    /// with the same key is reused from the work dir.
    pub key: String,
}

fn layer_dir(settings: &LayerSettings, source_digest: &str, dir: &Path) -> PathBuf {
    let key = hex::encode(Sha256::digest(format!("{}|{source_digest}", settings.key)));
    dir.join(&key[..32])
}

/// The layer built earlier into `dir` from `source_digest` with the same settings, if it
/// is whole.
pub fn built_before(
    settings: &LayerSettings,
    source_digest: &str,
    dir: &Path,
) -> Option<BuiltLayer> {
    let t = std::fs::read(layer_dir(settings, source_digest, dir).join("layer.json")).ok()?;
    let l = serde_json::from_slice::<BuiltLayer>(&t).ok()?;
    (std::fs::metadata(&l.blob_path).is_ok_and(|m| m.len() == l.blob_size)
        && l.bootstrap_path.exists())
    .then_some(l)
}

/// Build the blob of one layer from `stream` (already verified by the caller's
/// [`Verifying`] wrapper) into `dir` (see [`built_before`] for reuse).
pub fn build_layer(
    settings: &LayerSettings,
    source_digest: &str,
    stream: &mut dyn Read,
    dir: &Path,
    threads: usize,
) -> Result<BuiltLayer, ConvertError> {
    let ldir = layer_dir(settings, source_digest, dir);
    let meta = ldir.join("layer.json");
    let io = |e: std::io::Error| ConvertError::Io(format!("{}: {e}", ldir.display()));
    let _ = std::fs::remove_dir_all(&ldir);
    std::fs::create_dir_all(&ldir).map_err(io)?;
    let mut o = settings.base.clone();
    o.blob = Some(ldir.join("layer.blob"));
    o.blob_dir = None;
    o.bootstrap = Some(ldir.join("layer.boot"));
    o.blob_inline_meta = true;
    o.blob_toc = true;
    // Whiteouts stay ordinary entries in a layer's own bootstrap; the merge applies them.
    o.whiteout_spec = WhiteoutSpec::None;
    o.threads = threads;
    o.parent_bootstrap = None;
    let mut tar = decompressed(stream).map_err(io)?;
    let out = builder::create_from_tar(&o, &mut tar)
        .map_err(|e| ConvertError::Build(format!("layer {source_digest}: {e}")))?;
    // Drain what the tar parser left (padding, the compressor's trailer).
    std::io::copy(&mut tar, &mut std::io::sink()).map_err(io)?;
    let l = BuiltLayer {
        source_digest: source_digest.to_string(),
        blob_id: out
            .blob_id
            .ok_or_else(|| ConvertError::Build("layer build wrote no blob".into()))?,
        blob_size: out.blob_size,
        toc_digest: out.toc_digest.unwrap_or_default(),
        blob_path: out.blob_path.unwrap_or_else(|| ldir.join("layer.blob")),
        bootstrap_path: ldir.join("layer.boot"),
        implicit_dirs: out.implicit_dirs,
        built: true,
    };
    std::fs::write(&meta, serde_json::to_vec(&l).expect("json")).map_err(io)?;
    Ok(BuiltLayer { built: true, ..l })
}

/// The bootstrap layer: a gzip'd tar holding `image/` (0755) and `image/image.boot` (0444),
/// written to `out`. Returns (digest of the gzip, its size, digest of the tar = diff id).
pub fn write_bootstrap_layer(
    bootstrap: &Path,
    out: &Path,
) -> Result<(String, u64, String), ConvertError> {
    let io = |e: std::io::Error| ConvertError::Io(format!("{}: {e}", out.display()));
    let boot = std::fs::read(bootstrap).map_err(io)?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(0);
    tar.append_data(&mut h, "image", std::io::empty())
        .map_err(io)?;
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o444);
    h.set_size(boot.len() as u64);
    h.set_mtime(0);
    tar.append_data(&mut h, "image/image.boot", boot.as_slice())
        .map_err(io)?;
    let tar = tar.into_inner().map_err(io)?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).map_err(io)?;
    let gz = gz.finish().map_err(io)?;
    std::fs::write(out, &gz).map_err(io)?;
    Ok((
        format!("sha256:{}", hex::encode(Sha256::digest(&gz))),
        gz.len() as u64,
        diff_id,
    ))
}

/// The bootstrap (`image/image.boot`) inside a bootstrap layer stream.
pub fn extract_bootstrap(layer: &mut dyn Read, limit: u64) -> Result<Vec<u8>, ConvertError> {
    let tar = decompressed(layer).map_err(|e| ConvertError::Io(format!("bootstrap layer: {e}")))?;
    let mut ar = tar::Archive::new(tar);
    let io = |e: std::io::Error| ConvertError::Io(format!("bootstrap layer: {e}"));
    for e in ar.entries().map_err(io)? {
        let mut e = e.map_err(io)?;
        let p = e.path().map_err(io)?.to_string_lossy().to_string();
        if p.trim_start_matches("./").trim_start_matches('/') == "image/image.boot" {
            if e.size() > limit {
                return Err(ConvertError::Invalid(format!(
                    "bootstrap of {} bytes is over the {limit}-byte limit",
                    e.size()
                )));
            }
            let mut v = Vec::with_capacity(e.size() as usize);
            e.read_to_end(&mut v).map_err(io)?;
            return Ok(v);
        }
    }
    Err(ConvertError::Invalid(
        "bootstrap layer has no image/image.boot".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    #[test]
    fn verifying_reader_refuses_wrong_short_and_long_bytes() {
        let good = b"layer bytes".to_vec();
        let d = digest(&good);
        let read = |data: &[u8], size| {
            let mut v = Verifying::new(data, &d, size);
            let mut out = Vec::new();
            v.read_to_end(&mut out).map(|_| out)
        };
        assert_eq!(read(&good, Some(good.len() as u64)).unwrap(), good);
        let e = read(b"layer bytez", Some(11)).unwrap_err().to_string();
        assert!(e.contains("wrong bytes"), "{e}");
        assert!(read(b"layer byte", Some(11)).is_err(), "short");
        assert!(read(b"layer bytes!", Some(11)).is_err(), "long");
    }

    #[test]
    fn compression_is_found_by_magic() {
        let tar = b"plain".to_vec();
        let gz = {
            let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            g.write_all(&tar).unwrap();
            g.finish().unwrap()
        };
        let zs = zstd::encode_all(tar.as_slice(), 1).unwrap();
        for b in [tar.clone(), gz, zs] {
            let mut out = Vec::new();
            decompressed(b.as_slice())
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, tar);
        }
    }
}
