//! Benchmark (not a test): the same guest workload over virtio-fs served by rafs-virtiofsd and
//! by upstream virtiofsd, each sharing the same host directory. Under TCG the guest's own
//! speed is emulated, so the figures compared are the daemons': CPU time (utime + stime from
//! /proc/PID/stat) spent on the workload, and RssAnon at its end.
//!
//! Run: `RV_UPSTREAM_VIRTIOFSD=/path/to/virtiofsd cargo bench --bench daemon_vs_virtiofsd`.
//! Under `cargo test` (no `--bench` argument) it does nothing.

mod harness;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::*;

const WORKLOAD: &str = r#"
cd $RV_MNT/tree
rv_data files "$(find . | wc -l)"
rv_check walk sh -c 'ls -laR . > /dev/null'
rv_check read-all sh -c 'find . -type f | while read -r f; do cat "$f" > /dev/null; done'
rv_check write sh -c 'dd if=/dev/zero of=$RV_MNT/out.bin bs=1M count=64 2>/dev/null && sync'
rv_check create-unlink sh -c 'mkdir -p $RV_MNT/many && i=0; while [ $i -lt 500 ]; do echo $i > $RV_MNT/many/f$i; i=$((i+1)); done; rm -rf $RV_MNT/many'
rv_check rm-out rm -f $RV_MNT/out.bin
"#;

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of `pid` in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / clk_tck()
}

fn rss_anon_kib(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(p: &Path) {
    for _ in 0..200 {
        if p.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} did not appear", p.display());
}

struct Sample {
    name: &'static str,
    cpu: f64,
    rss_kib: u64,
    files: String,
}

fn run_one(name: &'static str, mut cmd: Command, sock: &Path) -> Sample {
    let child = Killed(cmd.stderr(Stdio::null()).spawn().expect("spawn daemon"));
    wait_for(sock);
    let pid = child.0.id();
    // RV_BENCH_PERF=DIR: sample the daemon with `perf record` (software cpu-clock) into
    // DIR/NAME.perf.data, for `perf report`.
    let perf = std::env::var_os("RV_BENCH_PERF").map(|dir| {
        let out = Path::new(&dir).join(format!("{name}.perf.data"));
        Killed(
            Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock",
                    "-g",
                    "-p",
                    &pid.to_string(),
                    "-o",
                ])
                .arg(out)
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn perf"),
        )
    });
    let before = cpu_seconds(pid);
    // Peak RssAnon, sampled while the guest runs (virtiofsd exits when the guest goes away).
    let done = std::sync::atomic::AtomicBool::new(false);
    let (run, peak) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_anon_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let cfg = VmConfig::new(Some(sock), WORKLOAD);
        let run = run_vm(&cfg, |_| false);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (run, sampler.join().unwrap())
    });
    run.assert_ok(&["walk", "read-all", "write", "create-unlink", "rm-out"]);
    let cpu = cpu_seconds(pid) - before;
    if let Some(mut p) = perf {
        // SAFETY: plain kill(2) of our own child; SIGINT makes perf write its file and exit.
        unsafe { libc::kill(p.0.id() as i32, libc::SIGINT) };
        let _ = p.0.wait();
    }
    Sample {
        name,
        cpu,
        rss_kib: peak,
        files: run.data("files").to_string(),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("daemon_vs_virtiofsd: a benchmark; run it with `cargo bench`");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    mktree(&share.join("tree"), 3, &["--big", "16", "--files", "3000"]);
    let mut samples = Vec::new();

    let sock = tmp.path().join("ours.sock");
    let mut ours = Command::new(daemon_bin());
    ours.args(["virtiofs", "--log-level", "warn", "--sock"])
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&share);
    // RV_BENCH_ARGS: extra daemon arguments, e.g. "--thread-pool-size 0".
    if let Ok(extra) = std::env::var("RV_BENCH_ARGS") {
        ours.args(extra.split_whitespace());
    }
    samples.push(run_one("rafs-virtiofsd", ours, &sock));

    match std::env::var_os("RV_UPSTREAM_VIRTIOFSD").map(PathBuf::from) {
        Some(bin) => {
            let sock = tmp.path().join("vfsd.sock");
            let mut peer = Command::new(bin);
            let args: Vec<OsString> = vec![
                "--socket-path".into(),
                sock.clone().into(),
                "--shared-dir".into(),
                share.clone().into(),
                "--sandbox".into(),
                "none".into(),
                "--xattr".into(),
                "--cache".into(),
                "auto".into(),
            ];
            peer.args(args);
            samples.push(run_one("virtiofsd", peer, &sock));
        }
        None => println!("(set RV_UPSTREAM_VIRTIOFSD to compare with upstream virtiofsd)"),
    }

    println!("| daemon | entries | daemon CPU for the workload | peak RssAnon |");
    println!("|---|---|---|---|");
    for s in &samples {
        println!(
            "| {} | {} | {:.2} s | {} KiB |",
            s.name, s.files, s.cpu, s.rss_kib
        );
    }
}
