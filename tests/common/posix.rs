//! The POSIX conformance checks shared by tests/posix_conformance.rs (FUSE mode) and
//! guest-tests/daemon.rs (virtio-fs): `rvhelper posix` (hack/guest/rvhelper.c) runs one line
//! per check; the lines of a run on the host's ext4 are the expected ones.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The users the checks run as: root and two non-root users with their own gids.
pub const USERS: [(u32, u32); 3] = [(0, 0), (1001, 1001), (1002, 1002)];

const HELPER_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/guest/rvhelper.c");

/// Builds the helper for the host into `dir` (made 0755 so the test users reach it); the
/// guest tests build the same source statically for the initramfs.
pub fn build_helper(dir: &Path) -> PathBuf {
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

/// The guest-side (or any other) command for `rvhelper posix run` as user `u`:`g`.
pub fn run_args(dir: &str, u: u32, g: u32) -> String {
    format!("posix run {dir} u{u} {u} {g}")
}

/// Runs setup and every user's checks in `dir` with the host helper; each user's lines.
pub fn run_all(helper: &Path, dir: &Path) -> Vec<String> {
    let d = dir.to_str().unwrap();
    run_helper(helper, &["posix", "setup", d]);
    USERS
        .iter()
        .map(|&(u, g)| {
            let args = run_args(d, u, g);
            let a: Vec<&str> = args.split(' ').collect();
            run_helper(helper, &a)
        })
        .collect()
}

/// Panics unless every user's lines in `got` equal the ext4 reference `want` (in [`USERS`]
/// order), and the checks exercised the rules (refusals and successes for a non-root user).
pub fn assert_same(want: &[String], got: &[String], what: &str) {
    let mut diffs = Vec::new();
    let mut total = 0;
    for (((u, _), w), g) in USERS.iter().zip(want).zip(got) {
        let (w, g): (Vec<&str>, Vec<&str>) = (w.lines().collect(), g.lines().collect());
        assert_eq!(
            w.len(),
            g.len(),
            "uid {u}: check counts differ:\n{}",
            g.join("\n")
        );
        for (a, b) in w.iter().zip(&g) {
            total += 1;
            if a != b {
                diffs.push(format!("uid {u}: ext4 `{a}` vs {what} `{b}`"));
            }
        }
    }
    let u1: Vec<&str> = want[1].lines().collect();
    assert!(u1.contains(&"ro/mkdir: EACCES"), "{u1:?}");
    assert!(u1.iter().any(|l| l.starts_with("pub/mkdir: OK")), "{u1:?}");
    assert!(u1.contains(&"sticky/unlink-other: EPERM"), "{u1:?}");
    assert!(total > 300, "only {total} checks ran");
    assert!(
        diffs.is_empty(),
        "{} of {total} checks differ from ext4:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
