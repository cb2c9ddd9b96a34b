//! rafs-virtiofsd: vhost-user-fs daemon (and FUSE daemon) serving passthrough and Nydus
//! RAFS filesystems. Command line compatible with the subset of nydusd that Kata uses.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rafs_virtiofsd::daemon::{
    self, CommonOptions, SecurityOptions, StartupMounts, DEFAULT_THREAD_POOL_SIZE,
};
use rafs_virtiofsd::sandbox::{SandboxMode, SeccompMode};

/// Command line. Options marked global may come before or after the subcommand.
#[derive(Parser, Debug)]
#[command(
    name = "rafs-virtiofsd",
    version,
    about = "vhost-user-fs daemon serving passthrough and Nydus RAFS filesystems"
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,

    #[command(flatten)]
    global: GlobalOpts,

    /// FUSE mode (with or without the `fuse` subcommand): mount the tree at this host path; no default
    #[arg(long, short = 'M', global = true)]
    mountpoint: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct GlobalOpts {
    /// HTTP API (nydusd's API, for Kata) on this unix socket; default: no API
    #[arg(long, short = 'A', global = true)]
    apisock: Option<PathBuf>,
    /// Config of the --bootstrap image: nydusd v1 JSON, v2 JSON or v2 TOML file; no default
    #[arg(long, short = 'C', global = true)]
    config: Option<PathBuf>,
    /// RAFS bootstrap (metadata) file to mount at start-up (needs --config); default: none
    #[arg(long, short = 'B', global = true)]
    bootstrap: Option<PathBuf>,
    /// Where the start-up --bootstrap or --shared-dir is mounted in the tree; default: /
    #[arg(long, short = 'm', global = true)]
    virtual_mountpoint: Option<String>,
    /// Host directory to pass through (writable) at start-up, instead of --bootstrap; default: none
    #[arg(long, short = 's', global = true)]
    shared_dir: Option<PathBuf>,
    /// Log level: off, error, warn, info, debug or trace (to stderr) [nydusd: no off]
    #[arg(long, short = 'l', global = true, default_value = "info")]
    log_level: String,
    /// Threads serving FUSE requests; 0 serves them on the queue threads [virtiofsd: same; nydusd: --fuse-threads]
    #[arg(long, global = true, default_value_t = DEFAULT_THREAD_POOL_SIZE)]
    thread_pool_size: usize,
    /// Daemon id reported by GET /api/v1/daemon; default: none
    #[arg(long, global = true)]
    id: Option<String>,
    /// Accepted for nydusd compatibility; RLIMIT_NOFILE is always raised to the hard limit.
    #[arg(long, global = true, hide = true)]
    rlimit_nofile: Option<u64>,
    /// Accepted for nydusd compatibility and ignored.
    #[arg(long, global = true, hide = true)]
    supervisor: Option<String>,
    /// Filesystem confinement: namespace (a private mount namespace holding only the
    /// allowed trees), chroot (into the one --allowed-root, else the shared dir; where
    /// namespaces are not allowed) or none. Default none. As virtiofsd's `--sandbox`.
    #[arg(long, global = true, default_value = "none", value_parser = ["namespace", "chroot", "none"])]
    sandbox: String,
    /// Action for a syscall outside the seccomp allowlist: kill, log, trap or none. Default
    /// kill (or $RAFS_VIRTIOFSD_SECCOMP). As virtiofsd's `--seccomp`.
    #[arg(long, global = true, value_parser = ["kill", "log", "trap", "none"])]
    seccomp: Option<String>,
    /// A tree API mounts may take sources from (repeatable); with `--sandbox namespace` the
    /// only trees the daemon sees besides shares and sockets; with `--sandbox chroot` (once)
    /// the chroot. Default: anywhere (no sandbox).
    #[arg(long = "allowed-root", global = true)]
    allowed_roots: Vec<PathBuf>,
    /// Group (name or gid) given the sockets, which are then 0660. Default: none (0600).
    #[arg(long, global = true)]
    socket_group: Option<String>,
}

