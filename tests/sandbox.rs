//! Least privilege of the real binary: no_new_privs, seccomp and the documented capability
//! sets for a Kata-style launch and standalone ones; the seccomp filter really kills; the
//! sockets are private whatever the umask; and `--sandbox namespace` shows only the allowed
//! trees, refuses API mounts outside them and sees mounts made later under them.

#[path = "common/registry.rs"]
mod registry;
#[path = "common/skip.rs"]
mod skip;
mod support;
#[path = "common/vu_driver.rs"]
mod vu_driver;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rafs_virtiofsd::sandbox::{self, seccomp, SeccompMode};
use support::*;

fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in status"))
        .trim()
        .to_string()
}

fn cap_mask(passthrough: bool, fuse: bool) -> u64 {
    sandbox::needed_caps(passthrough, fuse)
        .iter()
        .fold(0u64, |m, c| m | (1u64 << c.index()))
}

fn start(args: &[&str], api: &Path) -> Daemon {
    let d = Daemon::spawn(args);
    assert!(
        wait_running(api, Duration::from_secs(10)) || wait_for_path(api, Duration::from_secs(1)),
        "daemon {args:?} did not start"
    );
    d
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/v6-zstd-64k-base")
}

#[test]
fn kata_and_standalone_launches_are_confined() {
    let t = tempfile::tempdir().unwrap();
    let api = t.path().join("api.sock");
    let sock = t.path().join("vhost.sock");
    let (a, s) = (api.to_str().unwrap(), sock.to_str().unwrap());

    // Kata's argv: API present, so a passthrough may come: the passthrough set.
    let d = Daemon::spawn(&[
        "virtiofs",
        "--log-level",
        "info",
        "--apisock",
        a,
        "--sock",
        s,
    ]);
    let pid = d.pid();
    // As with nydusd, the first answer of the API already says RUNNING, and by then the
    // daemon is confined.
    let t0 = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&api).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(2));
    }
    let first = http(&api, "GET", "/api/v1/daemon", None);
    assert_eq!(first.json()["state"], "RUNNING");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    let want = format!("{:016x}", cap_mask(true, false));
    assert_eq!(status_field(pid, "CapEff"), want);
    assert_eq!(status_field(pid, "CapPrm"), want);
    assert_eq!(status_field(pid, "CapBnd"), want);
    assert_eq!(status_field(pid, "CapInh"), "0000000000000000");
    // Every thread, including those made after start-up, carries the filter.
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let st = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        assert!(st.contains("Seccomp:\t2"), "{st}");
    }
    drop(d);

    // Standalone RAFS, no API: no capability at all.
    let cfg = t.path().join("rafs.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "device": {"backend": {"type": "localfs", "config": {"dir": fixture().join("blobs")}}},
            "mode": "direct"
        })
        .to_string(),
    )
    .unwrap();
    let boot = fixture().join("image.boot");
    let d = Daemon::spawn(&[
        "virtiofs",
        "--sock",
        s,
        "--bootstrap",
        boot.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(wait_for_path(&sock, Duration::from_secs(10)));
    // Without an API there is no RUNNING to wait for: the filter follows the socket shortly.
    let t0 = std::time::Instant::now();
    while status_field(d.pid(), "Seccomp") != "2" && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status_field(d.pid(), "Seccomp"), "2");
    assert_eq!(status_field(d.pid(), "NoNewPrivs"), "1");
    assert_eq!(status_field(d.pid(), "CapEff"), "0000000000000000");
    drop(d);

    // `--seccomp none` is honoured (and says so in status).
    let d = start(
        &["virtiofs", "--apisock", a, "--sock", s, "--seccomp", "none"],
        &api,
    );
    assert_eq!(status_field(d.pid(), "Seccomp"), "0");
    assert_eq!(status_field(d.pid(), "NoNewPrivs"), "1");
}

