//! Reporting a test that cannot run on this machine (an optional binary or a privilege is
//! missing) as *skipped* rather than passed.
//!
//! A skipping test calls [`skip`] and returns. [`skip`] prints `RV-SKIP <crate>::<test>:
//! <reason>` on stdout and stderr (captured by cargo for a passing test) and appends the same
//! line to the file named by `RV_SKIP_LOG` (default `$CARGO_TARGET_DIR/rv-skips.txt`, else
//! `target/rv-skips.txt` in the repository). `hack/test.sh` empties that file before the run,
//! subtracts its entries from the passed count and lists them in its summary.
//!
//! Included with `#[path]` by the test crates that skip (tests/ and guest-tests/harness).
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// Marker that starts every skip line.
pub const MARKER: &str = "RV-SKIP";

/// The file skip lines are appended to.
pub fn skip_log() -> PathBuf {
    if let Some(p) = std::env::var_os("RV_SKIP_LOG") {
        return PathBuf::from(p);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
        .join("rv-skips.txt")
}

/// Name of the running test, `<test crate>::<test fn path>`: libtest runs each test on a
/// thread named after it.
pub fn current_test() -> String {
    let t = std::thread::current();
    let name = t.name().unwrap_or("main");
    format!("{}::{name}", env!("CARGO_CRATE_NAME"))
}

/// The line [`skip`] reports.
pub fn skip_line(test: &str, reason: &str) -> String {
    format!("{MARKER} {test}: {}", reason.replace('\n', " "))
}

/// Reports the running test as skipped because of `reason`; the caller returns right after.
/// Panics if the skip log cannot be written: a skip nobody can see would count as a pass.
pub fn skip(reason: &str) {
    let line = skip_line(&current_test(), reason);
    println!("{line}");
    eprintln!("{line}");
    let path = skip_log();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("skip log {}: {e}", path.display()));
    // One write of one short line: appends from parallel tests do not interleave.
    f.write_all(format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| panic!("skip log {}: {e}", path.display()));
}
