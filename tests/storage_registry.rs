//! Registry backend against a real Debian docker-registry on loopback, and against scripted
//! servers for Bearer tokens, redirects, retries, timeouts and the Dragonfly proxy mode.

#[path = "common/registry.rs"]
mod registry;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rafs_virtiofsd::storage::registry::{
    MirrorOptions, ProxyOptions, RegistryBackend, RegistryOptions,
};
use rafs_virtiofsd::storage::{BlobBackend, StorageError};
use registry::{pseudo_random, range_reply, FakeServer, Registry, Reply};

fn opts(host: &str, repo: &str) -> RegistryOptions {
    RegistryOptions {
        scheme: "http".into(),
        host: host.into(),
        repo: repo.into(),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        retry_limit: 2,
        ..Default::default()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn real_registry_range_reads() {
    let reg = Registry::start(None);
    let data = pseudo_random(300_000, 7);
    let id = reg.push_blob("test/lazy", &data);
    let be = RegistryBackend::new(opts(&reg.host(), "test/lazy")).unwrap();
    assert_eq!(be.blob_size(&id).unwrap(), data.len() as u64);
    for (off, len) in [
        (0usize, 1usize),
        (4096, 4096),
        (299_000, 1000),
        (12345, 100_000),
    ] {
        let mut buf = vec![0u8; len];
        be.read_range(&id, off as u64, &mut buf).unwrap();
        assert_eq!(buf, data[off..off + len], "range {off}+{len}");
    }
    // Only what was asked for crossed the wire.
    let served = reg.served_bytes(&id);
    assert_eq!(
        served,
        1 + 4096 + 1000 + 100_000,
        "access log: {}",
        std::fs::read_to_string(&reg.log).unwrap()
    );
    let missing = "0".repeat(64);
    let mut buf = [0u8; 10];
    assert!(matches!(
        be.read_range(&missing, 0, &mut buf),
        Err(StorageError::BlobNotFound(_))
    ));
    let m = be.metrics().to_json("registry");
    assert_eq!(m["read_count"], 5);
    assert_eq!(m["read_errors"], 1);
}

/// https with `skip_verify`: a registry with a self-signed certificate is read only when
/// verification is skipped; otherwise the read fails fast with a certificate error.
#[test]
fn https_registry_self_signed_needs_skip_verify() {
    let reg = Registry::start_tls();
    let data = pseudo_random(200_000, 11);
    let id = reg.push_blob("test/tls", &data);
    let mut o = opts(&reg.host(), "test/tls");
    o.scheme = "https".into();
    o.skip_verify = true;
    let be = RegistryBackend::new(o.clone()).unwrap();
    let mut buf = vec![0u8; 5000];
    be.read_range(&id, 1000, &mut buf).unwrap();
    assert_eq!(buf, data[1000..6000]);
    assert_eq!(reg.served_bytes(&id), 5000);

    o.skip_verify = false;
    let be = RegistryBackend::new(o.clone()).unwrap();
    let t0 = Instant::now();
    let e = be.read_range(&id, 0, &mut buf).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let msg = format!("{e}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    // Plain http against the https port is an error too, not a hang.
    o.scheme = "http".into();
    let be = RegistryBackend::new(o).unwrap();
    assert!(be.read_range(&id, 0, &mut buf).is_err());
}

#[test]
fn real_registry_basic_auth() {
    let reg = Registry::start(Some(("alice", "s3cret")));
    let data = pseudo_random(50_000, 3);
    let id = reg.push_blob("test/private", &data);
    let mut o = opts(&reg.host(), "test/private");
    // No credentials: a clear error, not a hang.
    let be = RegistryBackend::new(o.clone()).unwrap();
    let mut buf = vec![0u8; 100];
    let err = be.read_range(&id, 0, &mut buf).unwrap_err().to_string();
    assert!(err.contains("auth"), "{err}");
    o.auth = Some(b64("alice:s3cret"));
    let be = RegistryBackend::new(o.clone()).unwrap();
    be.read_range(&id, 1000, &mut buf).unwrap();
    assert_eq!(buf, data[1000..1100]);
    o.auth = Some(b64("alice:wrong"));
    let be = RegistryBackend::new(o).unwrap();
    assert!(be.read_range(&id, 0, &mut buf).is_err());
}

/// A registry that wants a Bearer token from its own token endpoint; tokens expire on demand.
fn token_registry(data: Arc<Vec<u8>>, valid: Arc<AtomicUsize>) -> FakeServer {
    let addr_cell: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
    let cell = addr_cell.clone();
    let srv = FakeServer::start("127.0.0.1", move |req| {
        let me = cell.get().unwrap();
        if req.path.starts_with("/token") {
            assert!(
                req.path.contains("scope=repository%3Aimg%3Apull"),
                "{}",
                req.path
            );
            assert_eq!(
                req.header("authorization"),
                Some(format!("Basic {}", b64("u:p")).as_str())
            );
            let n = valid.load(Ordering::SeqCst);
            return Reply::new(200, format!("{{\"token\":\"tok{n}\"}}"));
        }
        let want = format!("Bearer tok{}", valid.load(Ordering::SeqCst));
        if req.header("authorization") != Some(want.as_str()) {
            return Reply::new(401, "").header(
                "WWW-Authenticate",
                &format!(
                    "Bearer realm=\"http://{me}/token\",service=\"fake\",scope=\"repository:img:pull\""
                ),
            );
        }
        range_reply(req, &data)
    });
    addr_cell.set(srv.addr.clone()).unwrap();
    srv
}

#[test]
fn bearer_token_and_refresh_on_401() {
    let data = Arc::new(pseudo_random(20_000, 9));
    let valid = Arc::new(AtomicUsize::new(1));
    let srv = token_registry(data.clone(), valid.clone());
    let mut o = opts(&srv.addr, "img");
    o.auth = Some(b64("u:p"));
    let be = RegistryBackend::new(o).unwrap();
    let mut buf = vec![0u8; 500];
    be.read_range("abc", 100, &mut buf).unwrap();
    assert_eq!(buf, data[100..600]);
    // The token expires: the next read gets a 401, refreshes and succeeds.
    valid.store(2, Ordering::SeqCst);
    be.read_range("abc", 0, &mut buf).unwrap();
    assert_eq!(buf, data[..500]);
    let tokens = srv
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .count();
    assert_eq!(tokens, 2);
    assert_eq!(be.metrics().to_json("registry")["auth_refreshes"], 2);
}

/// A forwarding HTTP proxy (as dfdaemon is for blob GETs): it passes each request on,
/// headers and all, to the host it names.
fn forwarding_proxy() -> FakeServer {
    let http = registry::forwarding_client();
    FakeServer::start("127.0.0.1", move |req| {
        let host = req.header("host").unwrap().to_string();
        registry::forward(&http, &format!("http://{host}"), req, None, &[])
    })
}

/// Through the proxy, the origin's credentials still reach the registry: its 401 comes
/// back through the proxy and starts the token dance, and a token that expires is
/// refreshed the same way.
#[test]
fn bearer_tokens_reach_the_registry_through_the_proxy() {
    let data = Arc::new(pseudo_random(20_000, 23));
    let valid = Arc::new(AtomicUsize::new(1));
    let origin = token_registry(data.clone(), valid.clone());
    let proxy = forwarding_proxy();
    let mut o = opts(&origin.addr, "img");
    o.auth = Some(b64("u:p"));
    o.proxy = Some(ProxyOptions {
        url: format!("http://{}", proxy.addr),
        ping_url: String::new(),
        fallback: false,
        check_interval: Duration::from_secs(60),
        use_http: false,
        prefetch: false,
    });
    let be = RegistryBackend::new(o).unwrap();
    let mut buf = vec![0u8; 500];
    be.read_range("abc", 100, &mut buf).unwrap();
    assert_eq!(buf, data[100..600]);
    valid.store(2, Ordering::SeqCst);
    be.read_range("abc", 0, &mut buf).unwrap();
    assert_eq!(buf, data[..500]);
    let through: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/blobs/"))
        .collect();
    assert!(
        through
            .iter()
            .any(|r| r.header("authorization") == Some("Bearer tok1")),
        "the first token went through the proxy"
    );
    assert!(through
        .iter()
        .any(|r| r.header("authorization") == Some("Bearer tok2")));
    assert!(
        through
            .iter()
            .filter(|r| r.header("authorization").is_none())
            .count()
            >= 1,
        "the first request, without a token, got its 401 through the proxy"
    );
    assert_eq!(be.metrics().to_json("registry")["auth_refreshes"], 2);
    assert_eq!(
        be.metrics().to_json("registry")["proxy_read_bytes"].as_u64(),
        Some(1000)
    );
}

#[test]
fn redirect_to_another_host_drops_credentials() {
    let data = Arc::new(pseudo_random(10_000, 5));
    let d2 = data.clone();
    // Storage on another loopback address.
    let storage = FakeServer::start("127.0.0.2", move |req| range_reply(req, &d2));
    let loc = format!("http://{}/blob-storage/xyz", storage.addr);
    let origin = FakeServer::start("127.0.0.1", move |req| {
        if req.header("authorization").is_none() {
            return Reply::new(401, "").header("WWW-Authenticate", "Basic realm=\"r\"");
        }
        Reply::new(307, "").header("Location", &loc)
    });
    let mut o = opts(&origin.addr, "img");
    o.auth = Some(b64("u:p"));
    let be = RegistryBackend::new(o).unwrap();
    let mut buf = vec![0u8; 1000];
    be.read_range("abc", 2000, &mut buf).unwrap();
    assert_eq!(buf, data[2000..3000]);
    let seen = storage.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), None, "credentials leaked");
    assert_eq!(seen[0].header("range"), Some("bytes=2000-2999"));
}

#[test]
fn transient_errors_are_retried_with_a_bound() {
    let data = Arc::new(pseudo_random(5000, 11));
    let n = Arc::new(AtomicUsize::new(0));
    let (d2, n2) = (data.clone(), n.clone());
    let srv = FakeServer::start("127.0.0.1", move |req| {
        if n2.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::new(503, "busy")
        } else {
            range_reply(req, &d2)
        }
    });
    let be = RegistryBackend::new(opts(&srv.addr, "img")).unwrap();
    let mut buf = vec![0u8; 100];
    be.read_range("abc", 0, &mut buf).unwrap();
    assert_eq!(buf, data[..100]);
    // Always failing: gives up after retry_limit + 1 attempts.
    let always = FakeServer::start("127.0.0.1", |_| Reply::new(500, "no"));
    let be = RegistryBackend::new(opts(&always.addr, "img")).unwrap();
    let err = be.read_range("abc", 0, &mut buf).unwrap_err().to_string();
    assert!(err.contains("3 attempts"), "{err}");
    assert_eq!(always.requests().len(), 3);
}

