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
            Some(c) => std::fs::read_to_string(c).map_err(|e| DaemonError::Mount {
                mountpoint: m.virtual_mountpoint.clone().unwrap_or_else(|| "/".into()),
                source: MountError::Rafs(format!("cannot read config {}: {e}", c.display())),
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
    let signals = signal_channel()?;
    let tree = Arc::new(FsTree::new());
    mount_startup(&tree, &common.mounts)?;
    let ctx = ApiContext::new(tree.clone(), common.id.clone());

    let mut listener = vhost_user::listen(sock)?;
    log::info!("vhost-user-fs socket listening on {}", sock.display());
    ctx.set_state(DaemonState::Running);
    if let Some(a) = &common.apisock {
        api::start(a, ctx.clone())?;
        log::info!("API listening on {}", a.display());
    }

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
    let _ = std::fs::remove_file(sock);
    if let Some(a) = &common.apisock {
        let _ = std::fs::remove_file(a);
    }
    result
}

/// Runs FUSE mode: mounts the tree at `mountpoint` through /dev/fuse until SIGTERM/SIGINT
/// or until the mount is removed (e.g. `umount`).
pub fn run_fuse(mountpoint: &Path, common: &CommonOptions) -> Result<(), DaemonError> {
    let signals = signal_channel()?;
    let tree = Arc::new(FsTree::new());
    mount_startup(&tree, &common.mounts)?;
    let ctx = ApiContext::new(tree.clone(), common.id.clone());

    let mut session = FuseSession::new(mountpoint, "rafs-virtiofsd", "", false)
        .map_err(|e| DaemonError::Fuse(e.to_string()))?;
    session.set_allow_other(true);
    session
        .mount()
        .map_err(|e| DaemonError::Fuse(e.to_string()))?;
    log::info!("FUSE mounted at {}", mountpoint.display());
    ctx.set_state(DaemonState::Running);
    if let Some(a) = &common.apisock {
        api::start(a, ctx.clone())?;
    }

    let server = Arc::new(tree.dispatcher());
    let (done_tx, done_rx) = bounded::<()>(1);
    let nthreads = common.thread_pool_size.max(1);
    for i in 0..nthreads {
        let mut ch = session
            .new_channel()
            .map_err(|e| DaemonError::Fuse(e.to_string()))?;
        let server = server.clone();
        let hook = tree.metrics_hook();
        let done_tx = done_tx.clone();
        thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || {
                loop {
                    match ch.get_request() {
                        Ok(Some((reader, writer))) => {
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
