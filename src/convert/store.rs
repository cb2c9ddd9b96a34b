//! Image sources (registry, OCI layout, `docker save` tar) and targets (registry, OCI
//! layout) behind two small traits, plus credential lookup (`--*-creds`, then
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::client::{RegistryClient, UploadStats};
use super::reference::ImageRef;
use super::ConvertError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn io(what: impl std::fmt::Display, e: std::io::Error) -> ConvertError {
    ConvertError::Io(format!("{what}: {e}"))
}

/// `sha256:<hex>` of bytes.
pub fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Where images are read from.
pub trait Source: Send + Sync {
    /// The manifest or index at `reference` (a tag or digest; `None`: the location's own),
    /// with its media type.
    fn manifest(&self, reference: Option<&str>) -> Result<(Vec<u8>, String), ConvertError>;
    /// A blob's bytes as a stream. Callers verify the digest of what they read.
    fn blob(&self, digest: &str) -> Result<Box<dyn Read + Send>, ConvertError>;
    fn describe(&self) -> String;
}

/// Where images are written.
pub trait Target: Send + Sync {
    /// Whether the target already holds `digest` (of `size` bytes).
    fn has_blob(&self, digest: &str, size: u64) -> Result<bool, ConvertError> {
        Ok(self
            .has_blob_size(digest)?
            .is_some_and(|s| s == size || s == 0))
    }
    /// The size of blob `digest` in the target, or `None` when it lacks it.
    fn has_blob_size(&self, digest: &str) -> Result<Option<u64>, ConvertError>;
    /// Upload chunk size and retries (registries only).
    fn set_upload(&mut self, _chunk_size: usize, _retries: u32) {}
    /// Store the file `path` as blob `digest`.
    fn put_blob(
        &self,
        digest: &str,
        path: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<UploadStats, ConvertError>;
    /// Store a manifest or index; under `tag` when given, else only by its digest.
    fn put_manifest(
        &self,
        body: &[u8],
        media_type: &str,
        tag: Option<&str>,
    ) -> Result<(), ConvertError>;
    fn describe(&self) -> String;
}

/// Read exactly one blob fully, checking its digest (small blobs: configs, manifests).
pub fn read_verified(src: &dyn Source, digest: &str, limit: u64) -> Result<Vec<u8>, ConvertError> {
    let mut r = src.blob(digest)?.take(limit + 1);
    let mut v = Vec::new();
    r.read_to_end(&mut v)
        .map_err(|e| io(format!("reading {digest}"), e))?;
    if v.len() as u64 > limit {
        return Err(ConvertError::Invalid(format!(
            "blob {digest} is larger than {limit} bytes"
        )));
    }
    verified("blob", digest, v)
}

/// `bytes` if their digest is `digest`.
fn verified(what: &str, digest: &str, bytes: Vec<u8>) -> Result<Vec<u8>, ConvertError> {
    let got = digest_of(&bytes);
    if got != digest {
        return Err(ConvertError::Digest {
            what: what.into(),
            want: digest.into(),
            got,
        });
    }
    Ok(bytes)
}

/// A manifest by digest: from the registry's manifest endpoint, or a layout's blobs.
pub fn read_verified_manifest(src: &dyn Source, digest: &str) -> Result<Vec<u8>, ConvertError> {
    let (b, _) = src.manifest(Some(digest))?;
    verified("manifest", digest, b)
}

/// Credentials (base64 `user:pass`) for `host`: `creds` (`user:pass`) when given, else the
/// docker config's `auths` entry for the host.
pub fn credentials(host: &str, creds: Option<&str>) -> Result<Option<String>, ConvertError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(c) = creds {
        if !c.contains(':') {
            return Err(ConvertError::Invalid(
                "credentials are user:password".into(),
            ));
        }
        return Ok(Some(b64.encode(c)));
    }
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".docker/config.json"),
            None => return Ok(None),
        },
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ConvertError::Invalid(format!("{}: {e}", path.display())))?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    for (k, e) in auths {
        let key = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .trim_end_matches("/v2");
        let key = if key == "index.docker.io" || key == "docker.io" {
            "registry-1.docker.io"
        } else {
            key
        };
        if key != host {
            continue;
        }
        if let Some(a) = e.get("auth").and_then(|a| a.as_str()) {
            return Ok(Some(a.to_string()));
        }
        if let (Some(u), Some(p)) = (
            e.get("username").and_then(|a| a.as_str()),
            e.get("password").and_then(|a| a.as_str()),
        ) {
            return Ok(Some(b64.encode(format!("{u}:{p}"))));
        }
    }
    if v.get("credsStore").is_some() || v.get("credHelpers").is_some() {
        log::warn!(
            "{}: credential helpers are not supported; pass --*-creds",
            path.display()
        );
    }
    Ok(None)
}