#[test]
fn registry_down_or_stalled_fails_within_the_timeout() {
    // Nothing listens.
    let port = registry::free_port();
    let be = RegistryBackend::new(opts(&format!("127.0.0.1:{port}"), "img")).unwrap();
    let mut buf = vec![0u8; 100];
    let t0 = Instant::now();
    assert!(be.read_range("abc", 0, &mut buf).is_err());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // Accepts but never answers in time.
    let slow = FakeServer::start("127.0.0.1", |_| {
        let mut r = Reply::new(200, "late");
        r.delay = Duration::from_secs(30);
        r
    });
    let mut o = opts(&slow.addr, "img");
    o.timeout = Duration::from_millis(300);
    o.retry_limit = 1;
    let be = RegistryBackend::new(o).unwrap();
    let t0 = Instant::now();
    assert!(be.read_range("abc", 0, &mut buf).is_err());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn short_or_unranged_answers_are_errors() {
    let srv = FakeServer::start("127.0.0.1", |req| {
        if req.header("range") == Some("bytes=10-19") {
            Reply::new(206, "short")
        } else {
            Reply::new(200, vec![1u8; 100])
        }
    });
    let mut o = opts(&srv.addr, "img");
    o.retry_limit = 0;
    let be = RegistryBackend::new(o).unwrap();
    let mut buf = vec![0u8; 10];
    assert!(be.read_range("abc", 10, &mut buf).is_err(), "short body");
    assert!(be.read_range("abc", 50, &mut buf).is_err(), "Range ignored");
}

#[test]
fn proxy_is_used_and_fallback_reaches_the_origin() {
    let data = Arc::new(pseudo_random(8000, 13));
    let d2 = data.clone();
    let origin = FakeServer::start("127.0.0.1", move |req| range_reply(req, &d2));
    let d3 = data.clone();
    // A forwarding "dfdaemon": answers proxied requests itself.
    let proxy = FakeServer::start("127.0.0.1", move |req| {
        if req.path == "/ping" {
            Reply::new(200, "")
        } else {
            range_reply(req, &d3)
        }
    });
    let mut o = opts(&origin.addr, "img");
    o.proxy = Some(ProxyOptions {
        url: format!("http://{}", proxy.addr),
        ping_url: format!("http://{}/ping", proxy.addr),
        fallback: true,
        check_interval: Duration::from_millis(100),
        use_http: false,
        prefetch: false,
    });
    let be = RegistryBackend::new(o).unwrap();
    let mut buf = vec![0u8; 100];
    be.read_range("abc", 0, &mut buf).unwrap();
    assert_eq!(buf, data[..100]);
    assert!(proxy.requests().iter().any(|r| r.path.contains("/blobs/")));
    assert!(origin.requests().is_empty(), "went around the proxy");
    assert_eq!(
        be.metrics().to_json("registry")["proxy_read_bytes"].as_u64(),
        Some(100)
    );

    // Proxy down with fallback: the origin serves after the health check notices.
    let dead = registry::free_port();
    let mut o = opts(&origin.addr, "img");
    o.proxy = Some(ProxyOptions {
        url: format!("http://127.0.0.1:{dead}"),
        ping_url: format!("http://127.0.0.1:{dead}/ping"),
        fallback: true,
        check_interval: Duration::from_millis(50),
        use_http: false,
        prefetch: false,
    });
    let be = RegistryBackend::new(o).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    be.read_range("abc", 100, &mut buf).unwrap();
    assert_eq!(buf, data[100..200]);
    assert!(!origin.requests().is_empty());
    assert!(
        be.metrics().to_json("registry")["proxy_fallbacks"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

/// What dfdaemon v2 does when it cannot get a piece (issue: 200, an empty body and
/// `X-Dragonfly-Error-Type`), and other proxy answers that are not the bytes asked for (a
/// short 206, a whole-blob 200 to a range request): each is a failure, never data. With
/// `fallback` the origin answers the same request at once; without, the read fails.
#[test]
fn proxy_answers_that_are_not_the_range_fall_back_to_the_origin() {
    let data = Arc::new(pseudo_random(8000, 21));
    let d2 = data.clone();
    let origin = FakeServer::start("127.0.0.1", move |req| range_reply(req, &d2));
    let d3 = data.clone();
    let proxy = FakeServer::start("127.0.0.1", move |req| {
        if req.path == "/ping" {
            return Reply::new(200, "");
        }
        let r = range_reply(req, &d3);
        if req.header("range") == Some("bytes=0-99") {
            Reply::new(200, "").header("X-Dragonfly-Error-Type", "backend")
        } else if req.header("range") == Some("bytes=100-199") {
            Reply::new(206, r.body[..50].to_vec())
        } else {
            Reply::new(200, d3.to_vec())
        }
    });
    let proxy_opts = |fallback| ProxyOptions {
        url: format!("http://{}", proxy.addr),
        ping_url: format!("http://{}/ping", proxy.addr),
        fallback,
        check_interval: Duration::from_secs(60),
        use_http: false,
        prefetch: false,
    };
    let mut o = opts(&origin.addr, "img");
    o.proxy = Some(proxy_opts(true));
    let be = RegistryBackend::new(o).unwrap();
    let mut buf = vec![0u8; 100];
    for off in [0u64, 100, 300] {
        be.read_range("abc", off, &mut buf).unwrap();
        assert_eq!(buf, data[off as usize..off as usize + 100], "at {off}");
    }
    assert_eq!(
        origin.requests().len(),
        3,
        "each failed proxy answer went to the origin"
    );
    assert_eq!(
        be.metrics().to_json("registry")["proxy_fallbacks"].as_u64(),
        Some(3)
    );
    assert_eq!(
        be.metrics().to_json("registry")["proxy_read_bytes"].as_u64(),
        Some(0),
        "nothing the proxy sent was used"
    );
    // Without fallback: errors, not the proxy's bytes.
    let mut o = opts(&origin.addr, "img");
    o.proxy = Some(proxy_opts(false));
    o.retry_limit = 0;
    let be = RegistryBackend::new(o).unwrap();
    for off in [0u64, 100, 300] {
        let e = be.read_range("abc", off, &mut buf).unwrap_err().to_string();
        assert!(!e.is_empty());
    }
    assert_eq!(origin.requests().len(), 3, "no fallback without `fallback`");
}

/// With `prefetch`, proxied range requests carry `X-Dragonfly-Prefetch: true` (dfdaemon v2
/// shares ranges of 4 MiB or less only then), and requests straight to the origin never do.
/// Answers from dfdaemon's P2P engine are counted, and those from a peer that held the
/// whole blob are counted as hits.
#[test]
fn prefetch_header_goes_to_the_proxy_and_p2p_answers_are_counted() {
    let data = Arc::new(pseudo_random(8000, 29));
    let d2 = data.clone();
    let origin = FakeServer::start("127.0.0.1", move |req| range_reply(req, &d2));
    let d3 = data.clone();
    let proxy = FakeServer::start("127.0.0.1", move |req| {
        let r = range_reply(req, &d3).header("X-Dragonfly-Task-ID", "t1");
        match req.header("range") {
            Some("bytes=0-99") => r,
            _ => r.header("X-Dragonfly-Task-Download-Finished", "true"),
        }
    });
    for prefetch in [false, true] {
        let mut o = opts(&origin.addr, "img");
        o.proxy = Some(ProxyOptions {
            url: format!("http://{}", proxy.addr),
            check_interval: Duration::from_secs(60),
            prefetch,
            ..Default::default()
        });
        let be = RegistryBackend::new(o).unwrap();
        let mut buf = vec![0u8; 100];
        for off in [0u64, 100, 200] {
            be.read_range("abc", off, &mut buf).unwrap();
            assert_eq!(buf, data[off as usize..off as usize + 100]);
        }
        let m = be.metrics().to_json("registry");
        assert_eq!(m["proxy_p2p_reads"].as_u64(), Some(3));
        assert_eq!(m["proxy_p2p_hits"].as_u64(), Some(2));
        assert_eq!(m["proxy_read_bytes"].as_u64(), Some(300));
    }
    let flags: Vec<Option<String>> = proxy
        .requests()
        .iter()
        .map(|r| r.header("x-dragonfly-prefetch").map(str::to_owned))
        .collect();
    assert_eq!(flags.len(), 6);
    assert!(flags[..3].iter().all(Option::is_none), "{flags:?}");
    assert!(
        flags[3..].iter().all(|f| f.as_deref() == Some("true")),
        "{flags:?}"
    );
    assert!(origin.requests().is_empty());
}

#[test]
fn mirrors_fail_over_to_the_origin() {
    let data = Arc::new(pseudo_random(4000, 17));
    let d2 = data.clone();
    let origin = FakeServer::start("127.0.0.1", move |req| range_reply(req, &d2));
    let d3 = data.clone();
    let mirror = FakeServer::start("127.0.0.1", move |req| {
        assert_eq!(req.header("x-mirror"), Some("yes"));
        range_reply(req, &d3)
    });
    let dead = registry::free_port();
    let mut o = opts(&origin.addr, "img");
    o.mirrors = vec![
        MirrorOptions {
            host: format!("http://127.0.0.1:{dead}"),
            failure_limit: 1,
            health_check_interval: Duration::from_secs(60),
            ..Default::default()
        },
        MirrorOptions {
            host: format!("http://{}", mirror.addr),
            headers: [("X-Mirror".to_string(), "yes".to_string())].into(),
            ..Default::default()
        },
    ];
    let be = RegistryBackend::new(o).unwrap();
    let mut buf = vec![0u8; 100];
    be.read_range("abc", 0, &mut buf).unwrap();
    assert_eq!(buf, data[..100]);
    assert_eq!(mirror.requests().len(), 1, "the healthy mirror serves");
    assert!(origin.requests().is_empty());
}
