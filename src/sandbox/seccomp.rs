//! The seccomp-BPF allowlist: every syscall the daemon makes, for every thread, in one place.
//!
//! Built with `seccompiler` (the compiler Firecracker and cloud-hypervisor use) and applied to
//! all threads at once (TSYNC) when start-up is over. A syscall not listed here gets the
//! configured action: the process is killed (`kill`, the default), the call is allowed and
//! logged by the kernel audit log (`log`), or SIGSYS is raised, whose handler logs the
//! syscall number and makes the call fail with EPERM (`trap`).
//!
//! What stays out, on purpose: exec (`execve`, `execveat`), `ptrace`, `process_vm_*`,
//! mounts and namespaces (`mount`, `pivot_root`, `chroot`, `setns`; `unshare` only with
//! CLONE_FS), kernel modules, `bpf`, `perf_event_open`, `kexec_*`, keyrings, `reboot`,
//! `swapon`, clock and host name changes, `personality`, `userfaultfd`, `io_uring_*`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What a syscall outside the allowlist gets (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kill the process (default).
    Kill,
    /// Allow and log to the kernel audit log.
    Log,
    /// SIGSYS: our handler logs it; the call fails with EPERM.
    Trap,
    /// No filter.
    None,
}

impl SeccompMode {
    /// Parses `kill|log|trap|none`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "kill" => Some(SeccompMode::Kill),
            "log" => Some(SeccompMode::Log),
            "trap" => Some(SeccompMode::Trap),
            "none" => Some(SeccompMode::None),
            _ => None,
        }
    }
}

fn mismatch_action(mode: SeccompMode) -> Option<SeccompAction> {
    match mode {
        SeccompMode::None => None,
        SeccompMode::Kill => Some(SeccompAction::KillProcess),
        SeccompMode::Log => Some(SeccompAction::Log),
        SeccompMode::Trap => Some(SeccompAction::Trap),
    }
}

fn arch() -> Result<TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e:?}"))
}

/// The syscalls of the pid namespace's waiter (the launched process that only relays
/// signals and waits, src/sandbox/namespace.rs): a thread class of its own, far tighter
/// than the daemon's list.
pub const WAITER: &[(&str, i64)] = &[
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("wait4", libc::SYS_wait4),
    ("kill", libc::SYS_kill),
    ("getpid", libc::SYS_getpid),
    ("exit_group", libc::SYS_exit_group),
    ("exit", libc::SYS_exit),
];

/// The waiter's filter ([`WAITER`]), with `mode`'s action for anything else.
pub fn build_waiter(mode: SeccompMode) -> Result<Option<BpfProgram>, String> {
    let Some(mismatch) = mismatch_action(mode) else {
        return Ok(None);
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        WAITER.iter().map(|(_, nr)| (*nr, vec![])).collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch()?)
        .map_err(|e| format!("seccomp: {e:?}"))?;
    Ok(Some(
        filter.try_into().map_err(|e| format!("seccomp: {e:?}"))?,
    ))
}

/// What the network thread class (the `rafs-net` runtime threads, which parse what
/// registries and proxies send, and nothing else) may not do, on top of [`allowed`]: switch
/// credentials, open by file handle, or change any file. They keep reading files (DNS
/// configuration, certificates) and every socket call. Installed per thread once the
/// daemon is locked down (src/sandbox/mod.rs, `confine_thread`).
pub const NETWORK_DENIED: &[(&str, i64)] = &[
    ("setresuid", libc::SYS_setresuid),
    ("setresgid", libc::SYS_setresgid),
    ("setgroups", libc::SYS_setgroups),
    ("capset", libc::SYS_capset),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    // Its flags are behind a pointer, so it cannot be checked like openat's.
    ("openat2", libc::SYS_openat2),
    ("unshare", libc::SYS_unshare),
    ("umount2", libc::SYS_umount2),
];

/// The calls that change files (the passthrough's operations): allowed to the daemon,
/// denied to the network threads.
const FILE_CHANGES: &[(&str, i64)] = &[
    ("mkdirat", libc::SYS_mkdirat),
    ("unlinkat", libc::SYS_unlinkat),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("linkat", libc::SYS_linkat),
    ("symlinkat", libc::SYS_symlinkat),
    ("mknodat", libc::SYS_mknodat),
    ("fchmod", libc::SYS_fchmod),
    ("fchmodat", libc::SYS_fchmodat),
    ("fchmodat2", 452),
    ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat),
    ("utimensat", libc::SYS_utimensat),
    ("setxattr", libc::SYS_setxattr),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("removexattr", libc::SYS_removexattr),
    ("lremovexattr", libc::SYS_lremovexattr),
    ("fremovexattr", libc::SYS_fremovexattr),
    ("fallocate", libc::SYS_fallocate),
    ("ftruncate", libc::SYS_ftruncate),
    ("truncate", libc::SYS_truncate),
    ("copy_file_range", libc::SYS_copy_file_range),
];

