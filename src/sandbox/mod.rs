//! Least privilege for the daemon process (see docs/security.md).
//!
//! Always on, whatever the launch (Kata's argv included):
//! - `PR_SET_NO_NEW_PRIVS`;
//! - every capability dropped (effective, permitted, inheritable, ambient and bounding)
//!   except [`needed_caps`] for the configured filesystems;
//! - a seccomp-BPF allowlist on every thread ([`seccomp`]), `--seccomp kill` by default,
//!   with tighter classes stacked on the network and guest-serving threads
//!   ([`confine_thread`]).
//!
//! Optional, `--sandbox namespace`: a private mount namespace whose root holds only the
//! allowed trees, and in virtiofs mode a pid namespace ([`namespace`]), fenced again by
//! Landlock where the kernel has it ([`landlock`]). Where namespaces are not allowed,
//! `--sandbox chroot` chroots into one tree instead ([`chroot`]), with the same Landlock
//! fence.
//!
//! Order: [`enter`] runs first in each run loop, before any thread exists (capabilities are
//! per thread, so threads made later inherit the reduced sets); [`lock_down`] installs the
//! seccomp filter on all threads when start-up is over.

pub mod chroot;
pub mod landlock;
pub mod namespace;
pub mod seccomp;

use std::cell::Cell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use caps::{CapSet, Capability};
use seccompiler::BpfProgram;

use crate::thread_class::ThreadClass;

pub use self::seccomp::SeccompMode;

/// Errors setting up the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A step failed.
    #[error("sandbox: {0}")]
    Setup(String),
}

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// A private mount namespace with only the allowed trees.
    Namespace,
    /// chroot(2) into one tree, where namespaces are not allowed.
    Chroot,
    /// No filesystem confinement (the default; what Kata gets without extra args).
    None,
}

impl SandboxMode {
    /// Parses `namespace|chroot|none`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "namespace" => Some(SandboxMode::Namespace),
            "chroot" => Some(SandboxMode::Chroot),
            "none" => Some(SandboxMode::None),
            _ => None,
        }
    }
}

/// What the sandbox needs to know about the launch.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// `--sandbox`.
    pub mode: SandboxMode,
    /// `--seccomp`.
    pub seccomp: SeccompMode,
    /// Trees visible in the namespace: `--allowed-root`s, shared dirs, start-up bootstrap and
    /// config, the socket directories.
    pub visible: Vec<PathBuf>,
    /// Whether a passthrough may be served (a shared dir, or an API that can mount one).
    pub passthrough: bool,
    /// FUSE mode (keeps CAP_SYS_ADMIN to unmount, allows umount2).
    pub fuse: bool,
    /// `--sandbox chroot`: the canonical directory to chroot into.
    pub chroot: Option<PathBuf>,
}

/// The capabilities the configured filesystems need, and why:
/// - CHOWN, FOWNER, FSETID, MKNOD, SETFCAP: serve chown, chmod and utimes on files of any
///   owner, keep setgid on chmod, whiteouts (`mknod 0:0`), `security.capability` xattrs;
/// - DAC_OVERRIDE, DAC_READ_SEARCH: reach every file of the share (the guest kernel does the
///   permission checks) and `open_by_handle_at`, which needs DAC_READ_SEARCH;
/// - SETUID, SETGID: switch a thread to the caller's ids for creates;
/// - SYS_ADMIN: `trusted.*` xattrs (overlayfs upper dirs) and, in FUSE mode, the unmount.
///
/// A RAFS-only daemon (no shared dir, no API) needs none, except SYS_ADMIN in FUSE mode.
pub fn needed_caps(passthrough: bool, fuse: bool) -> HashSet<Capability> {
    let mut s = HashSet::new();
    if passthrough {
        s.extend([
            Capability::CAP_CHOWN,
            Capability::CAP_DAC_OVERRIDE,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_FOWNER,
            Capability::CAP_FSETID,
            Capability::CAP_MKNOD,
            Capability::CAP_SETFCAP,
            Capability::CAP_SETGID,
            Capability::CAP_SETUID,
            Capability::CAP_SYS_ADMIN,
        ]);
    }
    if fuse {
        s.insert(Capability::CAP_SYS_ADMIN);
    }
    s
}

