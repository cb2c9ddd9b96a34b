//! OCI distribution (v2) registry backend: blobs by digest with HTTP Range, anonymous /
//! Basic / Bearer auth following the `WWW-Authenticate` challenge, redirects that never carry
//! credentials to another host, timeouts, bounded retries with backoff, mirrors with health
//! checks, and the Dragonfly proxy mode (`proxy.url`, `ping_url`, `fallback`).
//!
//! Threading: requests run on one process-wide tokio runtime ("rafs-net" threads). Callers are
//! FUSE worker threads; they hand a future to the runtime and wait on a std channel with a
//! deadline, so they never enter the runtime themselves and cannot deadlock it, even when they
//! are called from inside another runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, LOCATION, RANGE};
use reqwest::{StatusCode, Url};

use super::{BlobBackend, Result, StorageError};

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// First retry delay; doubles per attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Latency histogram bucket upper bounds in milliseconds (the last bucket is open).
pub const LATENCY_BUCKETS_MS: [u64; 8] = [1, 5, 10, 50, 100, 500, 1000, 5000];

/// Dragonfly proxy settings (nydusd's `proxy` object).
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// HTTP proxy URL, e.g. `http://127.0.0.1:65001` (dfdaemon).
    pub url: String,
    /// URL polled to decide whether the proxy is healthy; empty = always healthy.
    pub ping_url: String,
    /// Go straight to the registry while the proxy is unhealthy.
    pub fallback: bool,
    /// Health-check period; zero means 5 s.
    pub check_interval: Duration,
    /// Send blob requests through the proxy as plain http (dfdaemon intercepts http only).
    pub use_http: bool,
    /// Send `X-Dragonfly-Prefetch: true` on proxied range requests: dfdaemon then fetches the
    /// whole blob as one P2P task in the background. Without it, dfdaemon v2 sends ranges of
    /// 4 MiB or less straight to the origin and no peer ever serves them.
    pub prefetch: bool,
}

/// One registry mirror (nydusd's `mirrors` entries).
#[derive(Clone, Debug, Default)]
pub struct MirrorOptions {
    /// `host[:port]`, or a full `scheme://host[:port]` URL.
    pub host: String,
    /// Extra headers sent to this mirror.
    pub headers: HashMap<String, String>,
    /// Health-check period; zero means 5 s.
    pub health_check_interval: Duration,
    /// Consecutive failures before the mirror is skipped; zero means 5.
    pub failure_limit: u32,
    /// URL polled while the mirror is marked unhealthy; empty = `<mirror>/v2/`.
    pub ping_url: String,
}

/// Registry backend settings (nydusd's `backend.config` for type `registry`).
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// `https` (default) or `http`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// Repository path, e.g. `library/ubuntu`.
    pub repo: String,
    /// base64 of `user:password`, used for Basic auth and for the token request.
    pub auth: Option<String>,
    /// A ready bearer token.
    pub registry_token: Option<String>,
    pub skip_verify: bool,
    /// Whole-request timeout (nydusd `timeout`).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries after the first attempt for transient failures.
    pub retry_limit: u32,
    pub proxy: Option<ProxyOptions>,
    pub mirrors: Vec<MirrorOptions>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            scheme: "https".into(),
            host: String::new(),
            repo: String::new(),
            auth: None,
            registry_token: None,
            skip_verify: false,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            retry_limit: 2,
            proxy: None,
            mirrors: Vec::new(),
        }
    }
}

/// Counters of one backend, exported as nydusd-style JSON.
#[derive(Default)]
pub struct BackendMetrics {
    pub read_count: AtomicU64,
    pub read_errors: AtomicU64,
    pub read_bytes: AtomicU64,
    pub retries: AtomicU64,
    pub auth_refreshes: AtomicU64,
    pub proxy_fallbacks: AtomicU64,
    /// Blob bytes that came through the proxy (dfdaemon), not from the origin.
    pub proxy_read_bytes: AtomicU64,
    /// Proxied answers that dfdaemon's P2P engine served (they carry `X-Dragonfly-Task-ID`),
    /// as opposed to requests it passed straight through.
    pub proxy_p2p_reads: AtomicU64,
    /// P2P answers from a peer that already held the whole blob
    /// (`X-Dragonfly-Task-Download-Finished: true`): neither the origin nor another peer was
    /// asked.
    pub proxy_p2p_hits: AtomicU64,
    /// Request latency histogram, buckets per [`LATENCY_BUCKETS_MS`] plus one open bucket.
    pub latency: [AtomicU64; 9],
}

