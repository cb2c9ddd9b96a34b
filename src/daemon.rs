//! Process wiring: logging, RLIMIT_NOFILE, signals, start-up mounts, and the run loops of
//! the two modes (vhost-user-fs device and FUSE mount).
//!
//! Start order in virtiofs mode (KATA-CONTRACT.md §1.5): CLI mounts, bind the vhost-user
//! socket, state RUNNING, then bind the API socket, so the first API answer is RUNNING.
//! SIGTERM/SIGINT remove both sockets and exit with status 0 at once, whether a VMM is
//! connected or not.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{bounded, Receiver};
use fuse_backend_rs::transport::FuseSession;

use crate::api::{self, ApiContext, DaemonState};
use crate::fs::vfs::{FsTree, FsType, MountError};
use crate::sandbox::{self, SandboxConfig, SandboxError, SandboxMode, SeccompMode};
use crate::vhost_user::{self, pool::ThreadPool, DeviceConfig, MAX_REQUEST_QUEUES};

/// Default number of threads that run FUSE requests.
pub const DEFAULT_THREAD_POOL_SIZE: usize = 8;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A start-up mount failed.
    #[error("mount {mountpoint}: {source}")]
    Mount {
        /// Where.
        mountpoint: String,
        /// Why.
        source: MountError,
    },
    /// The API socket could not be served.
    #[error(transparent)]
    Api(#[from] api::ApiError),
    /// The vhost-user device failed.
    #[error(transparent)]
    VhostUser(#[from] vhost_user::VhostUserFsError),
    /// FUSE session error.
    #[error("fuse: {0}")]
    Fuse(String),
    /// Bad combination of options.
    #[error("{0}")]
    Usage(String),
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// The filesystems to mount at start-up (nydusd's standalone options).
#[derive(Debug, Clone, Default)]
pub struct StartupMounts {
    /// RAFS bootstrap (`--bootstrap`).
    pub bootstrap: Option<PathBuf>,
    /// RAFS config file (`--config`).
    pub config: Option<PathBuf>,
    /// Where the RAFS goes (`--virtual-mountpoint`, default `/`).
    pub virtual_mountpoint: Option<String>,
    /// Host directory to pass through (`--shared-dir`).
    pub shared_dir: Option<PathBuf>,
}

/// Options common to both modes.
#[derive(Debug, Clone)]
pub struct CommonOptions {
    /// API socket (`--apisock`).
    pub apisock: Option<PathBuf>,
    /// Threads serving FUSE requests (`--thread-pool-size`).
    pub thread_pool_size: usize,
    /// Start-up mounts.
    pub mounts: StartupMounts,
    /// Daemon id reported by the API (`--id`).
    pub id: Option<String>,
    /// Least privilege (`--sandbox`, `--seccomp`, `--allowed-root`, `--socket-group`).
    pub security: SecurityOptions,
}

/// The sandbox options.
#[derive(Debug, Clone)]
pub struct SecurityOptions {
    /// `--sandbox`.
    pub sandbox: SandboxMode,
    /// `--seccomp`.
    pub seccomp: SeccompMode,
    /// `--allowed-root`: where API mounts may take their sources from (empty: anywhere, unless
    /// the namespace sandbox is on).
    pub allowed_roots: Vec<PathBuf>,
    /// `--socket-group`: the sockets are 0660 and owned by this group (else 0600).
    pub socket_group: Option<u32>,
}

impl Default for SecurityOptions {
    fn default() -> Self {
        SecurityOptions {
            sandbox: SandboxMode::None,
            seccomp: SeccompMode::Kill,
            allowed_roots: Vec::new(),
            socket_group: None,
        }
    }
}

impl CommonOptions {
    /// The sandbox for these options; `sockets` are the sockets the daemon will create.
    fn sandbox_config(&self, sockets: &[&Path], fuse: bool) -> Result<SandboxConfig, DaemonError> {
        let mut visible = self.security.allowed_roots.clone();
        let m = &self.mounts;
        visible.extend(m.shared_dir.iter().cloned());
        visible.extend(m.bootstrap.iter().cloned());
        visible.extend(m.config.iter().cloned());
        for s in sockets.iter().copied().chain(self.apisock.as_deref()) {
            if let Some(d) = s.parent() {
                visible.push(if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_path_buf()
                });
            }
        }
        let chroot = match self.security.sandbox {
            SandboxMode::Chroot => Some(self.chroot_root()?),
            _ => None,
        };
        Ok(SandboxConfig {
            mode: self.security.sandbox,
            seccomp: self.security.seccomp,
            visible,
            passthrough: m.shared_dir.is_some() || self.apisock.is_some(),
            fuse,
            chroot,
        })
    }

    /// `--sandbox chroot`'s root: the one `--allowed-root`, else the shared dir, canonical.
    /// The start-up bootstrap, config and shared dir must lie under it (the sockets need
    /// not: they are bound before the chroot).
    fn chroot_root(&self) -> Result<PathBuf, DaemonError> {
        let roots = &self.security.allowed_roots;
        let root = match (roots.as_slice(), &self.mounts.shared_dir) {
            ([one], _) => one.clone(),
            ([], Some(dir)) => dir.clone(),
            ([], None) => {
                return Err(DaemonError::Usage(
                    "--sandbox chroot needs the tree to chroot into: --allowed-root DIR (or --shared-dir)"
                        .into(),
                ))
            }
            _ => {
                return Err(DaemonError::Usage(
                    "--sandbox chroot confines to one tree: give one --allowed-root (--sandbox namespace takes several)"
                        .into(),
                ))
            }
        };
        let root = std::fs::canonicalize(&root).map_err(|e| {
            DaemonError::Usage(format!("--sandbox chroot root {}: {e}", root.display()))
        })?;
        let m = &self.mounts;
        for p in m.shared_dir.iter().chain(&m.bootstrap).chain(&m.config) {
            let real = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            if !real.starts_with(&root) {
                return Err(DaemonError::Usage(format!(
                    "{} is outside the chroot {} (--sandbox chroot)",
                    p.display(),
                    root.display()
                )));
            }
        }
        Ok(root)
    }
}

/// Creates a socket with `bind` under umask 0177 (so it is 0600 whatever the caller's umask),
/// then gives it to `group` (0660) when one is set.
fn bind_private<T, E>(
    path: &Path,
    group: Option<u32>,
    bind: impl FnOnce() -> Result<T, E>,
) -> Result<T, DaemonError>
where
    DaemonError: From<E>,
{
    // SAFETY: umask cannot fail. Start-up runs this on the main thread; the passthrough's
    // serving threads have their own fs struct and set their umask before every create.
    let old = unsafe { libc::umask(0o177) };
    let r = bind();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let v = r?;
    if let Some(g) = group {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| DaemonError::Usage(format!("bad socket path {}", path.display())))?;
        // SAFETY: NUL-terminated path.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, g) } != 0
            // SAFETY: NUL-terminated path.
            || unsafe { libc::chmod(c.as_ptr(), 0o660) } != 0
        {
            return Err(DaemonError::Io(std::io::Error::last_os_error()));
        }
    }
    Ok(v)
}

