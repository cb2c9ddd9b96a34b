//! Helpers shared by the daemon's integration tests: spawning the binary and speaking
//! HTTP/1.1 over a unix socket.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the daemon binary built by cargo for the tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rafs-virtiofsd"))
}

/// A running daemon, killed on drop.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    pub fn spawn(args: &[&str]) -> Daemon {
        let child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn rafs-virtiofsd");
        Daemon { child }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` and waits up to `limit` for the exit. Returns the time it took, or None.
    pub fn signal_and_wait(&mut self, sig: i32, limit: Duration) -> Option<(Duration, i32)> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some((t0.elapsed(), st.code().unwrap_or(-1)));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `p` exists.
pub fn wait_for_path(p: &Path, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// A keep-alive HTTP/1.1 client connection over a unix socket.
pub struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    pub fn connect(p: &Path) -> Client {
        let s = UnixStream::connect(p).expect("connect API socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    /// Sends raw request bytes and reads one response.
    pub fn raw(&mut self, req: &[u8]) -> HttpResponse {
        self.w.write_all(req).unwrap();
        self.read_response()
    }

    /// Sends a request. `body` None: no body and no Content-Length.
    pub fn request(&mut self, method: &str, target: &str, body: Option<&str>) -> HttpResponse {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: unix\r\nContent-Type: application/json\r\n"
        );
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        self.raw(req.as_bytes())
    }

    pub fn read_response(&mut self) -> HttpResponse {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            self.r.read_line(&mut l).unwrap();
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse::<usize>().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        HttpResponse {
            status,
            headers,
            body,
        }
    }
}

/// One request on a fresh connection.
pub fn http(p: &Path, method: &str, target: &str, body: Option<&str>) -> HttpResponse {
    Client::connect(p).request(method, target, body)
}

/// Waits until `GET /api/v1/daemon` answers RUNNING.
pub fn wait_running(api: &Path, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if api.exists() {
            if let Ok(s) = UnixStream::connect(api) {
                drop(s);
                let r = http(api, "GET", "/api/v1/daemon", None);
                if r.status == 200 && r.json()["state"] == "RUNNING" {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A FUSE-mode daemon mounted on a temporary dir, optionally sharing `shared` at its root;
/// unmounted on drop.
pub struct FuseMount {
    pub d: Option<Daemon>,
    pub mnt: PathBuf,
    pub api: PathBuf,
    _dir: tempfile::TempDir,
}

impl FuseMount {
    pub fn new(shared: Option<&Path>) -> FuseMount {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let api = dir.path().join("api.sock");
        let mut args = vec![
            "fuse".to_string(),
            "--mountpoint".into(),
            mnt.display().to_string(),
            "--apisock".into(),
            api.display().to_string(),
            "--log-level".into(),
            "warn".into(),
        ];
        if let Some(s) = shared {
            args.push("--shared-dir".into());
            args.push(s.display().to_string());
        }
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let d = Daemon::spawn(&argv);
        assert!(
            wait_running(&api, Duration::from_secs(10)),
            "FUSE daemon not running"
        );
        FuseMount {
            d: Some(d),
            mnt,
            api,
            _dir: dir,
        }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Some(mut d) = self.d.take() {
            if d.signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
                .is_none()
            {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.mnt)
                    .status();
            }
        }
    }
}
