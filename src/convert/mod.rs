//! `rafs-image convert`: an OCI image in (registry, OCI layout or `docker save` tar), a
//! Nydus image out (registry or OCI layout), in nydusify's shape (RAFS-FORMAT.md §1.3).
//!
//! Per platform manifest: every layer is streamed (verified against its digest) into a
//! per-layer blob with inlined bootstrap and ToC, `--threads` layers at a time; the layer
//! bootstraps are merged with whiteouts in layer order; the result is pushed blobs first
//! (HEAD-skipped, chunked and resumable), then the config, then the manifest, then the
//! index. A failure before the manifest leaves no manifest pointing at missing blobs.
//!
//! `check` compares an OCI image with its Nydus conversion entry by entry (see
//! [`check`]). Layering: this module sits beside `fs`, over `rafs` (builder, reader) and
//! `storage` (registry auth); nothing below knows it.

pub mod check;
pub mod client;
pub mod layer;
pub mod progress;
pub mod reference;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use oci_spec::image::{
    Arch, Descriptor, DescriptorBuilder, ImageIndex, ImageManifest, MediaType, Os, Platform,
    PlatformBuilder,
};
use sha2::{Digest, Sha256};

use crate::rafs::builder::{merge, BuildOptions};
use crate::rafs::{Compressor, RafsImage, RafsVersion};
use layer::{BuiltLayer, LayerSettings, Verifying};
use progress::Progress;
use reference::ImageRef;
use store::{Source, Target};

pub const NYDUS_BLOB_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
pub const BOOTSTRAP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_BOOTSTRAP_MEDIA_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const ANNO_BLOB: &str = "containerd.io/snapshot/nydus-blob";
pub const ANNO_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
pub const ANNO_FS_VERSION: &str = "containerd.io/snapshot/nydus-fs-version";
pub const NYDUS_ARTIFACT_TYPE: &str = "application/vnd.nydus.image.manifest.v1+json";
pub const NYDUS_OS_FEATURE: &str = "nydus.remoteimage.v1";

/// Largest manifest, index or config read (bytes).
const MAX_JSON: u64 = 16 << 20;
/// Largest bootstrap read from a bootstrap layer.
const MAX_BOOTSTRAP: u64 = 1 << 30;

/// Errors of conversion and checking.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("{0}")]
    Io(String),
    #[error("build: {0}")]
    Build(String),
    #[error("{what} digest mismatch: want {want}, got {got}")]
    Digest {
        what: String,
        want: String,
        got: String,
    },
}

/// `--chunk-dict`.
#[derive(Clone, Debug)]
pub enum ChunkDict {
    /// `bootstrap=PATH`: its blobs must already be in the target repository.
    Bootstrap(PathBuf),
    /// A Nydus image whose bootstrap is the dictionary; its blobs are copied to the target
    /// when missing there.
    Image(ImageRef),
}

/// The two images of a conversion or a check, and how to reach them.
#[derive(Clone, Debug)]
pub struct ImagePair {
    pub source: ImageRef,
    pub target: ImageRef,
    /// Plain http to a registry source / target.
    pub source_insecure: bool,
    pub target_insecure: bool,
    /// `user:pass`.
    pub source_creds: Option<String>,
    pub target_creds: Option<String>,
    /// `os/arch[/variant]` filters; empty = every platform.
    pub platforms: Vec<String>,
}

impl ImagePair {
    pub fn new(source: ImageRef, target: ImageRef) -> Self {
        ImagePair {
            source,
            target,
            source_insecure: false,
            target_insecure: false,
            source_creds: None,
            target_creds: None,
            platforms: Vec::new(),
        }
    }

    pub fn open_source(&self) -> Result<Box<dyn Source>, ConvertError> {
        store::open_source(
            &self.source,
            self.source_insecure,
            self.source_creds.as_deref(),
        )
    }

    /// The target, to read (check).
    pub fn open_target_to_read(&self) -> Result<Box<dyn Source>, ConvertError> {
        store::open_source(
            &self.target,
            self.target_insecure,
            self.target_creds.as_deref(),
        )
    }

    /// The target, to write (convert).
    pub fn open_target(&self) -> Result<Box<dyn Target>, ConvertError> {
        store::open_target(
            &self.target,
            self.target_insecure,
            self.target_creds.as_deref(),
        )
    }
}