/// A child installs our filter, then calls execve, which is not on the allowlist.
/// no_new_privs, then `prog` as this thread's seccomp filter: raw syscalls only, so it is
/// safe between fork and exec. Returns the seccomp call's result.
///
/// # Safety
/// Async-signal-safe; `prog` must be a valid filter.
unsafe fn install_filter(prog: &seccompiler::BpfProgram) -> libc::c_long {
    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    libc::syscall(
        libc::SYS_seccomp,
        libc::SECCOMP_SET_MODE_FILTER,
        0,
        &fprog as *const libc::sock_fprog,
    )
}

fn run_filtered(mode: SeccompMode) -> std::process::ExitStatus {
    let prog = seccomp::build(mode, false).unwrap().unwrap();
    let mut c = Command::new("/bin/true");
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, seccomp) on memory
    // prepared before the fork.
    unsafe {
        c.pre_exec(move || {
            if install_filter(&prog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.status().unwrap()
}

#[test]
fn syscalls_outside_the_allowlist_are_stopped() {
    // kill: the process dies with SIGSYS at the exec.
    let st = run_filtered(SeccompMode::Kill);
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}");
    // trap: SIGSYS is raised (no handler survives an exec, so it also ends the child).
    let st = run_filtered(SeccompMode::Trap);
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}");
    // log: the exec goes through (and the kernel logs it).
    let st = run_filtered(SeccompMode::Log);
    assert!(st.success(), "{st:?}");
    // The allowlist names exec nowhere.
    assert!(!seccomp::allowed().any(|(n, _)| n.starts_with("exec")));
}

/// The pid namespace's waiter has a filter of its own, far tighter than the daemon's: a
/// process under it may wait and exit, but not even open a file.
#[test]
fn the_waiter_filter_allows_waiting_and_nothing_else() {
    let prog = seccomp::build_waiter(SeccompMode::Kill).unwrap().unwrap();
    let run = |open_a_file: bool| -> i32 {
        // SAFETY: the child makes only async-signal-safe syscalls on memory prepared
        // before the fork, and ends with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if install_filter(&prog) != 0 {
                    libc::_exit(99);
                }
                libc::getpid();
                if open_a_file {
                    libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                }
                libc::_exit(7);
            }
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
            st
        }
    };
    let st = run(false);
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7, "{st:#x}");
    let st = run(true);
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS,
        "open under the waiter filter: {st:#x}"
    );
    assert!(!seccomp::WAITER.iter().any(|(n, _)| n.contains("open")));
}

/// The network thread class: under the daemon's filter plus the network one, a thread may
/// read files and make sockets, but not open a file for writing or creating, open by
/// handle, or switch credentials.
#[test]
fn the_network_filter_reads_but_never_changes_files() {
    let daemon = seccomp::build(SeccompMode::Kill, false).unwrap().unwrap();
    let net = seccomp::build_network(SeccompMode::Kill).unwrap().unwrap();
    let t = tempfile::tempdir().unwrap();
    let existing = std::ffi::CString::new(t.path().join("f").to_str().unwrap()).unwrap();
    std::fs::write(t.path().join("f"), b"x").unwrap();
    let newfile = std::ffi::CString::new(t.path().join("new").to_str().unwrap()).unwrap();
    #[derive(Clone, Copy)]
    enum Try {
        Nothing,
        OpenWrite,
        Create,
        Truncate,
        ByHandle,
        Setresuid,
        SeccompTsync,
    }
    let run = |what: Try| -> i32 {
        // SAFETY: the child makes only async-signal-safe syscalls on memory prepared
        // before the fork, and ends with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if install_filter(&daemon) != 0 || install_filter(&net) != 0 {
                    libc::_exit(99);
                }
                // Allowed: reading, and sockets.
                if libc::open(existing.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) < 0 {
                    libc::_exit(98);
                }
                if libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) < 0 {
                    libc::_exit(97);
                }
                match what {
                    Try::Nothing => {}
                    Try::OpenWrite => {
                        libc::open(existing.as_ptr(), libc::O_WRONLY);
                    }
                    Try::Create => {
                        libc::openat(
                            libc::AT_FDCWD,
                            newfile.as_ptr(),
                            libc::O_RDONLY | libc::O_CREAT,
                            0o600,
                        );
                    }
                    Try::Truncate => {
                        libc::open(existing.as_ptr(), libc::O_RDONLY | libc::O_TRUNC);
                    }
                    Try::ByHandle => {
                        libc::syscall(libc::SYS_open_by_handle_at, -1, 0, 0);
                    }
                    Try::Setresuid => {
                        libc::syscall(libc::SYS_setresuid, -1, -1, -1);
                    }
                    Try::SeccompTsync => {
                        // Stacking is allowed; with a flag (here TSYNC) it is not.
                        let fprog = libc::sock_fprog {
                            len: net.len() as u16,
                            filter: net.as_ptr() as *mut libc::sock_filter,
                        };
                        libc::syscall(
                            libc::SYS_seccomp,
                            libc::SECCOMP_SET_MODE_FILTER,
                            libc::SECCOMP_FILTER_FLAG_TSYNC,
                            &fprog as *const libc::sock_fprog,
                        );
                    }
                }
                libc::_exit(7);
            }
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
            st
        }
    };
    let st = run(Try::Nothing);
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7, "{st:#x}");
    for (name, what) in [
        ("open for writing", Try::OpenWrite),
        ("create", Try::Create),
        ("truncate", Try::Truncate),
        ("open_by_handle_at", Try::ByHandle),
        ("setresuid", Try::Setresuid),
        ("seccomp with TSYNC", Try::SeccompTsync),
    ] {
        let st = run(what);
        assert!(
            libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS,
            "{name} under the network filter: {st:#x}"
        );
    }
    assert!(!t.path().join("new").exists());
    assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"x");
}