impl BackendMetrics {
    fn observe(&self, started: Instant) {
        let ms = started.elapsed().as_millis() as u64;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// nydusd's `/api/v1/metrics/backend` shape, plus our extra fields.
    pub fn to_json(&self, backend_type: &str) -> serde_json::Value {
        let l: Vec<u64> = self
            .latency
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        serde_json::json!({
            "backend_type": backend_type,
            "read_count": self.read_count.load(Ordering::Relaxed),
            "read_errors": self.read_errors.load(Ordering::Relaxed),
            "read_amount_total": self.read_bytes.load(Ordering::Relaxed),
            "retries": self.retries.load(Ordering::Relaxed),
            "auth_refreshes": self.auth_refreshes.load(Ordering::Relaxed),
            "proxy_fallbacks": self.proxy_fallbacks.load(Ordering::Relaxed),
            "proxy_read_bytes": self.proxy_read_bytes.load(Ordering::Relaxed),
            "proxy_p2p_reads": self.proxy_p2p_reads.load(Ordering::Relaxed),
            "proxy_p2p_hits": self.proxy_p2p_hits.load(Ordering::Relaxed),
            "latency_buckets_ms": LATENCY_BUCKETS_MS,
            "latency_histogram": l,
        })
    }
}

/// Marks the calling thread as a network thread ([`crate::thread_class`]): these threads
/// parse what registries and proxies send and nothing else, and the daemon confines them
/// further.
fn network_thread() {
    crate::thread_class::enter(crate::thread_class::ThreadClass::Network)
}

/// The process-wide runtime for network I/O.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rafs-net")
            .on_thread_start(network_thread)
            .on_thread_unpark(network_thread)
            .enable_all()
            .build()
            .expect("cannot start the network runtime")
    })
}

/// Run `fut` on the network runtime and wait for it from any thread, at most `deadline`.
fn run_blocking<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
    deadline: Duration,
    what: &str,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let task = runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    match rx.recv_timeout(deadline) {
        Ok(r) => r,
        Err(_) => {
            task.abort();
            Err(StorageError::Timeout(what.to_string()))
        }
    }
}

/// A health flag kept up to date by a background ping loop.
struct Health {
    healthy: AtomicBool,
    failures: AtomicU32,
    limit: u32,
}

impl Health {
    fn new(limit: u32) -> Arc<Health> {
        Arc::new(Health {
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            limit: limit.max(1),
        })
    }
    fn ok(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Relaxed);
    }
    fn failure(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= self.limit {
            self.healthy.store(false, Ordering::Relaxed);
        }
    }
}

/// Poll `url` every `interval` while `owner` lives; a 2xx (or any answer for a /v2/ ping)
/// marks healthy, anything else one failure.
fn spawn_pinger(client: reqwest::Client, url: String, interval: Duration, health: Arc<Health>) {
    let weak = Arc::downgrade(&health);
    drop(health);
    runtime().spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(h) = weak.upgrade() else { return };
            let up = match client.get(&url).send().await {
                Ok(r) => r.status().is_success() || r.status() == StatusCode::UNAUTHORIZED,
                Err(_) => false,
            };
            if up {
                h.success();
            } else {
                h.failure();
            }
        }
    });
}

/// One place blob requests can go: the origin or a mirror.
struct Endpoint {
    /// `scheme://host[:port]`
    base: String,
    headers: HeaderMap,
    health: Option<Arc<Health>>,
}

