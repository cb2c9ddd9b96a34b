//! Real Dragonfly peers for the P2P test and benchmark: a dfdaemon v2 launcher, and a
//! stand-in scheduler.
//!
//! dfdaemon does not start without a scheduler, and Dragonfly's scheduler is Go, which cannot
//! be built here. [`standin`] is *our test code*, not Dragonfly's: a minimal scheduler built
//! from the `dragonfly-api` crate's protos. It answers the gRPC health check and
//! AnnounceHost, tells a task's first peer to go back to source, and gives later peers the
//! peers that finished the task. Nothing else.
//!
//! Included with `#[path]` by tests/p2p_dragonfly.rs and benches/p2p.rs (feature `p2p-test`).
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port (bound on 127.0.0.1, then released; loopback peers bind it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` every 250 ms until it holds; panics after `secs`.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not after {secs} s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A one-worker runtime for [`standin::serve`].
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

pub mod standin {

    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use dragonfly_api::common::v2::{
        CachePeer, CacheTask, Host, Peer, PersistentCachePeer, PersistentCacheTask, PersistentPeer,
        PersistentTask, Task,
    };
    use dragonfly_api::scheduler::v2::announce_peer_request::Request as In;
    use dragonfly_api::scheduler::v2::announce_peer_response::Response as Out;
    use dragonfly_api::scheduler::v2::scheduler_server::{Scheduler, SchedulerServer};
    use dragonfly_api::scheduler::v2::*;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};

    /// One scheduling answer, for the test's assertions.
    #[derive(Clone, Debug)]
    pub struct Decision {
        pub host: String,
        /// Host ids of the candidate parents given; empty = back to source.
        pub parents: Vec<String>,
    }

    #[derive(Default)]
    pub struct State {
        hosts: HashMap<String, Host>,
        /// Task id → (peer id, host id) of the peers that finished it.
        finished: HashMap<String, Vec<(String, String)>>,
        pub decisions: Vec<Decision>,
    }

    impl State {
        /// Host ids that finished some task, and the host id announced for `ip`.
        pub fn finished_hosts(&self) -> Vec<String> {
            self.finished
                .values()
                .flatten()
                .map(|(_, h)| h.clone())
                .collect()
        }

        pub fn host_of(&self, ip: &str) -> Option<String> {
            self.hosts
                .values()
                .find(|h| h.ip == ip)
                .map(|h| h.id.clone())
        }

        fn on_message(&mut self, m: &AnnouncePeerRequest) -> Option<AnnouncePeerResponse> {
            match &m.request {
                Some(In::RegisterPeerRequest(_)) | Some(In::ReschedulePeerRequest(_)) => {
                    let rescheduled = matches!(m.request, Some(In::ReschedulePeerRequest(_)));
                    let parents: Vec<Peer> = if rescheduled {
                        Vec::new()
                    } else {
                        self.finished
                            .get(&m.task_id)
                            .into_iter()
                            .flatten()
                            .filter(|(_, h)| *h != m.host_id)
                            .filter_map(|(p, h)| {
                                Some(Peer {
                                    id: p.clone(),
                                    host: Some(self.hosts.get(h)?.clone()),
                                    ..Default::default()
                                })
                            })
                            .collect()
                    };
                    self.decisions.push(Decision {
                        host: m.host_id.clone(),
                        parents: parents
                            .iter()
                            .filter_map(|p| p.host.as_ref().map(|h| h.id.clone()))
                            .collect(),
                    });
                    let response = if parents.is_empty() {
                        Out::NeedBackToSourceResponse(NeedBackToSourceResponse {
                            description: Some("stand-in: no peer has finished this task".into()),
                        })
                    } else {
                        Out::NormalTaskResponse(NormalTaskResponse {
                            candidate_parents: parents,
                        })
                    };
                    Some(AnnouncePeerResponse {
                        response: Some(response),
                    })
                }
                Some(In::DownloadPeerFinishedRequest(_))
                | Some(In::DownloadPeerBackToSourceFinishedRequest(_)) => {
                    self.finished
                        .entry(m.task_id.clone())
                        .or_default()
                        .push((m.peer_id.clone(), m.host_id.clone()));
                    None
                }
                _ => None,
            }
        }
    }

    #[derive(Clone, Default)]
    pub struct StandIn {
        pub state: Arc<Mutex<State>>,
    }

    /// The trait has ~35 methods; everything but the few dfdaemon needs here answers
    /// UNIMPLEMENTED. (Generated as one impl so `async_trait` sees every method.)
    macro_rules! scheduler_impl {
        ({ $($items:tt)* } unsupported { $($name:ident($req:ty) -> $resp:ty;)* }) => {
            #[tonic::async_trait]
            impl Scheduler for StandIn {
                $($items)*
                $(async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(concat!("stand-in scheduler: ", stringify!($name))))
                })*
            }
        };
    }

    type Stream<T> = ReceiverStream<Result<T, Status>>;

    scheduler_impl!({
        type AnnouncePeerStream = Stream<AnnouncePeerResponse>;
        type AnnounceCachePeerStream = Stream<AnnounceCachePeerResponse>;
        type AnnouncePersistentPeerStream = Stream<AnnouncePersistentPeerResponse>;
        type AnnouncePersistentCachePeerStream = Stream<AnnouncePersistentCachePeerResponse>;

        async fn announce_peer(
            &self,
            req: Request<Streaming<AnnouncePeerRequest>>,
        ) -> Result<Response<Self::AnnouncePeerStream>, Status> {
            let mut inbound = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let state = self.state.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    let answer = state.lock().unwrap().on_message(&m);
                    if let Some(a) = answer {
                        if tx.send(Ok(a)).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }

        async fn announce_host(
            &self,
            req: Request<AnnounceHostRequest>,
        ) -> Result<Response<()>, Status> {
            if let Some(h) = req.into_inner().host {
                self.state.lock().unwrap().hosts.insert(h.id.clone(), h);
            }
            Ok(Response::new(()))
        }

        async fn delete_host(&self, _: Request<DeleteHostRequest>) -> Result<Response<()>, Status> {
            Ok(Response::new(()))
        }

        async fn delete_peer(&self, _: Request<DeletePeerRequest>) -> Result<Response<()>, Status> {
            Ok(Response::new(()))
        }

        async fn delete_task(&self, _: Request<DeleteTaskRequest>) -> Result<Response<()>, Status> {
            Ok(Response::new(()))
        }
    } unsupported {
        stat_peer(StatPeerRequest) -> Peer;
        stat_task(StatTaskRequest) -> Task;
        list_hosts(ListHostsRequest) -> ListHostsResponse;
        announce_cache_peer(Streaming<AnnounceCachePeerRequest>) -> Self::AnnounceCachePeerStream;
        stat_cache_peer(StatCachePeerRequest) -> CachePeer;
        delete_cache_peer(DeleteCachePeerRequest) -> ();
        stat_cache_task(StatCacheTaskRequest) -> CacheTask;
        delete_cache_task(DeleteCacheTaskRequest) -> ();
        announce_persistent_peer(Streaming<AnnouncePersistentPeerRequest>) -> Self::AnnouncePersistentPeerStream;
        stat_persistent_peer(StatPersistentPeerRequest) -> PersistentPeer;
        delete_persistent_peer(DeletePersistentPeerRequest) -> ();
        upload_persistent_task_started(UploadPersistentTaskStartedRequest) -> ();
        upload_persistent_task_finished(UploadPersistentTaskFinishedRequest) -> PersistentTask;
        upload_persistent_task_failed(UploadPersistentTaskFailedRequest) -> ();
        stat_persistent_task(StatPersistentTaskRequest) -> PersistentTask;
        delete_persistent_task(DeletePersistentTaskRequest) -> ();
        announce_persistent_cache_peer(Streaming<AnnouncePersistentCachePeerRequest>) -> Self::AnnouncePersistentCachePeerStream;
        stat_persistent_cache_peer(StatPersistentCachePeerRequest) -> PersistentCachePeer;
        delete_persistent_cache_peer(DeletePersistentCachePeerRequest) -> ();
        upload_persistent_cache_task_started(UploadPersistentCacheTaskStartedRequest) -> ();
        upload_persistent_cache_task_finished(UploadPersistentCacheTaskFinishedRequest) -> PersistentCacheTask;
        upload_persistent_cache_task_failed(UploadPersistentCacheTaskFailedRequest) -> ();
        stat_persistent_cache_task(StatPersistentCacheTaskRequest) -> PersistentCacheTask;
        delete_persistent_cache_task(DeletePersistentCacheTaskRequest) -> ();
        preheat_image(PreheatImageRequest) -> ();
        stat_image(StatImageRequest) -> StatImageResponse;
        preheat_file(PreheatFileRequest) -> ();
        stat_file(StatFileRequest) -> StatFileResponse;
    });

    /// Serve the stand-in (and the gRPC health service) on 127.0.0.1 from `rt`.
    pub fn serve(rt: &tokio::runtime::Runtime) -> (StandIn, SocketAddr) {
        let s = StandIn::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = s.clone();
        rt.spawn(async move {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            reporter.set_serving::<SchedulerServer<StandIn>>().await;
            let incoming = tonic::transport::server::TcpIncoming::from(
                tokio::net::TcpListener::from_std(listener).unwrap(),
            );
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(SchedulerServer::new(svc))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        (s, addr)
    }
}

/// One dfdaemon peer bound to `ip`, with its own dirs and ports.
pub struct Dfdaemon {
    child: Child,
    bin: OsString,
    dir: tempfile::TempDir,
    pub ip: &'static str,
    proxy: u16,
    health: u16,
    metrics: u16,
}

impl Dfdaemon {
    /// `use_tls`: the proxy rule's `useTLS` (dfdaemon fetches the origin over https
    /// what it was asked for over http).
    pub fn start(
        bin: &OsString,
        ip: &'static str,
        name: &str,
        scheduler: &str,
        use_tls: bool,
    ) -> Dfdaemon {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (upload, proxy, health, metrics, stats, tcp, quic) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let cfg = format!(
            "host:\n  hostname: {name}\n  ip: {ip}\n\
             server:\n  pluginDir: {d}/plugins\n  cacheDir: {d}/cache\n\
             download:\n  server:\n    socketPath: {d}/dfdaemon.sock\n\
             upload:\n  server:\n    ip: {ip}\n    port: {upload}\n\
             storage:\n  server:\n    ip: {ip}\n    tcpPort: {tcp}\n    quicPort: {quic}\n  dir: {d}/storage\n  keep: false\n\
             health:\n  server:\n    ip: {ip}\n    port: {health}\n\
             metrics:\n  server:\n    ip: {ip}\n    port: {metrics}\n\
             stats:\n  server:\n    ip: {ip}\n    port: {stats}\n\
             proxy:\n  server:\n    ip: {ip}\n    port: {proxy}\n  rules:\n    - regex: 'blobs/sha256.*'\n      useTLS: {use_tls}\n",
            d = d.display()
        );
        std::fs::write(d.join("dfdaemon.yaml"), cfg).unwrap();
        std::fs::write(
            d.join("dynconfig.yaml"),
            format!("scheduler:\n  addr: '{scheduler}'\n"),
        )
        .unwrap();
        let child = Self::spawn(bin, d);
        let mut me = Dfdaemon {
            child,
            bin: bin.clone(),
            dir,
            ip,
            proxy,
            health,
            metrics,
        };
        me.wait_healthy();
        me
    }

    fn spawn(bin: &OsString, d: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("stdout.log"))
            .unwrap();
        Command::new(bin)
            .arg("--config")
            .arg(d.join("dfdaemon.yaml"))
            .arg("--dynconfig")
            .arg(d.join("dynconfig.yaml"))
            .arg("--log-dir")
            .arg(d.join("log"))
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn DFDAEMON")
    }

    /// Stop the peer with `sig` and wait for it (its ports and dirs stay configured for
    /// [`Dfdaemon::restart`]). A peer still running after `limit` gets SIGKILL. Returns how
    /// long it took to exit, and whether it exited before `limit`.
    pub fn stop(&mut self, sig: i32, limit: Duration) -> (Duration, bool) {
        self.signal(sig);
        let t0 = Instant::now();
        let mut in_time = true;
        while self.child.try_wait().unwrap().is_none() {
            if in_time && t0.elapsed() > limit {
                in_time = false;
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (t0.elapsed(), in_time)
    }

    /// Send `sig` to the peer without waiting.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Start a second dfdaemon on this peer's config and dirs while this one still runs, and
    /// wait up to 30 s for it to exit. Returns its exit status (`None`: still running, then
    /// killed) and the last line it wrote.
    pub fn start_second(&self) -> (Option<std::process::ExitStatus>, String) {
        let before = self.stdout().len();
        let mut c = Self::spawn(&self.bin, self.dir.path());
        let t0 = Instant::now();
        let st = loop {
            if let Ok(Some(st)) = c.try_wait() {
                break Some(st);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = self.stdout();
        let line = out[before.min(out.len())..]
            .lines()
            .find(|l| l.contains("rror"))
            .unwrap_or("")
            .to_string();
        (st, line)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Start the killed peer again on the same ports and dirs, respawning while it exits
    /// early (e.g. a port still held). Returns how many spawns it took and the time until
    /// it answered its health check; panics after `secs`.
    pub fn restart(&mut self, secs: u64) -> (u32, Duration) {
        let t0 = Instant::now();
        let url = format!("http://{}:{}/healthy", self.ip, self.health);
        let mut spawns = 0;
        loop {
            spawns += 1;
            self.child = Self::spawn(&self.bin, self.dir.path());
            loop {
                if reqwest::blocking::get(&url).is_ok_and(|r| r.status().is_success()) {
                    return (spawns, t0.elapsed());
                }
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                self.not_yet(t0, secs, spawns);
                std::thread::sleep(Duration::from_millis(200));
            }
            self.not_yet(t0, secs, spawns);
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Panics once `secs` have passed since `t0` in [`Dfdaemon::restart`].
    fn not_yet(&self, t0: Instant, secs: u64, spawns: u32) {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "dfdaemon on {} not back after {secs} s ({spawns} spawns): {}",
            self.ip,
            self.logs()
        );
    }

    fn wait_healthy(&mut self) {
        let url = format!("http://{}:{}/healthy", self.ip, self.health);
        let t0 = Instant::now();
        loop {
            if reqwest::blocking::get(&url).is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("dfdaemon on {} exited ({st}): {}", self.ip, self.logs());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "dfdaemon on {} not healthy after 60 s: {}",
                self.ip,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn logs(&self) -> String {
        let mut s = self.stdout();
        for e in walk(&self.dir.path().join("log")) {
            s += &std::fs::read_to_string(e).unwrap_or_default();
        }
        let n = s.len();
        s[n.saturating_sub(6000)..].to_string()
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.proxy)
    }

    pub fn ping_url(&self) -> String {
        format!("http://{}:{}/healthy", self.ip, self.health)
    }

    /// dfdaemon's Prometheus text.
    pub fn metrics(&self) -> String {
        reqwest::blocking::get(format!("http://{}:{}/metrics", self.ip, self.metrics))
            .and_then(|r| r.text())
            .unwrap_or_default()
    }
}

impl Drop for Dfdaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Regular files under `dir`, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}