/// What `convert` does.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub images: ImagePair,
    pub version: RafsVersion,
    pub compressor: Compressor,
    pub chunk_size: u32,
    pub chunk_dict: Option<ChunkDict>,
    pub merge_platform: bool,
    /// Layers built (and blobs pushed) at a time.
    pub threads: usize,
    /// Where per-layer builds are kept (and reused by a re-run); default a temp dir.
    pub work_dir: Option<PathBuf>,
    /// Bytes per PATCH.
    pub upload_chunk_size: usize,
    /// Retries per request and per upload.
    pub retries: u32,
}

impl ConvertOptions {
    pub fn new(source: ImageRef, target: ImageRef) -> Self {
        ConvertOptions {
            images: ImagePair::new(source, target),
            version: RafsVersion::V6,
            compressor: Compressor::Zstd,
            chunk_size: crate::rafs::layout::DEFAULT_CHUNK_SIZE,
            chunk_dict: None,
            merge_platform: false,
            threads: 4,
            work_dir: None,
            upload_chunk_size: 8 << 20,
            retries: 3,
        }
    }
}

/// One converted layer, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReport {
    pub source_digest: String,
    pub blob_digest: String,
    pub blob_size: u64,
    /// Built in this run (false: reused from the work dir).
    pub built: bool,
}

/// One converted platform manifest.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ManifestReport {
    pub platform: Option<String>,
    pub source_digest: String,
    pub digest: String,
    pub layers: Vec<LayerReport>,
    /// Blobs of the chunk dictionary the image references.
    pub dict_blobs: Vec<String>,
    pub bootstrap_digest: String,
    pub bootstrap_size: u64,
}

/// What `convert` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConvertReport {
    pub source: String,
    pub target: String,
    pub manifests: Vec<ManifestReport>,
    /// The index pushed under the tag, when there is one.
    pub index_digest: Option<String>,
    /// Blobs uploaded, and bytes in them.
    pub blobs_pushed: u64,
    pub bytes_pushed: u64,
    /// Blobs the target already had.
    pub blobs_skipped: u64,
    pub patches: u64,
    pub upload_resumes: u64,
    /// Source layer bytes read.
    pub bytes_read: u64,
    pub seconds: f64,
}

/// `os/arch[/variant]` of a platform.
pub fn platform_string(p: &Platform) -> String {
    let mut s = format!("{}/{}", p.os(), p.architecture());
    if let Some(v) = p.variant() {
        s.push('/');
        s.push_str(v);
    }
    s
}

fn platform_matches(p: &Platform, filters: &[String]) -> bool {
    if filters.is_empty() {
        return true;
    }
    let s = platform_string(p);
    filters.iter().any(|f| {
        f == &s
            || (f.matches('/').count() == 1 && s.starts_with(&format!("{f}/")))
            || (p.variant().is_none() && f.as_str() == s)
    })
}

/// Whether a manifest is a Nydus image (nydusify's rule: the last layer is a gzip tar with
/// `nydus-bootstrap: "true"`).
pub fn is_nydus_manifest(m: &ImageManifest) -> bool {
    m.layers().last().is_some_and(|l| {
        let mt = l.media_type().to_string();
        (mt == BOOTSTRAP_MEDIA_TYPE || mt == DOCKER_BOOTSTRAP_MEDIA_TYPE)
            && l.annotations()
                .as_ref()
                .and_then(|a| a.get(ANNO_BOOTSTRAP))
                .is_some_and(|v| v == "true")
    })
}

fn parse_manifest(b: &[u8]) -> Result<ImageManifest, ConvertError> {
    serde_json::from_slice(b).map_err(|e| ConvertError::Invalid(format!("manifest: {e}")))
}

fn is_index(media_type: &str, body: &[u8]) -> bool {
    if media_type == store::OCI_INDEX || media_type == store::DOCKER_LIST {
        return true;
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some())
}

/// A source's platform manifests: (platform, manifest digest, manifest bytes, media type).
pub type PlatformManifest = (Option<Platform>, String, Vec<u8>, String);

