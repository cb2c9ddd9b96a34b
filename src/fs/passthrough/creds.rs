//! Credential switching for requests that create entries, and the CAP_FSETID drop that makes
//! the host kernel clear setuid/setgid (FUSE killpriv_v2).
//!
//! Everything a request needs (parent fd, file handle) is resolved before the switch, because
//! the switch drops the effective capabilities (CAP_DAC_READ_SEARCH among them). The guards
//! switch back in `Drop`, so every path out of a request, errors and panics included,
//! restores root.

use std::io;

use super::sys;

const CAP_FSETID: u32 = 4;

thread_local! {
    static GROUPS_CLEARED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The calling thread runs as `uid`/`gid` (effective ids) until dropped.
#[must_use]
pub struct CredGuard {
    switched: bool,
}

impl CredGuard {
    /// Switches the calling thread to the caller's ids. Root callers keep root.
    pub fn switch(uid: u32, gid: u32) -> io::Result<CredGuard> {
        if uid == 0 && gid == 0 {
            return Ok(CredGuard { switched: false });
        }
        if !GROUPS_CLEARED.with(|c| c.get()) {
            sys::clear_thread_groups()?;
            GROUPS_CLEARED.with(|c| c.set(true));
        }
        sys::set_thread_creds(uid, gid)?;
        Ok(CredGuard { switched: true })
    }
}

impl Drop for CredGuard {
    fn drop(&mut self) {
        if self.switched {
            sys::restore_thread_creds();
        }
    }
}

/// CAP_FSETID is out of the calling thread's effective set until dropped, so a write or
/// truncate clears setuid/setgid as it would for an unprivileged writer.
#[must_use]
pub struct NoFsetidGuard {
    dropped: bool,
}

impl NoFsetidGuard {
    /// Drops CAP_FSETID when `kill` is true; a no-op guard otherwise.
    pub fn new(kill: bool) -> io::Result<NoFsetidGuard> {
        if !kill {
            return Ok(NoFsetidGuard { dropped: false });
        }
        sys::set_thread_effective_cap(CAP_FSETID, false)?;
        Ok(NoFsetidGuard { dropped: true })
    }
}

impl Drop for NoFsetidGuard {
    fn drop(&mut self) {
        if self.dropped {
            if let Err(e) = sys::set_thread_effective_cap(CAP_FSETID, true) {
                log::error!("cannot restore CAP_FSETID: {e}");
                std::process::abort();
            }
        }
    }
}
