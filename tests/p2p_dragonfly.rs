//! P2P through real Dragonfly peers (dfdaemon v2, `DFDAEMON`): two "hosts" on loopback,
//! A on 127.0.0.1 and B on 127.0.0.2, each with its own RAFS reader, cache dir and dfdaemon,
//! over one real docker-registry.
//!
//! - Host A (a `rafs-virtiofsd fuse` process) reads the whole image cold.
//! - Host B (the same RAFS code in this process, so the test can stop the registry between
//!   two reads and read B's counters) then reads the same files. The registry's access log
//!   must show B fetched at most 10% of the bytes A fetched, and every byte matches.
//! - The registry goes down while B reads: B's reads are served from A's peer, and a blob
//!   nobody holds gives EIO within the timeout, never a wrong byte.
//!
//! The scheduler the peers talk to is a stand-in, our test code (tests/common/dragonfly.rs
//! says what it does and why).
//!
//! Built with `--features p2p-test` (the API crate needs `protoc`); hack/test.sh turns the
//! feature on when DFDAEMON is set. Without either, the test reports itself skipped.

#[cfg(not(feature = "p2p-test"))]
#[path = "common/skip.rs"]
mod skip;
#[cfg(feature = "p2p-test")]
use rafs_support::skip;

#[cfg(feature = "p2p-test")]
#[path = "common/builder.rs"]
mod builder_common;
#[cfg(feature = "p2p-test")]
#[path = "common/dragonfly.rs"]
mod dragonfly;
#[cfg(feature = "p2p-test")]
mod rafs_support;
#[cfg(feature = "p2p-test")]
#[path = "common/registry.rs"]
mod registry;

#[cfg(feature = "p2p-test")]
mod p2p {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use rafs_virtiofsd::config::RafsConfig;
    use rafs_virtiofsd::fs::rafs::RafsFs;
    use rafs_virtiofsd::rafs::RafsImage;

    use super::builder_common::{rafs_image, run, served_manifest};
    use super::dragonfly::{runtime, standin, wait_for, walk, Dfdaemon};
    use super::rafs_support::{lookup_path, read_all};
    use super::registry::Registry;

    /// `rafs-image create` of a mktree.py tree; returns (source dir, bootstrap, blob dir).
    fn build_image(
        work: &Path,
        name: &str,
        seed: &str,
        big_mib: &str,
        files: &str,
    ) -> (PathBuf, PathBuf, PathBuf) {
        let src = work.join(format!("{name}-src"));
        run(Command::new("python3")
            .arg(super::builder_common::tools().join("mktree.py"))
            .arg(&src)
            .arg(seed)
            .args(["--big", big_mib, "--files", files, "--chunk", "1048576"]));
        let boot = work.join(format!("{name}.boot"));
        let blobs = work.join(format!("{name}-blobs"));
        run(rafs_image()
            .arg("create")
            .args(["--chunk-size", "0x100000", "--bootstrap"])
            .arg(&boot)
            .arg("--blob-dir")
            .arg(&blobs)
            .arg(&src));
        (src, boot, blobs)
    }

    fn push(reg: &Registry, boot: &Path, blobs: &Path, repo: &str) -> Vec<(String, u64)> {
        let img = RafsImage::open(boot).unwrap();
        img.blobs()
            .iter()
            .map(|b| {
                let data = std::fs::read(blobs.join(&b.blob_id)).unwrap();
                assert_eq!(reg.push_blob(repo, &data), b.blob_id);
                (b.blob_id.clone(), data.len() as u64)
            })
            .collect()
    }

    fn backend_json(reg: &str, repo: &str, peer: &Dfdaemon) -> serde_json::Value {
        serde_json::json!({"type": "registry", "config": {
            "host": reg, "repo": repo, "scheme": "http",
            "timeout": 3, "connect_timeout": 1, "retry_limit": 1,
            "proxy": {"url": peer.proxy_url(), "ping_url": peer.ping_url(), "fallback": true,
                      "check_interval": 5, "use_http": false, "prefetch": true}
        }})
    }