/// The guest thread class: under the daemon's filter plus the guest one, a thread may read
/// and write files, but not make a socket or a connection.
#[test]
fn the_guest_filter_serves_files_but_makes_no_sockets() {
    let daemon = seccomp::build(SeccompMode::Kill, false).unwrap().unwrap();
    let guest = seccomp::build_guest(SeccompMode::Kill).unwrap().unwrap();
    let t = tempfile::tempdir().unwrap();
    let file = std::ffi::CString::new(t.path().join("f").to_str().unwrap()).unwrap();
    let run = |make_socket: bool| -> i32 {
        // SAFETY: the child makes only async-signal-safe syscalls on memory prepared
        // before the fork, and ends with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if install_filter(&daemon) != 0 || install_filter(&guest) != 0 {
                    libc::_exit(99);
                }
                let fd = libc::open(file.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600);
                if fd < 0 || libc::write(fd, b"y".as_ptr().cast(), 1) != 1 {
                    libc::_exit(98);
                }
                if make_socket {
                    libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                }
                libc::_exit(7);
            }
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
            st
        }
    };
    let st = run(false);
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7, "{st:#x}");
    assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"y");
    let st = run(true);
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS,
        "socket under the guest filter: {st:#x}"
    );
}

/// In a running daemon serving RAFS from a real registry, the network threads (`rafs-net`)
/// and the FUSE threads that served requests carry their class's filter on top of the
/// daemon's; no other thread does. The image reads back whole under them.
#[test]
fn thread_classes_carry_their_own_filters() {
    let img = fixture();
    let reg = registry::Registry::start(None);
    for e in std::fs::read_dir(img.join("blobs")).unwrap() {
        let e = e.unwrap();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            reg.push_blob("sandbox/img", &data),
            e.file_name().to_str().unwrap()
        );
    }
    let t = tempfile::tempdir().unwrap();
    let (mnt, api, cache) = (
        t.path().join("mnt"),
        t.path().join("api.sock"),
        t.path().join("cache"),
    );
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&cache).unwrap();
    let cfg = t.path().join("config.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "device": {
                // A name, so that name resolution runs under the filter too.
                "backend": {"type": "registry", "config": {
                    "host": format!("localhost:{}", reg.port), "repo": "sandbox/img",
                    "scheme": "http"}},
                "cache": {"type": "blobcache", "config": {"work_dir": cache}}
            },
            "mode": "direct", "digest_validate": true, "enable_xattr": true
        })
        .to_string(),
    )
    .unwrap();
    let boot = img.join("image.boot");
    let d = start(
        &[
            "fuse",
            "--mountpoint",
            mnt.to_str().unwrap(),
            "--bootstrap",
            boot.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--apisock",
            api.to_str().unwrap(),
            "--log-level",
            "warn",
        ],
        &api,
    );
    let _unmount = Unmount(mnt.clone());
    let strip = |m: &str| -> String {
        m.lines()
            .filter(|l| !l.starts_with(". "))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let out = Command::new("python3")
        .arg(tools.join("builder_tools/treemanifest.py"))
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success());
    let tree = std::fs::read_to_string(img.join("TREE")).unwrap();
    let want =
        std::fs::read_to_string(tools.join(format!("fixtures/manifests/{}.manifest", tree.trim())))
            .unwrap();
    assert_eq!(
        strip(&String::from_utf8_lossy(&out.stdout)),
        strip(&want),
        "the image through the registry"
    );
    let served: u64 = std::fs::read_dir(img.join("blobs"))
        .unwrap()
        .map(|e| reg.served_bytes(e.unwrap().file_name().to_str().unwrap()))
        .sum();
    assert!(served > 0, "nothing came from the registry");

    let mut net = Vec::new();
    let mut fuse = Vec::new();
    let mut other = Vec::new();
    for (comm, filters) in thread_filters(d.pid()) {
        if comm == "rafs-net" {
            net.push(filters);
        } else if comm.starts_with("fuse-") {
            fuse.push(filters);
        } else {
            other.push((comm, filters));
        }
    }
    eprintln!("Seccomp_filters: rafs-net threads {net:?}, fuse threads {fuse:?}, others {other:?}");
    // One copy each: threads a network thread spawns (name resolution) inherit it and add
    // none.
    assert!(
        net.contains(&2) && net.iter().all(|&f| f <= 2),
        "network threads: {net:?}"
    );
    // Threads that served no request since the lock-down have not stacked theirs yet.
    assert!(
        fuse.contains(&2) && fuse.iter().all(|&f| f <= 2),
        "FUSE threads: {fuse:?}"
    );
    assert!(
        other.iter().all(|(_, f)| *f == 1),
        "other threads: {other:?}"
    );
}