struct Inner {
    opts: RegistryOptions,
    direct: reqwest::Client,
    proxied: Option<reqwest::Client>,
    proxy_health: Option<Arc<Health>>,
    endpoints: Vec<Endpoint>,
    /// Current `Authorization` value for the origin (Basic or Bearer).
    auth_header: Mutex<Option<String>>,
    metrics: BackendMetrics,
}

/// The registry backend. Cheap to share; all state is behind an `Arc`.
pub struct RegistryBackend {
    inner: Arc<Inner>,
}

/// How one attempt failed.
enum Failure {
    /// Worth retrying (connection error, 5xx, timeout).
    Transient(String),
    /// Final.
    Fatal(StorageError),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Transient(m) => m.clone(),
            Failure::Fatal(e) => e.to_string(),
        }
    }
}

fn build_client(opts: &RegistryOptions, proxy: Option<&str>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(opts.connect_timeout)
        .timeout(opts.timeout)
        .danger_accept_invalid_certs(opts.skip_verify)
        .user_agent(concat!("rafs-virtiofsd/", env!("CARGO_PKG_VERSION")));
    b = match proxy {
        Some(url) => b.proxy(
            reqwest::Proxy::all(url)
                .map_err(|e| StorageError::Backend(format!("proxy.url {url:?}: {e}")))?,
        ),
        None => b.no_proxy(),
    };
    b.build()
        .map_err(|e| StorageError::Backend(format!("http client: {e}")))
}

/// `e` and its sources, e.g. "error sending request ...: client error (Connect): invalid
/// peer certificate: UnknownIssuer" (reqwest's own message stops at the first).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn with_scheme(host: &str, scheme: &str) -> String {
    if host.contains("://") {
        host.trim_end_matches('/').to_string()
    } else {
        format!("{scheme}://{}", host.trim_end_matches('/'))
    }
}

impl RegistryBackend {
    pub fn new(opts: RegistryOptions) -> Result<RegistryBackend> {
        if opts.host.is_empty() || opts.repo.is_empty() {
            return Err(StorageError::Backend(
                "registry backend needs host and repo".into(),
            ));
        }
        if opts.scheme != "http" && opts.scheme != "https" {
            return Err(StorageError::Backend(format!(
                "registry scheme {:?} is not http or https",
                opts.scheme
            )));
        }
        // Entering the runtime lets reqwest/hyper set up timers and DNS on it.
        let _guard = runtime().enter();
        let direct = build_client(&opts, None)?;
        let (proxied, proxy_health) = match &opts.proxy {
            Some(p) if !p.url.is_empty() => {
                let client = build_client(&opts, Some(&p.url))?;
                let health = Health::new(1);
                if !p.ping_url.is_empty() {
                    let interval = if p.check_interval.is_zero() {
                        Duration::from_secs(5)
                    } else {
                        p.check_interval
                    };
                    spawn_pinger(direct.clone(), p.ping_url.clone(), interval, health.clone());
                }
                (Some(client), Some(health))
            }
            _ => (None, None),
        };
        let mut endpoints = Vec::new();
        for m in &opts.mirrors {
            let base = with_scheme(&m.host, &opts.scheme);
            let mut headers = HeaderMap::new();
            for (k, v) in &m.headers {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| StorageError::Backend(format!("mirror header {k:?}: {e}")))?;
                let value = HeaderValue::from_str(v)
                    .map_err(|e| StorageError::Backend(format!("mirror header {k:?}: {e}")))?;
                headers.insert(name, value);
            }
            let limit = if m.failure_limit == 0 {
                5
            } else {
                m.failure_limit
            };
            let health = Health::new(limit);
            let interval = if m.health_check_interval.is_zero() {
                Duration::from_secs(5)
            } else {
                m.health_check_interval
            };
            let ping = if m.ping_url.is_empty() {
                format!("{base}/v2/")
            } else {
                m.ping_url.clone()
            };
            spawn_pinger(direct.clone(), ping, interval, health.clone());
            endpoints.push(Endpoint {
                base,
                headers,
                health: Some(health),
            });
        }
        endpoints.push(Endpoint {
            base: with_scheme(&opts.host, &opts.scheme),
            headers: HeaderMap::new(),
            health: None,
        });
        let auth_header = opts.registry_token.as_ref().map(|t| format!("Bearer {t}"));
        Ok(RegistryBackend {
            inner: Arc::new(Inner {
                opts,
                direct,
                proxied,
                proxy_health,
                endpoints,
                auth_header: Mutex::new(auth_header),
                metrics: BackendMetrics::default(),
            }),
        })
    }

    pub fn metrics(&self) -> &BackendMetrics {
        &self.inner.metrics
    }

    /// Upper bound for one whole read, retries and auth round trips included.
    fn deadline(&self) -> Duration {
        let o = &self.inner.opts;
        let per = o.timeout + o.connect_timeout;
        per * (o.retry_limit + 1) * 2 + BACKOFF_BASE * (1 << o.retry_limit.min(8))
    }
}

