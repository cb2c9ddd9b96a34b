//! Thread classes: the layers mark the threads they run, and the daemon decides what each
//! class may do (src/sandbox/mod.rs, `confine_thread`, which stacks a class's seccomp
//! filter). The layers know only this module, not the sandbox.

use std::sync::OnceLock;

/// What a thread does, for its confinement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadClass {
    /// The network runtime (`rafs-net`): registry, mirror and proxy requests.
    Network,
    /// The threads that serve guest requests: vhost-user queues, the worker pool, FUSE.
    Guest,
}

static HOOK: OnceLock<fn(ThreadClass)> = OnceLock::new();

/// Set what [`enter`] does (once; later calls are ignored).
pub fn set_hook(hook: fn(ThreadClass)) {
    let _ = HOOK.set(hook);
}

/// Marks the calling thread as one of `class`. Called when such a thread starts and again
/// each time it takes work, so it must be cheap after the first call (the hook keeps a
/// per-thread flag). Without a hook (library use, tests) it does nothing.
pub fn enter(class: ThreadClass) {
    if let Some(h) = HOOK.get() {
        h(class)
    }
}
