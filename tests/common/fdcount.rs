//! Counting this process's open fds while other tests of the same binary run would count
//! their fds too (cargo runs a binary's tests on parallel threads). A test that counts holds
//! [`exclusive`] for its whole run; every other test of that binary holds [`shared`], so the
//! counting test runs alone and the rest still run in parallel with each other.

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static FDS: RwLock<()> = RwLock::new(());

/// Held by a test that does not count fds.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    FDS.read()
}

/// Held by a test that counts fds: no other test of the binary runs meanwhile.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    FDS.write()
}

/// The number of fds this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