/// The threads of `pid` as (name, Seccomp_filters).
fn thread_filters(pid: i32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let filters: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp_filters:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a kernel that reports Seccomp_filters");
        out.push((comm.trim().to_string(), filters));
    }
    out
}

/// In virtiofs mode, the vring worker that served requests carries the guest class's
/// filter; the vhost-user control thread and the others keep the daemon's alone (pool
/// workers stack the class when they take a job).
#[test]
fn the_vring_workers_carry_the_guest_filter() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("f"), b"hello").unwrap();
    let sock = t.path().join("vhost.sock");
    let _d = Daemon::spawn(&[
        "virtiofs",
        "--sock",
        sock.to_str().unwrap(),
        "--shared-dir",
        share.to_str().unwrap(),
        "--log-level",
        "warn",
    ]);
    assert!(wait_for_path(&sock, Duration::from_secs(10)), "no socket");
    let mut drv = vu_driver::Driver::connect(&sock, 2);
    drv.init();
    let f = drv.lookup(1, 1, "f");
    assert!(f > 1);
    let threads = thread_filters(_d.pid());
    eprintln!("Seccomp_filters: {threads:?}");
    let (vring, other): (Vec<_>, Vec<_>) = threads.iter().partition(|(n, _)| n == "vring_worker");
    assert!(
        vring.iter().any(|(_, f)| *f == 2) && vring.iter().all(|(_, f)| *f <= 2),
        "vring workers: {vring:?}"
    );
    assert!(
        // Pool workers stack it when they take a job.
        other
            .iter()
            .all(|(n, f)| *f == 1 || (n.starts_with("fuse-worker") && *f == 2)),
        "other threads: {other:?}"
    );
}

/// Lazily unmounts a tree of mounts on drop.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.0)
            .status();
    }
}

