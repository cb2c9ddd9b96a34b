//! nydusd-compatible RAFS configuration: v1 JSON (what nydus-snapshotter emits, see
//! KATA-CONTRACT.md §4), v2 JSON and v2 TOML.
//!
//! All three forms are parsed into one [`RafsConfig`]. Unknown fields are ignored with a
//! warning (logged, and kept in [`RafsConfig::unknown_fields`]); a field with a wrong type or
//! an invalid value is an error whose message names the field by its path in the input,
//! e.g. `device.backend.config.timeout: expected an unsigned integer`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::storage::registry::{MirrorOptions, ProxyOptions, RegistryOptions};

/// Default size user reads are amplified to (`amplify_io` / v2 `rafs.batch_size`).
pub const DEFAULT_AMPLIFY_IO: u64 = 1 << 20;
/// Largest accepted `amplify_io` / `merging_size` (nydusd's limit).
pub const MAX_BATCH_SIZE: u64 = 0x1000_0000;

/// Errors from loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is neither valid JSON nor valid TOML.
    #[error("config: {0}")]
    Syntax(String),
    /// A field has a wrong type or an invalid value.
    #[error("config field {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Where blobs come from.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum BackendConfig {
    /// A local directory of blobs named by id (or one blob file).
    LocalFs(LocalFsConfig),
    /// An OCI distribution registry.
    Registry(RegistryConfig),
}

impl BackendConfig {
    /// Backend type name as in the config ("localfs", "registry").
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::LocalFs(_) => "localfs",
            BackendConfig::Registry(_) => "registry",
        }
    }
}

/// `localfs` backend settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalFsConfig {
    /// Directory holding blobs named by blob id.
    pub dir: Option<PathBuf>,
    /// Further directories searched, in order, after `dir`.
    pub alt_dirs: Vec<PathBuf>,
    /// One blob file, used for every blob id not found in the directories.
    pub blob_file: Option<PathBuf>,
}

/// Dragonfly proxy settings of the registry backend.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyConfig {
    pub url: String,
    pub ping_url: String,
    pub fallback: bool,
    /// Seconds between health checks (0: backend default).
    pub check_interval: u64,
    pub use_http: bool,
    /// Our extension: send `X-Dragonfly-Prefetch: true` so that dfdaemon fetches the whole
    /// blob peer to peer (see docs/p2p.md).
    pub prefetch: bool,
}

/// One registry mirror.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MirrorConfig {
    pub host: String,
    pub headers: Vec<(String, String)>,
    /// Seconds between health checks (0: backend default).
    pub health_check_interval: u64,
    pub failure_limit: u32,
    pub ping_url: String,
}

/// `registry` backend settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RegistryConfig {
    pub scheme: String,
    pub host: String,
    pub repo: String,
    /// base64 `user:password`.
    pub auth: Option<String>,
    pub registry_token: Option<String>,
    pub skip_verify: bool,
    /// Request timeout in seconds.
    pub timeout: u64,
    /// Connect timeout in seconds.
    pub connect_timeout: u64,
    pub retry_limit: u32,
    pub proxy: ProxyConfig,
    pub mirrors: Vec<MirrorConfig>,
    pub blob_url_scheme: String,
    pub blob_redirected_host: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            scheme: "https".into(),
            host: String::new(),
            repo: String::new(),
            auth: None,
            registry_token: None,
            skip_verify: false,
            timeout: 5,
            connect_timeout: 5,
            retry_limit: 2,
            proxy: ProxyConfig::default(),
            mirrors: Vec::new(),
            blob_url_scheme: String::new(),
            blob_redirected_host: String::new(),
        }
    }
}

impl RegistryConfig {
    /// Options for [`crate::storage::registry::RegistryBackend::new`]. When the config carries
    /// no credentials, `IMAGE_PULL_AUTH` from the environment is used (as nydusd does).
    pub fn to_options(&self) -> RegistryOptions {
        let auth = self.auth.clone().filter(|a| !a.is_empty()).or_else(|| {
            std::env::var("IMAGE_PULL_AUTH")
                .ok()
                .filter(|a| !a.is_empty())
        });
        RegistryOptions {
            scheme: self.scheme.clone(),
            host: self.host.clone(),
            repo: self.repo.clone(),
            auth,
            registry_token: self.registry_token.clone().filter(|t| !t.is_empty()),
            skip_verify: self.skip_verify,
            timeout: Duration::from_secs(self.timeout.max(1)),
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
            retry_limit: self.retry_limit,
            proxy: (!self.proxy.url.is_empty()).then(|| ProxyOptions {
                url: self.proxy.url.clone(),
                ping_url: self.proxy.ping_url.clone(),
                fallback: self.proxy.fallback,
                check_interval: Duration::from_secs(self.proxy.check_interval),
                use_http: self.proxy.use_http,
                prefetch: self.proxy.prefetch,
            }),
            mirrors: self
                .mirrors
                .iter()
                .map(|m| MirrorOptions {
                    host: m.host.clone(),
                    headers: m.headers.iter().cloned().collect(),
                    health_check_interval: Duration::from_secs(m.health_check_interval),
                    failure_limit: m.failure_limit,
                    ping_url: m.ping_url.clone(),
                })
                .collect(),
        }
    }
}

