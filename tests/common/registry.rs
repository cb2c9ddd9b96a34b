//! Test helpers: a real Debian `docker-registry` on 127.0.0.1, and a tiny scripted HTTP
//! server for protocol cases a real registry won't produce.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

/// A free TCP port on 127.0.0.1 (the caller binds it right after). The kernel may hand a
/// port that was bound and dropped to the next `bind(0)`, so two parallel tests could get
/// the same one; a port is never given out twice in one process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::OnceLock;
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut given = GIVEN.get_or_init(Default::default).lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// A running `docker-registry serve` with its own storage and access log.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    /// `user:password` when htpasswd auth is on.
    pub basic: Option<(String, String)>,
    /// The self-signed certificate (PEM) when the registry serves https.
    pub tls_cert: Option<PathBuf>,
}

impl Registry {
    /// Start a registry; with `basic`, htpasswd (bcrypt via `htpasswd -B`) auth is on.
    pub fn start(basic: Option<(&str, &str)>) -> Registry {
        Self::start_with(basic, false)
    }

    /// Start a registry serving https with a fresh self-signed certificate for 127.0.0.1
    /// (made with the `openssl` CLI).
    #[allow(dead_code)]
    pub fn start_tls() -> Registry {
        Self::start_with(None, true)
    }

    fn start_with(basic: Option<(&str, &str)>, tls: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut auth = String::new();
        if let Some((u, p)) = basic {
            let htp = dir.path().join("htpasswd");
            let st = Command::new("htpasswd")
                .args(["-Bbc", htp.to_str().unwrap(), u, p])
                .stderr(Stdio::null())
                .status()
                .expect("htpasswd (apache2-utils) is needed; hack/setup.sh installs it");
            assert!(st.success());
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                htp.display()
            );
        }
        let mut tls_cert = None;
        let mut tls_cfg = String::new();
        if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let st = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is needed; hack/setup.sh installs it");
            assert!(st.success(), "openssl req failed");
            tls_cfg = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            tls_cert = Some(cert);
        }
        // Another process may take the port between free_port and the registry's bind;
        // the registry then exits, and whatever answers on the port is not ours. Retry on
        // a fresh port while our child is not the one alive and listening.
        let cfg = dir.path().join("config.yml");
        let log = dir.path().join("registry.log");
        for _attempt in 0..5 {
            let port = free_port();
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_cfg}{auth}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let logf = std::fs::File::create(&log).unwrap();
            let mut child = Command::new("docker-registry")
                .args(["serve", cfg.to_str().unwrap()])
                .stdout(logf.try_clone().unwrap())
                .stderr(logf)
                .spawn()
                .expect("docker-registry is needed; hack/setup.sh installs it");
            let t0 = Instant::now();
            let ours = loop {
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                if listens(child.id(), port) {
                    break true;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "registry did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            if !ours {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            return Registry {
                child,
                port,
                dir,
                log,
                basic: basic.map(|(u, p)| (u.to_string(), p.to_string())),
                tls_cert,
            };
        }
        panic!(
            "registry did not start on 5 ports: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop serving (an outage); the access log stays readable.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn auth_header(&self) -> Option<String> {
        use base64::Engine;
        self.basic.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    /// Push `data` as a blob of `repo` (monolithic upload); returns its hex sha256.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        if self.tls_cert.is_some() {
            return self.push_blob_curl(repo, data);
        }
        push_blob_http(&self.host(), repo, data, self.auth_header().as_deref())
    }

    /// The https form of [`Self::push_blob`], through `curl --cacert`.
    fn push_blob_curl(&self, repo: &str, data: &[u8]) -> String {
        let hexd = hex::encode(sha2::Sha256::digest(data));
        let cert = self.tls_cert.as_ref().unwrap();
        let base = format!("https://{}", self.host());
        let out = Command::new("curl")
            .args([
                "-sS",
                "-X",
                "POST",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "--cacert",
            ])
            .arg(cert)
            .arg(format!("{base}/v2/{repo}/blobs/uploads/"))
            .output()
            .expect("curl is needed; hack/setup.sh installs it");
        let head = String::from_utf8_lossy(&out.stdout);
        let loc = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no Location in {head}"));
        let url = if loc.starts_with("http") {
            loc
        } else {
            format!("{base}{loc}")
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let file = self.dir.path().join("push.bin");
        std::fs::write(&file, data).unwrap();
        let out = Command::new("curl")
            .args([
                "-sS",
                "-X",
                "PUT",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
            ])
            .arg(cert)
            .args([
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
            ])
            .arg(format!("@{}", file.display()))
            .arg(format!("{url}{sep}digest=sha256:{hexd}"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.trim_end().ends_with("201"), "upload put: {body}");
        hexd
    }

    /// Bytes served for GETs of blob `hex`, summed from the access log.
    /// A registry that wants Bearer tokens: a forwarder in front of this one that answers
    /// 401 with a Bearer challenge unless the request carries `Bearer tok-123`, the token
    /// its own `/token` endpoint hands out for `alice:s3cret` (Basic) and a repository
    /// scope.
    pub fn bearer_front(&self) -> FakeServer {
        use std::sync::OnceLock;
        let up = format!("http://{}", self.host());
        let me: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
        let me2 = me.clone();
        let http = forwarding_client();
        let srv = FakeServer::start("127.0.0.1", move |req| {
            let addr = me2.get().unwrap();
            if req.path.starts_with("/token") {
                use base64::Engine;
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
                );
                return if req.header("authorization") == Some(want.as_str())
                    && req.path.contains("scope=repository")
                {
                    Reply::new(200, r#"{"token":"tok-123"}"#)
                } else {
                    Reply::new(401, "")
                };
            }
            if req.header("authorization") != Some("Bearer tok-123") {
                return Reply::new(401, "").header(
                    "WWW-Authenticate",
                    &format!(r#"Bearer realm="http://{addr}/token",service="test""#),
                );
            }
            forward(&http, &up, req, Some(addr), &["authorization"])
        });
        me.set(srv.addr.clone()).unwrap();
        srv
    }

    pub fn served_bytes(&self, hex: &str) -> u64 {
        served_bytes_in(&std::fs::read_to_string(&self.log).unwrap_or_default(), hex)
    }
}

/// Push `data` as a blob of `repo` to the plain-http registry at `host` (monolithic
/// upload); returns its hex sha256.
pub fn push_blob_http(host: &str, repo: &str, data: &[u8], auth: Option<&str>) -> String {
    let hexd = hex::encode(sha2::Sha256::digest(data));
    let (status, headers, _) = http(
        "POST",
        host,
        &format!("/v2/{repo}/blobs/uploads/"),
        auth,
        &[],
    );
    assert_eq!(status, 202, "upload start");
    let loc = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.clone())
        .expect("Location");
    let path = loc
        .strip_prefix(&format!("http://{host}"))
        .unwrap_or(&loc)
        .to_string();
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, _, body) = http(
        "PUT",
        host,
        &format!("{path}{sep}digest=sha256:{hexd}"),
        auth,
        data,
    );
    assert_eq!(
        status,
        201,
        "upload put: {}",
        String::from_utf8_lossy(&body)
    );
    hexd
}