#[test]
fn sockets_are_private_whatever_the_umask() {
    let t = tempfile::tempdir().unwrap();
    let api = t.path().join("api.sock");
    let sock = t.path().join("vhost.sock");
    for (group, mode) in [(None, 0o600), (Some("0"), 0o660)] {
        let mut args = vec![
            "virtiofs".to_string(),
            "--apisock".into(),
            api.display().to_string(),
            "--sock".into(),
            sock.display().to_string(),
        ];
        if let Some(g) = group {
            args.push("--socket-group".into());
            args.push(g.into());
        }
        let mut c = Command::new(bin());
        c.args(&args);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let child = c.spawn().unwrap();
        let d = Daemon { child };
        assert!(wait_running(&api, Duration::from_secs(10)));
        for p in [&api, &sock] {
            let m = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{} with group {group:?}", p.display());
        }
        drop(d);
        let _ = std::fs::remove_file(&api);
        let _ = std::fs::remove_file(&sock);
    }
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// The trees of a sandbox test: an allowed root (with an empty `share`), a tree beside it,
/// and a socket directory outside both.
struct Trees {
    t: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    api: PathBuf,
    sock: PathBuf,
}

impl Trees {
    fn new() -> Trees {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let root = t.path().join("allowed");
        let outside = t.path().join("outside");
        let sockdir = t.path().join("sock");
        for d in [&root, &outside, &sockdir] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir(root.join("share")).unwrap();
        Trees {
            root,
            outside,
            api: sockdir.join("api.sock"),
            sock: sockdir.join("vhost.sock"),
            t,
        }
    }

    /// Starts a virtiofs daemon with both sockets under `--sandbox mode` and `extra`.
    fn start(&self, mode: &str, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "virtiofs",
            "--apisock",
            self.api.to_str().unwrap(),
            "--sock",
            self.sock.to_str().unwrap(),
            "--sandbox",
            mode,
        ];
        args.extend(extra);
        start(&args, &self.api)
    }

    /// Mounts a tmpfs at `late` under the root, as a host process would after the daemon
    /// started, and copies the fixture image into it.
    fn late_image(&self) -> (PathBuf, Unmount) {
        let late = self.root.join("late");
        std::fs::create_dir(&late).unwrap();
        sh(&format!("mount -t tmpfs tmpfs {}", late.display()));
        let u = Unmount(late.clone());
        sh(&format!(
            "cp -r {}/. {}",
            fixture().display(),
            late.display()
        ));
        (late, u)
    }
}

/// An API mount body for a passthrough of `src`.
fn passthrough_body(src: &Path) -> String {
    serde_json::json!({"fs_type": "passthrough_fs", "source": src, "config": ""}).to_string()
}

/// An API mount body for the image in `late` (localfs), with a blob cache in `work`.
fn rafs_body(late: &Path, work: Option<&Path>) -> String {
    let mut device = serde_json::json!({
        "backend": {"type": "localfs", "config": {"dir": late.join("blobs")}}
    });
    if let Some(w) = work {
        device["cache"] = serde_json::json!({"type": "blobcache", "config": {"work_dir": w}});
    }
    let cfg = serde_json::json!({"device": device, "mode": "direct"}).to_string();
    serde_json::json!({"fs_type": "rafs", "source": late.join("image.boot"), "config": cfg})
        .to_string()
}