impl Inner {
    fn blob_path(&self, blob_id: &str) -> String {
        let digest = if blob_id.contains(':') {
            blob_id.to_string()
        } else {
            format!("sha256:{blob_id}")
        };
        format!("/v2/{}/blobs/{}", self.opts.repo.trim_matches('/'), digest)
    }

    /// Which client to use, whether the URL should be downgraded to http for dfdaemon, and
    /// whether the request goes through the proxy. `direct` skips the proxy (a fallback
    /// after the proxy failed this request).
    fn client(&self, direct: bool) -> (&reqwest::Client, bool, bool) {
        match (&self.proxied, &self.proxy_health, &self.opts.proxy) {
            (Some(c), Some(h), Some(p)) if !direct => {
                if h.ok() || !p.fallback {
                    (c, p.use_http, true)
                } else {
                    self.metrics.proxy_fallbacks.fetch_add(1, Ordering::Relaxed);
                    (&self.direct, false, false)
                }
            }
            _ => (&self.direct, false, false),
        }
    }

    /// Whether a request that failed through the proxy is tried again straight at the
    /// origin.
    fn falls_back(&self) -> bool {
        self.opts.proxy.as_ref().is_some_and(|p| p.fallback)
    }

    /// GET (or HEAD) a blob range from the first healthy endpoint, with retries.
    async fn fetch(
        self: Arc<Self>,
        blob_id: String,
        range: Option<(u64, u64)>,
        head: bool,
    ) -> Result<(Option<u64>, Vec<u8>)> {
        let path = self.blob_path(&blob_id);
        let mut last = String::new();
        for attempt in 0..=self.opts.retry_limit {
            if attempt > 0 {
                self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(BACKOFF_BASE * (1 << (attempt - 1).min(8))).await;
            }
            for ep in &self.endpoints {
                if ep.health.as_ref().is_some_and(|h| !h.ok()) {
                    continue;
                }
                let started = Instant::now();
                let mut r = self.attempt(ep, &path, &blob_id, range, head, false).await;
                self.metrics.observe(started);
                // The proxy failed this request (an error, a short or empty body, a
                // dfdaemon error header, an unranged answer): with `fallback`, the origin
                // answers instead, at once.
                if let (Err((e, true)), true) = (&r, self.falls_back()) {
                    log::warn!(
                        "blob {blob_id}: proxy failed ({}); reading from the origin",
                        e.message()
                    );
                    self.metrics.proxy_fallbacks.fetch_add(1, Ordering::Relaxed);
                    if let Some(h) = &self.proxy_health {
                        h.failure();
                    }
                    let started = Instant::now();
                    r = self.attempt(ep, &path, &blob_id, range, head, true).await;
                    self.metrics.observe(started);
                }
                let r = match r {
                    Ok((v, proxied)) => {
                        if proxied {
                            self.metrics
                                .proxy_read_bytes
                                .fetch_add(v.1.len() as u64, Ordering::Relaxed);
                        }
                        Ok(v)
                    }
                    Err((e, _)) => Err(e),
                };
                match r {
                    Ok(v) => {
                        if let Some(h) = &ep.health {
                            h.success();
                        }
                        return Ok(v);
                    }
                    Err(Failure::Fatal(e)) if ep.health.is_none() => return Err(e),
                    Err(Failure::Fatal(e)) => {
                        // A mirror that lacks the blob or refuses us: try the next place.
                        last = e.to_string();
                    }
                    Err(Failure::Transient(e)) => {
                        if let Some(h) = &ep.health {
                            h.failure();
                        }
                        last = format!("{}: {e}", ep.base);
                    }
                }
            }
        }
        Err(StorageError::Backend(format!(
            "blob {blob_id}: giving up after {} attempts: {last}",
            self.opts.retry_limit + 1
        )))
    }

