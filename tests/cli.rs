//! Command-line compatibility (Kata's argv variants, KATA-CONTRACT.md §1.2) and signal
//! handling of the real binary.

mod support;

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use support::*;

fn start(dir: &std::path::Path, args: &[&str]) -> Daemon {
    let d = Daemon::spawn(args);
    assert!(
        wait_running(&dir.join("api.sock"), Duration::from_secs(10)),
        "daemon with {args:?} never reported RUNNING"
    );
    assert!(dir.join("vhost.sock").exists());
    d
}

fn paths(dir: &std::path::Path) -> (String, String) {
    (
        dir.join("api.sock").display().to_string(),
        dir.join("vhost.sock").display().to_string(),
    )
}

fn stop_quickly(mut d: Daemon, sig: i32) {
    let (took, code) = d
        .signal_and_wait(sig, Duration::from_secs(3))
        .expect("daemon did not exit on signal");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    assert_eq!(code, 0, "exit status");
}

#[test]
fn kata_go_argv() {
    let t = tempfile::tempdir().unwrap();
    let (a, s) = paths(t.path());
    let d = start(
        t.path(),
        &[
            "virtiofs",
            "--log-level",
            "info",
            "--apisock",
            &a,
            "--sock",
            &s,
        ],
    );
    stop_quickly(d, libc::SIGTERM);
    assert!(
        !t.path().join("api.sock").exists(),
        "API socket left behind"
    );
    assert!(
        !t.path().join("vhost.sock").exists(),
        "vhost socket left behind"
    );
}

#[test]
fn kata_runtime_rs_argv_with_hybrid_mode_second() {
    let t = tempfile::tempdir().unwrap();
    let (a, s) = paths(t.path());
    let d = start(
        t.path(),
        &[
            "virtiofs",
            "--hybrid-mode",
            "--log-level",
            "info",
            "--apisock",
            &a,
            "--sock",
            &s,
        ],
    );
    stop_quickly(d, libc::SIGINT);
}

#[test]
fn kata_default_virtiofsd_extra_args_accepted() {
    let t = tempfile::tempdir().unwrap();
    let (a, s) = paths(t.path());
    let d = start(
        t.path(),
        &[
            "virtiofs",
            "--log-level",
            "debug",
            "--apisock",
            &a,
            "--sock",
            &s,
            "--thread-pool-size=1",
            "--announce-submounts",
        ],
    );
    stop_quickly(d, libc::SIGTERM);
}

#[test]
fn global_options_before_subcommand_and_stale_sockets() {
    let t = tempfile::tempdir().unwrap();
    let (a, s) = paths(t.path());
    // Stale files at both paths must be replaced.
    std::fs::write(&a, b"stale").unwrap();
    std::fs::write(&s, b"stale").unwrap();
    let d = Daemon::spawn(&[
        "--apisock",
        &a,
        "-l",
        "warn",
        "virtiofs",
        "--sock",
        &s,
        "--num-request-queues",
        "2",
    ]);
    assert!(wait_running(
        &t.path().join("api.sock"),
        Duration::from_secs(10)
    ));
    UnixStream::connect(&s).expect("vhost-user socket accepts");
    stop_quickly(d, libc::SIGTERM);
}

#[test]
fn sigterm_while_vmm_connected() {
    let t = tempfile::tempdir().unwrap();
    let (a, s) = paths(t.path());
    let d = start(t.path(), &["virtiofs", "--apisock", &a, "--sock", &s]);
    let _vmm = UnixStream::connect(&s).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop_quickly(d, libc::SIGTERM);
}

#[test]
fn standalone_shared_dir() {
    let t = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    let (a, s) = paths(t.path());
    let d = start(
        t.path(),
        &[
            "virtiofs",
            "--sock",
            &s,
            "--apisock",
            &a,
            "--shared-dir",
            share.path().to_str().unwrap(),
        ],
    );
    let r = http(&t.path().join("api.sock"), "GET", "/api/v1/daemon", None);
    assert_eq!(
        r.json()["backend_collection"]["/"]["backend_type"],
        "PassthroughFs"
    );
    stop_quickly(d, libc::SIGTERM);
}

#[test]
fn bad_arguments_fail_fast() {
    let t = tempfile::tempdir().unwrap();
    let (_, s) = paths(t.path());
    for args in [
        vec!["virtiofs"],                                      // --sock missing
        vec!["virtiofs", "--sock", &s, "--no-such-option"],    // unknown option
        vec!["virtiofs", "--sock", &s, "--log-level", "loud"], // bad level
        vec!["virtiofs", "--sock", &s, "--num-request-queues", "0"],
        vec!["virtiofs", "--sock", &s, "--shared-dir", "/nonexistent/dir"],
    ] {
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!out.stderr.is_empty(), "{args:?} should say why");
    }
}

fn nofile_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

#[test]
fn raises_nofile_soft_limit_to_hard_limit() {
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    let (a, s) = paths(t.path());
    let mut cmd = Command::new(bin());
    cmd.args(["virtiofs", "--apisock", &a, "--sock", &s]);
    // SAFETY: only async-signal-safe calls (getrlimit/setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
            rl.rlim_cur = 256.min(rl.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            Ok(())
        });
    }
    let d = Daemon {
        child: cmd.spawn().unwrap(),
    };
    assert!(wait_running(
        &t.path().join("api.sock"),
        Duration::from_secs(10)
    ));
    let (soft, hard) = nofile_limits(d.child.id());
    assert_eq!(soft, hard, "soft RLIMIT_NOFILE not raised");
    stop_quickly(d, libc::SIGTERM);
}

#[test]
fn shared_dir_and_bootstrap_are_exclusive() {
    let t = tempfile::tempdir().unwrap();
    let (_, s) = paths(t.path());
    let dir = t.path().display().to_string();
    let out = Command::new(bin())
        .args([
            "virtiofs",
            "--sock",
            &s,
            "--shared-dir",
            &dir,
            "--bootstrap",
            "/x",
            "--config",
            "/y",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be combined"));
}

/// A fatal error is printed once, as a log line, or plainly with `--log-level off`.
#[test]
fn fatal_error_is_printed_once() {
    let t = tempfile::tempdir().unwrap();
    let (_, s) = paths(t.path());
    let msg = "passthrough source \"/nonexistent/dir\" is not a directory";
    for (level, prefix) in [("info", " ERROR "), ("off", "rafs-virtiofsd: ")] {
        let out = Command::new(bin())
            .args(["virtiofs", "--sock", &s, "--shared-dir", "/nonexistent/dir"])
            .args(["--log-level", level])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches(msg).count(), 1, "--log-level {level}:\n{err}");
        let line = err.lines().find(|l| l.contains(msg)).unwrap();
        assert!(line.contains(prefix), "--log-level {level}: {line}");
    }
}