/// Initialises env_logger on stderr at `level` (trace, debug, info, warn, error, off).
/// The level can later be changed with `PUT /api/v1/daemon`.
pub fn init_logging(level: &str) -> Result<(), DaemonError> {
    let lf: log::LevelFilter = level
        .parse()
        .map_err(|_| DaemonError::Usage(format!("invalid log level {level:?}")))?;
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Trace)
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .try_init();
    log::set_max_level(lf);
    Ok(())
}

/// Keeps the heap small under many threads (measured: RssAnon after reading 20,000 small
/// files and a 128 MiB file through FUSE drops from 20 MB to 6.5 MB, docs/performance.md):
/// glibc gives each thread its own arena and, once a 1 MiB chunk buffer has been freed,
/// raises its mmap threshold so later ones come from the heap and stay there. Two arenas
/// and a fixed 128 KiB trim threshold (which also pins the mmap threshold) give memory back.
pub fn tune_allocator() {
    const M_TRIM_THRESHOLD: libc::c_int = -1;
    const M_ARENA_MAX: libc::c_int = -8;
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(M_ARENA_MAX, 2);
        libc::mallopt(M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit. Never fails: problems are logged.
/// Returns the resulting soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        log::warn!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
        return 0;
    }
    if rl.rlim_cur < rl.rlim_max {
        let want = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit struct that lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            log::debug!("RLIMIT_NOFILE raised to {}", rl.rlim_max);
            return rl.rlim_max;
        }
        log::warn!(
            "cannot raise RLIMIT_NOFILE to {}: {}",
            rl.rlim_max,
            std::io::Error::last_os_error()
        );
    }
    rl.rlim_cur
}