    /// One request, following auth challenges and redirects. On failure, also whether it
    /// went through the proxy.
    async fn attempt(
        &self,
        ep: &Endpoint,
        path: &str,
        blob_id: &str,
        range: Option<(u64, u64)>,
        head: bool,
        direct: bool,
    ) -> std::result::Result<((Option<u64>, Vec<u8>), bool), (Failure, bool)> {
        let (client, use_http, proxied) = self.client(direct);
        let prefetch = proxied && self.opts.proxy.as_ref().is_some_and(|p| p.prefetch);
        self.attempt_with(ep, client, use_http, prefetch, path, blob_id, range, head)
            .await
            .map(|v| (v, proxied))
            .map_err(|f| (f, proxied))
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt_with(
        &self,
        ep: &Endpoint,
        client: &reqwest::Client,
        use_http: bool,
        prefetch: bool,
        path: &str,
        blob_id: &str,
        range: Option<(u64, u64)>,
        head: bool,
    ) -> std::result::Result<(Option<u64>, Vec<u8>), Failure> {
        let origin = ep.health.is_none();
        let mut base = ep.base.clone();
        if use_http {
            base = base.replacen("https://", "http://", 1);
        }
        let mut url = Url::parse(&format!("{base}{path}"))
            .map_err(|e| Failure::Fatal(StorageError::Backend(format!("bad url: {e}"))))?;
        let first_host = (
            url.host_str().map(str::to_owned),
            url.port_or_known_default(),
        );
        let mut auth_retried = false;
        let mut redirects = 0;
        loop {
            let same_host = (
                url.host_str().map(str::to_owned),
                url.port_or_known_default(),
            ) == first_host;
            let mut req = if head {
                client.head(url.clone())
            } else {
                client.get(url.clone())
            };
            req = req.headers(ep.headers.clone());
            if let Some((off, len)) = range {
                req = req.header(RANGE, format!("bytes={}-{}", off, off + len - 1));
                if prefetch {
                    req = req.header("X-Dragonfly-Prefetch", "true");
                }
            }
            // Credentials go only to the host they were issued for.
            if origin && same_host {
                if let Some(a) = self.auth_header.lock().unwrap().clone() {
                    req = req.header(AUTHORIZATION, a);
                }
            }
            let resp = req.send().await.map_err(|e| {
                let msg = error_chain(&e);
                if e.is_timeout() {
                    Failure::Transient(format!("timed out: {msg}"))
                } else if msg.contains("certificate") {
                    // TLS verification does not get better by retrying.
                    Failure::Fatal(StorageError::Backend(format!(
                        "blob {blob_id}: {msg} (set skip_verify for a registry with a \
                         self-signed certificate)"
                    )))
                } else {
                    Failure::Transient(format!("request failed: {msg}"))
                }
            })?;
            let status = resp.status();
            if status.is_redirection() {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(Failure::Fatal(StorageError::Backend(format!(
                        "blob {blob_id}: too many redirects"
                    ))));
                }
                let loc = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Failure::Fatal(StorageError::Backend(format!(
                            "blob {blob_id}: redirect without Location"
                        )))
                    })?;
                url = url.join(loc).map_err(|e| {
                    Failure::Fatal(StorageError::Backend(format!("bad redirect {loc:?}: {e}")))
                })?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && origin && same_host && !auth_retried {
                auth_retried = true;
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.authenticate(client, &challenge).await?;
                self.metrics.auth_refreshes.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            return self.finish(resp, blob_id, range, head).await;
        }
    }

