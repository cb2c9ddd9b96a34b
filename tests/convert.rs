//! `rafs-image convert` and `check` against a real Debian docker-registry on 127.0.0.1:
//! source images pushed by skopeo (an independent client), converted registry to
//! registry, with and without Basic auth, multi-layer with whiteouts and opaque dirs,
//! multi-platform, idempotent re-runs, an interrupted push completed by a re-run, a chunk
//! dictionary, `check` on good and tampered conversions, and the other sources and
//! targets (OCI layout, docker save tar). With NYDUSD set, upstream nydusd serves a
//! converted image from the registry.

#[path = "common/builder.rs"]
mod builder_common;
#[path = "common/ociimg.rs"]
mod ociimg;
#[path = "common/registry.rs"]
mod registry;
#[path = "common/skip.rs"]
mod skip;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use ociimg::*;
use rafs_virtiofsd::convert::client::RegistryClient;
use rafs_virtiofsd::convert::{self, check, is_nydus_manifest};
use registry::Registry;

fn rafs_image(args: &[&str]) -> Output {
    rafs_image_with(args, Path::new("/nonexistent"))
}

/// `rafs-image ARGS` with `DOCKER_CONFIG=docker_config` (the tests never read the
/// caller's own docker config).
fn rafs_image_with(args: &[&str], docker_config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rafs-image"))
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .output()
        .unwrap()
}

/// `rafs-image convert --source SRC --target DST EXTRA…`, over plain http to registries.
fn convert_cmd(src: &str, dst: &str, extra: &[&str]) -> Output {
    image_cmd("convert", src, dst, extra)
}

/// `rafs-image check --source SRC --target DST EXTRA…`, over plain http to registries.
fn check_cmd(src: &str, dst: &str, extra: &[&str]) -> Output {
    image_cmd("check", src, dst, extra)
}

fn image_cmd(cmd: &str, src: &str, dst: &str, extra: &[&str]) -> Output {
    image_cmd_with(cmd, src, dst, extra, Path::new("/nonexistent"))
}

fn image_cmd_with(cmd: &str, src: &str, dst: &str, extra: &[&str], docker_config: &Path) -> Output {
    let local = |r: &str| r.starts_with("oci:") || r.starts_with("docker-archive:");
    let mut a = vec![cmd, "--source", src, "--target", dst];
    if !local(src) {
        a.push("--source-insecure");
    }
    if !local(dst) {
        a.push("--target-insecure");
    }
    a.extend_from_slice(extra);
    rafs_image_with(&a, docker_config)
}

fn ok(o: &Output) -> String {
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "failed: {s}");
    s
}

