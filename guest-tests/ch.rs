//! Standalone use with cloud-hypervisor (CH).
//!
//! CH is not packaged for Debian and boots guests only with real KVM (or MSHV). These tests
//! run when a CH binary is given by `RV_CLOUD_HYPERVISOR` or found on PATH, and otherwise
//! report themselves skipped (tests/common/skip.rs). What runs here (a machine whose /dev/kvm is the PVM software hypervisor,
//! see shared/specs/GUEST-RECIPE.md): CH creates the VM and its virtio-fs device, which
//! connects to the daemon and negotiates vhost-user features, before the boot itself fails.
//! That is the part checked: CH connects, negotiates, goes away, and the daemon keeps
//! serving and accepts CH again. (Verified with cloud-hypervisor v54.0.0 built from source:
//! it creates the virtio-fs device, loads Debian's bzImage and starts the vCPU, whose stock
//! kernel then makes no progress under PVM; each run is ended after 5 s.) A guest boot under
//! CH needs real KVM and is not exercised here.

mod harness;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

fn ch_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RV_CLOUD_HYPERVISOR") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("cloud-hypervisor"))
            .find(|p| p.is_file())
    })
}

/// Runs CH against `sock` until it exits or `limit` passes (then kills it); returns its
/// output.
fn run_ch(ch: &PathBuf, sock: &std::path::Path, limit: Duration) -> String {
    let args: Vec<OsString> = vec![
        "--cpus".into(),
        "boot=1".into(),
        "--memory".into(),
        "size=512M,shared=on".into(),
        "--kernel".into(),
        kernel().into(),
        "--cmdline".into(),
        "console=ttyS0".into(),
        "--fs".into(),
        format!(
            "tag=rafs,socket={},num_queues=1,queue_size=512",
            sock.display()
        )
        .into(),
        "--serial".into(),
        "tty".into(),
        "--console".into(),
        "off".into(),
    ];
    let mut child = Command::new(ch)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cloud-hypervisor");
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("cloud-hypervisor output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn ch_negotiates_with_the_daemon_and_reconnects() {
    let Some(ch) = ch_binary() else {
        skip("no cloud-hypervisor (set RV_CLOUD_HYPERVISOR or put it on PATH)");
        return;
    };
    let share = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&["--shared-dir", share.path().to_str().unwrap()]);
    for round in 1..=2 {
        let out = run_ch(&ch, &daemon.sock, Duration::from_secs(5));
        // The daemon saw CH connect and, once CH was gone, went back to listening.
        let t0 = Instant::now();
        loop {
            let log = daemon.output();
            if count(&log, "vhost-user: VMM connected") >= round
                && count(&log, "listening for a new connection") >= round
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "round {round}: daemon log:\n{log}\ncloud-hypervisor:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(daemon.is_running(), "daemon died:\n{}", daemon.output());
        let (st, body) = daemon.api("GET", "/api/v1/daemon", None).expect("API");
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("RUNNING"), "{body}");
    }
    assert!(daemon.stop(Duration::from_secs(5)).is_some());
}