    async fn finish(
        &self,
        resp: reqwest::Response,
        blob_id: &str,
        range: Option<(u64, u64)>,
        head: bool,
    ) -> std::result::Result<(Option<u64>, Vec<u8>), Failure> {
        let status = resp.status();
        let fatal = |m: String| Failure::Fatal(StorageError::Backend(m));
        // dfdaemon answers a piece it could not get with 200, an empty body and this
        // header: never data.
        if let Some(t) = resp.headers().get("x-dragonfly-error-type") {
            return Err(Failure::Transient(format!(
                "dragonfly error {:?} (HTTP {status})",
                t.to_str().unwrap_or("?")
            )));
        }
        match status {
            StatusCode::NOT_FOUND => {
                return Err(Failure::Fatal(StorageError::BlobNotFound(blob_id.into())))
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                return Err(Failure::Transient(format!("HTTP {s}")))
            }
            s if !s.is_success() => return Err(fatal(format!("blob {blob_id}: HTTP {s}"))),
            _ => {}
        }
        if resp.headers().contains_key("x-dragonfly-task-id") {
            self.metrics.proxy_p2p_reads.fetch_add(1, Ordering::Relaxed);
            if resp
                .headers()
                .get("x-dragonfly-task-download-finished")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
            {
                self.metrics.proxy_p2p_hits.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Not `content_length()`: for HEAD that is the (empty) body's size.
        let len = resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if head {
            return Ok((len, Vec::new()));
        }
        let (off, want) = range.unwrap_or((0, len.unwrap_or(0)));
        if status == StatusCode::OK && off != 0 {
            return Err(fatal(format!(
                "blob {blob_id}: server ignored the Range request"
            )));
        }
        if let Some(l) = len {
            if l != want && !(status == StatusCode::OK && l > want) {
                return Err(fatal(format!(
                    "blob {blob_id}: expected {want} bytes at {off}, server sends {l}"
                )));
            }
        }
        let mut body = Vec::with_capacity(want as usize);
        let mut resp = resp;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| Failure::Transient(format!("reading body: {e}")))?
        {
            let room = want as usize - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == want as usize {
                break;
            }
        }
        if body.len() != want as usize {
            return Err(Failure::Transient(format!(
                "short body: {} of {want} bytes",
                body.len()
            )));
        }
        self.metrics
            .read_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok((len, body))
    }

    /// Answer a `WWW-Authenticate` challenge: Basic with the configured credentials, or
    /// Bearer by asking the token service (with Basic credentials when configured).
    async fn authenticate(
        &self,
        client: &reqwest::Client,
        challenge: &str,
    ) -> std::result::Result<(), Failure> {
        let fatal = |m: String| Failure::Fatal(StorageError::Backend(m));
        let default_scope = format!("repository:{}:pull", self.opts.repo);
        let header =
            match plan_auth(challenge, self.opts.auth.as_deref(), &default_scope).map_err(fatal)? {
                AuthPlan::Header(h) => h,
                AuthPlan::Token { url, basic } => {
                    let mut req = client.get(url);
                    if let Some(b) = basic {
                        req = req.header(AUTHORIZATION, b);
                    }
                    let resp = req
                        .send()
                        .await
                        .map_err(|e| Failure::Transient(format!("token request: {e}")))?;
                    if !resp.status().is_success() {
                        return Err(fatal(format!("token service answered {}", resp.status())));
                    }
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| Failure::Transient(format!("token response: {e}")))?;
                    bearer_from_token_response(&body).map_err(fatal)?
                }
            };
        *self.auth_header.lock().unwrap() = Some(header);
        Ok(())
    }
}