/// Cache type (`cache.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheType {
    /// No local cache: every read goes to the backend (`""`, `dummycache`).
    None,
    /// The shared host chunk cache in `work_dir` (`blobcache`, `filecache`).
    BlobCache,
}

/// Cache settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub kind: CacheType,
    /// Cache directory; also where `<blob_id>.blob.meta` files are looked up.
    pub work_dir: Option<PathBuf>,
    /// nydusd: cache compressed data. Our shared cache then keeps each chunk as its blob
    /// stores it, and decompresses it on reads that miss the in-memory LRU.
    pub compressed: bool,
    /// Verify chunks read back from the cache by digest too (crc32c is always checked).
    pub validate: bool,
    /// Size bound of the shared chunk cache in bytes (0 = unbounded). Our extension:
    /// `cache.config.size_limit` (v1) / `cache.filecache.size_limit` (v2).
    pub size_limit: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            kind: CacheType::None,
            work_dir: None,
            compressed: false,
            validate: false,
            size_limit: 0,
        }
    }
}

/// Metadata mode (`mode`). Both behave the same here: metadata is always read from the mmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RafsMode {
    Direct,
    Cached,
}

/// Prefetch settings (`fs_prefetch` / v2 `rafs.prefetch`).
#[derive(Clone, Debug, PartialEq)]
pub struct PrefetchConfig {
    pub enable: bool,
    pub prefetch_all: bool,
    pub threads_count: u32,
    pub merging_size: u64,
    /// Bytes per second; 0 = unlimited.
    pub bandwidth_rate: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            enable: false,
            prefetch_all: false,
            threads_count: 4,
            merging_size: 1 << 20,
            bandwidth_rate: 0,
        }
    }
}

/// A RAFS instance's configuration, from any of the accepted forms.
#[derive(Clone, Debug, PartialEq)]
pub struct RafsConfig {
    pub backend: BackendConfig,
    pub cache: CacheConfig,
    pub mode: RafsMode,
    /// Verify every chunk's digest before serving it.
    pub digest_validate: bool,
    /// Serve extended attributes (otherwise getxattr/listxattr see none).
    pub enable_xattr: bool,
    pub iostats_files: bool,
    pub fs_prefetch: PrefetchConfig,
    /// Reads are amplified to this many bytes (0 disables amplification).
    pub amplify_io: u64,
    /// Dotted paths of the fields that were ignored because they are unknown.
    pub unknown_fields: Vec<String>,
}

impl RafsConfig {
    /// A config with a localfs backend over `dir` and no cache; handy for tools and tests.
    pub fn localfs(dir: impl Into<PathBuf>) -> RafsConfig {
        RafsConfig {
            backend: BackendConfig::LocalFs(LocalFsConfig {
                dir: Some(dir.into()),
                ..Default::default()
            }),
            cache: CacheConfig::default(),
            mode: RafsMode::Direct,
            digest_validate: false,
            enable_xattr: true,
            iostats_files: false,
            fs_prefetch: PrefetchConfig::default(),
            amplify_io: DEFAULT_AMPLIFY_IO,
            unknown_fields: Vec::new(),
        }
    }

    /// Rewrites every host path of the config (localfs `dir`, `alt_dirs` and `blob_file`,
    /// the cache `work_dir`) with `f`, e.g. into a chrooted daemon's view.
    pub fn map_paths<E>(
        &mut self,
        mut f: impl FnMut(&Path) -> Result<PathBuf, E>,
    ) -> Result<(), E> {
        if let BackendConfig::LocalFs(l) = &mut self.backend {
            for p in l
                .dir
                .iter_mut()
                .chain(&mut l.alt_dirs)
                .chain(&mut l.blob_file)
            {
                *p = f(p)?;
            }
        }
        if let Some(w) = &mut self.cache.work_dir {
            *w = f(w)?;
        }
        Ok(())
    }