/// The image manifests at a source location, filtered by platform; with `nydus`, only
/// Nydus manifests, else only non-Nydus ones.
pub fn resolve_manifests(
    src: &dyn Source,
    filters: &[String],
    nydus: bool,
) -> Result<(Vec<PlatformManifest>, Option<ImageIndex>), ConvertError> {
    let (body, mt) = src.manifest(None)?;
    let mut out = Vec::new();
    if is_index(&mt, &body) {
        let idx: ImageIndex = serde_json::from_slice(&body)
            .map_err(|e| ConvertError::Invalid(format!("index: {e}")))?;
        for d in idx.manifests() {
            let plat = d.platform().clone();
            if let Some(p) = &plat {
                if p.os().to_string() == "unknown" || !platform_matches(p, filters) {
                    continue; // attestations, other platforms
                }
            } else if !filters.is_empty() {
                continue;
            }
            let digest = d.digest().to_string();
            let b = store::read_verified_manifest(src, &digest)?;
            let m = parse_manifest(&b)?;
            if is_nydus_manifest(&m) != nydus {
                continue;
            }
            out.push((plat, digest, b, d.media_type().to_string()));
        }
        if out.is_empty() {
            return Err(ConvertError::NotFound(format!(
                "{}: no {}manifest for platform {}",
                src.describe(),
                if nydus { "nydus " } else { "" },
                if filters.is_empty() {
                    "any".into()
                } else {
                    filters.join(",")
                }
            )));
        }
        Ok((out, Some(idx)))
    } else {
        let m = parse_manifest(&body)?;
        if is_nydus_manifest(&m) != nydus {
            return Err(ConvertError::Invalid(format!(
                "{} is {}a nydus image",
                src.describe(),
                if nydus { "not " } else { "already " }
            )));
        }
        let cfg = store::read_verified(src, m.config().digest().as_ref(), MAX_JSON)?;
        let plat = config_platform(&cfg);
        if let (Some(p), false) = (&plat, filters.is_empty()) {
            if !platform_matches(p, filters) {
                return Err(ConvertError::NotFound(format!(
                    "{} is {}, not {}",
                    src.describe(),
                    platform_string(p),
                    filters.join(",")
                )));
            }
        }
        Ok((vec![(plat, store::digest_of(&body), body, mt)], None))
    }
}

fn config_platform(cfg: &[u8]) -> Option<Platform> {
    let v: serde_json::Value = serde_json::from_slice(cfg).ok()?;
    let os = v.get("os")?.as_str()?;
    let arch = v.get("architecture")?.as_str()?;
    let mut b = PlatformBuilder::default()
        .os(Os::from(os))
        .architecture(Arch::from(arch));
    if let Some(var) = v.get("variant").and_then(|x| x.as_str()) {
        b = b.variant(var.to_string());
    }
    b.build().ok()
}

/// Run `f` on every item, `threads` at a time; results in item order.
fn par_map<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    f: &(dyn Fn(usize, &T) -> Result<R, ConvertError> + Sync),
) -> Result<Vec<R>, ConvertError> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<R, ConvertError>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let r = f(i, &items[i]);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    let mut first_err = None;
    for r in results.into_inner().unwrap() {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

struct Ctx<'a> {
    o: &'a ConvertOptions,
    src: &'a dyn Source,
    dst: &'a dyn Target,
    work: PathBuf,
    settings: LayerSettings,
    /// Blobs of the dictionary image: digest → size, and where to copy them from.
    dict_blobs: HashMap<String, u64>,
    dict_src: Option<Box<dyn Source>>,
    progress: Progress,
    pushed: AtomicU64,
    bytes_pushed: AtomicU64,
    skipped: AtomicU64,
    patches: AtomicU64,
    resumes: AtomicU32,
    bytes_read: AtomicU64,
}

