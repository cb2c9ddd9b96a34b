//! Build information for `GET /api/v1/daemon` (`version.git_commit`, `build_time`, `rustc`):
//! - `RAFS_VIRTIOFSD_GIT_COMMIT`: `git rev-parse HEAD` of the checkout, or "unknown" when the
//!   source is not a git checkout (or git is missing);
//! - `RAFS_VIRTIOFSD_BUILD_TIME`: UTC, RFC 3339, from `SOURCE_DATE_EPOCH` when set
//!   (reproducible builds), else the time this script runs;
//! - `RAFS_VIRTIOFSD_RUSTC`: `rustc -V` of the compiler cargo uses.
//!
//! The script reruns when HEAD moves or `SOURCE_DATE_EPOCH` changes, not on every source
//! edit (a new build time on each run would recompile the crate every time).
//! tests/build_info.rs includes this file to test the functions below.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let commit = git_commit(&dir);
    println!(
        "cargo:rustc-env=RAFS_VIRTIOFSD_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    println!(
        "cargo:rustc-env=RAFS_VIRTIOFSD_BUILD_TIME={}",
        build_time(epoch.as_deref(), SystemTime::now())
    );
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let rustc = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RAFS_VIRTIOFSD_RUSTC={rustc}");

    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    for p in git_watch_paths(&dir) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

/// Output of `git ARGS` run in `dir`, trimmed, if git succeeds.
pub fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// The commit checked out in `dir`, or None outside a git checkout.
pub fn git_commit(dir: &Path) -> Option<String> {
    git(dir, &["rev-parse", "--verify", "HEAD"]).filter(|c| c.len() >= 40)
}

/// Files whose change means HEAD may have moved: HEAD itself, the branch it points to, and
/// packed-refs (in the common dir for a worktree). Empty outside a git checkout.
pub fn git_watch_paths(dir: &Path) -> Vec<PathBuf> {
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    let (Some(git_dir), Some(common)) = (
        git(dir, &["rev-parse", "--git-dir"]).map(abs),
        git(dir, &["rev-parse", "--git-common-dir"]).map(abs),
    ) else {
        return Vec::new();
    };
    let mut v = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        v.push(common.join(r));
    }
    v.into_iter().filter(|p| p.exists()).collect()
}

/// The build time: `SOURCE_DATE_EPOCH` (seconds since the epoch) if given and valid, else
/// `now`; as RFC 3339 UTC.
pub fn build_time(source_date_epoch: Option<&str>, now: SystemTime) -> String {
    let secs = source_date_epoch
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    rfc3339_utc(secs)
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
pub fn rfc3339_utc(secs: u64) -> String {
    let (days, rem) = (secs / 86400, secs % 86400);
    // Days to civil date (H. Hinnant's algorithm), with the era starting on 0000-03-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