/// A group name or number as a gid.
fn parse_group(g: &str) -> Option<u32> {
    if let Ok(n) = g.parse() {
        return Some(n);
    }
    let c = std::ffi::CString::new(g).ok()?;
    // SAFETY: NUL-terminated name; the result is read at once, before another getgr* call.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return None;
    }
    // SAFETY: non-null result of getgrnam.
    Some(unsafe { (*gr).gr_gid })
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Serve a vhost-user-fs device to a VMM (QEMU, cloud-hypervisor).
    Virtiofs(VirtiofsOpts),
    /// Mount the tree on the host through /dev/fuse.
    Fuse,
}

#[derive(Args, Debug)]
struct VirtiofsOpts {
    /// vhost-user socket to listen on for the VMM; required
    #[arg(long)]
    sock: PathBuf,
    /// Request queues offered to the VMM, besides the hiprio queue [nydusd: none, always 1]
    #[arg(long, default_value_t = 1)]
    num_request_queues: usize,
    /// Accepted and ignored: passthrough and RAFS are always both served [nydusd: same flag, enables passthrough]
    #[arg(long)]
    hybrid_mode: bool,
    /// virtiofsd option Kata passes by default; accepted and ignored.
    #[arg(long, hide = true)]
    announce_submounts: bool,
    /// virtiofsd option; accepted and ignored.
    #[arg(long, hide = true)]
    cache: Option<String>,
    /// virtiofsd option; accepted and ignored (xattrs are always on).
    #[arg(long, hide = true)]
    xattr: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = daemon::init_logging(&cli.global.log_level) {
        eprintln!("rafs-virtiofsd: {e}");
        return ExitCode::from(2);
    }
    daemon::tune_allocator();
    daemon::raise_nofile_limit();
    let g = &cli.global;
    let socket_group = match g.socket_group.as_deref().map(|n| (n, parse_group(n))) {
        None => None,
        Some((_, Some(gid))) => Some(gid),
        Some((n, None)) => {
            eprintln!("rafs-virtiofsd: unknown group {n:?} for --socket-group");
            return ExitCode::from(2);
        }
    };
    let security = SecurityOptions {
        sandbox: SandboxMode::parse(&g.sandbox).unwrap_or(SandboxMode::None),
        seccomp: match g
            .seccomp
            .clone()
            .or_else(|| std::env::var("RAFS_VIRTIOFSD_SECCOMP").ok())
        {
            None => SeccompMode::Kill,
            Some(s) => match SeccompMode::parse(&s) {
                Some(m) => m,
                None => {
                    eprintln!("rafs-virtiofsd: --seccomp must be kill, log, trap or none");
                    return ExitCode::from(2);
                }
            },
        },
        allowed_roots: g.allowed_roots.clone(),
        socket_group,
    };
    let common = CommonOptions {
        security,
        apisock: g.apisock.clone(),
        thread_pool_size: g.thread_pool_size,
        id: g.id.clone(),
        mounts: StartupMounts {
            bootstrap: g.bootstrap.clone(),
            config: g.config.clone(),
            virtual_mountpoint: g.virtual_mountpoint.clone(),
            shared_dir: g.shared_dir.clone(),
        },
    };
    let r = match &cli.mode {
        Some(Mode::Virtiofs(v)) => daemon::run_virtiofs(&v.sock, v.num_request_queues, &common),
        Some(Mode::Fuse) | None => match &cli.mountpoint {
            Some(m) => daemon::run_fuse(m, &common),
            None => {
                eprintln!("rafs-virtiofsd: give `virtiofs --sock S` or `--mountpoint M` (FUSE)");
                return ExitCode::from(2);
            }
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: as a log line (stderr, with the other log lines) unless logging is off.
            if log::log_enabled!(log::Level::Error) {
                log::error!("{e}");
            } else {
                eprintln!("rafs-virtiofsd: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