/// The x86_64-only forms of [`FILE_CHANGES`].
#[cfg(target_arch = "x86_64")]
const LEGACY_FILE_CHANGES: &[(&str, i64)] = &[
    ("mkdir", libc::SYS_mkdir),
    ("rmdir", libc::SYS_rmdir),
    ("unlink", libc::SYS_unlink),
    ("rename", libc::SYS_rename),
    ("link", libc::SYS_link),
    ("symlink", libc::SYS_symlink),
    ("mknod", libc::SYS_mknod),
    ("chmod", libc::SYS_chmod),
    ("chown", libc::SYS_chown),
    ("lchown", libc::SYS_lchown),
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY_FILE_CHANGES: &[(&str, i64)] = &[];

/// Everything the network thread class may not call: [`NETWORK_DENIED`] and the calls that
/// change files.
pub fn network_denied() -> impl Iterator<Item = &'static (&'static str, i64)> {
    NETWORK_DENIED
        .iter()
        .chain(FILE_CHANGES)
        .chain(LEGACY_FILE_CHANGES)
}

/// What the guest thread class (vhost-user queues, the worker pool, FUSE threads: the code
/// that parses guest requests) may not do on top of [`allowed`]: make sockets or
/// connections. They serve files; the network runtime and the API have their own threads.
pub const GUEST_DENIED: &[(&str, i64)] = &[
    ("socket", libc::SYS_socket),
    ("connect", libc::SYS_connect),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
];

/// The guest thread class's filter: [`GUEST_DENIED`] gets `mode`'s action; everything else
/// is left to the daemon's filter below it.
pub fn build_guest(mode: SeccompMode) -> Result<Option<BpfProgram>, String> {
    let Some(action) = mismatch_action(mode) else {
        return Ok(None);
    };
    let rules = GUEST_DENIED.iter().map(|(_, nr)| (*nr, vec![])).collect();
    stacked(rules, action)
}

/// A filter to stack on a thread class: `rules` get `action`, everything else is allowed
/// (and so left to the daemon's filter below it).
fn stacked(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<Option<BpfProgram>, String> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()?)
        .map_err(|e| format!("seccomp: {e:?}"))?;
    Ok(Some(
        filter.try_into().map_err(|e| format!("seccomp: {e:?}"))?,
    ))
}

/// Rules that match an open for writing, creating or truncating, whose flags are argument
/// `arg`.
fn open_for_change(arg: u8) -> Result<Vec<SeccompRule>, String> {
    let e = |e| format!("seccomp: {e:?}");
    let masked = |mask: i32, value: i32| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask as u64),
            value as u64,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(e)
    };
    Ok(vec![
        masked(libc::O_ACCMODE, libc::O_WRONLY)?,
        masked(libc::O_ACCMODE, libc::O_RDWR)?,
        masked(libc::O_CREAT, libc::O_CREAT)?,
        masked(libc::O_TRUNC, libc::O_TRUNC)?,
    ])
}

/// The network thread class's filter: [`network_denied`] and opens that could change a
/// file get `mode`'s action; everything else is left to the daemon's filter below it.
pub fn build_network(mode: SeccompMode) -> Result<Option<BpfProgram>, String> {
    let Some(action) = mismatch_action(mode) else {
        return Ok(None);
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        network_denied().map(|(_, nr)| (*nr, vec![])).collect();
    rules.insert(libc::SYS_openat, open_for_change(2)?);
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_open, open_for_change(1)?);
    stacked(rules, action)
}

/// The allowlist as a BPF program whose default action is `mode`'s.
pub fn build(mode: SeccompMode, allow_umount: bool) -> Result<Option<BpfProgram>, String> {
    let Some(mismatch) = mismatch_action(mode) else {
        return Ok(None);
    };
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in allowed() {
        rules.insert(*nr, vec![]);
    }
    // unshare: only CLONE_FS (a thread-private umask for creates).
    let clone_fs = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::Eq,
        libc::CLONE_FS as u64,
    )
    .map_err(|e| format!("seccomp: {e:?}"))?;
    rules.insert(
        libc::SYS_unshare,
        vec![SeccompRule::new(vec![clone_fs]).map_err(|e| format!("seccomp: {e:?}"))?],
    );
    // seccomp: only to stack one more filter on the calling thread (a thread class,
    // src/sandbox/mod.rs `confine_thread`), never with flags (no TSYNC, no user-notification listener). A filter can
    // only narrow what its thread may do.
    let seccomp_rule = SeccompRule::new(vec![
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::SECCOMP_SET_MODE_FILTER as u64,
        )
        .map_err(|e| format!("seccomp: {e:?}"))?,
        SeccompCondition::new(1, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0)
            .map_err(|e| format!("seccomp: {e:?}"))?,
    ])
    .map_err(|e| format!("seccomp: {e:?}"))?;
    rules.insert(libc::SYS_seccomp, vec![seccomp_rule]);
    if allow_umount {
        // FUSE mode unmounts its mountpoint on exit.
        rules.insert(libc::SYS_umount2, vec![]);
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| format!("seccomp: {e:?}"))?;
    let prog: BpfProgram = filter.try_into().map_err(|e| format!("seccomp: {e:?}"))?;
    Ok(Some(prog))
}

