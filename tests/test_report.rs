//! The honest test count: a test that cannot run reports a skip (tests/common/skip.rs), and
//! hack/test-summary.sh (the end of hack/test.sh) turns cargo's output plus the skip log into
//! `N passed, N failed, N skipped` with the skipped tests and their reasons.

#[path = "common/skip.rs"]
mod skip;

use std::path::Path;
use std::process::Command;

const CHILD: &str = "RV_SKIP_SELFTEST_CHILD";

/// Runs as the parent (spawns this test again) or, with `RV_SKIP_SELFTEST_CHILD`, as the
/// child that skips: the child's line must reach its stdout and the log named by RV_SKIP_LOG.
#[test]
fn skip_reports_on_stdout_and_in_the_log() {
    if std::env::var_os(CHILD).is_some() {
        skip::skip("selftest: a reason\nwith a newline");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("sub/skips.txt");
    std::fs::create_dir(t.path().join("sub")).unwrap();
    std::fs::write(&log, "RV-SKIP earlier::test: kept\n").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "skip_reports_on_stdout_and_in_the_log",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .env("RV_SKIP_LOG", &log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let want = "RV-SKIP test_report::skip_reports_on_stdout_and_in_the_log: \
                selftest: a reason with a newline";
    assert!(stdout.contains(want), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("RV-SKIP earlier::test: kept\n{want}\n")
    );
}

/// Runs hack/test-summary.sh on a cargo log and a skip log; returns (stdout, exit code).
fn summary(cargo_log: &str, skips: &str, status: i32) -> (String, i32) {
    let t = tempfile::tempdir().unwrap();
    let (l, s) = (t.path().join("cargo.log"), t.path().join("skips.txt"));
    std::fs::write(&l, cargo_log).unwrap();
    std::fs::write(&s, skips).unwrap();
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/test-summary.sh"))
        .arg(&l)
        .arg(&s)
        .arg(status.to_string())
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        out.status.code().unwrap(),
    )
}

const OK_RUN: &str = "\
     Running tests/a.rs (target/debug/deps/a-0123)
running 3 tests
test x ... ok
test y ... ok
test z ... ok

test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

     Running tests/b.rs (target/debug/deps/b-4567)
running 2 tests
test slow ... ignored, needs a day
test u ... ok

test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s
";

#[test]
fn summary_moves_skipped_tests_out_of_passed() {
    let skips = "RV-SKIP a::y: no frobnicator (set FROB)\nRV-SKIP a::z: needs root\n\
                 RV-SKIP a::y: no frobnicator (set FROB)\n";
    let (out, code) = summary(OK_RUN, skips, 0);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "== summary",
            "skipped: a::y: no frobnicator (set FROB)",
            "skipped: a::z: needs root",
            "skipped: slow: ignored: needs a day",
            "2 passed, 0 failed, 3 skipped",
        ],
        "{out}"
    );
}

#[test]
fn summary_of_a_run_without_skips() {
    let (out, code) = summary(OK_RUN, "", 0);
    assert_eq!(code, 0);
    assert_eq!(out.lines().last(), Some("4 passed, 0 failed, 1 skipped"));
}

#[test]
fn summary_fails_on_a_failed_test_or_a_failed_cargo() {
    let failed = format!(
        "{OK_RUN}
running 2 tests
test broken ... FAILED
test fine ... ok

failures:
    broken

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s
"
    );
    let (out, code) = summary(&failed, "RV-SKIP a::x: reason\n", 101);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\nfailed:  broken\n"), "{out}");
    assert_eq!(out.lines().last(), Some("4 passed, 1 failed, 2 skipped"));
    // A build error: no failed test, but the run fails and says why.
    let (out, code) = summary("error[E0425]: cannot find value `x`\n", "", 101);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("exited with status 101"), "{out}");
    assert_eq!(out.lines().last(), Some("0 passed, 0 failed, 0 skipped"));
}