/// Bytes served for GETs of blob `hex`, summed from a docker-registry access log.
pub fn served_bytes_in(log: &str, hex: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("\"GET ") && l.contains(hex))
        .filter_map(|l| {
            // ... "GET /v2/... HTTP/1.1" 206 12345 "-" ...
            let after = l.split("HTTP/1.1\" ").nth(1)?;
            let mut it = after.split_whitespace();
            let _status = it.next()?;
            it.next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (from
/// /proc/net/tcp and the process's fd table).
fn listens(pid: u32, port: u16) -> bool {
    let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    // local_address is hex "0100007F:PORT"; state 0A is LISTEN; the 10th field is the inode.
    let want = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == want && f[3] == "0A").then(|| f[9].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|e| {
        std::fs::read_link(e.path())
            .map(|t| {
                let t = t.to_string_lossy();
                inodes.iter().any(|i| t == format!("socket:[{i}]"))
            })
            .unwrap_or(false)
    })
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking one-shot HTTP/1.1 request (Connection: close).
pub fn http(
    method: &str,
    host: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(host).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("Content-Type: application/octet-stream\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    (status, headers, rest)
}

/// A request seen by [`FakeServer`].
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A canned answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Sleep this long before answering (to provoke timeouts).
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Handler = dyn Fn(&SeenRequest) -> Reply + Send + Sync;

/// A scripted HTTP/1.1 server on a loopback address; every request is recorded.
pub struct FakeServer {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl FakeServer {
    pub fn start(
        ip: &str,
        handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let l = TcpListener::bind((ip, 0)).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let h: Arc<Handler> = Arc::new(handler);
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let h = h.clone();
                let seen = seen2.clone();
                std::thread::spawn(move || serve_conn(conn, &*h, &seen));
            }
        });
        FakeServer { addr, seen }
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_conn(conn: TcpStream, h: &Handler, seen: &Mutex<Vec<SeenRequest>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, mut path) = (method.to_string(), target.to_string());
        // Absolute-form targets come through a proxy.
        if let Some(rest) = path.strip_prefix("http://") {
            path = rest
                .find('/')
                .map(|i| rest[i..].to_string())
                .unwrap_or("/".into());
        }
        let mut headers = Vec::new();
        let mut clen = 0usize;
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                return;
            }
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    clen = v.trim().parse().unwrap_or(0);
                }
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut body = vec![0u8; clen];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let req = SeenRequest {
            method,
            path,
            headers,
            body,
        };
        seen.lock().unwrap().push(req.clone());
        let rep = h(&req);
        std::thread::sleep(rep.delay);
        // A handler may set Content-Length itself (a HEAD answer for a body not sent).
        let mut out = format!("HTTP/1.1 {} X\r\n", rep.status);
        if !rep
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            out.push_str(&format!("Content-Length: {}\r\n", rep.body.len()));
        }
        for (k, v) in &rep.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        if w.write_all(out.as_bytes()).is_err() {
            return;
        }
        if req.method != "HEAD" && w.write_all(&rep.body).is_err() {
            return;
        }
    }
}

