//! `--sandbox namespace`: the daemon moves into a private mount namespace whose root is an
//! empty, read-only tmpfs holding only what it may touch, bind-mounted at the same paths:
//! the allowed roots, the shared dirs, the start-up bootstrap and config, the socket
//! directories, `/proc` (the passthrough reopens inodes through `/proc/self/fd`), `/dev/null`
//! and `/dev/urandom`, and the files name resolution reads (`/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/nsswitch.conf`). TLS roots are compiled in (webpki-roots).
//!
//! In virtiofs mode a pid namespace comes with it: the launched process forks, the child
//! (the daemon, pid 1 there) mounts a `/proc` of its own namespace instead of binding the
//! host's, and the launched process stays as a confined waiter that relays signals and
//! exits as the daemon exits ([`Role`], [`wait_and_exit`]).
//!
//! Every mount of the namespace is made a slave first, and bind mounts of slaves are slaves
//! of the same master: a mount that appears later on the host under an allowed root (the
//! snapshotter mounting a new layer) appears in the daemon's view too, when the host mount
//! it lands on is shared (systemd makes `/` shared).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::SandboxError;

/// Where the new root is built (an empty directory on the host, then a tmpfs in the
/// namespace only).
const ROOT_DIR: &str = "/run/rafs-virtiofsd-sandbox";

/// Files and trees visible in every sandbox (Landlock lets them be read; /dev/null also
/// written).
pub(super) const ALWAYS: &[&str] = &[
    "/proc",
    "/dev/null",
    "/dev/urandom",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
];

fn err(what: &str, p: &Path) -> SandboxError {
    SandboxError::Setup(format!(
        "{what} {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    ))
}

fn cstr(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Setup(format!("path with NUL: {}", p.display())))
}

fn mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), SandboxError> {
    let s = src.map(cstr).transpose()?;
    let d = cstr(dst)?;
    let t = fstype.map(|t| CString::new(t).unwrap_or_default());
    let o = data.map(|t| CString::new(t).unwrap_or_default());
    // SAFETY: NUL-terminated strings or null pointers, as mount(2) accepts.
    let r = unsafe {
        libc::mount(
            s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            d.as_ptr(),
            t.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            o.as_ref().map_or(std::ptr::null(), |c| c.as_ptr().cast()),
        )
    };
    if r != 0 {
        return Err(err("mount", dst));
    }
    Ok(())
}