// ---- registry ----

pub struct RegistrySource {
    pub client: RegistryClient,
    reference: String,
}

impl RegistrySource {
    pub fn new(client: RegistryClient, reference: String) -> Self {
        RegistrySource { client, reference }
    }
}

impl Source for RegistrySource {
    fn manifest(&self, reference: Option<&str>) -> Result<(Vec<u8>, String), ConvertError> {
        let r = reference.unwrap_or(&self.reference);
        self.client
            .get_manifest(r)?
            .ok_or_else(|| ConvertError::NotFound(format!("manifest {}:{r}", self.client.name())))
    }
    fn blob(&self, digest: &str) -> Result<Box<dyn Read + Send>, ConvertError> {
        self.client.get_blob(digest)
    }
    fn describe(&self) -> String {
        format!("{}:{}", self.client.name(), self.reference)
    }
}

pub struct RegistryTarget {
    pub client: RegistryClient,
}

impl Target for RegistryTarget {
    fn has_blob_size(&self, digest: &str) -> Result<Option<u64>, ConvertError> {
        self.client.head_blob(digest)
    }
    fn set_upload(&mut self, chunk_size: usize, retries: u32) {
        self.client.chunk_size = chunk_size;
        self.client.retries = retries;
    }
    fn put_blob(
        &self,
        digest: &str,
        path: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<UploadStats, ConvertError> {
        let mut f = File::open(path).map_err(|e| io(path.display(), e))?;
        let size = f.metadata().map_err(|e| io(path.display(), e))?.len();
        self.client.put_blob(digest, size, &mut f, progress)
    }
    fn put_manifest(
        &self,
        body: &[u8],
        media_type: &str,
        tag: Option<&str>,
    ) -> Result<(), ConvertError> {
        let d = digest_of(body);
        self.client
            .put_manifest(tag.unwrap_or(&d), body, media_type)
    }
    fn describe(&self) -> String {
        self.client.name()
    }
}

// ---- OCI image layout ----

pub struct OciDir {
    dir: PathBuf,
    tag: Option<String>,
}

impl OciDir {
    pub fn new(dir: PathBuf, tag: Option<String>) -> Self {
        OciDir { dir, tag }
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, ConvertError> {
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| ConvertError::Invalid(format!("bad digest {digest:?}")))?;
        if alg != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConvertError::Invalid(format!("bad digest {digest:?}")));
        }
        Ok(self.dir.join("blobs").join(alg).join(hex))
    }

    fn index(&self) -> Result<serde_json::Value, ConvertError> {
        let p = self.dir.join("index.json");
        let t = std::fs::read(&p).map_err(|e| io(p.display(), e))?;
        serde_json::from_slice(&t)
            .map_err(|e| ConvertError::Invalid(format!("{}: {e}", p.display())))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), ConvertError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| io(tmp.display(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path.display(), e))
    }

    fn put_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ConvertError> {
        let p = self.blob_path(digest)?;
        std::fs::create_dir_all(p.parent().unwrap()).map_err(|e| io(p.display(), e))?;
        self.write_atomic(&p, bytes)
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Source for OciDir {
    fn manifest(&self, reference: Option<&str>) -> Result<(Vec<u8>, String), ConvertError> {
        if let Some(d) = reference.filter(|r| r.starts_with("sha256:")) {
            let b = read_verified(self, d, 16 << 20)?;
            let mt = serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(String::from)
                })
                .unwrap_or_else(|| OCI_MANIFEST.into());
            return Ok((b, mt));
        }
        let idx = self.index()?;
        let ms = idx
            .get("manifests")
            .and_then(|m| m.as_array())
            .cloned()
            .unwrap_or_default();
        let want = reference.or(self.tag.as_deref());
        let pick: Vec<&serde_json::Value> = ms
            .iter()
            .filter(|m| match want {
                Some(t) => {
                    m.pointer("/annotations/org.opencontainers.image.ref.name")
                        .and_then(|v| v.as_str())
                        == Some(t)
                }
                None => true,
            })
            .collect();
        let d = match pick.as_slice() {
            [one] => one,
            [] => {
                return Err(ConvertError::NotFound(format!(
                    "{}: no manifest{}",
                    Source::describe(self),
                    want.map(|t| format!(" tagged {t:?}")).unwrap_or_default()
                )))
            }
            _ => {
                return Err(ConvertError::Invalid(format!(
                    "{}: {} manifests; name one with oci:DIR:TAG",
                    Source::describe(self),
                    pick.len()
                )))
            }
        };
        let digest = d
            .get("digest")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ConvertError::Invalid("index.json entry without digest".into()))?;
        let mt = d
            .get("mediaType")
            .and_then(|v| v.as_str())
            .unwrap_or(OCI_MANIFEST)
            .to_string();
        Ok((read_verified(self, digest, 16 << 20)?, mt))
    }
    fn blob(&self, digest: &str) -> Result<Box<dyn Read + Send>, ConvertError> {
        let p = self.blob_path(digest)?;
        match File::open(&p) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConvertError::NotFound(
                format!("blob {digest} in {}", self.dir.display()),
            )),
            Err(e) => Err(io(p.display(), e)),
        }
    }
    fn describe(&self) -> String {
        format!("oci:{}", self.dir.display())
    }
}