    fn rafs_config(backend: serde_json::Value, cache: &Path) -> RafsConfig {
        let c = serde_json::json!({
            "device": {
                "backend": backend,
                "cache": {"type": "blobcache", "config": {"work_dir": cache}}
            },
            "mode": "direct", "digest_validate": true, "iostats_files": false,
            "enable_xattr": true
        });
        let c = RafsConfig::from_str(&c.to_string()).unwrap();
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
        c
    }

    /// Read `rel` (a path relative to the image root) through `fs`.
    fn read_path(fs: &RafsFs, rel: &Path) -> std::io::Result<Vec<u8>> {
        let (ino, size) = lookup_path(fs, rel)?;
        read_all(fs, ino, size, 128 * 1024)
    }

    /// Read every file of `src` through `fs`, failing on any error or wrong byte.
    fn read_tree_through(fs: &RafsFs, src: &Path) {
        for f in walk(src) {
            let rel = f.strip_prefix(src).unwrap();
            let got = read_path(fs, rel).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
            assert!(
                got == std::fs::read(&f).unwrap(),
                "{}: wrong bytes",
                rel.display()
            );
        }
    }

    /// The registry's credentials go through the peer: its 401 comes back through dfdaemon
    /// and starts the Basic dance, and dfdaemon's back-to-source requests carry them.
    pub fn basic_auth_through_the_peer(bin: OsString) {
        let rt = runtime();
        let (_sched, sched_addr) = standin::serve(&rt);
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let reg = Registry::start(Some(("p2puser", "p2ppass")));
        let (src, boot, blobs) = build_image(w, "auth", "13", "6", "40");
        push(&reg, &boot, &blobs, "p2p/auth");
        let peer = Dfdaemon::start(
            &bin,
            "127.0.0.1",
            "host-auth",
            &sched_addr.to_string(),
            false,
        );
        let mut backend = backend_json(&reg.host(), "p2p/auth", &peer);
        backend["config"]["auth"] = base64_of("p2puser:p2ppass").into();
        backend["config"]["proxy"]["fallback"] = false.into();
        let cache = w.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let fs = RafsFs::open(&boot, &rafs_config(backend, &cache)).unwrap();
        read_tree_through(&fs, &src);
        let m = &fs.metrics()["backend"];
        assert!(m["auth_refreshes"].as_u64().unwrap() >= 1, "{m}");
        assert!(m["proxy_p2p_reads"].as_u64().unwrap() > 0, "{m}");
        assert_eq!(m["proxy_fallbacks"].as_u64(), Some(0), "{m}");
        // The registry (auth on every path) answered dfdaemon's blob requests: first 401,
        // then, with our credentials passed through, data.
        let log = std::fs::read_to_string(&reg.log).unwrap();
        let blob_lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("/blobs/sha256:"))
            .collect();
        assert!(
            blob_lines.iter().any(|l| l.contains("\" 401 ")),
            "no 401 for a blob request: {blob_lines:?}"
        );
        assert!(
            blob_lines
                .iter()
                .any(|l| l.contains("\" 200 ") || l.contains("\" 206 ")),
            "no authenticated blob request succeeded: {blob_lines:?}"
        );
    }

    /// An https registry. With `use_http` our daemon asks dfdaemon for the http URL and a
    /// `useTLS` rule makes dfdaemon fetch it over https: P2P answers, and our side needs no
    /// certificate. Without `use_http` the request is a CONNECT tunnel, which dfdaemon
    /// intercepts with a certificate of its own: we refuse it unless `skip_verify` is set.
    pub fn use_http_with_a_tls_rule(bin: OsString) {
        let rt = runtime();
        let (_sched, sched_addr) = standin::serve(&rt);
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let reg = Registry::start_tls();
        let (src, boot, blobs) = build_image(w, "tls", "14", "6", "40");
        push(&reg, &boot, &blobs, "p2p/tls");
        let peer = Dfdaemon::start(&bin, "127.0.0.1", "host-tls", &sched_addr.to_string(), true);
        let open = |use_http: bool, skip_verify: bool| {
            let mut backend = backend_json(&reg.host(), "p2p/tls", &peer);
            backend["config"]["scheme"] = "https".into();
            backend["config"]["skip_verify"] = skip_verify.into();
            backend["config"]["proxy"]["use_http"] = use_http.into();
            backend["config"]["proxy"]["fallback"] = false.into();
            let cache = w.join(format!("cache-{use_http}-{skip_verify}"));
            std::fs::create_dir_all(&cache).unwrap();
            RafsFs::open(&boot, &rafs_config(backend, &cache)).unwrap()
        };
        let fs = open(true, false);
        read_tree_through(&fs, &src);
        let m = &fs.metrics()["backend"];
        assert!(m["proxy_p2p_reads"].as_u64().unwrap() > 0, "use_http: {m}");
        // A tunnel: dfdaemon's own certificate is not the registry's.
        let fs = open(false, false);
        let f = walk(&src)
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let e = read_path(&fs, f.strip_prefix(&src).unwrap()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        // Trusting anything, the intercepted tunnel is served P2P too.
        let fs = open(false, true);
        read_tree_through(&fs, &src);
        let m = &fs.metrics()["backend"];
        assert!(
            m["proxy_p2p_reads"].as_u64().unwrap() > 0,
            "intercepted tunnel: {m}"
        );
    }

    fn base64_of(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    pub fn two_hosts_and_an_outage(bin: OsString) {
        let rt = runtime();
        let (sched, sched_addr) = standin::serve(&rt);
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let mut reg = Registry::start(None);
        // ~80 MiB of mostly random data: one 4 MiB piece is 5% of it.
        let (src, boot, blobs) = build_image(w, "img", "11", "64", "300");
        let ids = push(&reg, &boot, &blobs, "p2p/img");
        // A second image that nobody reads before the registry goes down.
        let (src2, boot2, blobs2) = build_image(w, "other", "12", "2", "20");
        push(&reg, &boot2, &blobs2, "p2p/other");

        let a = Dfdaemon::start(&bin, "127.0.0.1", "host-a", &sched_addr.to_string(), false);
        let b = Dfdaemon::start(&bin, "127.0.0.2", "host-b", &sched_addr.to_string(), false);
        wait_for("both peers announced", 30, || {
            let st = sched.state.lock().unwrap();
            st.host_of("127.0.0.1").is_some() && st.host_of("127.0.0.2").is_some()
        });
        let (host_a, host_b) = {
            let st = sched.state.lock().unwrap();
            (
                st.host_of("127.0.0.1").unwrap(),
                st.host_of("127.0.0.2").unwrap(),
            )
        };

        // The reference: the same image over the local blob dir.
        let fuse = env!("CARGO_BIN_EXE_rafs-virtiofsd");
        let want = served_manifest(
            &[fuse, "fuse"],
            serde_json::json!({"type": "localfs", "config": {"dir": blobs}}),
            &boot,
            &w.join("ref"),
            &[],
        );
        // Host A: a whole cold read through its peer.
        let got_a = served_manifest(
            &[fuse, "fuse"],
            backend_json(&reg.host(), "p2p/img", &a),
            &boot,
            &w.join("host-a"),
            &[],
        );
        super::builder_common::assert_same(&got_a, &want, "host A through dfdaemon");
        // Its peer finishes the whole blob (the prefetch our daemon asked for).
        wait_for("host A's peer holds the blob", 120, || {
            sched
                .state
                .lock()
                .unwrap()
                .finished_hosts()
                .contains(&host_a)
        });
        let a_bytes: u64 = ids.iter().map(|(id, _)| reg.served_bytes(id)).sum();
        let blob_len: u64 = ids.iter().map(|(_, l)| l).sum();
        assert!(
            a_bytes >= blob_len,
            "host A fetched {a_bytes} of a {blob_len}-byte blob"
        );

        // Host B: first file, then the registry goes down, then the rest.
        let cache_b = w.join("host-b-cache");
        std::fs::create_dir_all(&cache_b).unwrap();
        let fs_b = RafsFs::open(
            &boot,
            &rafs_config(backend_json(&reg.host(), "p2p/img", &b), &cache_b),
        )
        .unwrap();
        let files = walk(&src);
        let big = files
            .iter()
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap()
            .clone();
        let first = read_path(&fs_b, big.strip_prefix(&src).unwrap()).unwrap();
        assert!(
            first == std::fs::read(&big).unwrap(),
            "{}: wrong bytes",
            big.display()
        );
        let b_bytes: u64 = ids.iter().map(|(id, _)| reg.served_bytes(id)).sum::<u64>() - a_bytes;
        reg.stop();
        let mut bad = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap();
            match read_path(&fs_b, rel) {
                Ok(d) if d == std::fs::read(f).unwrap() => {}
                Ok(_) => panic!("{}: WRONG BYTES from host B", rel.display()),
                Err(e) => bad.push(format!("{}: {e}", rel.display())),
            }
        }
        let decisions = sched.state.lock().unwrap().decisions.clone();
        let m_b = fs_b.metrics();
        assert!(
            bad.is_empty(),
            "with the registry down, host B could not read {} files, e.g. {:?}\nscheduler: {decisions:?}\nB's backend: {}\nB's peer: {}",
            bad.len(),
            &bad[..bad.len().min(5)],
            m_b["backend"],
            b.logs()
        );
        assert!(
            b_bytes * 10 <= a_bytes,
            "host B fetched {b_bytes} bytes from the registry, host A {a_bytes}"
        );
        assert!(
            decisions
                .iter()
                .any(|d| d.host == host_b && d.parents.contains(&host_a)),
            "host B was never sent to host A's peer: {decisions:?}"
        );
        let backend = &m_b["backend"];
        assert!(
            backend["proxy_p2p_reads"].as_u64().unwrap_or(0) > 0,
            "no P2P answers counted: {backend}"
        );
        let peer_metrics = b.metrics();
        let traffic: Vec<&str> = peer_metrics
            .lines()
            .filter(|l| l.contains("download_traffic") && !l.starts_with('#'))
            .collect::<Vec<_>>();
        eprintln!(
            "registry bytes: host A {a_bytes}, host B {b_bytes} ({:.1}%); B's backend {backend}; B's peer {traffic:?}",
            b_bytes as f64 * 100.0 / a_bytes as f64
        );

        // Nobody holds the other image and the registry is down: EIO in time.
        let cache_b2 = w.join("host-b-cache2");
        std::fs::create_dir_all(&cache_b2).unwrap();
        let fs_b2 = RafsFs::open(
            &boot2,
            &rafs_config(backend_json(&reg.host(), "p2p/other", &b), &cache_b2),
        )
        .unwrap();
        let f2 = walk(&src2)
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let t0 = Instant::now();
        let e = read_path(&fs_b2, f2.strip_prefix(&src2).unwrap()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "EIO took {:?}",
            t0.elapsed()
        );
        drop(rt);
    }
}

/// `DFDAEMON`, or `None` after reporting the running test skipped.
fn dfdaemon() -> Option<std::ffi::OsString> {
    let Some(bin) = std::env::var_os("DFDAEMON") else {
        skip::skip("DFDAEMON is not set (a dfdaemon v2 binary from dragonflyoss/client)");
        return None;
    };
    if cfg!(feature = "p2p-test") {
        Some(bin)
    } else {
        skip::skip(
            "built without --features p2p-test (hack/test.sh turns it on when DFDAEMON is set)",
        );
        None
    }
}

#[test]
fn second_host_reads_the_image_from_the_first_hosts_peer() {
    let Some(_bin) = dfdaemon() else { return };
    #[cfg(feature = "p2p-test")]
    p2p::two_hosts_and_an_outage(_bin);
}

#[test]
fn registry_credentials_work_through_the_peer() {
    let Some(_bin) = dfdaemon() else { return };
    #[cfg(feature = "p2p-test")]
    p2p::basic_auth_through_the_peer(_bin);
}

#[test]
fn use_http_with_a_tls_rule_shares_an_https_registry() {
    let Some(_bin) = dfdaemon() else { return };
    #[cfg(feature = "p2p-test")]
    p2p::use_http_with_a_tls_rule(_bin);
}