/// How to answer a registry's `WWW-Authenticate` challenge (shared by the blob backend and
/// `rafs-image convert`'s client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthPlan {
    /// Send this `Authorization` value (Basic).
    Header(String),
    /// Ask the token service at `url` (with `basic` as its `Authorization` when set), then
    /// send `Bearer <token>`; see [`bearer_from_token_response`].
    Token { url: Url, basic: Option<String> },
}

/// Plan the answer to `challenge` with `auth` (base64 `user:pass`, if any). A Bearer
/// challenge without a scope gets `default_scope` (e.g. `repository:NAME:pull`).
pub fn plan_auth(
    challenge: &str,
    auth: Option<&str>,
    default_scope: &str,
) -> std::result::Result<AuthPlan, String> {
    let (scheme, params) = parse_challenge(challenge)
        .ok_or_else(|| format!("unauthorized, and no usable challenge ({challenge:?})"))?;
    if scheme.eq_ignore_ascii_case("basic") {
        let auth = auth.ok_or("registry wants Basic auth; no `auth` configured")?;
        Ok(AuthPlan::Header(format!("Basic {auth}")))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let realm = params
            .get("realm")
            .ok_or("Bearer challenge without realm")?;
        let mut url = Url::parse(realm).map_err(|e| format!("Bearer realm {realm:?}: {e}"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            let scope = params.get("scope").map_or(default_scope, |s| s.as_str());
            q.append_pair("scope", scope);
        }
        Ok(AuthPlan::Token {
            url,
            basic: auth.map(|a| format!("Basic {a}")),
        })
    } else {
        Err(format!("unsupported auth scheme {scheme:?}"))
    }
}

/// The `Authorization` value from a token service's JSON answer (`token` or
/// `access_token`).
pub fn bearer_from_token_response(body: &[u8]) -> std::result::Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("token response: {e}"))?;
    let token = v
        .get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())
        .ok_or("token response has no token")?;
    Ok(format!("Bearer {token}"))
}

/// Parse `Bearer realm="...",service="...",scope="..."` (or `Basic realm="..."`).
pub fn parse_challenge(h: &str) -> Option<(String, HashMap<String, String>)> {
    let h = h.trim();
    let (scheme, rest) = match h.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r),
        None if !h.is_empty() => (h, ""),
        None => return None,
    };
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_string(), params))
}

impl BlobBackend for RegistryBackend {
    fn kind(&self) -> &'static str {
        "registry"
    }

    fn read_range(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let m = &self.inner.metrics;
        m.read_count.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let fut = inner.fetch(blob_id.to_string(), Some((offset, buf.len() as u64)), false);
        let what = format!("registry read of blob {blob_id} at {offset}");
        match run_blocking(fut, self.deadline(), &what) {
            Ok((_, body)) => {
                buf.copy_from_slice(&body);
                Ok(())
            }
            Err(e) => {
                m.read_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn blob_size(&self, blob_id: &str) -> Result<u64> {
        let inner = self.inner.clone();
        let fut = inner.fetch(blob_id.to_string(), None, true);
        let (len, _) = run_blocking(fut, self.deadline(), "registry HEAD")?;
        len.ok_or_else(|| StorageError::Backend(format!("blob {blob_id}: no Content-Length")))
    }
}

/// Decode nydusd's `auth` (base64 `user:pass`) for logs without the secret.
pub fn auth_user(auth: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    s.split_once(':').map(|(u, _)| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        let (s, p) = parse_challenge(r#"Basic realm="basic-realm""#).unwrap();
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "basic-realm");
        assert!(parse_challenge("").is_none());
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    #[test]
    fn options_are_checked() {
        let o = RegistryOptions::default();
        assert!(RegistryBackend::new(o.clone()).is_err());
        let bad = RegistryOptions {
            host: "h".into(),
            repo: "r".into(),
            scheme: "ftp".into(),
            ..o
        };
        assert!(RegistryBackend::new(bad).is_err());
    }

    #[test]
    fn auth_user_hides_the_password() {
        let a = base64::engine::general_purpose::STANDARD.encode("alice:secret");
        assert_eq!(auth_user(&a).as_deref(), Some("alice"));
    }
}