/// Performs the start-up mounts on `tree`.
pub fn mount_startup(tree: &FsTree, m: &StartupMounts) -> Result<(), DaemonError> {
    // A share at "/" would hide every other mount (the root is then the share itself).
    if m.shared_dir.is_some() && m.bootstrap.is_some() {
        return Err(DaemonError::Usage(
            "--shared-dir and --bootstrap cannot be combined; mount one of them through the API"
                .into(),
        ));
    }
    if let Some(bootstrap) = &m.bootstrap {
        let config = match &m.config {
            Some(c) => tree
                .host_path(c)
                .and_then(|c| {
                    std::fs::read_to_string(&c).map_err(|e| {
                        MountError::Rafs(format!("cannot read config {}: {e}", c.display()))
                    })
                })
                .map_err(|e| DaemonError::Mount {
                    mountpoint: m.virtual_mountpoint.clone().unwrap_or_else(|| "/".into()),
                    source: e,
                })?,
            None => return Err(DaemonError::Usage("--bootstrap needs --config".to_string())),
        };
        let mp = m.virtual_mountpoint.clone().unwrap_or_else(|| "/".into());
        tree.mount(FsType::Rafs, &bootstrap.display().to_string(), &config, &mp)
            .map_err(|e| DaemonError::Mount {
                mountpoint: mp.clone(),
                source: e,
            })?;
    }
    if let Some(dir) = &m.shared_dir {
        tree.mount(FsType::Passthrough, &dir.display().to_string(), "", "/")
            .map_err(|e| DaemonError::Mount {
                mountpoint: "/".into(),
                source: e,
            })?;
    }
    Ok(())
}

/// The roots API mounts must lie under: `--allowed-root`s (and, in the namespace sandbox, the
/// shared dir), or none (anywhere) when no root is given. Under `--sandbox chroot`, none
/// here: the chroot itself is the bound.
fn allowed_roots(common: &CommonOptions) -> Vec<PathBuf> {
    if common.security.sandbox == SandboxMode::Chroot {
        // The chroot is the one root; FsTree::host_path refuses what lies outside it.
        return Vec::new();
    }
    let mut v = common.security.allowed_roots.clone();
    if !v.is_empty() || common.security.sandbox == SandboxMode::Namespace {
        v.extend(common.mounts.shared_dir.iter().cloned());
        v.extend(common.mounts.bootstrap.iter().cloned());
    }
    v
}

/// Delivers SIGTERM/SIGINT on a channel.
fn signal_channel() -> Result<Receiver<i32>, DaemonError> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let (tx, rx) = bounded(4);
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(s).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

fn make_pool(size: usize) -> Result<Option<Arc<ThreadPool>>, DaemonError> {
    if size == 0 {
        return Ok(None);
    }
    Ok(Some(ThreadPool::new("fuse-worker", size)?))
}