/// Push an OCI layout to the registry with skopeo.
fn skopeo_push(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let mut c = Command::new("skopeo");
    c.args([
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if let Some(cr) = creds {
        c.args(["--dest-creds", cr]);
    }
    let o = c
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo is needed; hack/setup.sh installs it");
    assert!(
        o.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn client(reg: &Registry, repo: &str) -> RegistryClient {
    let creds = reg.basic.as_ref().map(|(u, p)| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    });
    RegistryClient::new(&reg.host(), repo, true, creds).unwrap()
}

fn manifest_of(reg: &Registry, repo: &str, r: &str) -> Option<serde_json::Value> {
    client(reg, repo)
        .get_manifest(r)
        .unwrap()
        .map(|(b, _)| serde_json::from_slice(&b).unwrap())
}

fn count_log(reg: &Registry, needle: &str) -> usize {
    std::fs::read_to_string(&reg.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// The nydusify shape of a converted manifest (RAFS-FORMAT.md §1.3).
fn assert_nydus_shape(reg: &Registry, repo: &str, m: &serde_json::Value) {
    let pm: oci_spec::image::ImageManifest = serde_json::from_value(m.clone()).unwrap();
    assert!(is_nydus_manifest(&pm), "not detected as nydus: {m}");
    let layers = m["layers"].as_array().unwrap();
    let boot = layers.last().unwrap();
    assert_eq!(
        boot["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        boot["annotations"]["containerd.io/snapshot/nydus-bootstrap"],
        "true"
    );
    assert_eq!(
        boot["annotations"]["containerd.io/snapshot/nydus-fs-version"],
        "6"
    );
    for l in &layers[..layers.len() - 1] {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.nydus.blob.v1"
        );
        assert_eq!(
            l["annotations"]["containerd.io/snapshot/nydus-blob"],
            "true"
        );
        let d = l["digest"].as_str().unwrap();
        assert_eq!(
            client(reg, repo).head_blob(d).unwrap(),
            Some(l["size"].as_u64().unwrap()),
            "blob {d} is in the repository with its size"
        );
    }
    // Config: copied, with diff ids = blob digests + the bootstrap tar's.
    let cd = m["config"]["digest"].as_str().unwrap();
    let mut cfg = Vec::new();
    client(reg, repo)
        .get_blob(cd)
        .unwrap()
        .read_to_end(&mut cfg)
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(cfg["config"]["Cmd"][0], "/bin/sh", "config copied");
    let ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(ids.len(), layers.len());
    for (i, l) in layers[..layers.len() - 1].iter().enumerate() {
        assert_eq!(ids[i], l["digest"]);
    }
}

#[test]
fn registry_to_registry_with_whiteouts_rerun_check_and_unpack() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("src");
    write_layout(&lay, "v1", &[("amd64", sample_layers(1))]);
    let h = reg.host();
    skopeo_push(&lay, "v1", &format!("{h}/app:v1"), None);
    let src = format!("{h}/app:v1");
    let dst = format!("{h}/app:v1-nydus");
    let args = [
        "convert",
        "--source",
        &src,
        "--target",
        &dst,
        "--source-insecure",
        "--target-insecure",
        "--output-json",
    ];
    let o = rafs_image(&args);
    let r = json_of(&o);
    assert!(o.status.success());
    assert_eq!(r["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(r["manifests"][0]["layers"].as_array().unwrap().len(), 3);
    // 3 layer blobs + bootstrap layer + config.
    assert_eq!(r["blobs_pushed"], 5, "{r}");
    let m = manifest_of(&reg, "app", "v1-nydus").expect("target manifest");
    assert_nydus_shape(&reg, "app", &m);

    // The converted tree equals the OCI tree.
    let c = ok(&check_cmd(&src, &dst, &[]));
    assert!(c.contains("entries equal"), "{c}");

    // A re-run uploads nothing.
    let uploads = count_log(&reg, "POST /v2/app/blobs/uploads/");
    let o = rafs_image(&args);
    let r2 = json_of(&o);
    assert_eq!(r2["blobs_pushed"], 0, "{r2}");
    assert_eq!(r2["blobs_skipped"], 5, "{r2}");
    assert_eq!(count_log(&reg, "POST /v2/app/blobs/uploads/"), uploads);
    assert_eq!(r2["manifests"][0]["digest"], r["manifests"][0]["digest"]);

    // unpack of the converted image gives the OCI tree.
    let tarf = t.path().join("unpacked.tar");
    ok(&rafs_image(&[
        "unpack",
        "--source",
        &dst,
        "--source-insecure",
        "-o",
        tarf.to_str().unwrap(),
    ]));
    let src_store = convert::store::open_source(
        &convert::reference::ImageRef::parse(&src).unwrap(),
        true,
        None,
    )
    .unwrap();
    let (ms, _) = convert::resolve_manifests(src_store.as_ref(), &[], false).unwrap();
    let oci = check::oci_tree(src_store.as_ref(), &ms[0].2)
        .unwrap()
        .lines();
    let mut un = check::OciTree::default();
    un.apply_layer(0, &mut std::fs::File::open(&tarf).unwrap())
        .unwrap();
    let un: std::collections::BTreeMap<Vec<u8>, String> =
        un.lines().into_iter().map(|(k, (l, _))| (k, l)).collect();
    let diffs = check::compare(&oci, &un);
    assert!(diffs.is_empty(), "unpack differs: {diffs:#?}");

    // check fails, naming what differs, against an image with other content.
    let lay2 = t.path().join("src2");
    let mut other = sample_layers(1);
    other[2].0.push(E::File("var/extra", 0o644, b"x".to_vec()));
    other[1]
        .0
        .retain(|e| !matches!(e, E::File(".wh.deleted", ..)));
    write_layout(&lay2, "v1", &[("amd64", other)]);
    let o = check_cmd(&format!("oci:{}:v1", lay2.display()), &dst, &[]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("var/extra: missing in the nydus image"),
        "{out}"
    );
    assert!(out.contains("deleted: missing in the nydus image"), "{out}");
}

#[test]
fn basic_auth_from_flags_and_docker_config() {
    let reg = Registry::start(Some(("alice", "s3cret")));
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("src");
    write_layout(&lay, "v1", &[("amd64", sample_layers(2))]);
    let h = reg.host();
    skopeo_push(
        &lay,
        "v1",
        &format!("{h}/priv/app:v1"),
        Some("alice:s3cret"),
    );
    let src = format!("{h}/priv/app:v1");
    // No credentials: a clear error, and no manifest.
    let o = convert_cmd(&src, &format!("{h}/priv/app:n1"), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Basic auth") || err.contains("unauthorized"),
        "{err}"
    );
    // Flags.
    ok(&convert_cmd(
        &src,
        &format!("{h}/priv/app:n1"),
        &[
            "--source-creds",
            "alice:s3cret",
            "--target-creds",
            "alice:s3cret",
        ],
    ));
    // Docker config.
    let dc = t.path().join("docker");
    std::fs::create_dir_all(&dc).unwrap();
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        dc.join("config.json"),
        serde_json::json!({"auths": {h.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let dst = format!("{h}/priv/app:n2");
    ok(&image_cmd_with("convert", &src, &dst, &[], &dc));
    let m = manifest_of(&reg, "priv/app", "n2").unwrap();
    assert_nydus_shape(&reg, "priv/app", &m);
    ok(&image_cmd_with("check", &src, &dst, &[], &dc));
}

#[test]
fn bearer_token_registry_push_and_check() {
    let reg = Registry::start(None);
    let front = reg.bearer_front();
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("src");
    write_layout(&lay, "v1", &[("amd64", sample_layers(10))]);
    let src = format!("oci:{}:v1", lay.display());
    let dst = format!("{}/tok/app:v1", front.addr);
    let conv = |creds: &str| {
        convert_cmd(
            &src,
            &dst,
            &["--target-creds", creds, "--upload-chunk-size", "1048576"],
        )
    };
    let o = conv("alice:wrong");
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("token service answered 401"), "{e}");
    ok(&conv("alice:s3cret"));
    // Every upload request carried the token: the registry (behind the front) has it all.
    let m = manifest_of(&reg, "tok/app", "v1").unwrap();
    assert_nydus_shape(&reg, "tok/app", &m);
    let patches = front
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.header("authorization") == Some("Bearer tok-123"))
        .count();
    assert!(
        patches >= 3,
        "chunked uploads through the token front: {patches}"
    );
    ok(&check_cmd(&src, &dst, &["--target-creds", "alice:s3cret"]));
}

#[test]
fn multi_platform_index_all_one_and_merged() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("src");
    write_layout(
        &lay,
        "multi",
        &[("amd64", sample_layers(3)), ("arm64", sample_layers(4))],
    );
    let h = reg.host();
    skopeo_push(&lay, "multi", &format!("{h}/mp:multi"), None);
    let src = format!("{h}/mp:multi");
    let conv = |tag: &str, extra: &[&str]| {
        let d = format!("{h}/mp:{tag}");
        let mut a = vec![
            "convert",
            "--source",
            &src,
            "--target",
            &d,
            "--source-insecure",
            "--target-insecure",
        ];
        a.extend_from_slice(extra);
        ok(&rafs_image(&a));
        manifest_of(&reg, "mp", tag).unwrap()
    };
    // All platforms.
    let idx = conv("all", &[]);
    let ms = idx["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{idx}");
    assert_eq!(idx["annotations"]["org.example.test"], "index-annotation");
    let mut archs: Vec<&str> = ms
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    archs.sort();
    assert_eq!(archs, ["amd64", "arm64"]);
    for m in ms {
        let mm = manifest_of(&reg, "mp", m["digest"].as_str().unwrap()).unwrap();
        assert_nydus_shape(&reg, "mp", &mm);
    }
    let c = ok(&check_cmd(&src, &format!("{h}/mp:all"), &[]));
    assert_eq!(c.matches("entries equal").count(), 2, "{c}");
    // One platform.
    let one = conv("arm", &["--platform", "linux/arm64"]);
    let ms = one["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["platform"]["architecture"], "arm64");
    // OCI and nydus manifests side by side.
    let merged = conv("merged", &["--merge-platform"]);
    let ms = merged["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 4, "{merged}");
    let nydus: Vec<&serde_json::Value> = ms
        .iter()
        .filter(|m| m["artifactType"] == "application/vnd.nydus.image.manifest.v1+json")
        .collect();
    assert_eq!(nydus.len(), 2);
    for m in &nydus {
        assert_eq!(m["platform"]["os.features"][0], "nydus.remoteimage.v1");
    }
    let c = ok(&check_cmd(
        &format!("{h}/mp:merged"),
        &format!("{h}/mp:merged"),
        &[],
    ));
    assert_eq!(c.matches("entries equal").count(), 2, "{c}");
}

/// A TCP proxy in front of the registry that cuts every connection once `budget` bytes
/// went from client to registry; with `down`, it then refuses everything.
struct CuttingProxy {
    port: u16,
    budget: Arc<AtomicI64>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: u16, budget: i64, stay_down: bool) -> CuttingProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let budget = Arc::new(AtomicI64::new(budget));
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, d, s) = (budget.clone(), down.clone(), stop.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = c else { continue };
                if d.load(Ordering::Relaxed) {
                    drop(c);
                    continue;
                }
                let up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let (c2, up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                let (b, d) = (b.clone(), d.clone());
                std::thread::spawn(move || {
                    let mut c = c;
                    let mut up = up;
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let left = b.fetch_sub(n as i64, Ordering::Relaxed) - n as i64;
                        if left < 0 && left + n as i64 >= 0 {
                            // This read crossed the budget: cut here.
                            if stay_down {
                                d.store(true, Ordering::Relaxed);
                            }
                            let _ = c.shutdown(std::net::Shutdown::Both);
                            let _ = up.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        if up.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
                std::thread::spawn(move || {
                    let mut up2 = up2;
                    let mut c2 = c2;
                    let _ = std::io::copy(&mut up2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy {
            port,
            budget,
            down,
            stop,
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = (&self.budget, &self.down);
    }
}

#[test]
fn interrupted_push_leaves_no_manifest_and_a_rerun_completes_it() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("src");
    write_layout(&lay, "v1", &[("amd64", sample_layers(5))]);
    let src = format!("oci:{}:v1", lay.display());
    // The network dies for good after 1.5 MB went up: during the 3 MB layer's blob.
    let p = CuttingProxy::start(reg.port, 1_500_000, true);
    let via = format!("127.0.0.1:{}/cut:v1", p.port);
    let work = t.path().join("work");
    let work = work.to_str().unwrap();
    let o = convert_cmd(
        &src,
        &via,
        &[
            "--threads",
            "1",
            "--retries",
            "1",
            "--upload-chunk-size",
            "262144",
            "--work-dir",
            work,
        ],
    );
    assert!(!o.status.success(), "the push cannot finish");
    assert!(
        manifest_of(&reg, "cut", "v1").is_none(),
        "no manifest after a failed push"
    );
    drop(p);
    // A re-run straight to the registry completes it, reusing what arrived.
    let dst = format!("{}/cut:v1", reg.host());
    let r = json_of(&convert_cmd(
        &src,
        &dst,
        &["--threads", "1", "--output-json", "--work-dir", work],
    ));
    assert!(r["blobs_skipped"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["blobs_pushed"].as_u64().unwrap() >= 1, "{r}");
    // With the same --work-dir, the layers built before are reused, not read again.
    assert_eq!(r["bytes_read"], 0, "{r}");
    assert!(r["manifests"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["built"] == false));
    ok(&check_cmd(&src, &dst, &[]));

    // One cut mid-blob, then the network is back: the upload resumes where the registry
    // says it stopped, in the same run.
    let p = CuttingProxy::start(reg.port, 1_500_000, false);
    let via = format!("127.0.0.1:{}/resume:v1", p.port);
    let r = json_of(&convert_cmd(
        &src,
        &via,
        &[
            "--threads",
            "1",
            "--upload-chunk-size",
            "262144",
            "--output-json",
        ],
    ));
    assert!(r["upload_resumes"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["patches"].as_u64().unwrap() > 10, "chunked: {r}");
    ok(&check_cmd(&src, &format!("{}/resume:v1", reg.host()), &[]));
}

#[test]
fn chunk_dict_image_makes_the_second_version_small() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let h = reg.host();
    let l1 = t.path().join("v1");
    write_layout(&l1, "v1", &[("amd64", sample_layers(6))]);
    let mut v2 = sample_layers(6);
    v2[2]
        .0
        .push(E::File("var/new", 0o644, b"new in v2".to_vec()));
    let l2 = t.path().join("v2");
    write_layout(&l2, "v2", &[("amd64", v2)]);
    let r1 = json_of(&convert_cmd(
        &format!("oci:{}:v1", l1.display()),
        &format!("{h}/base:v1"),
        &["--output-json"],
    ));
    let r2 = json_of(&convert_cmd(
        &format!("oci:{}:v2", l2.display()),
        &format!("{h}/next:v2"),
        &["--chunk-dict", &format!("{h}/base:v1"), "--output-json"],
    ));
    let b1 = r1["bytes_pushed"].as_u64().unwrap();
    let b2 = r2["bytes_pushed"].as_u64().unwrap();
    let dict = r2["manifests"][0]["dict_blobs"].as_array().unwrap();
    assert!(!dict.is_empty(), "{r2}");
    // The dictionary's blobs were copied into the new repository, counted in b2; the new
    // layer blobs hold only what the dictionary lacks.
    let own: u64 = r2["manifests"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["blob_size"].as_u64().unwrap())
        .sum();
    assert!(own * 10 < b1, "own blobs {own} vs v1 {b1} ({b2} pushed)");
    ok(&check_cmd(
        &format!("oci:{}:v2", l2.display()),
        &format!("{h}/next:v2"),
        &[],
    ));
    // A dictionary given as a bootstrap file: its blobs must already be in the target.
    let dict = t.path().join("dict.boot");
    bootstrap_of(&reg, "base", "v1", &dict);
    let dict_arg = format!("bootstrap:local:{}", dict.display());
    let v2src = format!("oci:{}:v2", l2.display());
    let conv = |dst: &str| convert_cmd(&v2src, dst, &["--chunk-dict", &dict_arg]);
    let o = conv(&format!("{h}/elsewhere:v2"));
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("chunk dictionary blob") && e.contains("is not in"),
        "{e}"
    );
    assert!(manifest_of(&reg, "elsewhere", "v2").is_none());
    ok(&conv(&format!("{h}/base:v2")));
    ok(&check_cmd(&v2src, &format!("{h}/base:v2"), &[]));
}

/// Progress: bars on a terminal (run under `script`, which gives it a pty), plain lines
/// otherwise.
#[test]
fn progress_bars_on_a_tty_and_lines_otherwise() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("src");
    write_layout(&lay, "v1", &[("amd64", sample_layers(11))]);
    let src = format!("oci:{}:v1", lay.display());
    let o = convert_cmd(
        &src,
        &format!("oci:{}:n", t.path().join("a").display()),
        &[],
    );
    let plain = ok(&o);
    assert!(plain.contains("layer 1/3 "), "{plain}");
    assert!(plain.contains("manifest "), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "no escape codes off a terminal: {plain:?}"
    );
    let cmd = format!(
        "DOCKER_CONFIG=/nonexistent {} convert --source {src} --target oci:{}:n",
        env!("CARGO_BIN_EXE_rafs-image"),
        t.path().join("b").display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (bsdutils)");
    assert!(o.status.success(), "{o:?}");
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(tty.contains('\u{1b}'), "a terminal gets bars: {tty:?}");
    assert!(
        tty.contains("[=") || tty.contains("=]"),
        "a drawn bar: {tty:?}"
    );
}

#[test]
fn docker_archive_to_oci_layout_and_a_tampered_blob() {
    let t = tempfile::tempdir().unwrap();
    let ar = t.path().join("saved.tar");
    let layers: Vec<Vec<E>> = sample_layers(7).into_iter().map(|(e, _)| e).collect();
    write_docker_archive(&ar, &layers);
    let out = t.path().join("out");
    let src = format!("docker-archive:{}", ar.display());
    let dst = format!("oci:{}:nydus", out.display());
    ok(&convert_cmd(&src, &dst, &[]));
    let c = ok(&check_cmd(&src, &dst, &[]));
    assert!(c.contains("entries equal"), "{c}");
    // Flip one byte of the biggest blob: check fails with the digest, not a wrong tree.
    let blobs = out.join("blobs/sha256");
    let big: PathBuf = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut b = std::fs::read(&big).unwrap();
    b[100] ^= 1;
    std::fs::write(&big, b).unwrap();
    let o = check_cmd(&src, &dst, &[]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("wrong bytes") || e.contains("digest"), "{e}");
}

/// Mount `boot` with a nydusd-compatible daemon (`argv` up to its options: nydusd, or our
/// `rafs-virtiofsd fuse`) over the registry backend, and return the treemanifest.py lines
/// of the mounted tree by path.
fn served_tree(
    argv: &[&str],
    reg: &Registry,
    repo: &str,
    boot: &Path,
    work: &Path,
) -> std::collections::BTreeMap<Vec<u8>, String> {
    let lines = builder_common::served_manifest(
        argv,
        serde_json::json!({"type": "registry", "config": {
            "host": reg.host(), "repo": repo, "scheme": "http",
            "timeout": 5, "connect_timeout": 5, "retry_limit": 1
        }}),
        boot,
        work,
        &[],
    );
    lines
        .lines()
        .map(|l| {
            (
                l.split(' ').next().unwrap().as_bytes().to_vec(),
                l.to_string(),
            )
        })
        .collect()
}

/// The OCI tree of an image layout's tagged manifest.
fn oci_lines(src: &str) -> std::collections::BTreeMap<Vec<u8>, (String, bool)> {
    let s = convert::store::open_source(
        &convert::reference::ImageRef::parse(src).unwrap(),
        false,
        None,
    )
    .unwrap();
    let (ms, _) = convert::resolve_manifests(s.as_ref(), &[], false).unwrap();
    check::oci_tree(s.as_ref(), &ms[0].2).unwrap().lines()
}

fn bootstrap_of(reg: &Registry, repo: &str, tag: &str, out: &Path) {
    let m = manifest_of(reg, repo, tag).unwrap();
    let pm: oci_spec::image::ImageManifest = serde_json::from_value(m).unwrap();
    let s = convert::store::open_source(
        &convert::reference::ImageRef::parse(&format!("{}/{repo}:{tag}", reg.host())).unwrap(),
        true,
        None,
    )
    .unwrap();
    convert::fetch_bootstrap(s.as_ref(), &pm, out).unwrap();
}

/// The upstream binary `$VAR` names, or None after reporting the running test skipped.
fn upstream(var: &str, name: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.exists());
    if p.is_none() {
        skip::skip(&format!("no upstream {name} (set {var} or put it on PATH)"));
    }
    p
}

#[test]
fn upstream_nydusd_serves_a_converted_image_from_the_registry() {
    let Some(nydusd) = upstream("NYDUSD", "nydusd") else {
        return;
    };
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("src");
    write_layout(&lay, "v1", &[("amd64", sample_layers(8))]);
    let src = format!("oci:{}:v1", lay.display());
    ok(&convert_cmd(&src, &format!("{}/up:v1", reg.host()), &[]));
    let boot = t.path().join("image.boot");
    bootstrap_of(&reg, "up", "v1", &boot);
    let served = served_tree(
        &[nydusd.to_str().unwrap(), "--rlimit-nofile", "0"],
        &reg,
        "up",
        &boot,
        t.path(),
    );
    let diffs = check::compare(&oci_lines(&src), &served);
    assert!(diffs.is_empty(), "nydusd's tree differs: {diffs:#?}");
}

/// An image made the way nydusify makes one (RAFS-FORMAT.md 1.2: upstream nydus-image
/// `create --type tar-rafs --blob-inline-meta --features blob-toc` per layer, then
/// `merge` with the blob digests, sizes and ToC digests), assembled in the 1.3 shape and
/// pushed: `rafs-image check` accepts it and our daemon serves it from the registry.
/// (nydusify itself is Go and cannot be built here; this runs its nydus-image steps.)
#[test]
fn an_upstream_built_image_is_checked_and_served_by_us() {
    let Some(ni) = upstream("NYDUS_IMAGE", "nydus-image") else {
        return;
    };
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    // nydus-image rejects binary PAX xattr values: give it a text one.
    // Parents as docker writes them (upstream gives a parent without an entry default
    // attributes and drops the replaced file under it); mtimes to the second (upstream
    // drops the nanoseconds): see docs/convert.md.
    let mut layers = with_parent_entries(sample_layers(9));
    for e in layers[0].0.iter_mut() {
        if let E::XFile(_, _, x) = e {
            *x = vec![("user.k", b"text")];
        }
    }
    let lay = t.path().join("src");
    write_layout(&lay, "v1", &[("amd64", layers.clone())]);
    let cl = client(&reg, "upb");
    let (mut digests, mut sizes, mut tocs, mut boots, mut descs) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (i, (entries, _)) in layers.iter().enumerate() {
        let tarf = t.path().join(format!("l{i}.tar"));
        std::fs::write(&tarf, layer_tar(entries)).unwrap();
        let (blob, boot) = (
            t.path().join(format!("l{i}.blob")),
            t.path().join(format!("l{i}.boot")),
        );
        let o = Command::new(&ni)
            .args(["create", "--type", "tar-rafs", "--blob-inline-meta"])
            .args([
                "--features",
                "blob-toc",
                "--fs-version",
                "6",
                "--whiteout-spec",
                "none",
            ])
            .arg("--blob")
            .arg(&blob)
            .arg(&tarf)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let b = std::fs::read(&blob).unwrap();
        // The layer's bootstrap, from the blob's ToC (as the snapshotter's converter does).
        std::fs::write(
            &boot,
            rafs_virtiofsd::rafs::toc::extract_bootstrap(&b).unwrap(),
        )
        .unwrap();
        let (_, start) = rafs_virtiofsd::rafs::toc::section_before(&b, b.len() as u64).unwrap();
        let d = sha(&b);
        cl.put_blob(&d, b.len() as u64, &mut std::io::Cursor::new(&b), &|_| {})
            .unwrap();
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.nydus.blob.v1",
            "digest": d, "size": b.len(),
            "annotations": {"containerd.io/snapshot/nydus-blob": "true"},
        }));
        tocs.push(sha(&b[start as usize..])[7..].to_string());
        digests.push(d[7..].to_string());
        sizes.push(b.len().to_string());
        boots.push(boot);
    }
    let merged = t.path().join("merged.boot");
    let o = Command::new(&ni)
        .arg("merge")
        .args(["--blob-digests", &digests.join(",")])
        .args(["--blob-sizes", &sizes.join(",")])
        .args(["--blob-toc-digests", &tocs.join(",")])
        .arg("--bootstrap")
        .arg(&merged)
        .args(&boots)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let blayer = t.path().join("boot.tar.gz");
    let (bd, bs, bdiff) = convert::layer::write_bootstrap_layer(&merged, &blayer).unwrap();
    let bb = std::fs::read(&blayer).unwrap();
    cl.put_blob(&bd, bs, &mut std::io::Cursor::new(&bb), &|_| {})
        .unwrap();
    descs.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": bd, "size": bs,
        "annotations": {"containerd.io/snapshot/nydus-bootstrap": "true", "containerd.io/snapshot/nydus-fs-version": "6"},
    }));
    let mut ids: Vec<String> = digests.iter().map(|d| format!("sha256:{d}")).collect();
    ids.push(bdiff);
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap();
    let cd = sha(&cfg);
    cl.put_blob(
        &cd,
        cfg.len() as u64,
        &mut std::io::Cursor::new(&cfg),
        &|_| {},
    )
    .unwrap();
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": descs,
    }))
    .unwrap();
    cl.put_manifest("v1", &m, "application/vnd.oci.image.manifest.v1+json")
        .unwrap();
    let src = format!("oci:{}:v1", lay.display());
    let dst = format!("{}/upb:v1", reg.host());
    let c = ok(&check_cmd(&src, &dst, &["--mtime-sec"]));
    assert!(c.contains("entries equal"), "{c}");
    // Without --mtime-sec the lost nanoseconds are named.
    let o = check_cmd(&src, &dst, &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("mtime differs"));
    let served = served_tree(
        &[env!("CARGO_BIN_EXE_rafs-virtiofsd"), "fuse"],
        &reg,
        "upb",
        &merged,
        t.path(),
    );
    let diffs = check::compare(&check::mtime_to_seconds(&oci_lines(&src)), &served);
    assert!(diffs.is_empty(), "our daemon's tree differs: {diffs:#?}");
}