/// The paths to bind, canonical, without those inside another one.
fn bind_set(visible: &[PathBuf]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = visible
        .iter()
        .map(PathBuf::as_path)
        .chain(ALWAYS.iter().map(Path::new))
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    v.sort();
    v.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in v {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    out
}

/// Signals the waiting parent of a pid namespace passes on to the daemon.
const RELAYED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Which process returns from [`enter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The daemon (with a pid namespace: its pid 1).
    Daemon,
    /// With a pid namespace, the process that was launched: it must only wait for the
    /// daemon ([`wait_and_exit`]) and never serve.
    Waiter { child: libc::pid_t },
}

/// Enters the namespace (see the module docs). With `pid`, also a pid namespace: the
/// process forks, the child (pid 1 there, with its own `/proc`, so it sees no host process)
/// is the daemon, and the launched process stays as its waiter.
pub fn enter(visible: &[PathBuf], pid: bool) -> Result<Role, SandboxError> {
    let binds = bind_set(visible);
    let binds: Vec<PathBuf> = if pid {
        // The daemon mounts a /proc of its own pid namespace instead.
        binds
            .into_iter()
            .filter(|p| p != Path::new("/proc"))
            .collect()
    } else {
        binds
    };
    let root = Path::new(ROOT_DIR);
    std::fs::create_dir_all(root).map_err(|e| SandboxError::Setup(format!("{ROOT_DIR}: {e}")))?;
    let flags = libc::CLONE_NEWNS | if pid { libc::CLONE_NEWPID } else { 0 };
    // SAFETY: plain syscall; the calling process is still single-threaded.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(err("unshare", root));
    }
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
    )?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=1m"),
    )?;
    for p in &binds {
        let dst = root.join(p.strip_prefix("/").unwrap_or(p));
        let md = std::fs::metadata(p)
            .map_err(|e| SandboxError::Setup(format!("{}: {e}", p.display())))?;
        if md.is_dir() {
            std::fs::create_dir_all(&dst)
        } else {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| SandboxError::Setup(format!("{}: {e}", parent.display())))?;
            }
            std::fs::File::create(&dst).map(|_| ())
        }
        .map_err(|e| SandboxError::Setup(format!("{}: {e}", dst.display())))?;
        mount(Some(p), &dst, None, libc::MS_BIND | libc::MS_REC, None)?;
    }
    if pid {
        std::fs::create_dir_all(root.join("proc"))
            .map_err(|e| SandboxError::Setup(format!("{ROOT_DIR}/proc: {e}")))?;
    }
    // pivot_root(".", "."): the old root ends up stacked under the new one, then is detached.
    let c = cstr(root)?;
    // SAFETY: NUL-terminated path.
    if unsafe { libc::chdir(c.as_ptr()) } != 0 {
        return Err(err("chdir", root));
    }
    // SAFETY: NUL-terminated paths.
    if unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) } != 0 {
        return Err(err("pivot_root", root));
    }
    // SAFETY: NUL-terminated path.
    if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(err("umount old root", root));
    }
    // SAFETY: NUL-terminated path.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(err("chdir", Path::new("/")));
    }
    // The tmpfs root itself is read-only; the bound trees keep their own flags.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;
    log::info!(
        "sandbox: mount namespace with {}",
        binds
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !pid {
        return Ok(Role::Daemon);
    }
    // Relayed signals and SIGCHLD stay blocked in the waiter (it takes them with
    // sigwaitinfo); the daemon gets the old mask back.
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let (mut set, mut old): (libc::sigset_t, libc::sigset_t) = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to local sigsets.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in RELAYED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
    }
    // SAFETY: the process is single-threaded, so the child may go on running Rust code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(err("fork", root));
    }
    if child > 0 {
        return Ok(Role::Waiter { child });
    }
    // SAFETY: plain prctl; the daemon dies with its waiter (Kata watches the waiter's pid).
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: restores the mask saved above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    mount(
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    log::info!("sandbox: pid namespace (the daemon is its pid 1)");
    Ok(Role::Daemon)
}

/// The waiter's life: pass relayed signals on to `child`, and exit as it exits (its exit
/// code, or killed by the same signal). Never returns.
pub fn wait_and_exit(child: libc::pid_t) -> ! {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local sigset.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in RELAYED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
    }
    loop {
        // SAFETY: valid sigset; no siginfo wanted.
        let s = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if s > 0 && s != libc::SIGCHLD {
            // SAFETY: plain syscall.
            unsafe { libc::kill(child, s) };
            continue;
        }
        let mut status = 0;
        // SAFETY: valid pointer to a local int.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } != child {
            continue;
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            // SAFETY: default disposition, unblocked, then the same signal to ourselves.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                let mut one: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut one);
                libc::sigaddset(&mut one, sig);
                libc::sigprocmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
                libc::kill(libc::getpid(), sig);
                libc::_exit(128 + sig);
            }
        }
        // SAFETY: ends the process with the daemon's code.
        unsafe { libc::_exit(libc::WEXITSTATUS(status)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_set_drops_nested_paths() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        let s = bind_set(&[a.join("b"), a.clone(), PathBuf::from("/nonexistent/x")]);
        let a = std::fs::canonicalize(&a).unwrap();
        assert!(s.contains(&a));
        assert!(!s.iter().any(|p| p.starts_with(&a) && *p != a));
        assert!(!s.iter().any(|p| p.starts_with("/nonexistent")));
    }
}
