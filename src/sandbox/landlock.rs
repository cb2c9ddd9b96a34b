//! Landlock, the second filesystem fence of `--sandbox namespace` (Linux 5.13 and later).
//!
//! The mount namespace decides what the daemon can see; Landlock then decides what it may
//! do with what it sees, in the kernel's own terms, so a bug in how the namespace was built
//! (a bind mount too many, a path the propagation brought in) still cannot be used:
//! - every access beneath the visible trees (allowed roots, shared dirs, sockets,
//!   start-up bootstrap and config);
//! - read-only beneath `/proc` (the passthrough reopens inodes through `/proc/self/fd`,
//!   which Landlock checks against the file's real place, inside a share) and the name
//!   resolution files; read and write of `/dev/null`; read of `/dev/urandom`;
//! - nothing else, and no mount, pivot_root or chroot from then on.
//!
//! A ruleset binds the calling thread and the threads it creates later, so it is applied in
//! [`super::enter`] while the process has one thread. Kernels without Landlock (or with an
//! older ABI) get what they support, and the daemon logs which ("not enforced" on those
//! before 5.13). FUSE mode mounts after start-up, which Landlock forbids, so it goes
//! without this fence.

use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};

use super::namespace::ALWAYS;
use super::SandboxError;

/// The newest ABI whose rights we name; older kernels get the subset they know.
const ABI_WANTED: ABI = ABI::V5;

/// The one file of the sandbox's fixed set ([`super::namespace::ALWAYS`]) that is written;
/// the rest are read-only.
const WRITABLE: &str = "/dev/null";

/// How far the kernel enforced the ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    Fully,
    Partially,
    Not,
}

/// Restricts the process (its only thread, and every thread it makes later) to `visible`
/// plus the sandbox's fixed set, read-only but for /dev/null.
pub fn restrict(visible: &[PathBuf]) -> Result<Enforced, SandboxError> {
    let e = |what: &str, err: landlock::RulesetError| {
        SandboxError::Setup(format!("landlock {what}: {err}"))
    };
    let all = AccessFs::from_all(ABI_WANTED);
    let status = Ruleset::default()
        .handle_access(all)
        .map_err(|x| e("handle_access", x))?
        .create()
        .map_err(|x| e("create", x))?
        .add_rules(path_beneath_rules(visible, all))
        .map_err(|x| e("visible trees", x))?
        .add_rules(path_beneath_rules(
            ALWAYS.iter().filter(|p| **p != WRITABLE),
            AccessFs::from_read(ABI_WANTED),
        ))
        .map_err(|x| e("read-only files", x))?
        .add_rules(path_beneath_rules(
            [WRITABLE],
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))
        .map_err(|x| e(WRITABLE, x))?
        .restrict_self()
        .map_err(|x| e("restrict_self", x))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partially,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}
