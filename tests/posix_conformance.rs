//! POSIX conformance of the passthrough, measured against the host's ext4 in the same test.
//!
//! `rvhelper posix` (hack/guest/rvhelper.c, the guest tests' static helper) runs the same
//! checks (create, mkdir, symlink, link, mkfifo, rename
//! and its NOREPLACE/EXCHANGE/WHITEOUT flags, chmod, chown rules, truncate, xattrs, sticky
//! dirs, setgid inheritance, killpriv, default ACLs, unlinked-but-open files, O_TMPFILE) as
//! root and as two non-root users with different gids, once in a plain host directory and
//! once through the daemon (FUSE mode, `--shared-dir`). Every line must match.

#[path = "common/posix.rs"]
mod posix;
mod support;

use posix::{assert_same, build_helper, run_all};
use support::FuseMount;

#[test]
fn passthrough_matches_ext4_for_root_and_two_users() {
    // The reference: a directory on the host's own filesystem (ext4 here).
    let reference = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(
        reference.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bin = tempfile::tempdir().unwrap();
    let helper = build_helper(bin.path());
    let want = run_all(&helper, reference.path());

    let share = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(
        share.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let m = FuseMount::new(Some(share.path()));
    // Non-root users must reach the mountpoint.
    std::fs::set_permissions(
        m.mnt.parent().unwrap(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let got = run_all(&helper, &m.mnt);
    assert_same(&want, &got, "daemon");
}