#[test]
fn namespace_sandbox_holds_only_the_allowed_trees() {
    let tr = Trees::new();
    let (root, outside) = (&tr.root, &tr.outside);
    let api = &tr.api;
    // A shared mount, as systemd makes them, so later host mounts propagate.
    let r = root.display().to_string();
    sh(&format!("mount --bind {r} {r} && mount --make-shared {r}"));
    let _u = Unmount(PathBuf::from(&r));

    let d = tr.start("namespace", &["--allowed-root", &r]);
    let proot = PathBuf::from(format!("/proc/{}/root", d.pid()));
    // Only the allowed tree, the sockets and the fixed few are there.
    let mut top: Vec<String> = std::fs::read_dir(&proot)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    for e in &top {
        assert!(
            ["dev", "etc", "proc", "run", "var"].contains(&e.as_str()),
            "unexpected {e} in the sandbox root: {top:?}"
        );
    }
    assert!(top.contains(&"var".to_string()) && top.contains(&"proc".to_string()));
    assert!(proot
        .join(root.strip_prefix("/").unwrap())
        .join("share")
        .is_dir());
    assert!(!proot.join(outside.strip_prefix("/").unwrap()).exists());
    assert!(
        !proot.join("etc/passwd").exists(),
        "host /etc is not visible"
    );
    assert!(!proot.join("usr").exists());
    // API mounts: outside the allowed roots refused with 403 naming the rule.
    let resp = http(
        api,
        "POST",
        "/api/v1/mount?mountpoint=/out",
        Some(&passthrough_body(outside)),
    );
    assert_eq!(resp.status, 403, "{}", String::from_utf8_lossy(&resp.body));
    assert!(
        String::from_utf8_lossy(&resp.body).contains("allowed roots"),
        "{}",
        String::from_utf8_lossy(&resp.body)
    );
    let resp = http(
        api,
        "POST",
        "/api/v1/mount?mountpoint=/in",
        Some(&passthrough_body(&root.join("share"))),
    );
    assert_eq!(resp.status, 204, "{}", String::from_utf8_lossy(&resp.body));

    // A RAFS image mounted on the host under the allowed root after the daemon started is
    // visible and servable.
    let (late, _late) = tr.late_image();
    assert!(proot
        .join(late.strip_prefix("/").unwrap())
        .join("image.boot")
        .exists());
    let resp = http(
        api,
        "POST",
        "/api/v1/mount?mountpoint=/rafs",
        Some(&rafs_body(&late, None)),
    );
    assert_eq!(resp.status, 204, "{}", String::from_utf8_lossy(&resp.body));

    // A pid namespace: the launched process only waits, holding nothing; the daemon is
    // pid 1 of its own namespace and its /proc shows no other process.
    let waiter = d.pid();
    assert_eq!(status_field(waiter, "Seccomp"), "2");
    assert_eq!(status_field(waiter, "NoNewPrivs"), "1");
    assert_eq!(status_field(waiter, "CapEff"), "0000000000000000");
    let children =
        std::fs::read_to_string(format!("/proc/{waiter}/task/{waiter}/children")).unwrap();
    let kids: Vec<i32> = children
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(kids.len(), 1, "one daemon under the waiter: {children:?}");
    let daemon = kids[0];
    let nspid = status_field(daemon, "NSpid");
    assert_eq!(
        nspid,
        format!("{daemon}\t1"),
        "the daemon is pid 1 of its namespace"
    );
    assert_eq!(status_field(daemon, "Seccomp"), "2");
    let pids: Vec<String> = std::fs::read_dir(proot.join("proc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(pids, ["1"], "the daemon's /proc shows only itself");
    // SIGTERM to the launched process reaches the daemon; both are gone, with its code.
    let mut d = d;
    let (_, code) = d
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .expect("the waiter exits when the daemon does");
    assert_eq!(code, 0, "the daemon's clean exit code");
    assert!(
        !Path::new(&format!("/proc/{daemon}")).exists(),
        "the daemon is gone"
    );
}

/// A client holding hundreds of API connections cannot make the daemon grow a thread per
/// connection beyond the cap, and the API answers again once they close.
#[test]
fn api_connections_are_bounded() {
    let t = tempfile::tempdir().unwrap();
    let api = t.path().join("api.sock");
    let sock = t.path().join("vhost.sock");
    let d = start(
        &[
            "virtiofs",
            "--apisock",
            api.to_str().unwrap(),
            "--sock",
            sock.to_str().unwrap(),
        ],
        &api,
    );
    let threads = || status_field(d.pid(), "Threads").parse::<usize>().unwrap();
    let base = threads();
    let conns: Vec<_> = (0..300)
        .map(|_| std::os::unix::net::UnixStream::connect(&api).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = threads();
    assert!(
        held <= base + rafs_virtiofsd::api::MAX_API_CONNECTIONS,
        "{held} threads with 300 connections (base {base})"
    );
    drop(conns);
    let mut ok = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if std::panic::catch_unwind(|| http(&api, "GET", "/api/v1/daemon", None).status)
            .is_ok_and(|s| s == 200)
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "API did not answer after the connections closed");
}

/// Landlock, the second fence of `--sandbox namespace`: once the ruleset is on, files
/// outside the visible trees cannot be opened even though they are there (the namespace
/// would hide them; here nothing does), and the trees stay fully usable. The restriction
/// binds a whole process for good, so the check runs in a child: this test re-run with
/// RV_LANDLOCK_PROBE set.
#[test]
fn landlock_fences_the_process_to_its_trees() {
    if let Ok(dirs) = std::env::var("RV_LANDLOCK_PROBE") {
        let (inside, outside) = dirs.split_once(':').unwrap();
        let st = sandbox::landlock::restrict(&[PathBuf::from(inside)]).unwrap();
        assert_eq!(st, sandbox::landlock::Enforced::Fully);
        std::fs::write(Path::new(inside).join("new"), b"x").unwrap();
        std::fs::rename(
            Path::new(inside).join("new"),
            Path::new(inside).join("renamed"),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(Path::new(inside).join("renamed")).unwrap(),
            b"x"
        );
        let denied = |r: std::io::Result<()>| {
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EACCES));
        };
        denied(std::fs::read(Path::new(outside).join("secret")).map(|_| ()));
        denied(std::fs::write(Path::new(outside).join("planted"), b"x"));
        denied(std::fs::read("/etc/passwd").map(|_| ()));
        // Read-only set: /proc and name resolution files.
        assert!(std::fs::read_to_string("/proc/self/status").is_ok());
        denied(std::fs::write("/etc/hosts", b"x"));
        return;
    }
    if landlock_abi() < 1 {
        skip::skip("no Landlock in this kernel");
        return;
    }
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let (inside, outside) = (t.path().join("in"), t.path().join("out"));
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "landlock_fences_the_process_to_its_trees",
            "--nocapture",
        ])
        .env(
            "RV_LANDLOCK_PROBE",
            format!("{}:{}", inside.display(), outside.display()),
        )
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    assert!(!outside.join("planted").exists());
}