impl Ctx<'_> {
    /// Push a local file as blob `digest` unless the target has it.
    fn push_file(&self, digest: &str, path: &Path, size: u64) -> Result<(), ConvertError> {
        if self.dst.has_blob(digest, size)? {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            self.progress
                .line(&format!("blob {} exists, skipped", short(digest)));
            return Ok(());
        }
        let bar = self.progress.bar(&format!("push {}", short(digest)), size);
        let st = self.dst.put_blob(digest, path, &|n| bar.set(n))?;
        bar.done(&format!("pushed {} ({size} bytes)", short(digest)));
        self.pushed.fetch_add(1, Ordering::Relaxed);
        self.bytes_pushed.fetch_add(size, Ordering::Relaxed);
        self.patches
            .fetch_add(u64::from(st.patches), Ordering::Relaxed);
        self.resumes.fetch_add(st.resumes, Ordering::Relaxed);
        Ok(())
    }

    /// Copy blob `digest` from `from` to the target unless it has it (streamed to a temp
    /// file and verified on the way).
    fn copy_blob(&self, from: &dyn Source, digest: &str, size: u64) -> Result<(), ConvertError> {
        if self.dst.has_blob(digest, size)? {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let tmp = self.work.join(format!("copy-{}", &digest[7..]));
        {
            let mut r = Verifying::new(from.blob(digest)?, digest, Some(size));
            let mut f = std::fs::File::create(&tmp)
                .map_err(|e| ConvertError::Io(format!("{}: {e}", tmp.display())))?;
            std::io::copy(&mut r, &mut f)
                .map_err(|e| ConvertError::Io(format!("copying {digest}: {e}")))?;
        }
        let r = self.push_file(digest, &tmp, size);
        let _ = std::fs::remove_file(&tmp);
        r
    }

    fn build_layers(&self, layers: &[Descriptor]) -> Result<Vec<Option<BuiltLayer>>, ConvertError> {
        let n = layers.len();
        let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
        let par = self.o.threads.max(1).min(n.max(1));
        let per_build = (cores / par).max(1);
        par_map(self.o.threads, layers, &|i, d| {
            let mt = d.media_type().to_string();
            let digest = d.digest().to_string();
            if mt.contains("foreign") || mt.contains("nondistributable") {
                log::warn!("layer {digest}: foreign layer ({mt}) skipped");
                self.progress.line(&format!(
                    "layer {}/{n} {}: foreign, skipped",
                    i + 1,
                    short(&digest)
                ));
                return Ok(None);
            }
            if let Some(b) = layer::built_before(&self.settings, &digest, &self.work) {
                self.progress.line(&format!(
                    "layer {}/{n} {}: blob {} ({} bytes), reused",
                    i + 1,
                    short(&digest),
                    short(&b.blob_id),
                    b.blob_size
                ));
                return Ok(Some(BuiltLayer { built: false, ..b }));
            }
            let bar = self
                .progress
                .bar(&format!("layer {}/{n} {}", i + 1, short(&digest)), d.size());
            let mut r = Verifying::new(self.src.blob(&digest)?, &digest, Some(d.size()));
            let bar2 = bar.clone();
            r.on_read = Some(Box::new(move |x| bar2.set(x)));
            let built = layer::build_layer(&self.settings, &digest, &mut r, &self.work, per_build)?;
            let read = r.finish()?;
            self.bytes_read.fetch_add(read, Ordering::Relaxed);
            bar.done(&format!(
                "layer {}/{n} {}: blob {} ({} bytes)",
                i + 1,
                short(&digest),
                short(&built.blob_id),
                built.blob_size
            ));
            Ok(Some(built))
        })
    }

    fn convert_manifest(
        &self,
        plat: &Option<Platform>,
        source_digest: &str,
        body: &[u8],
    ) -> Result<(ManifestReport, Vec<u8>), ConvertError> {
        let m = parse_manifest(body)?;
        let cfg_digest = m.config().digest().to_string();
        let cfg = store::read_verified(self.src, &cfg_digest, MAX_JSON)?;
        let built: Vec<BuiltLayer> = self
            .build_layers(m.layers())?
            .into_iter()
            .flatten()
            .collect();
        if built.is_empty() {
            return Err(ConvertError::Invalid(format!(
                "manifest {source_digest} has no layers to convert"
            )));
        }
        // Merge.
        let mdir = self.work.join(format!("m-{}", &source_digest[7..23]));
        std::fs::create_dir_all(&mdir)
            .map_err(|e| ConvertError::Io(format!("{}: {e}", mdir.display())))?;
        let boot = mdir.join("image.boot");
        let mut mo = merge::MergeOptions::new(
            built.iter().map(|b| b.bootstrap_path.clone()).collect(),
            boot.clone(),
        );
        mo.blob_digests = Some(built.iter().map(|b| b.blob_id.clone()).collect());
        mo.blob_sizes = Some(built.iter().map(|b| b.blob_size).collect());
        mo.blob_toc_digests = Some(built.iter().map(|b| b.toc_digest.clone()).collect());
        mo.chunk_dict = self.settings.base.chunk_dict.clone();
        mo.implicit_dirs = built.iter().map(|b| b.implicit_dirs.clone()).collect();
        merge::merge(&mo).map_err(|e| ConvertError::Build(format!("merge: {e}")))?;
        // The blobs the merged bootstrap references, in blob-table order.
        let img =
            RafsImage::open(&boot).map_err(|e| ConvertError::Build(format!("merged: {e}")))?;
        let ours: HashMap<&str, &BuiltLayer> =
            built.iter().map(|b| (b.blob_id.as_str(), b)).collect();
        let mut layers = Vec::new();
        let mut reports = Vec::new();
        let mut dict_used = Vec::new();
        let mut pushes: Vec<(String, PathBuf, u64)> = Vec::new();
        for bi in img.blobs() {
            let id = bi.blob_id.clone();
            let digest = format!("sha256:{id}");
            let size = if let Some(b) = ours.get(id.as_str()) {
                pushes.push((digest.clone(), b.blob_path.clone(), b.blob_size));
                reports.push(LayerReport {
                    source_digest: b.source_digest.clone(),
                    blob_digest: digest.clone(),
                    blob_size: b.blob_size,
                    built: b.built,
                });
                b.blob_size
            } else {
                dict_used.push(digest.clone());
                self.dict_blob(&digest)?
            };
            layers.push(
                DescriptorBuilder::default()
                    .media_type(MediaType::from(NYDUS_BLOB_MEDIA_TYPE))
                    .digest(parse_digest(&digest)?)
                    .size(size)
                    .annotations(HashMap::from([(ANNO_BLOB.to_string(), "true".to_string())]))
                    .build()
                    .map_err(|e| ConvertError::Invalid(e.to_string()))?,
            );
        }
        // Bootstrap layer.
        let blayer = mdir.join("bootstrap.tar.gz");
        let (bdigest, bsize, bdiff) = layer::write_bootstrap_layer(&boot, &blayer)?;
        let fs_version = match self.o.version {
            RafsVersion::V5 => "5",
            RafsVersion::V6 => "6",
        };
        layers.push(
            DescriptorBuilder::default()
                .media_type(MediaType::from(BOOTSTRAP_MEDIA_TYPE))
                .digest(parse_digest(&bdigest)?)
                .size(bsize)
                .annotations(HashMap::from([
                    (ANNO_BOOTSTRAP.to_string(), "true".to_string()),
                    (ANNO_FS_VERSION.to_string(), fs_version.to_string()),
                ]))
                .build()
                .map_err(|e| ConvertError::Invalid(e.to_string()))?,
        );
        // Config: the source's, with diff ids = blob digests, then the bootstrap tar's.
        let mut cv: serde_json::Value = serde_json::from_slice(&cfg)
            .map_err(|e| ConvertError::Invalid(format!("config {cfg_digest}: {e}")))?;
        let mut diff_ids: Vec<serde_json::Value> = layers[..layers.len() - 1]
            .iter()
            .map(|d| d.digest().to_string().into())
            .collect();
        diff_ids.push(bdiff.into());
        cv["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
        if let Some(h) = cv.get_mut("history").and_then(|h| h.as_array_mut()) {
            h.push(serde_json::json!({
                "created_by": "rafs-image convert (nydus bootstrap layer)",
                "comment": "nydus bootstrap"
            }));
        }
        let cbytes = serde_json::to_vec(&cv).expect("json");
        let cdigest = store::digest_of(&cbytes);
        let cpath = mdir.join("config.json");
        std::fs::write(&cpath, &cbytes)
            .map_err(|e| ConvertError::Io(format!("{}: {e}", cpath.display())))?;
        pushes.push((bdigest.clone(), blayer.clone(), bsize));
        pushes.push((cdigest.clone(), cpath, cbytes.len() as u64));
        // Blobs first (small ones first, so an interrupted push keeps the most blobs),
        // manifest last.
        pushes.sort_by_key(|(_, _, s)| *s);
        par_map(self.o.threads, &pushes, &|_, (d, p, s)| {
            self.push_file(d, p, *s)
        })?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": store::OCI_MANIFEST,
            "config": {"mediaType": store::OCI_CONFIG, "digest": cdigest, "size": cbytes.len()},
            "layers": layers,
        });
        let mbytes = serde_json::to_vec(&manifest).expect("json");
        let report = ManifestReport {
            platform: plat.as_ref().map(platform_string),
            source_digest: source_digest.to_string(),
            digest: store::digest_of(&mbytes),
            layers: reports,
            dict_blobs: dict_used,
            bootstrap_digest: bdigest,
            bootstrap_size: bsize,
        };
        Ok((report, mbytes))
    }

    /// Make sure a dictionary blob is in the target; its size.
    fn dict_blob(&self, digest: &str) -> Result<u64, ConvertError> {
        if let Some(&size) = self.dict_blobs.get(digest) {
            if let Some(src) = &self.dict_src {
                self.copy_blob(src.as_ref(), digest, size)?;
            }
            return Ok(size);
        }
        // bootstrap=PATH: the blob must already be in the target.
        match self.dst.has_blob_size(digest)? {
            Some(s) => Ok(s),
            None => Err(ConvertError::NotFound(format!(
                "chunk dictionary blob {digest} is not in {}; push it there, or give the \
                 dictionary as an image (--chunk-dict REF)",
                self.dst.describe()
            ))),
        }
    }
}

