//! Benchmark (not a test): the same guest workload over virtio-fs served by rafs-virtiofsd and
//! by upstream virtiofsd, each sharing the same host directory. Under TCG the guest's own
//! speed is emulated, so the figures compared are the daemons': CPU time (utime + stime from
//! /proc/PID/stat) spent on the workload, and RssAnon at its end.
//!
//! Run: `RV_UPSTREAM_VIRTIOFSD=/path/to/virtiofsd cargo bench --bench daemon_vs_virtiofsd`.
//! Under `cargo test` (no `--bench` argument) it does nothing.

mod harness;
#[path = "../tests/common/procstat.rs"]
mod procstat;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::*;
use procstat::{cpu_seconds, rss_anon_kib};

/// Each phase starts with `rv_sync PHASE`, where the host reads the daemon's CPU time.
const WORKLOAD: &str = r#"
cd $RV_MNT/tree
rv_data files "$(find . | wc -l)"
rv_sync walk
rv_check walk sh -c 'ls -laR . > /dev/null'
rv_sync read-all
rv_check read-all sh -c 'find . -type f | while read -r f; do cat "$f" > /dev/null; done'
rv_sync direct-4k
rv_check direct-4k rvhelper randread $RV_MNT/rand.bin 4000 4096 direct
rv_sync buffered-4k
rv_check buffered-4k rvhelper randread $RV_MNT/rand.bin 4000 4096 buffered
rv_sync write
rv_check write sh -c 'dd if=/dev/zero of=$RV_MNT/out.bin bs=1M count=64 2>/dev/null && sync'
rv_sync create-unlink
rv_check create-unlink sh -c 'mkdir -p $RV_MNT/many && i=0; while [ $i -lt 500 ]; do echo $i > $RV_MNT/many/f$i; i=$((i+1)); done; rm -rf $RV_MNT/many'
rv_sync end
rv_check rm-out rm -f $RV_MNT/out.bin
"#;

/// The phases, in order, with the number of guest operations that the per-op figure divides
/// by (0: report seconds only).
const PHASES: [(&str, u64); 6] = [
    ("walk", 0),
    ("read-all", 0),
    ("direct-4k", 4000),
    ("buffered-4k", 4000),
    ("write", 0),
    ("create-unlink", 0),
];

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
    /// Daemon CPU seconds per phase, in [`PHASES`] order.
    phases: Vec<f64>,
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
    let mut marks: Vec<(String, f64)> = Vec::new();
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
        let run = run_vm(&cfg, |step| {
            marks.push((step.to_string(), cpu_seconds(pid)));
            true
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (run, sampler.join().unwrap())
    });
    run.assert_ok(&[
        "walk",
        "read-all",
        "direct-4k",
        "buffered-4k",
        "write",
        "create-unlink",
        "rm-out",
    ]);
    let cpu = cpu_seconds(pid) - before;
    if let Some(mut p) = perf {
        // SAFETY: plain kill(2) of our own child; SIGINT makes perf write its file and exit.
        unsafe { libc::kill(p.0.id() as i32, libc::SIGINT) };
        let _ = p.0.wait();
    }
    let at = |n: &str| marks.iter().find(|m| m.0 == n).map(|m| m.1).unwrap();
    let mut phases = Vec::new();
    for (i, (p, _)) in PHASES.iter().enumerate() {
        let next = PHASES.get(i + 1).map(|n| n.0).unwrap_or("end");
        phases.push(at(next) - at(p));
    }
    Sample {
        name,
        phases,
        cpu,
        rss_kib: peak,
        files: run.data("files").to_string(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("daemon_vs_virtiofsd: a benchmark; run it with `cargo bench`");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    mktree(&share.join("tree"), 3, &["--big", "16", "--files", "3000"]);
    // A file for the random-read phases.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(share.join("rand.bin")).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..64 {
            for b in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    let rounds: usize = std::env::var("RV_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let peer_bin = std::env::var_os("RV_UPSTREAM_VIRTIOFSD").map(PathBuf::from);
    if peer_bin.is_none() {
        println!("(set RV_UPSTREAM_VIRTIOFSD to compare with upstream virtiofsd)");
    }
    let mut ours_s = Vec::new();
    let mut peer_s = Vec::new();
    for round in 0..rounds {
        let sock = tmp.path().join(format!("ours{round}.sock"));
        let mut ours = Command::new(daemon_bin());
        ours.args(["virtiofs", "--log-level", "warn", "--sock"])
            .arg(&sock)
            .arg("--shared-dir")
            .arg(&share);
        // RV_BENCH_ARGS: extra daemon arguments, e.g. "--thread-pool-size 0".
        if let Ok(extra) = std::env::var("RV_BENCH_ARGS") {
            ours.args(extra.split_whitespace());
        }
        ours_s.push(run_one("rafs-virtiofsd", ours, &sock));
        if let Some(bin) = &peer_bin {
            let sock = tmp.path().join(format!("vfsd{round}.sock"));
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
            // RV_BENCH_PEER_ARGS: extra virtiofsd arguments, e.g. "--writeback" (we negotiate
            // the writeback cache, as nydusd does under Kata; virtiofsd does not by default).
            if let Ok(extra) = std::env::var("RV_BENCH_PEER_ARGS") {
                peer.args(extra.split_whitespace());
            }
            peer_s.push(run_one("virtiofsd", peer, &sock));
        }
    }

    println!(
        "{} vs virtiofsd, medians of {rounds} rounds ({} entries in the tree)",
        ours_s[0].name, ours_s[0].files
    );
    let col = |v: &[Sample], i: Option<usize>| -> f64 {
        median(
            v.iter()
                .map(|s| i.map(|i| s.phases[i]).unwrap_or(s.cpu))
                .collect(),
        )
    };
    println!("| phase | rafs-virtiofsd CPU | virtiofsd CPU | ratio |");
    println!("|---|---|---|---|");
    let mut rows: Vec<(String, Option<usize>, u64)> = PHASES
        .iter()
        .enumerate()
        .map(|(i, (n, ops))| (n.to_string(), Some(i), *ops))
        .collect();
    rows.push(("whole workload".into(), None, 0));
    for (name, i, ops) in rows {
        let a = col(&ours_s, i);
        let fmt = |c: f64| {
            if ops > 0 {
                format!("{:.3} s ({:.1} µs/op)", c, c * 1e6 / ops as f64)
            } else {
                format!("{c:.3} s")
            }
        };
        if peer_s.is_empty() {
            println!("| {name} | {} | - | - |", fmt(a));
        } else {
            let b = col(&peer_s, i);
            println!(
                "| {name} | {} | {} | {:.2}× |",
                fmt(a),
                fmt(b),
                a / b.max(1e-9)
            );
        }
    }
    let rss = |v: &[Sample]| median(v.iter().map(|s| s.rss_kib as f64).collect());
    if peer_s.is_empty() {
        println!("| peak RssAnon | {} KiB | - | - |", rss(&ours_s));
    } else {
        println!(
            "| peak RssAnon | {} KiB | {} KiB | {:.2}× |",
            rss(&ours_s),
            rss(&peer_s),
            rss(&ours_s) / rss(&peer_s).max(1.0)
        );
    }
}