/// The kernel's Landlock ABI version (0 without Landlock).
fn landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only
    // returns the ABI version.
    let r = unsafe { libc::syscall(444, std::ptr::null::<u8>(), 0usize, 1u32) };
    r.max(0)
}

const FUSE_SETXATTR: u32 = 21;
const FUSE_GETXATTR: u32 = 22;

/// `--sandbox chroot`, the fallback where namespaces are not allowed: the daemon's root is
/// the one allowed tree; sockets outside it were bound before the chroot and work; host
/// paths given later (API sources, config paths) are mapped under it or refused with a
/// 403 naming the rule; mounts made later under it are servable; and the passthrough's
/// `/proc/self/fd` paths (xattrs) still work without a `/proc` in the root.
#[test]
fn chroot_sandbox_confines_to_one_tree() {
    let tr = Trees::new();
    let (root, outside, api, sock) = (&tr.root, &tr.outside, &tr.api, &tr.sock);
    let share = root.join("share");
    std::fs::write(share.join("f"), b"in the share").unwrap();
    std::os::unix::fs::symlink("/etc", share.join("etc")).unwrap();
    let r = root.display().to_string();

    // Refused at start: two roots, a share outside the one root, or no root at all.
    for bad in [
        vec![
            "--allowed-root",
            &r,
            "--allowed-root",
            tr.t.path().to_str().unwrap(),
        ],
        vec![
            "--allowed-root",
            &r,
            "--shared-dir",
            outside.to_str().unwrap(),
        ],
        vec![],
    ] {
        let mut args = vec!["virtiofs", "--sock", "/var/tmp/rv-chroot-never.sock"];
        args.extend(["--sandbox", "chroot"]);
        args.extend(bad.iter().copied());
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--sandbox chroot"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let share_arg = share.display().to_string();
    let d = tr.start(
        "chroot",
        &["--allowed-root", &r, "--shared-dir", &share_arg],
    );
    let pid = d.pid();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        std::fs::canonicalize(root).unwrap(),
        "the daemon's root is the allowed tree"
    );
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(
        u64::from_str_radix(&status_field(pid, "CapEff"), 16).unwrap(),
        cap_mask(true, false)
    );
    assert_eq!(
        std::fs::metadata(sock).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    // Outside the root, and a `..` way out of it: 403 naming the rule.
    for src in [outside.clone(), root.join("../outside")] {
        let resp = http(
            api,
            "POST",
            "/api/v1/mount?mountpoint=/out",
            Some(&passthrough_body(&src)),
        );
        assert_eq!(resp.status, 403, "{}", text(&resp.body));
        assert!(
            text(&resp.body).contains("outside the chroot"),
            "{}",
            text(&resp.body)
        );
    }
    // Under it, by its host path.
    let resp = http(
        api,
        "POST",
        "/api/v1/mount?mountpoint=/in",
        Some(&passthrough_body(&share)),
    );
    assert_eq!(resp.status, 204, "{}", text(&resp.body));

    // A RAFS image the host mounts under the root after start: servable, its config's
    // paths mapped too; a cache work dir outside the root refused.
    let (late, _late) = tr.late_image();
    let resp = http(
        api,
        "POST",
        "/api/v1/mount?mountpoint=/bad",
        Some(&rafs_body(&late, Some(outside))),
    );
    assert_eq!(resp.status, 403, "{}", text(&resp.body));
    assert!(text(&resp.body).contains("outside the chroot"));
    let cache = root.join("cache");
    std::fs::create_dir(&cache).unwrap();
    let resp = http(
        api,
        "POST",
        "/api/v1/mount?mountpoint=/rafs",
        Some(&rafs_body(&late, Some(&cache))),
    );
    assert_eq!(resp.status, 204, "{}", text(&resp.body));
    // The mount table shows the host paths the caller gave.
    let resp = http(api, "GET", "/api/v1/daemon", None);
    assert!(text(&resp.body).contains(late.join("image.boot").to_str().unwrap()));

    // Through the device: the share's file, a symlink to /etc that stays a symlink (the
    // guest resolves it, in its own tree), and xattrs.
    let mut drv = vu_driver::Driver::connect(sock, 2);
    drv.init();
    let (err, rp) = drv.call(1, vu_driver::FUSE_LOOKUP, 1, &vu_driver::name_body(b"etc"));
    assert_eq!(err, 0);
    let mode = drv.mem.u32_at(rp + 16 + 40 + 60);
    assert_eq!(
        mode & libc::S_IFMT,
        libc::S_IFLNK,
        "a symlink, not host /etc"
    );
    let f = drv.lookup(1, 1, "f");
    let mut set = Vec::new();
    set.extend_from_slice(&5u32.to_le_bytes());
    set.extend_from_slice(&0u32.to_le_bytes());
    set.extend_from_slice(b"user.rv\0value");
    let (err, _) = drv.call(1, FUSE_SETXATTR, f, &set);
    assert_eq!(err, 0, "setxattr in the chroot");
    let mut get = Vec::new();
    get.extend_from_slice(&64u32.to_le_bytes());
    get.extend_from_slice(&0u32.to_le_bytes());
    get.extend_from_slice(b"user.rv\0");
    let (err, rp) = drv.call(1, FUSE_GETXATTR, f, &get);
    assert_eq!(err, 0, "getxattr in the chroot");
    assert_eq!(drv.mem.read(rp + 16, 5), b"value");
    assert_eq!(
        xattr_of(&share.join("f"), "user.rv").as_deref(),
        Some(&b"value"[..]),
        "the host file carries it"
    );
    drop(drv);

    // SIGTERM: a clean exit; the sockets outside the root stay for the next bind.
    let mut d = d;
    let (_, code) = d
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert_eq!(code, 0);
}

fn xattr_of(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a writable buffer of the given length.
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}