fn err(what: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Setup(format!("{what}: {e}"))
}

/// Confines the process: namespace (when asked), capabilities, no_new_privs. Call before any
/// thread is spawned.
pub fn enter(cfg: &SandboxConfig) -> Result<(), SandboxError> {
    if cfg.mode == SandboxMode::Namespace {
        // A pid namespace too, in virtiofs mode (a FUSE daemon's mount must stay the host's
        // business; its waiter would have nothing to add).
        if let namespace::Role::Waiter { child } = namespace::enter(&cfg.visible, !cfg.fuse)? {
            // The launched process keeps nothing: no capability, no new privileges, the
            // waiter's own tiny allowlist, and only the waiting.
            drop_caps(&HashSet::new())?;
            // SAFETY: plain prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            if let Some(prog) = seccomp::build_waiter(cfg.seccomp).map_err(|e| err("build", e))? {
                seccomp::apply_all_threads(&prog).map_err(|e| err("apply", e))?;
            }
            namespace::wait_and_exit(child);
        }
        landlock_fence(cfg, &cfg.visible)?;
    }
    if cfg.mode == SandboxMode::Chroot {
        let root = cfg
            .chroot
            .as_deref()
            .ok_or_else(|| SandboxError::Setup("--sandbox chroot without a root".into()))?;
        // Before the chroot: Landlock opens the paths it names.
        landlock_fence(cfg, &[root.to_path_buf()])?;
        chroot::enter(root)?;
    }
    drop_caps(&needed_caps(cfg.passthrough, cfg.fuse))?;
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(err("PR_SET_NO_NEW_PRIVS", std::io::Error::last_os_error()));
    }
    if cfg.seccomp == SeccompMode::Trap {
        install_sigsys_handler();
    }
    Ok(())
}

/// Landlock over `visible` (plus the fixed set), logging how far the kernel enforces it.
fn landlock_fence(cfg: &SandboxConfig, visible: &[PathBuf]) -> Result<(), SandboxError> {
    if cfg.fuse {
        log::info!("sandbox: no Landlock in FUSE mode (it would forbid the FUSE mount)");
        return Ok(());
    }
    match landlock::restrict(visible)? {
        landlock::Enforced::Fully => log::info!("sandbox: Landlock enforced"),
        landlock::Enforced::Partially => {
            log::info!("sandbox: Landlock partly enforced (older kernel ABI)")
        }
        landlock::Enforced::Not => {
            log::warn!("sandbox: Landlock not enforced (kernel without Landlock)")
        }
    }
    Ok(())
}

/// The thread classes' filters, set by [`lock_down`] ([`confine_thread`]).
static NETWORK_FILTER: OnceLock<BpfProgram> = OnceLock::new();
static GUEST_FILTER: OnceLock<BpfProgram> = OnceLock::new();
/// How many seccomp filters a thread has right after [`lock_down`] (the daemon's, plus any
/// the process was started under); a thread with more already carries a class.
static LOCKED_FILTERS: OnceLock<u32> = OnceLock::new();

/// The calling thread's seccomp filter count (`Seccomp_filters`, Linux 5.9+).
fn own_filter_count() -> Option<u32> {
    crate::procfs::read_to_string(c"thread-self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp_filters:"))?
        .trim()
        .parse()
        .ok()
}