/// Installs `prog` on every thread of the process.
pub fn apply_all_threads(prog: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter_all_threads(prog).map_err(|e| format!("seccomp: {e}"))
}

/// Installs `prog` on the calling thread only (for tests).
pub fn apply_this_thread(prog: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(prog).map_err(|e| format!("seccomp: {e}"))
}

/// The syscalls allowed with any arguments, as (name, number). Grouped as: memory and
/// threads, signals, time, credentials, event loops, files, sockets (vhost-user, API,
/// registries), process information, and last the changes the passthrough serves
/// (`FILE_CHANGES`).
pub fn allowed() -> impl Iterator<Item = &'static (&'static str, i64)> {
    #[cfg(target_arch = "x86_64")]
    const EXTRA: &[(&str, i64)] = &[
        ("open", libc::SYS_open),
        ("stat", libc::SYS_stat),
        ("lstat", libc::SYS_lstat),
        ("access", libc::SYS_access),
        ("readlink", libc::SYS_readlink),
        ("dup2", libc::SYS_dup2),
        ("pipe2", libc::SYS_pipe2),
        ("poll", libc::SYS_poll),
        ("select", libc::SYS_select),
        ("epoll_wait", libc::SYS_epoll_wait),
        ("time", libc::SYS_time),
        ("arch_prctl", libc::SYS_arch_prctl),
        ("fadvise64", libc::SYS_fadvise64),
        ("sendfile", libc::SYS_sendfile),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    const EXTRA: &[(&str, i64)] = &[];
    const COMMON: &[(&str, i64)] = &[
        ("brk", libc::SYS_brk),
        ("mmap", libc::SYS_mmap),
        ("munmap", libc::SYS_munmap),
        ("mprotect", libc::SYS_mprotect),
        ("mremap", libc::SYS_mremap),
        ("madvise", libc::SYS_madvise),
        ("mlock", libc::SYS_mlock),
        ("munlock", libc::SYS_munlock),
        ("membarrier", libc::SYS_membarrier),
        ("clone", libc::SYS_clone),
        ("clone3", libc::SYS_clone3),
        ("exit", libc::SYS_exit),
        ("exit_group", libc::SYS_exit_group),
        ("futex", libc::SYS_futex),
        ("set_robust_list", libc::SYS_set_robust_list),
        ("get_robust_list", libc::SYS_get_robust_list),
        ("rseq", libc::SYS_rseq),
        ("set_tid_address", libc::SYS_set_tid_address),
        ("sched_yield", libc::SYS_sched_yield),
        ("sched_getaffinity", libc::SYS_sched_getaffinity),
        ("sched_setaffinity", libc::SYS_sched_setaffinity),
        ("prctl", libc::SYS_prctl),
        ("getrandom", libc::SYS_getrandom),
        ("restart_syscall", libc::SYS_restart_syscall),
        ("rt_sigaction", libc::SYS_rt_sigaction),
        ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
        ("rt_sigreturn", libc::SYS_rt_sigreturn),
        ("sigaltstack", libc::SYS_sigaltstack),
        ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
        ("tgkill", libc::SYS_tgkill),
        ("tkill", libc::SYS_tkill),
        ("kill", libc::SYS_kill),
        ("getpid", libc::SYS_getpid),
        ("gettid", libc::SYS_gettid),
        ("getppid", libc::SYS_getppid),
        ("nanosleep", libc::SYS_nanosleep),
        ("clock_nanosleep", libc::SYS_clock_nanosleep),
        ("clock_gettime", libc::SYS_clock_gettime),
        ("clock_getres", libc::SYS_clock_getres),
        ("gettimeofday", libc::SYS_gettimeofday),
        ("timerfd_create", libc::SYS_timerfd_create),
        ("timerfd_settime", libc::SYS_timerfd_settime),
        ("timerfd_gettime", libc::SYS_timerfd_gettime),
        ("getuid", libc::SYS_getuid),
        ("geteuid", libc::SYS_geteuid),
        ("getgid", libc::SYS_getgid),
        ("getegid", libc::SYS_getegid),
        ("getresuid", libc::SYS_getresuid),
        ("getresgid", libc::SYS_getresgid),
        ("getgroups", libc::SYS_getgroups),
        ("setresuid", libc::SYS_setresuid),
        ("setresgid", libc::SYS_setresgid),
        ("setgroups", libc::SYS_setgroups),
        ("capget", libc::SYS_capget),
        ("capset", libc::SYS_capset),
        ("umask", libc::SYS_umask),
        ("epoll_create1", libc::SYS_epoll_create1),
        ("epoll_ctl", libc::SYS_epoll_ctl),
        ("epoll_pwait", libc::SYS_epoll_pwait),
        ("epoll_pwait2", libc::SYS_epoll_pwait2),
        ("ppoll", libc::SYS_ppoll),
        ("pselect6", libc::SYS_pselect6),
        ("eventfd2", libc::SYS_eventfd2),
        ("read", libc::SYS_read),
        ("write", libc::SYS_write),
        ("readv", libc::SYS_readv),
        ("writev", libc::SYS_writev),
        ("pread64", libc::SYS_pread64),
        ("pwrite64", libc::SYS_pwrite64),
        ("preadv", libc::SYS_preadv),
        ("pwritev", libc::SYS_pwritev),
        ("preadv2", libc::SYS_preadv2),
        ("pwritev2", libc::SYS_pwritev2),
        ("openat", libc::SYS_openat),
        ("openat2", libc::SYS_openat2),
        ("close", libc::SYS_close),
        ("close_range", libc::SYS_close_range),
        ("dup", libc::SYS_dup),
        ("dup3", libc::SYS_dup3),
        ("fcntl", libc::SYS_fcntl),
        ("flock", libc::SYS_flock),
        ("ioctl", libc::SYS_ioctl),
        ("lseek", libc::SYS_lseek),
        ("fstat", libc::SYS_fstat),
        ("newfstatat", libc::SYS_newfstatat),
        ("statx", libc::SYS_statx),
        ("statfs", libc::SYS_statfs),
        ("fstatfs", libc::SYS_fstatfs),
        ("faccessat", libc::SYS_faccessat),
        ("faccessat2", libc::SYS_faccessat2),
        ("getdents64", libc::SYS_getdents64),
        ("getcwd", libc::SYS_getcwd),
        ("chdir", libc::SYS_chdir),
        ("fchdir", libc::SYS_fchdir),
        ("readlinkat", libc::SYS_readlinkat),
        ("fsync", libc::SYS_fsync),
        ("fdatasync", libc::SYS_fdatasync),
        ("syncfs", libc::SYS_syncfs),
        ("sync_file_range", libc::SYS_sync_file_range),
        ("readahead", libc::SYS_readahead),
        ("splice", libc::SYS_splice),
        ("tee", libc::SYS_tee),
        ("memfd_create", libc::SYS_memfd_create),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("getxattr", libc::SYS_getxattr),
        ("lgetxattr", libc::SYS_lgetxattr),
        ("fgetxattr", libc::SYS_fgetxattr),
        ("listxattr", libc::SYS_listxattr),
        ("llistxattr", libc::SYS_llistxattr),
        ("flistxattr", libc::SYS_flistxattr),
        ("socket", libc::SYS_socket),
        ("socketpair", libc::SYS_socketpair),
        ("bind", libc::SYS_bind),
        ("listen", libc::SYS_listen),
        ("accept", libc::SYS_accept),
        ("accept4", libc::SYS_accept4),
        ("connect", libc::SYS_connect),
        ("getsockname", libc::SYS_getsockname),
        ("getpeername", libc::SYS_getpeername),
        ("getsockopt", libc::SYS_getsockopt),
        ("setsockopt", libc::SYS_setsockopt),
        ("sendto", libc::SYS_sendto),
        ("recvfrom", libc::SYS_recvfrom),
        ("sendmsg", libc::SYS_sendmsg),
        ("recvmsg", libc::SYS_recvmsg),
        ("sendmmsg", libc::SYS_sendmmsg),
        ("recvmmsg", libc::SYS_recvmmsg),
        ("shutdown", libc::SYS_shutdown),
        ("uname", libc::SYS_uname),
        ("sysinfo", libc::SYS_sysinfo),
        ("getrlimit", libc::SYS_getrlimit),
        ("setrlimit", libc::SYS_setrlimit),
        ("prlimit64", libc::SYS_prlimit64),
        ("getrusage", libc::SYS_getrusage),
        ("sched_getparam", libc::SYS_sched_getparam),
        ("sched_getscheduler", libc::SYS_sched_getscheduler),
        ("getpriority", libc::SYS_getpriority),
        ("wait4", libc::SYS_wait4),
    ];
    EXTRA
        .iter()
        .chain(COMMON)
        .chain(FILE_CHANGES)
        .chain(LEGACY_FILE_CHANGES)
}
