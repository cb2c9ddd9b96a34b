//! POSIX conformance of the passthrough, measured against the host's ext4 in the same test.
//!
//! `rvhelper posix` (hack/guest/rvhelper.c, the guest tests' static helper) runs the same
//! checks (create, mkdir, symlink, link, mkfifo, rename
//! and its NOREPLACE/EXCHANGE/WHITEOUT flags, chmod, chown rules, truncate, xattrs, sticky
//! dirs, setgid inheritance, killpriv, default ACLs, unlinked-but-open files, O_TMPFILE) as
//! root and as two non-root users with different gids, once in a plain host directory and
//! once through the daemon (FUSE mode, `--shared-dir`). Every line must match.

mod support;

use std::path::Path;
use std::process::Command;

use support::FuseMount;

const HELPER_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/guest/rvhelper.c");

/// Builds the helper for the host (the guest tests build the same source statically).
fn build_helper(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("rvhelper");
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(HELPER_SRC)
        .status()
        .expect("gcc runs");
    assert!(st.success(), "gcc {HELPER_SRC}");
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    out
}

/// The users the checks run as: root and two non-root users with their own gids.
const USERS: [(u32, u32); 3] = [(0, 0), (1001, 1001), (1002, 1002)];

fn run_helper(helper: &Path, args: &[&str]) -> String {
    let out = Command::new(helper)
        .args(args)
        .output()
        .expect("rvhelper runs");
    assert!(
        out.status.success(),
        "rvhelper {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs setup and every user's checks in `dir`; returns each user's lines.
pub fn run_all(helper: &Path, dir: &Path) -> Vec<(u32, Vec<String>)> {
    let d = dir.to_str().unwrap();
    run_helper(helper, &["posix", "setup", d]);
    USERS
        .iter()
        .map(|&(u, g)| {
            let (us, gs) = (u.to_string(), g.to_string());
            let out = run_helper(helper, &["posix", "run", d, &format!("u{u}"), &us, &gs]);
            (u, out.lines().map(str::to_string).collect())
        })
        .collect()
}

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

    let mut diffs = Vec::new();
    let mut total = 0;
    for ((u, w), (_, g)) in want.iter().zip(got.iter()) {
        assert_eq!(w.len(), g.len(), "uid {u}: check counts differ");
        for (a, b) in w.iter().zip(g.iter()) {
            total += 1;
            if a != b {
                diffs.push(format!("uid {u}: ext4 `{a}` vs daemon `{b}`"));
            }
        }
    }
    // The checks must exercise the rules, not only succeed: non-root users are refused
    // somewhere and allowed elsewhere.
    let u1 = &want[1].1;
    assert!(u1.iter().any(|l| l == "ro/mkdir: EACCES"), "{u1:?}");
    assert!(u1.iter().any(|l| l.starts_with("pub/mkdir: OK")), "{u1:?}");
    assert!(
        u1.iter().any(|l| l == "sticky/unlink-other: EPERM"),
        "{u1:?}"
    );
    assert!(total > 300, "only {total} checks ran");
    assert!(
        diffs.is_empty(),
        "{} of {total} checks differ from ext4:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