/// Installs the seccomp filter on every thread. Call when start-up is over. From then on,
/// [`confine_thread`] also stacks a class's filter on each thread of that class.
pub fn lock_down(cfg: &SandboxConfig) -> Result<(), SandboxError> {
    if let Some(prog) = seccomp::build(cfg.seccomp, cfg.fuse).map_err(|e| err("build", e))? {
        seccomp::apply_all_threads(&prog).map_err(|e| err("apply", e))?;
        log::info!("seccomp filter installed ({:?})", cfg.seccomp);
    }
    // After the all-threads install: TSYNC refuses threads whose filters differ.
    if let Some(prog) = seccomp::build_network(cfg.seccomp).map_err(|e| err("build", e))? {
        let _ = NETWORK_FILTER.set(prog);
    }
    if let Some(prog) = seccomp::build_guest(cfg.seccomp).map_err(|e| err("build", e))? {
        let _ = GUEST_FILTER.set(prog);
    }
    if let Some(n) = own_filter_count() {
        let _ = LOCKED_FILTERS.set(n);
    }
    Ok(())
}

/// The [`crate::thread_class`] hook: once [`lock_down`] has run, stacks `class`'s filter
/// (`seccomp::network_denied`, `seccomp::GUEST_DENIED`) on the calling thread, once per
/// thread. Before that, and with `--seccomp none`, it does nothing. A thread spawned by a
/// thread of a class inherits its filters; it is seen to have more than the lock-down
/// count and gets no second copy (each copy would run on every syscall). Where the kernel
/// does not report the count (before 5.9), such a thread stacks a second copy.
pub fn confine_thread(class: ThreadClass) {
    thread_local! {
        static DONE: Cell<bool> = const { Cell::new(false) };
    }
    if DONE.get() {
        return;
    }
    let filter = match class {
        ThreadClass::Network => &NETWORK_FILTER,
        ThreadClass::Guest => &GUEST_FILTER,
    };
    let Some(prog) = filter.get() else {
        return;
    };
    DONE.set(true);
    if let (Some(now), Some(locked)) = (own_filter_count(), LOCKED_FILTERS.get()) {
        if now > *locked {
            return;
        }
    }
    if let Err(e) = seccomp::apply_this_thread(prog) {
        log::error!("seccomp: {class:?} thread class not installed: {e}");
    }
}

/// Keeps only `keep` in every capability set of the calling thread (and so of the threads
/// it creates). Without root (no capabilities to drop) this is a no-op.
pub fn drop_caps(keep: &HashSet<Capability>) -> Result<(), SandboxError> {
    let bounding = caps::read(None, CapSet::Bounding).map_err(|e| err("read bounding", e))?;
    let can_drop = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    if can_drop {
        for c in bounding.difference(keep) {
            caps::drop(None, CapSet::Bounding, *c).map_err(|e| err("drop bounding", e))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clear ambient", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| err("clear inheritable", e))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("read permitted", e))?;
    let keep: HashSet<Capability> = permitted.intersection(keep).copied().collect();
    caps::set(None, CapSet::Effective, &keep).map_err(|e| err("set effective", e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| err("set permitted", e))?;
    Ok(())
}

/// SIGSYS (seccomp `trap`): log the syscall number and make the call return EPERM.
fn install_sigsys_handler() {
    extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // si_syscall sits after si_call_addr in the SIGSYS layout of siginfo_t.
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; the read is
        // within its 128 bytes.
        let nr =
            unsafe { *((info as *const u8).add(16 + std::mem::size_of::<usize>()) as *const i32) };
        let mut buf = *b"rafs-virtiofsd: seccomp: blocked syscall           \n";
        let mut n = nr.unsigned_abs();
        let mut i = buf.len() - 2;
        loop {
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 || i == 40 {
                break;
            }
            i -= 1;
        }
        // SAFETY: write(2) is async-signal-safe; the buffer is valid.
        unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: for SA_SIGINFO handlers `ctx` is the interrupted thread's ucontext; setting
        // RAX makes the blocked syscall return -EPERM.
        unsafe {
            let uc = ctx as *mut libc::ucontext_t;
            (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -(libc::EPERM as i64);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = ctx;
    }
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
    }
}
