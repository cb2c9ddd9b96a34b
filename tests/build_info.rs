//! Build information from build.rs: `GET /api/v1/daemon` reports the commit the daemon was
//! built from, the build time and the compiler, not "unknown". The build script's own
//! functions (included from build.rs) are tested too: the commit outside a git checkout, and
//! the build time from SOURCE_DATE_EPOCH.

mod support;

#[path = "../build.rs"]
#[allow(dead_code)]
mod build_script;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap().trim().to_string())
}

#[test]
fn daemon_reports_commit_build_time_and_rustc() {
    let t = tempfile::tempdir().unwrap();
    let api = t.path().join("api.sock");
    let _d = Daemon::spawn(&[
        "virtiofs",
        "--apisock",
        api.to_str().unwrap(),
        "--sock",
        t.path().join("vhost.sock").to_str().unwrap(),
    ]);
    assert!(wait_running(&api, Duration::from_secs(10)));
    let v = http(&api, "GET", "/api/v1/daemon", None).json()["version"].clone();
    // This test is built from the same checkout as the daemon, after the same build script.
    let want = git_head().unwrap_or_else(|| "unknown".into());
    assert_eq!(v["git_commit"], want.as_str(), "{v}");
    let bt = v["build_time"].as_str().unwrap();
    assert_eq!(bt.len(), "2024-01-02T03:04:05Z".len(), "{v}");
    assert!(bt.as_bytes()[10] == b'T' && bt.ends_with('Z'), "{v}");
    // Not in the future (RFC 3339 UTC strings sort by time).
    let now = build_script::build_time(None, SystemTime::now());
    assert!(bt <= now.as_str(), "{bt} > {now}");
    assert!(v["rustc"].as_str().unwrap().starts_with("rustc "), "{v}");
}

#[test]
fn build_time_is_rfc3339_utc_from_source_date_epoch_or_now() {
    for (secs, want) in [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_234_567_890, "2009-02-13T23:31:30Z"),
        (1_700_000_000, "2023-11-14T22:13:20Z"),
        (4_102_444_799, "2099-12-31T23:59:59Z"),
    ] {
        assert_eq!(build_script::rfc3339_utc(secs), want);
    }
    let now = UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    let bt = build_script::build_time;
    assert_eq!(bt(Some("1700000000"), now), "2023-11-14T22:13:20Z");
    assert_eq!(bt(None, now), "2009-02-13T23:31:30Z");
    // An unusable SOURCE_DATE_EPOCH falls back to the current time.
    assert_eq!(bt(Some("yesterday"), now), "2009-02-13T23:31:30Z");
}

#[test]
fn commit_is_unknown_outside_a_git_checkout() {
    let t = tempfile::tempdir().unwrap();
    assert_eq!(build_script::git_commit(t.path()), None);
    assert!(build_script::git_watch_paths(t.path()).is_empty());
    // In this checkout (when it is one) the commit is HEAD and HEAD is watched.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(build_script::git_commit(here), git_head());
    if git_head().is_some() {
        let w = build_script::git_watch_paths(here);
        assert!(w.iter().any(|p| p.ends_with("HEAD")), "{w:?}");
    }
}