impl Target for OciDir {
    fn has_blob_size(&self, digest: &str) -> Result<Option<u64>, ConvertError> {
        let p = self.blob_path(digest)?;
        Ok(std::fs::metadata(p).ok().map(|m| m.len()))
    }
    fn put_blob(
        &self,
        digest: &str,
        path: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<UploadStats, ConvertError> {
        let p = self.blob_path(digest)?;
        std::fs::create_dir_all(p.parent().unwrap()).map_err(|e| io(p.display(), e))?;
        let tmp = p.with_extension("tmp");
        let n = std::fs::copy(path, &tmp).map_err(|e| io(tmp.display(), e))?;
        std::fs::rename(&tmp, &p).map_err(|e| io(p.display(), e))?;
        progress(n);
        Ok(UploadStats::default())
    }
    fn put_manifest(
        &self,
        body: &[u8],
        media_type: &str,
        tag: Option<&str>,
    ) -> Result<(), ConvertError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(self.dir.display(), e))?;
        let d = digest_of(body);
        self.put_bytes(&d, body)?;
        self.write_atomic(
            &self.dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let Some(tag) = tag else { return Ok(()) };
        let mut idx = self.index().unwrap_or_else(
            |_| serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
        );
        let ms = idx
            .get_mut("manifests")
            .and_then(|m| m.as_array_mut())
            .ok_or_else(|| ConvertError::Invalid("index.json without manifests".into()))?;
        ms.retain(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(|v| v.as_str())
                != Some(tag)
        });
        ms.push(serde_json::json!({
            "mediaType": media_type,
            "digest": d,
            "size": body.len(),
            "annotations": {REF_NAME: tag},
        }));
        let text = serde_json::to_vec_pretty(&idx).expect("json");
        self.write_atomic(&self.dir.join("index.json"), &text)
    }
    fn describe(&self) -> String {
        format!("oci:{}", self.dir.display())
    }
}

// ---- docker save archive ----

/// A `docker save` tar: its `manifest.json` becomes an OCI manifest whose config and layer
/// digests are those of the archive's files.
pub struct DockerArchive {
    file: PathBuf,
    /// digest → (offset, size) of a member.
    members: HashMap<String, (u64, u64)>,
    manifest: Vec<u8>,
}

