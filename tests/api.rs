//! The HTTP API over a real unix socket against the real binary (KATA-CONTRACT.md §2).

mod support;

use std::time::Duration;

use support::*;

struct Setup {
    _dir: tempfile::TempDir,
    share: tempfile::TempDir,
    api: std::path::PathBuf,
    _d: Daemon,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("f"), b"x").unwrap();
    let api = dir.path().join("api.sock");
    let sock = dir.path().join("vhost.sock");
    let d = Daemon::spawn(&[
        "virtiofs",
        "--log-level",
        "warn",
        "--apisock",
        api.to_str().unwrap(),
        "--sock",
        sock.to_str().unwrap(),
    ]);
    assert!(wait_running(&api, Duration::from_secs(10)));
    Setup {
        _dir: dir,
        share,
        api,
        _d: d,
    }
}

fn mount_body(fs_type: &str, source: &str, config: &str) -> String {
    serde_json::json!({"fs_type": fs_type, "source": source, "config": config}).to_string()
}

fn assert_error(r: &HttpResponse, status: u16) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    let j = r.json();
    assert!(j["code"].is_string(), "code missing in {j}");
    assert!(
        j["message"]
            .as_str()
            .map(|m| !m.is_empty())
            .unwrap_or(false),
        "message missing in {j}"
    );
}

#[test]
fn daemon_info_is_running_with_version() {
    let s = setup();
    let r = http(&s.api, "GET", "/api/v1/daemon", None);
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["state"], "RUNNING");
    for k in [
        "package_ver",
        "git_commit",
        "build_time",
        "profile",
        "rustc",
    ] {
        assert!(
            j["version"][k].is_string(),
            "version.{k} must be a string: {j}"
        );
    }
    assert!(j["id"].is_null());
    assert!(j["supervisor"].is_null());
    assert!(j["backend_collection"].is_object());
}

#[test]
fn mount_and_umount_passthrough_on_one_keepalive_connection() {
    let s = setup();
    let src = s.share.path().to_str().unwrap();
    let mut c = Client::connect(&s.api);

    // Go runtime: raw mountpoint.
    let r = c.request(
        "POST",
        "/api/v1/mount?mountpoint=/containers",
        Some(&mount_body("passthrough_fs", src, "")),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.body.is_empty());

    // Already mounted: JSON error, connection still usable.
    let r = c.request(
        "POST",
        "/api/v1/mount?mountpoint=/containers",
        Some(&mount_body("passthrough", src, "")),
    );
    assert_error(&r, 409);

    // runtime-rs: percent-encoded mountpoint, other nydusd spelling.
    let r = c.request(
        "POST",
        "/api/v1/mount?mountpoint=%2Frafs%2Fc1%2Flowerdir",
        Some(&mount_body("passthroughfs", src, "")),
    );
    assert_eq!(r.status, 204);

    let r = c.request("GET", "/api/v1/daemon", None);
    let bc = &r.json()["backend_collection"];
    assert_eq!(bc["/containers"]["backend_type"], "PassthroughFs");
    assert_eq!(bc["/rafs/c1/lowerdir"]["mountpoint"], "/rafs/c1/lowerdir");

    // DELETE with an empty body and Content-Length: 0 (runtime-rs), then without (Go).
    let r = c.request(
        "DELETE",
        "/api/v1/mount?mountpoint=%2Frafs%2Fc1%2Flowerdir",
        Some(""),
    );
    assert_eq!(r.status, 204);
    let r = c.request("DELETE", "/api/v1/mount?mountpoint=/rafs/c1/lowerdir", None);
    assert_error(&r, 404);

    let r = c.request("GET", "/api/v1/daemon", None);
    let bc = &r.json()["backend_collection"];
    assert!(bc.get("/rafs/c1/lowerdir").is_none());
    assert!(bc.get("/containers").is_some());

    // Mount again at the same place after the umount.
    let r = c.request(
        "POST",
        "/api/v1/mount?mountpoint=/rafs/c1/lowerdir",
        Some(&mount_body("passthrough_fs", src, "")),
    );
    assert_eq!(r.status, 204);
}

#[test]
fn bad_requests_get_json_errors() {
    let s = setup();
    let src = s.share.path().to_str().unwrap();
    let mut c = Client::connect(&s.api);
    assert_error(
        &c.request(
            "POST",
            "/api/v1/mount?mountpoint=/x",
            Some(&mount_body("ext4", src, "")),
        ),
        400,
    );
    assert_error(
        &c.request(
            "POST",
            "/api/v1/mount?mountpoint=/x",
            Some(&mount_body("", src, "")),
        ),
        400,
    );
    assert_error(
        &c.request("POST", "/api/v1/mount?mountpoint=/x", Some("{not json")),
        400,
    );
    assert_error(
        &c.request(
            "POST",
            "/api/v1/mount?mountpoint=/x",
            Some(r#"{"fs_type":"rafs"}"#),
        ),
        400,
    );
    assert_error(
        &c.request(
            "POST",
            "/api/v1/mount",
            Some(&mount_body("passthrough_fs", src, "")),
        ),
        400,
    );
    assert_error(
        &c.request(
            "POST",
            "/api/v1/mount?mountpoint=relative",
            Some(&mount_body("passthrough_fs", src, "")),
        ),
        400,
    );
    assert_error(
        &c.request(
            "POST",
            "/api/v1/mount?mountpoint=/a/../b",
            Some(&mount_body("passthrough_fs", src, "")),
        ),
        400,
    );
    assert_error(
        &c.request(
            "POST",
            "/api/v1/mount?mountpoint=/x",
            Some(&mount_body("passthrough_fs", "/nonexistent/dir", "")),
        ),
        500,
    );
    assert_error(
        &c.request(
            "POST",
            "/api/v1/mount?mountpoint=/rafs/c/lowerdir",
            Some(&mount_body("rafs", "/nonexistent/bootstrap", "{}")),
        ),
        500,
    );
    assert_error(&c.request("GET", "/api/v1/nothing", None), 404);
    assert_error(&c.request("PATCH", "/api/v1/daemon", None), 405);
    // Nothing got mounted by any of that.
    let r = c.request("GET", "/api/v1/daemon", None);
    assert_eq!(r.json()["backend_collection"], serde_json::json!({}));
}

#[test]
fn chunked_body_and_connection_close() {
    let s = setup();
    let src = s.share.path().to_str().unwrap();
    let body = mount_body("passthrough_fs", src, "");
    let (a, b) = body.split_at(10);
    let req = format!(
        "POST /api/v1/mount?mountpoint=/c HTTP/1.1\r\nHost: unix\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let mut c = Client::connect(&s.api);
    let r = c.raw(req.as_bytes());
    assert_eq!(r.status, 204);
}

#[test]
fn log_level_and_metrics() {
    let s = setup();
    let src = s.share.path().to_str().unwrap();
    let mut c = Client::connect(&s.api);
    assert_eq!(
        c.request("PUT", "/api/v1/daemon", Some(r#"{"log_level":"debug"}"#))
            .status,
        204
    );
    assert_error(
        &c.request("PUT", "/api/v1/daemon", Some(r#"{"log_level":"loud"}"#)),
        400,
    );
    assert_eq!(
        c.request(
            "POST",
            "/api/v1/mount?mountpoint=/containers",
            Some(&mount_body("passthrough_fs", src, ""))
        )
        .status,
        204
    );
    let r = c.request("GET", "/api/v1/metrics", None);
    assert_eq!(r.status, 200);
    let m = &r.json()["/containers"];
    assert_eq!(m["backend_type"], "PassthroughFs");
    assert_eq!(m["requests"], 0);
}