    /// Parse v2 JSON, v1 JSON or v2 TOML (detected from the text).
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(s: &str) -> Result<RafsConfig, ConfigError> {
        let trimmed = s.trim_start();
        let root: Value = if trimmed.starts_with('{') {
            serde_json::from_str(s)
                .map_err(|e| ConfigError::Syntax(format!("invalid JSON: {e}")))?
        } else {
            let t: toml::Value = toml::from_str(s).map_err(|e| {
                ConfigError::Syntax(format!("neither JSON nor valid TOML: {}", e.message()))
            })?;
            serde_json::to_value(t).map_err(|e| ConfigError::Syntax(e.to_string()))?
        };
        let Value::Object(map) = root else {
            return Err(ConfigError::Syntax("top level is not an object".into()));
        };
        let mut p = Parser::default();
        let cfg = match map.get("version") {
            Some(v) => {
                let ver = v.as_u64().ok_or_else(|| invalid("version", "must be 2"))?;
                if ver != 2 {
                    return Err(invalid("version", format!("unsupported version {ver}")));
                }
                p.v2(&map)?
            }
            None => p.v1(&map)?,
        };
        Ok(cfg)
    }

    /// Read and parse a config file.
    pub fn from_file(path: &Path) -> Result<RafsConfig, ConfigError> {
        let s = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str(&s)
    }
}

/// Walks a JSON tree, collecting unknown field names.
#[derive(Default)]
struct Parser {
    unknown: Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// One JSON object plus its dotted path.
struct Obj<'a> {
    path: String,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Obj<'a> {
    fn root(map: &'a Map<String, Value>) -> Self {
        Obj {
            path: String::new(),
            map: Some(map),
        }
    }

    fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of `key`; JSON `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    /// First present key of `keys` (aliases).
    fn get_any(&self, keys: &[&str]) -> Option<(String, &'a Value)> {
        keys.iter()
            .find_map(|k| self.get(k).map(|v| (self.field(k), v)))
    }

    fn obj(&self, key: &str) -> Result<Obj<'a>, ConfigError> {
        match self.get(key) {
            None => Ok(Obj {
                path: self.field(key),
                map: None,
            }),
            Some(Value::Object(m)) => Ok(Obj {
                path: self.field(key),
                map: Some(m),
            }),
            Some(_) => Err(invalid(&self.field(key), "expected an object")),
        }
    }

    fn string(&self, keys: &[&str]) -> Result<Option<String>, ConfigError> {
        match self.get_any(keys) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((f, _)) => Err(invalid(&f, "expected a string")),
        }
    }

    fn boolean(&self, keys: &[&str], default: bool) -> Result<bool, ConfigError> {
        match self.get_any(keys) {
            None => Ok(default),
            Some((_, Value::Bool(b))) => Ok(*b),
            Some((f, _)) => Err(invalid(&f, "expected true or false")),
        }
    }

    fn uint(&self, keys: &[&str], default: u64) -> Result<u64, ConfigError> {
        match self.get_any(keys) {
            None => Ok(default),
            Some((f, v)) => v
                .as_u64()
                .ok_or_else(|| invalid(&f, format!("expected an unsigned integer, got {v}"))),
        }
    }

    fn uint_max(&self, keys: &[&str], default: u64, max: u64) -> Result<u64, ConfigError> {
        let v = self.uint(keys, default)?;
        if v > max {
            let f = self.get_any(keys).map(|(f, _)| f).unwrap_or_default();
            return Err(invalid(&f, format!("{v} is larger than {max}")));
        }
        Ok(v)
    }

    fn paths(&self, key: &str) -> Result<Vec<PathBuf>, ConfigError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(PathBuf::from(s)),
                    _ => Err(invalid(
                        &format!("{}[{i}]", self.field(key)),
                        "expected a string",
                    )),
                })
                .collect(),
            Some(_) => Err(invalid(&self.field(key), "expected an array of strings")),
        }
    }

    /// Record every key not in `known` as unknown.
    fn check(&self, known: &[&str], p: &mut Parser) {
        if let Some(m) = self.map {
            for k in m.keys() {
                if !known.contains(&k.as_str()) {
                    let f = self.field(k);
                    log::warn!("config: ignoring unknown field {f}");
                    p.unknown.push(f);
                }
            }
        }
    }
}

impl Parser {
    /// nydusd v1 ("RafsConfig") JSON.
    fn v1(&mut self, map: &Map<String, Value>) -> Result<RafsConfig, ConfigError> {
        let root = Obj::root(map);
        root.check(
            &[
                "device",
                "mode",
                "digest_validate",
                "iostats_files",
                "enable_xattr",
                "fs_prefetch",
                "amplify_io",
                "access_pattern",
                "latest_read_files",
            ],
            self,
        );
        let device = root.obj("device")?;
        device.check(&["backend", "cache", "id"], self);
        let backend = device.obj("backend")?;
        backend.check(&["type", "config"], self);
        let kind = backend.string(&["type"])?.unwrap_or_default();
        let bcfg = backend.obj("config")?;
        let backend = self.backend(&kind, &backend.field("type"), &bcfg)?;

        let cache = device.obj("cache")?;
        cache.check(&["type", "compressed", "config", "validate"], self);
        let ccfg = cache.obj("config")?;
        ccfg.check(&["work_dir", "disable_indexed_map", "size_limit"], self);
        let cache = CacheConfig {
            kind: cache_type(&cache)?,
            work_dir: ccfg.string(&["work_dir"])?.map(PathBuf::from),
            compressed: cache.boolean(&["compressed"], false)?,
            validate: cache.boolean(&["validate"], false)?,
            size_limit: ccfg.uint(&["size_limit"], 0)?,
        };
        let prefetch = root.obj("fs_prefetch")?;
        Ok(RafsConfig {
            backend,
            cache,
            mode: mode(&root, "mode")?,
            digest_validate: root.boolean(&["digest_validate"], false)?,
            enable_xattr: root.boolean(&["enable_xattr"], false)?,
            iostats_files: root.boolean(&["iostats_files"], false)?,
            fs_prefetch: self.prefetch(&prefetch)?,
            amplify_io: root.uint_max(&["amplify_io"], DEFAULT_AMPLIFY_IO, MAX_BATCH_SIZE)?,
            unknown_fields: std::mem::take(&mut self.unknown),
        })
    }

    /// nydusd v2 JSON/TOML.
    fn v2(&mut self, map: &Map<String, Value>) -> Result<RafsConfig, ConfigError> {
        let root = Obj::root(map);
        root.check(
            &[
                "version",
                "id",
                "backend",
                "cache",
                "rafs",
                "overlay",
                "metadata_path",
                "internal",
            ],
            self,
        );
        let backend = root.obj("backend")?;
        backend.check(
            &[
                "type",
                "localfs",
                "registry",
                "localdisk",
                "oss",
                "s3",
                "http-proxy",
                "http_proxy",
            ],
            self,
        );
        let kind = backend.string(&["type"])?.unwrap_or_default();
        let bcfg = backend.obj(&kind)?;
        let backend = self.backend(&kind, &backend.field("type"), &bcfg)?;

        let cache = root.obj("cache")?;
        cache.check(
            &[
                "type",
                "compressed",
                "validate",
                "filecache",
                "fscache",
                "prefetch",
                "enable_encryption",
                "enable_convergent_encryption",
                "encryption_key",
            ],
            self,
        );
        let fc = cache.obj("filecache")?;
        fc.check(&["work_dir", "disable_indexed_map", "size_limit"], self);
        let cache_prefetch = cache.obj("prefetch")?;
        // Validated for its own errors; the rafs.prefetch section drives prefetch.
        let cache_prefetch = self.prefetch(&cache_prefetch)?;
        let cache_cfg = CacheConfig {
            kind: cache_type(&cache)?,
            work_dir: fc.string(&["work_dir"])?.map(PathBuf::from),
            compressed: cache.boolean(&["compressed"], false)?,
            validate: cache.boolean(&["validate"], false)?,
            size_limit: fc.uint(&["size_limit"], 0)?,
        };
        let rafs = root.obj("rafs")?;
        rafs.check(
            &[
                "mode",
                "batch_size",
                "user_io_batch_size",
                "validate",
                "enable_xattr",
                "iostats_files",
                "access_pattern",
                "latest_read_files",
                "prefetch",
            ],
            self,
        );
        let rp = rafs.obj("prefetch")?;
        let fs_prefetch = if rp.map.is_some() {
            self.prefetch(&rp)?
        } else {
            cache_prefetch
        };
        Ok(RafsConfig {
            backend,
            cache: cache_cfg,
            mode: mode(&rafs, "mode")?,
            digest_validate: rafs.boolean(&["validate"], false)?,
            enable_xattr: rafs.boolean(&["enable_xattr"], false)?,
            iostats_files: rafs.boolean(&["iostats_files"], false)?,
            fs_prefetch,
            amplify_io: rafs.uint_max(
                &["user_io_batch_size", "batch_size"],
                DEFAULT_AMPLIFY_IO,
                MAX_BATCH_SIZE,
            )?,
            unknown_fields: std::mem::take(&mut self.unknown),
        })
    }

    fn backend(
        &mut self,
        kind: &str,
        type_field: &str,
        c: &Obj<'_>,
    ) -> Result<BackendConfig, ConfigError> {
        match kind {
            "localfs" => {
                c.check(
                    &["dir", "alt_dirs", "blob_file", "readahead", "readahead_sec"],
                    self,
                );
                let cfg = LocalFsConfig {
                    dir: c
                        .string(&["dir"])?
                        .filter(|d| !d.is_empty())
                        .map(PathBuf::from),
                    alt_dirs: c.paths("alt_dirs")?,
                    blob_file: c
                        .string(&["blob_file"])?
                        .filter(|d| !d.is_empty())
                        .map(PathBuf::from),
                };
                c.boolean(&["readahead"], false)?;
                c.uint(&["readahead_sec"], 0)?;
                if cfg.dir.is_none() && cfg.blob_file.is_none() {
                    return Err(invalid(&c.field("dir"), "localfs needs dir or blob_file"));
                }
                Ok(BackendConfig::LocalFs(cfg))
            }
            "registry" => {
                c.check(
                    &[
                        "readahead",
                        "readahead_sec",
                        "host",
                        "repo",
                        "auth",
                        "registry_token",
                        "scheme",
                        "skip_verify",
                        "timeout",
                        "connect_timeout",
                        "retry_limit",
                        "proxy",
                        "mirrors",
                        "blob_url_scheme",
                        "blob_redirected_host",
                    ],
                    self,
                );
                c.boolean(&["readahead"], false)?;
                c.uint(&["readahead_sec"], 0)?;
                let d = RegistryConfig::default();
                let scheme = c.string(&["scheme"])?.filter(|s| !s.is_empty());
                let scheme = scheme.unwrap_or(d.scheme.clone());
                if scheme != "http" && scheme != "https" {
                    return Err(invalid(
                        &c.field("scheme"),
                        format!("{scheme:?} is not http or https"),
                    ));
                }
                let blob_url_scheme = c.string(&["blob_url_scheme"])?.unwrap_or_default();
                if !blob_url_scheme.is_empty()
                    && blob_url_scheme != "http"
                    && blob_url_scheme != "https"
                {
                    return Err(invalid(
                        &c.field("blob_url_scheme"),
                        format!("{blob_url_scheme:?} is not http or https"),
                    ));
                }
                let proxy = c.obj("proxy")?;
                proxy.check(
                    &[
                        "url",
                        "ping_url",
                        "fallback",
                        "check_interval",
                        "use_http",
                        "prefetch",
                    ],
                    self,
                );
                let mirrors = self.mirrors(c)?;
                Ok(BackendConfig::Registry(RegistryConfig {
                    scheme,
                    host: c.string(&["host"])?.unwrap_or_default(),
                    repo: c.string(&["repo"])?.unwrap_or_default(),
                    auth: c.string(&["auth"])?.filter(|s| !s.is_empty()),
                    registry_token: c.string(&["registry_token"])?.filter(|s| !s.is_empty()),
                    skip_verify: c.boolean(&["skip_verify"], false)?,
                    timeout: c.uint_max(&["timeout"], d.timeout, 3600)?,
                    connect_timeout: c.uint_max(&["connect_timeout"], d.connect_timeout, 3600)?,
                    retry_limit: c.uint_max(&["retry_limit"], d.retry_limit as u64, 100)? as u32,
                    proxy: ProxyConfig {
                        url: proxy.string(&["url"])?.unwrap_or_default(),
                        ping_url: proxy.string(&["ping_url"])?.unwrap_or_default(),
                        fallback: proxy.boolean(&["fallback"], false)?,
                        check_interval: proxy.uint_max(&["check_interval"], 0, 86400)?,
                        use_http: proxy.boolean(&["use_http"], false)?,
                        prefetch: proxy.boolean(&["prefetch"], false)?,
                    },
                    mirrors,
                    blob_url_scheme,
                    blob_redirected_host: c.string(&["blob_redirected_host"])?.unwrap_or_default(),
                }))
            }
            "" => Err(invalid(type_field, "missing backend type")),
            other => Err(invalid(
                type_field,
                format!("backend {other:?} is not supported (use localfs or registry)"),
            )),
        }
    }

    fn mirrors(&mut self, c: &Obj<'_>) -> Result<Vec<MirrorConfig>, ConfigError> {
        let field = c.field("mirrors");
        let arr = match c.get("mirrors") {
            None => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(invalid(&field, "expected an array")),
        };
        let mut out = Vec::new();
        for (i, v) in arr.iter().enumerate() {
            let path = format!("{field}[{i}]");
            let Value::Object(m) = v else {
                return Err(invalid(&path, "expected an object"));
            };
            let o = Obj { path, map: Some(m) };
            o.check(
                &[
                    "host",
                    "headers",
                    "health_check_interval",
                    "failure_limit",
                    "ping_url",
                    "auth_through",
                ],
                self,
            );
            let mut headers = Vec::new();
            match o.get("headers") {
                None => {}
                Some(Value::Object(h)) => {
                    for (k, v) in h {
                        match v {
                            Value::String(s) => headers.push((k.clone(), s.clone())),
                            _ => {
                                return Err(invalid(
                                    &join(&o.field("headers"), k),
                                    "expected a string",
                                ))
                            }
                        }
                    }
                }
                Some(_) => return Err(invalid(&o.field("headers"), "expected an object")),
            }
            let host = o.string(&["host"])?.unwrap_or_default();
            if host.is_empty() {
                return Err(invalid(&o.field("host"), "mirror host is empty"));
            }
            o.boolean(&["auth_through"], false)?;
            out.push(MirrorConfig {
                host,
                headers,
                health_check_interval: o.uint_max(&["health_check_interval"], 0, 86400)?,
                failure_limit: o.uint_max(&["failure_limit"], 0, u32::MAX as u64)? as u32,
                ping_url: o.string(&["ping_url"])?.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    fn prefetch(&mut self, o: &Obj<'_>) -> Result<PrefetchConfig, ConfigError> {
        o.check(
            &[
                "enable",
                "prefetch_all",
                "threads_count",
                "threads",
                "merging_size",
                "batch_size",
                "bandwidth_rate",
                "bandwidth_limit",
            ],
            self,
        );
        let d = PrefetchConfig::default();
        let enable = o.boolean(&["enable"], false)?;
        let threads = o.uint(&["threads_count", "threads"], d.threads_count as u64)?;
        if enable && !(1..=1024).contains(&threads) {
            let f = o
                .get_any(&["threads_count", "threads"])
                .map(|(f, _)| f)
                .unwrap_or_else(|| o.field("threads_count"));
            return Err(invalid(&f, format!("{threads} is not in 1..=1024")));
        }
        Ok(PrefetchConfig {
            enable,
            prefetch_all: o.boolean(&["prefetch_all"], false)?,
            threads_count: threads.clamp(1, 1024) as u32,
            merging_size: o.uint_max(
                &["merging_size", "batch_size"],
                d.merging_size,
                MAX_BATCH_SIZE,
            )?,
            bandwidth_rate: o.uint(&["bandwidth_rate", "bandwidth_limit"], 0)?,
        })
    }
}

fn cache_type(cache: &Obj<'_>) -> Result<CacheType, ConfigError> {
    match cache.string(&["type"])?.as_deref().unwrap_or("") {
        "" | "dummycache" | "dummy" => Ok(CacheType::None),
        "blobcache" | "filecache" => Ok(CacheType::BlobCache),
        other => Err(invalid(
            &cache.field("type"),
            format!(
                "cache type {other:?} is not supported (blobcache, filecache, dummycache or \"\")"
            ),
        )),
    }
}

fn mode(o: &Obj<'_>, key: &str) -> Result<RafsMode, ConfigError> {
    match o.string(&[key])?.as_deref().unwrap_or("direct") {
        "direct" | "" => Ok(RafsMode::Direct),
        "cached" => Ok(RafsMode::Cached),
        other => Err(invalid(
            &o.field(key),
            format!("{other:?} is not \"direct\" or \"cached\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v1 config nydus-snapshotter emits (KATA-CONTRACT.md §4), filled in.
    const SNAPSHOTTER_V1: &str = r#"{
      "device": {
        "backend": {
          "type": "registry",
          "config": {
            "readahead": false,
            "host": "index.docker.io",
            "repo": "library/busybox",
            "auth": "YWxpY2U6c2VjcmV0",
            "scheme": "https", "skip_verify": false,
            "timeout": 5, "connect_timeout": 5, "retry_limit": 2,
            "proxy": {"url":"", "fallback": false, "ping_url":"", "check_interval":0, "use_http": false},
            "mirrors": [{"host":"http://127.0.0.1:65001","headers":{"X-Dragonfly-Registry":"https://index.docker.io"},"health_check_interval":5,"failure_limit":3,"ping_url":""}]
          }
        },
        "cache": {
          "type": "blobcache",
          "compressed": false,
          "config": {"work_dir": "/var/lib/containerd-nydus/cache", "disable_indexed_map": false}
        }
      },
      "mode": "direct",
      "digest_validate": false,
      "iostats_files": false,
      "enable_xattr": true,
      "fs_prefetch": {"enable": true, "prefetch_all": true, "threads_count": 8, "merging_size": 1048576, "bandwidth_rate": 0}
    }"#;

    #[test]
    fn snapshotter_v1_registry() {
        let c = RafsConfig::from_str(SNAPSHOTTER_V1).unwrap();
        let BackendConfig::Registry(r) = &c.backend else {
            panic!("not registry: {:?}", c.backend)
        };
        assert_eq!(r.host, "index.docker.io");
        assert_eq!(r.repo, "library/busybox");
        assert_eq!(r.auth.as_deref(), Some("YWxpY2U6c2VjcmV0"));
        assert_eq!(r.scheme, "https");
        assert_eq!((r.timeout, r.connect_timeout, r.retry_limit), (5, 5, 2));
        assert_eq!(r.mirrors.len(), 1);
        assert_eq!(r.mirrors[0].failure_limit, 3);
        assert_eq!(r.mirrors[0].headers[0].0, "X-Dragonfly-Registry");
        assert_eq!(c.cache.kind, CacheType::BlobCache);
        assert_eq!(
            c.cache.work_dir.as_deref(),
            Some(Path::new("/var/lib/containerd-nydus/cache"))
        );
        assert_eq!(c.mode, RafsMode::Direct);
        assert!(c.enable_xattr);
        assert!(!c.digest_validate);
        assert!(c.fs_prefetch.enable && c.fs_prefetch.prefetch_all);
        assert_eq!(c.fs_prefetch.threads_count, 8);
        assert_eq!(c.fs_prefetch.merging_size, 1 << 20);
        assert_eq!(c.amplify_io, DEFAULT_AMPLIFY_IO);
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
        let o = r.to_options();
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert!(o.proxy.is_none());
        assert_eq!(o.mirrors[0].host, "http://127.0.0.1:65001");
    }

    #[test]
    fn kata_doc_v1_localfs() {
        let s = r#"{"device":{"backend":{"type":"localfs","config":{"dir":"blobs"}},"cache":{"type":"blobcache","config":{"work_dir":"cache"}}},"mode":"direct","digest_validate":true}"#;
        let c = RafsConfig::from_str(s).unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::LocalFs(LocalFsConfig {
                dir: Some("blobs".into()),
                ..Default::default()
            })
        );
        assert!(c.digest_validate);
        assert!(!c.enable_xattr);
        assert_eq!(c.cache.work_dir.as_deref(), Some(Path::new("cache")));
    }

    #[test]
    fn v2_json() {
        let s = r#"{"version":2,"id":"x","backend":{"type":"localfs","localfs":{"dir":"/b","alt_dirs":["/c","/d"]}},
            "cache":{"type":"filecache","filecache":{"work_dir":"/w","size_limit":1000}},
            "rafs":{"mode":"cached","validate":true,"enable_xattr":true,"batch_size":65536,
                    "prefetch":{"enable":true,"threads":2,"batch_size":4096,"bandwidth_limit":7,"prefetch_all":true}}}"#;
        let c = RafsConfig::from_str(s).unwrap();
        let BackendConfig::LocalFs(l) = &c.backend else {
            panic!()
        };
        assert_eq!(l.alt_dirs, vec![PathBuf::from("/c"), PathBuf::from("/d")]);
        assert_eq!(c.cache.kind, CacheType::BlobCache);
        assert_eq!(c.cache.size_limit, 1000);
        assert_eq!(c.mode, RafsMode::Cached);
        assert!(c.digest_validate && c.enable_xattr);
        assert_eq!(c.amplify_io, 65536);
        assert_eq!(
            c.fs_prefetch,
            PrefetchConfig {
                enable: true,
                prefetch_all: true,
                threads_count: 2,
                merging_size: 4096,
                bandwidth_rate: 7
            }
        );
    }

    #[test]
    fn v2_toml() {
        let s = r#"
version = 2
id = "my_id"
[backend]
type = "registry"
[backend.registry]
scheme = "http"
host = "127.0.0.1:5000"
repo = "test/img"
registry_token = "tok"
[backend.registry.proxy]
url = "http://127.0.0.1:65001"
fallback = true
check_interval = 5
[cache]
type = "dummycache"
[rafs]
mode = "direct"
validate = false
enable_xattr = true
"#;
        let c = RafsConfig::from_str(s).unwrap();
        let BackendConfig::Registry(r) = &c.backend else {
            panic!()
        };
        assert_eq!(r.scheme, "http");
        assert_eq!(r.registry_token.as_deref(), Some("tok"));
        assert!(r.proxy.fallback);
        let o = r.to_options();
        assert_eq!(o.proxy.unwrap().check_interval, Duration::from_secs(5));
        assert_eq!(c.cache.kind, CacheType::None);
        assert!(c.enable_xattr);
    }

    #[test]
    fn unknown_fields_are_ignored_and_reported() {
        let s = r#"{"device":{"backend":{"type":"localfs","config":{"dir":"/b","color":"red"}}},"frobnicate":1}"#;
        let c = RafsConfig::from_str(s).unwrap();
        assert_eq!(
            c.unknown_fields,
            vec![
                "frobnicate".to_string(),
                "device.backend.config.color".to_string()
            ]
        );
    }

    fn err_field(s: &str) -> String {
        match RafsConfig::from_str(s) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid-field error, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_field() {
        let base = |tail: &str| {
            format!(
                r#"{{"device":{{"backend":{{"type":"localfs","config":{{"dir":"/b"}}}}}}{tail}}}"#
            )
        };
        assert_eq!(err_field(&base(r#","mode":"fast""#)), "mode");
        assert_eq!(
            err_field(&base(r#","digest_validate":"yes""#)),
            "digest_validate"
        );
        assert_eq!(err_field(&base(r#","amplify_io":-1"#)), "amplify_io");
        assert_eq!(
            err_field(&base(r#","amplify_io":4294967296"#)),
            "amplify_io"
        );
        assert_eq!(
            err_field(&base(r#","fs_prefetch":{"enable":true,"threads_count":0}"#)),
            "fs_prefetch.threads_count"
        );
        assert_eq!(
            err_field(
                r#"{"device":{"backend":{"type":"registry","config":{"host":"h","repo":"r","timeout":"5"}}}}"#
            ),
            "device.backend.config.timeout"
        );
        assert_eq!(
            err_field(r#"{"device":{"backend":{"type":"registry","config":{"scheme":"ftp"}}}}"#),
            "device.backend.config.scheme"
        );
        assert_eq!(
            err_field(r#"{"device":{"backend":{"type":"oss","config":{}}}}"#),
            "device.backend.type"
        );
        assert_eq!(
            err_field(r#"{"device":{"backend":{"type":"localfs","config":{}}}}"#),
            "device.backend.config.dir"
        );
        assert_eq!(
            err_field(
                r#"{"device":{"backend":{"type":"localfs","config":{"dir":"/b","alt_dirs":[1]}}}}"#
            ),
            "device.backend.config.alt_dirs[0]"
        );
        assert_eq!(
            err_field(&base(r#","device2":1,"fs_prefetch":[]"#)),
            "fs_prefetch"
        );
        assert_eq!(
            err_field(
                r#"{"device":{"backend":{"type":"localfs","config":{"dir":"/b"}},"cache":{"type":"fscache"}}}"#
            ),
            "device.cache.type"
        );
        assert_eq!(err_field(r#"{"version":3}"#), "version");
        assert_eq!(
            err_field("version = 2\n[backend]\ntype = \"localfs\"\n[backend.localfs]\ndir = 5\n"),
            "backend.localfs.dir"
        );
        assert!(matches!(
            RafsConfig::from_str("{not json"),
            Err(ConfigError::Syntax(_))
        ));
        assert!(matches!(
            RafsConfig::from_str("= = ="),
            Err(ConfigError::Syntax(_))
        ));
    }

    #[test]
    fn from_file_reads_and_reports_io_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.json");
        std::fs::write(&p, SNAPSHOTTER_V1).unwrap();
        assert!(RafsConfig::from_file(&p).is_ok());
        assert!(matches!(
            RafsConfig::from_file(&d.path().join("missing")),
            Err(ConfigError::Io { .. })
        ));
    }
}