impl DockerArchive {
    pub fn open(file: &Path) -> Result<DockerArchive, ConvertError> {
        let f = File::open(file).map_err(|e| io(file.display(), e))?;
        let mut ar = tar::Archive::new(f);
        let mut by_name: HashMap<String, (u64, u64)> = HashMap::new();
        let mut manifest_json = None;
        for e in ar.entries().map_err(|e| io(file.display(), e))? {
            let mut e = e.map_err(|e| io(file.display(), e))?;
            let name = e
                .path()
                .map_err(|e| io(file.display(), e))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            if name == "manifest.json" {
                let mut v = Vec::new();
                e.read_to_end(&mut v).map_err(|e| io(file.display(), e))?;
                manifest_json = Some(v);
            } else if e.header().entry_type().is_file() {
                by_name.insert(name, (e.raw_file_position(), e.size()));
            }
        }
        let mj = manifest_json.ok_or_else(|| {
            ConvertError::Invalid(format!(
                "{}: no manifest.json (not a docker save tar)",
                file.display()
            ))
        })?;
        let v: serde_json::Value = serde_json::from_slice(&mj).map_err(|e| {
            ConvertError::Invalid(format!("{}: manifest.json: {e}", file.display()))
        })?;
        let first = v
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| ConvertError::Invalid("manifest.json is empty".into()))?;
        let mut raw = File::open(file).map_err(|e| io(file.display(), e))?;
        let mut member = |name: &str| -> Result<(String, u64, (u64, u64)), ConvertError> {
            let &(off, size) = by_name.get(name).ok_or_else(|| {
                ConvertError::Invalid(format!("{}: no member {name:?}", file.display()))
            })?;
            raw.seek(SeekFrom::Start(off))
                .map_err(|e| io(file.display(), e))?;
            let mut h = Sha256::new();
            std::io::copy(&mut (&mut raw).take(size), &mut HashWriter(&mut h))
                .map_err(|e| io(file.display(), e))?;
            Ok((
                format!("sha256:{}", hex::encode(h.finalize())),
                size,
                (off, size),
            ))
        };
        let cfg_name = first
            .get("Config")
            .and_then(|c| c.as_str())
            .ok_or_else(|| ConvertError::Invalid("manifest.json without Config".into()))?;
        let mut members = HashMap::new();
        let (cd, cs, cpos) = member(cfg_name)?;
        members.insert(cd.clone(), cpos);
        let mut layers = Vec::new();
        for l in first
            .get("Layers")
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default()
        {
            let name = l.as_str().unwrap_or_default();
            let (d, s, pos) = member(name)?;
            members.insert(d.clone(), pos);
            layers.push(serde_json::json!({"mediaType": OCI_LAYER_TAR, "digest": d, "size": s}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cs},
            "layers": layers,
        }))
        .expect("json");
        Ok(DockerArchive {
            file: file.to_path_buf(),
            members,
            manifest,
        })
    }
}

/// A `Write` that feeds a SHA-256 (to hash a stream with `io::copy`).
pub(crate) struct HashWriter<'a>(pub(crate) &'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Source for DockerArchive {
    fn manifest(&self, _reference: Option<&str>) -> Result<(Vec<u8>, String), ConvertError> {
        Ok((self.manifest.clone(), OCI_MANIFEST.into()))
    }
    fn blob(&self, digest: &str) -> Result<Box<dyn Read + Send>, ConvertError> {
        let &(off, size) = self.members.get(digest).ok_or_else(|| {
            ConvertError::NotFound(format!("blob {digest} in {}", self.file.display()))
        })?;
        let mut f = File::open(&self.file).map_err(|e| io(self.file.display(), e))?;
        f.seek(SeekFrom::Start(off))
            .map_err(|e| io(self.file.display(), e))?;
        Ok(Box::new(f.take(size)))
    }
    fn describe(&self) -> String {
        format!("docker-archive:{}", self.file.display())
    }
}

/// Open `r` as a source.
pub fn open_source(
    r: &ImageRef,
    insecure: bool,
    creds: Option<&str>,
) -> Result<Box<dyn Source>, ConvertError> {
    Ok(match r {
        ImageRef::Registry {
            host,
            repo,
            reference,
        } => Box::new(RegistrySource::new(
            RegistryClient::new(host, repo, insecure, credentials(host, creds)?)?,
            reference.clone(),
        )),
        ImageRef::OciDir { dir, tag } => Box::new(OciDir::new(dir.clone(), tag.clone())),
        ImageRef::DockerArchive { file } => Box::new(DockerArchive::open(file)?),
    })
}

/// Open `r` as a target.
pub fn open_target(
    r: &ImageRef,
    insecure: bool,
    creds: Option<&str>,
) -> Result<Box<dyn Target>, ConvertError> {
    Ok(match r {
        ImageRef::Registry { host, repo, .. } => Box::new(RegistryTarget {
            client: RegistryClient::new(host, repo, insecure, credentials(host, creds)?)?,
        }),
        ImageRef::OciDir { dir, tag } => Box::new(OciDir::new(dir.clone(), tag.clone())),
        ImageRef::DockerArchive { .. } => {
            return Err(ConvertError::Invalid(
                "docker-archive: is a source only".into(),
            ))
        }
    })
}