/// A private directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir, ConvertError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&p).map_err(|e| ConvertError::Io(format!("{}: {e}", p.display())))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn short(d: &str) -> String {
    let h = d.strip_prefix("sha256:").unwrap_or(d);
    h[..h.len().min(12)].to_string()
}

fn parse_digest(d: &str) -> Result<oci_spec::image::Digest, ConvertError> {
    d.parse()
        .map_err(|e| ConvertError::Invalid(format!("digest {d:?}: {e}")))
}

/// Fetch the bootstrap of a Nydus manifest into `path`.
pub fn fetch_bootstrap(
    src: &dyn Source,
    m: &ImageManifest,
    path: &Path,
) -> Result<(), ConvertError> {
    let l = m
        .layers()
        .last()
        .ok_or_else(|| ConvertError::Invalid("manifest without layers".into()))?;
    let d = l.digest().to_string();
    let mut r = Verifying::new(src.blob(&d)?, &d, Some(l.size()));
    let boot = layer::extract_bootstrap(&mut r, MAX_BOOTSTRAP)?;
    r.finish()?;
    std::fs::write(path, boot).map_err(|e| ConvertError::Io(format!("{}: {e}", path.display())))
}

/// Convert `o.images.source` to `o.images.target`.
pub fn convert(o: &ConvertOptions) -> Result<ConvertReport, ConvertError> {
    let t0 = Instant::now();
    let im = &o.images;
    let src = im.open_source()?;
    let mut dst = im.open_target()?;
    dst.set_upload(o.upload_chunk_size, o.retries);
    let _tmp;
    let work = match &o.work_dir {
        Some(w) => w.clone(),
        None => {
            _tmp = TempDir::new("rafs-convert")?;
            _tmp.0.clone()
        }
    };
    std::fs::create_dir_all(&work)
        .map_err(|e| ConvertError::Io(format!("{}: {e}", work.display())))?;
    let progress = Progress::new();

    // Chunk dictionary.
    let mut dict_blobs = HashMap::new();
    let mut dict_src = None;
    let dict_path = match &o.chunk_dict {
        None => None,
        Some(ChunkDict::Bootstrap(p)) => Some(p.clone()),
        Some(ChunkDict::Image(r)) => {
            let ds = store::open_source(r, im.source_insecure || im.target_insecure, None)?;
            let (ms, _) = resolve_manifests(ds.as_ref(), &im.platforms, true)?;
            let m = parse_manifest(&ms[0].2)?;
            for l in &m.layers()[..m.layers().len() - 1] {
                dict_blobs.insert(l.digest().to_string(), l.size());
            }
            let p = work.join("chunk-dict.boot");
            fetch_bootstrap(ds.as_ref(), &m, &p)?;
            dict_src = Some(ds);
            Some(p)
        }
    };
    let dict_key = match &dict_path {
        Some(p) => hex::encode(Sha256::digest(
            std::fs::read(p).map_err(|e| ConvertError::Io(format!("{}: {e}", p.display())))?,
        )),
        None => "-".into(),
    };
    let mut base = BuildOptions::new("-");
    base.version = o.version;
    base.compressor = o.compressor;
    base.chunk_size = o.chunk_size;
    base.chunk_dict = dict_path;
    let settings = LayerSettings {
        key: format!(
            "v{:?}|{}|{}|{dict_key}",
            o.version,
            o.compressor.name(),
            o.chunk_size
        ),
        base,
    };
    let ctx = Ctx {
        o,
        src: src.as_ref(),
        dst: dst.as_ref(),
        work: work.clone(),
        settings,
        dict_blobs,
        dict_src,
        progress,
        pushed: AtomicU64::new(0),
        bytes_pushed: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        patches: AtomicU64::new(0),
        resumes: AtomicU32::new(0),
        bytes_read: AtomicU64::new(0),
    };

    let (manifests, index) = resolve_manifests(src.as_ref(), &im.platforms, false)?;
    let mut report = ConvertReport {
        source: im.source.to_string(),
        target: im.target.to_string(),
        ..Default::default()
    };
    let tag = im.target.tag().map(str::to_string);
    let as_index = index.is_some() || o.merge_platform;
    let mut entries: Vec<Descriptor> = Vec::new();
    for (plat, sdigest, body, smt) in &manifests {
        let (r, mbytes) = ctx.convert_manifest(plat, sdigest, body)?;
        if as_index {
            dst.put_manifest(&mbytes, store::OCI_MANIFEST, None)?;
            if o.merge_platform {
                // The OCI manifest stays beside the nydus one: copy it and its blobs.
                let m = parse_manifest(body)?;
                ctx.copy_blob(
                    src.as_ref(),
                    m.config().digest().as_ref(),
                    m.config().size(),
                )?;
                for l in m.layers() {
                    ctx.copy_blob(src.as_ref(), l.digest().as_ref(), l.size())?;
                }
                dst.put_manifest(body, smt, None)?;
                let mut d = Descriptor::new(
                    MediaType::from(smt.as_str()),
                    body.len() as u64,
                    parse_digest(sdigest)?,
                );
                d.set_platform(plat.clone());
                entries.push(d);
            }
            let mut d = Descriptor::new(
                MediaType::ImageManifest,
                mbytes.len() as u64,
                parse_digest(&r.digest)?,
            );
            if let Some(mut p) = plat.clone() {
                if o.merge_platform {
                    let mut f = p.os_features().clone().unwrap_or_default();
                    f.push(NYDUS_OS_FEATURE.to_string());
                    p.set_os_features(Some(f));
                }
                d.set_platform(Some(p));
            }
            if o.merge_platform {
                d.set_artifact_type(Some(MediaType::from(NYDUS_ARTIFACT_TYPE)));
            }
            entries.push(d);
        } else {
            dst.put_manifest(&mbytes, store::OCI_MANIFEST, tag.as_deref())?;
        }
        ctx.progress.line(&format!(
            "manifest {}{} pushed",
            short(&r.digest),
            r.platform
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        ));
        report.manifests.push(r);
    }
    if as_index {
        let mut manifests = serde_json::to_value(&entries).expect("json");
        // oci-spec 0.8 names these fields os_version / os_features; the image spec says
        // os.version / os.features.
        for m in manifests.as_array_mut().into_iter().flatten() {
            if let Some(p) = m.get_mut("platform").and_then(|p| p.as_object_mut()) {
                for (from, to) in [("os_version", "os.version"), ("os_features", "os.features")] {
                    if let Some(v) = p.remove(from) {
                        p.insert(to.to_string(), v);
                    }
                }
            }
        }
        let mut idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": store::OCI_INDEX,
            "manifests": manifests,
        });
        if let Some(a) = index.as_ref().and_then(|i| i.annotations().clone()) {
            idx["annotations"] = serde_json::to_value(a).expect("json");
        }
        let ib = serde_json::to_vec(&idx).expect("json");
        dst.put_manifest(&ib, store::OCI_INDEX, tag.as_deref())?;
        report.index_digest = Some(store::digest_of(&ib));
    }
    report.blobs_pushed = ctx.pushed.load(Ordering::Relaxed);
    report.bytes_pushed = ctx.bytes_pushed.load(Ordering::Relaxed);
    report.blobs_skipped = ctx.skipped.load(Ordering::Relaxed);
    report.patches = ctx.patches.load(Ordering::Relaxed);
    report.upload_resumes = u64::from(ctx.resumes.load(Ordering::Relaxed));
    report.bytes_read = ctx.bytes_read.load(Ordering::Relaxed);
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}