/// Runs the vhost-user-fs daemon until SIGTERM/SIGINT.
pub fn run_virtiofs(
    sock: &Path,
    num_request_queues: usize,
    common: &CommonOptions,
) -> Result<(), DaemonError> {
    if num_request_queues == 0 || num_request_queues > MAX_REQUEST_QUEUES {
        return Err(DaemonError::Usage(format!(
            "--num-request-queues must be in 1..={MAX_REQUEST_QUEUES}"
        )));
    }
    let sb = common.sandbox_config(&[sock], false)?;
    // The sockets are bound before the sandbox, while their paths are in reach (under
    // `--sandbox chroot` they may lie outside the root); connections wait in the backlog
    // until start-up is over.
    let group = common.security.socket_group;
    let mut listener = bind_private(sock, group, || vhost_user::listen(sock))?;
    let api_listener = match &common.apisock {
        Some(a) => Some(bind_private(a, group, || api::bind(a))?),
        None => None,
    };
    sandbox::enter(&sb)?;
    let signals = signal_channel()?;
    let tree = Arc::new(FsTree::new());
    if let Some(root) = &sb.chroot {
        tree.set_host_root(root);
    }
    tree.set_allowed_roots(allowed_roots(common));
    mount_startup(&tree, &common.mounts)?;
    let ctx = ApiContext::new(tree.clone(), common.id.clone());
    log::info!("vhost-user-fs socket listening on {}", sock.display());

    let cfg = DeviceConfig {
        num_request_queues,
        pool: make_pool(common.thread_pool_size)?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = bounded(1);
    {
        let stop = stop.clone();
        let tree = tree.clone();
        thread::Builder::new()
            .name("vhost-user".into())
            .spawn(move || {
                let r = vhost_user::serve(&mut listener, tree, cfg, stop, &|_| {});
                let _ = done_tx.send(r);
            })?;
    }
    // Like nydusd, the API answers RUNNING from its first request; here that also means
    // the filter already covers every thread, the API's among them.
    sandbox::lock_down(&sb)?;
    crate::thread_class::set_hook(sandbox::confine_thread);
    ctx.set_state(DaemonState::Running);
    if let (Some(a), Some(l)) = (&common.apisock, api_listener) {
        api::serve(l, ctx.clone())?;
        log::info!("API listening on {}", a.display());
    }

    let result = crossbeam_channel::select! {
        recv(signals) -> s => {
            log::info!("signal {} received, exiting", s.unwrap_or(0));
            Ok(())
        }
        recv(done_rx) -> r => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DaemonError::from(e)),
            Err(_) => Err(DaemonError::Usage("vhost-user thread died".into())),
        }
    };
    stop.store(true, Ordering::Release);
    ctx.set_state(DaemonState::Stopped);
    for s in std::iter::once(sock).chain(common.apisock.as_deref()) {
        // Under `--sandbox chroot` a socket outside the root stays (the next bind replaces it).
        if let Ok(p) = tree.host_path(s) {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

/// Runs FUSE mode: mounts the tree at `mountpoint` through /dev/fuse until SIGTERM/SIGINT
/// or until the mount is removed (e.g. `umount`).
pub fn run_fuse(mountpoint: &Path, common: &CommonOptions) -> Result<(), DaemonError> {
    if matches!(
        common.security.sandbox,
        SandboxMode::Namespace | SandboxMode::Chroot
    ) {
        return Err(DaemonError::Usage(
            "--sandbox namespace and chroot are for virtiofs mode (the FUSE mount must stay visible on the host)"
                .into(),
        ));
    }
    let sb = common.sandbox_config(&[], true)?;
    sandbox::enter(&sb)?;
    let signals = signal_channel()?;
    // Started with --bootstrap and no --shared-dir, the session serves RAFS only, as
    // nydusd's RAFS daemons do: a read-only mount with zero-message open
    // (FsTree::rafs_only). A daemon started empty may be given passthroughs through the
    // API, so it keeps OPEN and FLUSH.
    let rafs_only = common.mounts.shared_dir.is_none() && common.mounts.bootstrap.is_some();
    let tree = Arc::new(if rafs_only {
        FsTree::rafs_only()
    } else {
        FsTree::new()
    });
    tree.set_allowed_roots(allowed_roots(common));
    mount_startup(&tree, &common.mounts)?;
    let ctx = ApiContext::new(tree.clone(), common.id.clone());

    let mut session = FuseSession::new(mountpoint, "rafs-virtiofsd", "", rafs_only)
        .map_err(|e| DaemonError::Fuse(e.to_string()))?;
    session.set_allow_other(true);
    session
        .mount()
        .map_err(|e| DaemonError::Fuse(e.to_string()))?;
    log::info!("FUSE mounted at {}", mountpoint.display());

    let server = Arc::new(tree.dispatcher());
    let (done_tx, done_rx) = bounded::<()>(1);
    let nthreads = common.thread_pool_size.max(1);
    for i in 0..nthreads {
        let mut ch = crate::fusedev::FuseDevChannel::new(&session)
            .map_err(|e| DaemonError::Fuse(e.to_string()))?;
        let server = server.clone();
        let hook = tree.metrics_hook();
        let done_tx = done_tx.clone();
        thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || {
                loop {
                    match ch.next_request() {
                        Ok(Some((reader, writer))) => {
                            crate::thread_class::enter(crate::thread_class::ThreadClass::Guest);
                            let r =
                                server.handle_message(reader, writer.into(), None, Some(&*hook));
                            hook.record_reply(&r);
                            if let Err(e) = r {
                                log::debug!("fuse: request failed: {e:?}");
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            log::debug!("fuse: channel ended: {e}");
                            break;
                        }
                    }
                }
                let _ = done_tx.send(());
            })?;
    }
    drop(done_tx);
    sandbox::lock_down(&sb)?;
    crate::thread_class::set_hook(sandbox::confine_thread);
    ctx.set_state(DaemonState::Running);
    if let Some(a) = &common.apisock {
        bind_private(a, common.security.socket_group, || {
            api::start(a, ctx.clone())
        })?;
    }

    crossbeam_channel::select! {
        recv(signals) -> s => log::info!("signal {} received, unmounting", s.unwrap_or(0)),
        recv(done_rx) -> _ => log::info!("FUSE mount went away"),
    }
    ctx.set_state(DaemonState::Stopped);
    let _ = session.wake();
    let _ = session.umount();
    if let Some(a) = &common.apisock {
        let _ = std::fs::remove_file(a);
    }
    Ok(())
}