/// Serve a Range request over `data` the way a registry does.
pub fn range_reply(req: &SeenRequest, data: &[u8]) -> Reply {
    match req.header("range").and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            Reply::new(206, data[a..=b.min(data.len() - 1)].to_vec())
        }
        None => Reply::new(200, data.to_vec()),
    }
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Pass `req` on to `base` (`http://host:port`) with its method, body and headers (less
/// `drop_headers` and the hop-by-hop ones), as `host` when given, and return the answer
/// as a [`Reply`]. For [`FakeServer`] handlers that front a real server.
pub fn forward(
    http: &reqwest::blocking::Client,
    base: &str,
    req: &SeenRequest,
    host: Option<&str>,
    drop_headers: &[&str],
) -> Reply {
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap();
    let mut b = http
        .request(method, format!("{base}{}", req.path))
        .body(req.body.clone());
    if let Some(h) = host {
        b = b.header("Host", h);
    }
    for (k, v) in &req.headers {
        let k = k.to_ascii_lowercase();
        if !["host", "content-length", "connection"].contains(&k.as_str())
            && !drop_headers.contains(&k.as_str())
        {
            b = b.header(k, v);
        }
    }
    let r = b.send().unwrap();
    let mut rep = Reply::new(r.status().as_u16(), Vec::new());
    for (k, v) in r.headers() {
        let k = k.as_str();
        // A HEAD answer keeps its Content-Length (FakeServer sends no body for it).
        if k != "connection"
            && k != "transfer-encoding"
            && (req.method == "HEAD" || k != "content-length")
        {
            rep = rep.header(k, v.to_str().unwrap());
        }
    }
    rep.body = r.bytes().unwrap().to_vec();
    rep
}

/// A client for [`forward`] that does not follow redirects (the caller sees them).
pub fn forwarding_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}
