//! Benchmark (not a test): the RAFS read path at host speed, no VM. One RAFS v6 image (one
//! large random file plus many small files; localfs backend, blobcache, digest_validate off)
//! is served side by side, in one run, by
//!
//! * rafs-virtiofsd (the release build) in `virtiofs` mode, driven by the userspace
//!   vhost-user frontend of tests/common/vu_driver.rs, and in FUSE mode with host syscalls;
//! * upstream nydusd (`NYDUSD=/path/to/nydusd`), the same two ways;
//! * upstream virtiofsd (`RV_UPSTREAM_VIRTIOFSD=/path/to/virtiofsd`) serving the unpacked tree
//!   through the same driver, as the passthrough reference.
//!
//! Run: `cargo bench --bench rafs_read` (see docs/performance.md for the knobs). Under
//! `cargo test` (no `--bench` argument) it only says what it is.

#[path = "../tests/common/procstat.rs"]
mod procstat;
#[path = "../tests/common/vu_driver.rs"]
mod vu_driver;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use procstat::{cpu_seconds, rss_anon_kib};
use vu_driver::*;

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
const SEED_BIG: u64 = 0x5eed_b16f_11e0_0001;
const FILES_PER_DIR: usize = 100;
const REQ_TIMEOUT: Duration = Duration::from_secs(60);
/// Request queues asked of every vhost-user backend (ours offers them with
/// `--num-request-queues 4`; backends with fewer get the queue-scaling rows skipped).
const MAX_REQUEST_QUEUES: usize = 4;

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The word at byte offset `8 * i` of the big file: random, and checkable at any offset.
fn big_word(i: u64) -> u64 {
    splitmix(i ^ SEED_BIG)
}

/// Checks the first word of every 4 KiB block of `data`, read at file offset `off`.
fn check_big(off: u64, data: &[u8]) -> Result<(), String> {
    for (k, block) in data.chunks(4096).enumerate() {
        let at = off + k as u64 * 4096;
        if block.len() >= 8 {
            let got = u64::from_le_bytes(block[..8].try_into().unwrap());
            if got != big_word(at / 8) {
                return Err(format!("big.bin: wrong bytes at offset {at}"));
            }
        }
    }
    Ok(())
}

/// Small file `k`: 64 B to 8 KiB, a random first half and a compressible second half.
fn small_content(k: u64) -> Vec<u8> {
    let len = 64 + (splitmix(k.wrapping_mul(7919)) % (8192 - 64)) as usize;
    let mut v = Vec::with_capacity(len + 8);
    let mut j = 0u64;
    while v.len() < len / 2 {
        v.extend_from_slice(&splitmix((k << 32) | j).to_le_bytes());
        j += 1;
    }
    let line = format!("small file {k}: lorem ipsum dolor sit amet\n");
    while v.len() < len {
        v.extend_from_slice(line.as_bytes());
    }
    v.truncate(len);
    v
}

fn small_rel(k: usize) -> String {
    format!("small/d{:04}/f{k:06}", k / FILES_PER_DIR)
}

/// Writes the source tree: big.bin and `small` files under small/dNNNN/.
fn make_tree(dir: &Path, big_mb: u64, small: usize) {
    std::fs::create_dir_all(dir.join("small")).unwrap();
    let mut f =
        std::io::BufWriter::with_capacity(MIB as usize, File::create(dir.join("big.bin")).unwrap());
    let mut buf = vec![0u8; MIB as usize];
    for m in 0..big_mb {
        for (w, b) in buf.chunks_mut(8).enumerate() {
            b.copy_from_slice(&big_word(m * MIB / 8 + w as u64).to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    for k in 0..small {
        let p = dir.join(small_rel(k));
        if k % FILES_PER_DIR == 0 {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        }
        std::fs::write(p, small_content(k as u64)).unwrap();
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Image {
    bootstrap: PathBuf,
    blob_dir: PathBuf,
    builder: String,
}

/// Builds the image with upstream nydus-image when `NYDUS_IMAGE` is set, else with ours.
fn build_image(tree: &Path, out: &Path) -> Image {
    let bootstrap = out.join("image.boot");
    let blob_dir = out.join("blobs");
    let (builder, mut cmd) = match std::env::var_os("NYDUS_IMAGE") {
        Some(bin) => {
            let mut c = Command::new(&bin);
            c.args(["create", "--fs-version", "6", "--compressor", "zstd"]);
            (
                format!("upstream nydus-image ({})", Path::new(&bin).display()),
                c,
            )
        }
        None => ("rafs-image (ours)".to_string(), {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rafs-image"));
            c.arg("create");
            c
        }),
    };
    let stamp = out.join("done");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(builder.as_str()) {
        return Image {
            bootstrap,
            blob_dir,
            builder: format!("{builder}, reused"),
        };
    }
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(&blob_dir).unwrap();
    let t0 = Instant::now();
    run_ok(
        cmd.arg("--bootstrap")
            .arg(&bootstrap)
            .arg("--blob-dir")
            .arg(&blob_dir)
            .arg(tree),
    );
    eprintln!("image built in {:.1} s", t0.elapsed().as_secs_f64());
    std::fs::write(&stamp, &builder).unwrap();
    Image {
        bootstrap,
        blob_dir,
        builder,
    }
}

/// A nydusd-compatible v1 RAFS config with a fresh blobcache in `work_dir`.
fn rafs_config(img: &Image, work_dir: &Path, out: &Path) {
    let cfg = serde_json::json!({
        "device": {
            "backend": {"type": "localfs", "config": {"dir": img.blob_dir}},
            "cache": {"type": "blobcache", "config": {"work_dir": work_dir}},
        },
        "mode": "direct",
        "digest_validate": false,
        "iostats_files": false,
        "enable_xattr": true,
        "fs_prefetch": {"enable": false},
    });
    std::fs::write(out, cfg.to_string()).unwrap();
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Ours,
    Nydusd,
    Virtiofsd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "rafs-virtiofsd",
            Kind::Nydusd => "nydusd",
            Kind::Virtiofsd => "virtiofsd",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Driver,
    Fuse,
}

/// A daemon under test, killed (and its FUSE mount removed) on drop.
struct Subject {
    child: Child,
    mountpoint: Option<PathBuf>,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl Subject {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(mut cmd: Command, log: &Path) -> Subject {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(log).unwrap())
            .stderr(File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pid = child.id();
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        // Peak RssAnon, sampled every 10 ms; reset at the start of each workload.
        let sampler = {
            let peak = peak.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_anon_kib(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Subject {
            child,
            mountpoint: None,
            peak,
            stop,
            sampler: Some(sampler),
        }
    }

    fn check_alive(&mut self, what: &str) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{what} exited early: {st}");
        }
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; SIGTERM lets a FUSE daemon unmount.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(m) = &self.mountpoint {
            if is_mounted(m) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
    }
}

fn is_mounted(m: &Path) -> bool {
    let m = m.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&m))
}

/// One measured workload of one round.
#[derive(Clone, Debug)]
struct Sample {
    /// Bytes read (for MB/s rows) or operations (for IOPS rows).
    amount: f64,
    bytes: bool,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_s: f64,
    rss_kib: u64,
    fds: usize,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Measures `f` (which returns (amount, per-request latencies in ns)) against `s`.
fn measure(
    s: &mut Subject,
    bytes: bool,
    f: impl FnOnce() -> Result<(f64, Vec<u64>), String>,
) -> Result<Sample, String> {
    let pid = s.pid();
    s.peak.store(rss_anon_kib(pid), Ordering::Relaxed);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let (amount, mut lat) = f()?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(pid) - cpu0;
    s.peak.fetch_max(rss_anon_kib(pid), Ordering::Relaxed);
    lat.sort_unstable();
    Ok(Sample {
        amount,
        bytes,
        secs,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        cpu_s,
        rss_kib: s.peak.load(Ordering::Relaxed),
        fds: fd_count(pid),
    })
}

/// What the benchmark knows about the tree (from the sizes it was generated with).
struct Tree {
    dir: PathBuf,
    big_size: u64,
    small: usize,
    rand_ops: usize,
}

fn rand_offsets(n: usize, size: u64, seed: u64) -> Vec<u64> {
    let blocks = (size / 4096).max(1);
    (0..n as u64)
        .map(|i| (splitmix(seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d)) % blocks) * 4096)
        .collect()
}

// ---- Driver (vhost-user) workloads ----

/// One READ at `off`, checked against the big file's contents.
struct ReadOp {
    fh: u64,
    nodeid: u64,
    off: u64,
    len: u32,
}

impl Op for ReadOp {
    fn step(&mut self, prev: Option<&Reply<'_>>) -> Result<Option<Req>, String> {
        match prev {
            None => Ok(Some(Req::new(
                FUSE_READ,
                self.nodeid,
                read_body(self.fh, self.off, self.len),
                self.len + OUT_HEADER as u32,
            ))),
            Some(r) => {
                if r.error != 0 {
                    return Err(format!("READ at {}: error {}", self.off, r.error));
                }
                if r.payload_len() != self.len as usize {
                    return Err(format!(
                        "READ at {}: {} bytes, {} asked",
                        self.off,
                        r.payload_len(),
                        self.len
                    ));
                }
                // The first word of every 4 KiB block.
                for k in 0..(self.len as usize).div_ceil(4096) {
                    let at = self.off + k as u64 * 4096;
                    if r.u64_at(k * 4096) != big_word(at / 8) {
                        return Err(format!("big.bin: wrong bytes at offset {at}"));
                    }
                }
                Ok(None)
            }
        }
    }
}

/// OPEN, READ (whole file), RELEASE of one small file, checked byte for byte.
struct SmallOp {
    k: u64,
    nodeid: u64,
    size: u64,
    fh: u64,
    stage: u8,
}

impl Op for SmallOp {
    fn step(&mut self, prev: Option<&Reply<'_>>) -> Result<Option<Req>, String> {
        if let Some(r) = prev {
            if r.error != 0 {
                return Err(format!(
                    "small file {}: stage {} error {}",
                    self.k, self.stage, r.error
                ));
            }
        }
        self.stage += 1;
        match self.stage {
            1 => Ok(Some(Req::new(FUSE_OPEN, self.nodeid, open_body(0), 64))),
            2 => {
                self.fh = prev.unwrap().u64_at(0);
                let len = (self.size as u32).next_multiple_of(4096).max(4096);
                Ok(Some(Req::new(
                    FUSE_READ,
                    self.nodeid,
                    read_body(self.fh, 0, len),
                    len + OUT_HEADER as u32,
                )))
            }
            3 => {
                let r = prev.unwrap();
                let want = small_content(self.k);
                if r.bytes(0, r.payload_len()) != want {
                    return Err(format!("small file {}: wrong contents", self.k));
                }
                Ok(Some(Req::new(
                    FUSE_RELEASE,
                    self.nodeid,
                    release_body(self.fh),
                    64,
                )))
            }
            _ => Ok(None),
        }
    }
}

/// A single request whose reply must succeed (LOOKUP, GETATTR).
struct SimpleOp {
    req: Option<Req>,
}

impl Op for SimpleOp {
    fn step(&mut self, prev: Option<&Reply<'_>>) -> Result<Option<Req>, String> {
        if let Some(r) = prev {
            if r.error != 0 {
                return Err(format!("error {}", r.error));
            }
        }
        Ok(self.req.take())
    }
}

/// OPENDIR, READDIRPLUS until empty, RELEASEDIR of one directory; collects its entries.
struct DirOp {
    nodeid: u64,
    fh: u64,
    off: u64,
    stage: u8,
    out: std::rc::Rc<std::cell::RefCell<Vec<(u64, DirentPlus)>>>,
}

const DIR_BUF: u32 = 64 * 1024;

impl Op for DirOp {
    fn step(&mut self, prev: Option<&Reply<'_>>) -> Result<Option<Req>, String> {
        if let Some(r) = prev {
            if r.error != 0 {
                return Err(format!(
                    "dir {}: stage {} error {}",
                    self.nodeid, self.stage, r.error
                ));
            }
        }
        match (self.stage, prev) {
            (0, _) => {
                self.stage = 1;
                Ok(Some(Req::new(FUSE_OPENDIR, self.nodeid, open_body(0), 64)))
            }
            (1, Some(r)) | (2, Some(r)) => {
                if self.stage == 1 {
                    self.fh = r.u64_at(0);
                    self.stage = 2;
                } else {
                    let ents = parse_direntplus(&r.bytes(0, r.payload_len()));
                    if ents.is_empty() {
                        self.stage = 3;
                        return Ok(Some(Req::new(
                            FUSE_RELEASEDIR,
                            self.nodeid,
                            release_body(self.fh),
                            64,
                        )));
                    }
                    let mut out = self.out.borrow_mut();
                    for e in ents {
                        self.off = e.off;
                        if e.name != b"." && e.name != b".." && e.nodeid != 0 {
                            out.push((self.nodeid, e));
                        }
                    }
                }
                Ok(Some(Req::new(
                    FUSE_READDIRPLUS,
                    self.nodeid,
                    read_body(self.fh, self.off, DIR_BUF),
                    DIR_BUF + OUT_HEADER as u32,
                )))
            }
            _ => Ok(None),
        }
    }
}

/// What the readdirplus walk found: every entry with its parent.
#[derive(Default)]
struct Found {
    /// (parent nodeid, entry).
    entries: Vec<(u64, DirentPlus)>,
    dirs: usize,
    big: Option<(u64, u64)>,
    /// Small file k -> (nodeid, size).
    small: BTreeMap<u64, (u64, u64)>,
}

fn lat_of(st: &RunStats) -> Vec<u64> {
    st.req_ns.clone()
}

fn open_big(drv: &mut Driver, nodeid: u64) -> Result<u64, String> {
    let (err, rp) = drv
        .try_call(1, FUSE_OPEN, nodeid, &open_body(0), REQ_TIMEOUT)
        .map_err(|e| e.to_string())?;
    if err != 0 {
        return Err(format!("OPEN big.bin: error {err}"));
    }
    Ok(drv.mem.u64_at(rp + 16))
}

type Rows = Vec<(String, Sample)>;

/// The driver workloads against one vhost-user backend.
fn driver_round(
    s: &mut Subject,
    sock: &Path,
    tree: &Tree,
    seq_depth: usize,
) -> Result<Rows, String> {
    let layout = Layout {
        queue_size: 128,
        reply_size: (MIB as u32) + 4096,
    };
    let mut drv = Driver::connect_with(sock, 1 + MAX_REQUEST_QUEUES, layout, Strict::default())
        .map_err(|e| e.to_string())?;
    drv.enable_all().map_err(|e| e.to_string())?;
    drv.try_init().map_err(|e| format!("FUSE_INIT: {e}"))?;
    let nrq = drv.queues.len() - 1;
    let mut rows: Rows = Vec::new();

    // Walks, queue depth 1: READDIRPLUS of every directory, then LOOKUP and GETATTR of
    // every entry it found.
    let found = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut f = Found::default();
    let sample = measure(s, false, || {
        let mut pending = vec![1u64];
        let mut lat = Vec::new();
        let mut dirs = 0usize;
        while let Some(d) = pending.pop() {
            let before = found.borrow().len();
            let st = drv.queues[1]
                .run(1, REQ_TIMEOUT, {
                    let mut once = Some(DirOp {
                        nodeid: d,
                        fh: 0,
                        off: 0,
                        stage: 0,
                        out: found.clone(),
                    });
                    move || once.take()
                })
                .map_err(|e| e.to_string())?;
            lat.extend(st.req_ns);
            dirs += 1;
            for (_, e) in &found.borrow()[before..] {
                if e.mode & libc::S_IFMT == libc::S_IFDIR {
                    pending.push(e.nodeid);
                }
            }
        }
        f.dirs = dirs;
        Ok((dirs as f64, lat))
    })?;
    f.entries = std::mem::take(&mut *found.borrow_mut());
    rows.push((format!("readdirplus walk, {} dirs", f.dirs), sample));
    for (_, e) in &f.entries {
        let name = String::from_utf8_lossy(&e.name);
        if name == "big.bin" {
            f.big = Some((e.nodeid, e.size));
        } else if let Some(k) = name.strip_prefix('f').and_then(|k| k.parse::<u64>().ok()) {
            f.small.insert(k, (e.nodeid, e.size));
        }
    }
    let (big, big_size) = f.big.ok_or("big.bin not found in the walk")?;
    if big_size != tree.big_size || f.small.len() != tree.small {
        return Err(format!(
            "walk found big.bin of {big_size} B and {} small files; expected {} B and {}",
            f.small.len(),
            tree.big_size,
            tree.small
        ));
    }
    let n = f.entries.len();
    let sample = measure(s, false, || {
        let mut it = f.entries.iter();
        let st = drv.queues[1]
            .run(1, REQ_TIMEOUT, || {
                it.next().map(|(p, e)| SimpleOp {
                    req: Some(Req::new(FUSE_LOOKUP, *p, name_body(&e.name), 256)),
                })
            })
            .map_err(|e| e.to_string())?;
        Ok((n as f64, lat_of(&st)))
    })?;
    rows.push((format!("lookup walk, {n} entries"), sample));
    let sample = measure(s, false, || {
        let mut it = f.entries.iter();
        let st = drv.queues[1]
            .run(1, REQ_TIMEOUT, || {
                it.next().map(|(_, e)| SimpleOp {
                    req: Some(Req::new(FUSE_GETATTR, e.nodeid, getattr_body(), 256)),
                })
            })
            .map_err(|e| e.to_string())?;
        Ok((n as f64, lat_of(&st)))
    })?;
    rows.push((format!("getattr walk, {n} entries"), sample));

    // Sequential 1 MiB reads of big.bin: daemon cache cold, then warm.
    let fh = open_big(&mut drv, big)?;
    for label in ["cold", "warm"] {
        let sample = measure(s, true, || {
            let mut off = 0u64;
            let st = drv.queues[1]
                .run(seq_depth, REQ_TIMEOUT, || {
                    (off < big_size).then(|| {
                        let op = ReadOp {
                            fh,
                            nodeid: big,
                            off,
                            len: MIB.min(big_size - off) as u32,
                        };
                        off += MIB;
                        op
                    })
                })
                .map_err(|e| e.to_string())?;
            Ok((st.payload as f64, lat_of(&st)))
        })?;
        rows.push((
            format!("seq 1 MiB reads, QD {seq_depth}, daemon cache {label}"),
            sample,
        ));
    }

    // Random 4 KiB reads (the daemon cache is warm now) at queue depth 1, 16, 64 on one
    // queue, then at QD 16 on each of 1, 2, 4 queues, each driven from its own thread.
    let rand_op = |off: u64| ReadOp {
        fh,
        nodeid: big,
        off,
        len: 4096,
    };
    for qd in [1usize, 16, 64] {
        let offs = rand_offsets(tree.rand_ops, big_size, qd as u64);
        let sample = measure(s, false, || {
            let mut it = offs.iter();
            let st = drv.queues[1]
                .run(qd, REQ_TIMEOUT, || it.next().map(|&o| rand_op(o)))
                .map_err(|e| e.to_string())?;
            Ok((st.req_ns.len() as f64, lat_of(&st)))
        })?;
        rows.push((format!("random 4 KiB reads, QD {qd}"), sample));
    }
    for nq in [1usize, 2, 4] {
        let name = format!("random 4 KiB reads, {nq} queue(s) × QD 16");
        if nq > nrq {
            rows.push((name, skipped_sample(nrq)));
            continue;
        }
        let sample = measure(s, false, || {
            let results: Vec<std::io::Result<RunStats>> = std::thread::scope(|sc| {
                let handles: Vec<_> = drv.queues[1..=nq]
                    .iter_mut()
                    .enumerate()
                    .map(|(i, q)| {
                        let offs = rand_offsets(tree.rand_ops, big_size, 100 + i as u64);
                        sc.spawn(move || {
                            let mut it = offs.into_iter();
                            q.run(16, REQ_TIMEOUT, || it.next().map(rand_op))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let mut all = RunStats::default();
            for r in results {
                all.merge(r.map_err(|e| e.to_string())?);
            }
            Ok((all.req_ns.len() as f64, all.req_ns))
        })?;
        rows.push((name, sample));
    }

    // OPEN + READ + RELEASE of every small file, QD 1: cold, then warm.
    for label in ["cold", "warm"] {
        let sample = measure(s, false, || {
            let mut it = f.small.iter();
            let st = drv.queues[1]
                .run(1, REQ_TIMEOUT, || {
                    it.next().map(|(&k, &(nodeid, size))| SmallOp {
                        k,
                        nodeid,
                        size,
                        fh: 0,
                        stage: 0,
                    })
                })
                .map_err(|e| e.to_string())?;
            Ok((st.op_ns.len() as f64, st.op_ns))
        })?;
        rows.push((
            format!(
                "open+read+release of {} small files, daemon cache {label}",
                tree.small
            ),
            sample,
        ));
    }
    Ok(rows)
}

/// Marks a row that could not run: `fds` carries the number of request queues offered.
fn skipped_sample(nrq: usize) -> Sample {
    Sample {
        amount: f64::NAN,
        bytes: false,
        secs: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
        cpu_s: 0.0,
        rss_kib: 0,
        fds: nrq,
    }
}

// ---- FUSE mode workloads (host syscalls on the mount) ----

/// Drops the kernel's page cache of one file on the FUSE mount (not the daemon's cache).
fn drop_file_cache(p: &Path) -> Result<(), String> {
    let f = File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    // SAFETY: plain fadvise on an fd we own.
    let r = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    if r != 0 {
        return Err(format!(
            "fadvise {}: {}",
            p.display(),
            std::io::Error::from_raw_os_error(r)
        ));
    }
    Ok(())
}

/// A 4 KiB-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, layout }
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn walk_dir(dir: &Path, lat: &mut Vec<u64>, n: &mut usize) -> Result<(), String> {
    let t = Instant::now();
    let rd: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    lat.push(t.elapsed().as_nanos() as u64);
    for e in rd {
        let t = Instant::now();
        let md = std::fs::symlink_metadata(e.path()).map_err(|e| e.to_string())?;
        lat.push(t.elapsed().as_nanos() as u64);
        *n += 1;
        if md.is_dir() {
            walk_dir(&e.path(), lat, n)?;
        }
    }
    Ok(())
}

fn fuse_round(s: &mut Subject, mnt: &Path, tree: &Tree) -> Result<Rows, String> {
    let mut rows: Rows = Vec::new();
    let mut entries = 0usize;
    let sample = measure(s, false, || {
        let mut lat = Vec::new();
        walk_dir(mnt, &mut lat, &mut entries)?;
        Ok((entries as f64, lat))
    })?;
    rows.push((format!("walk: readdir + lstat, {entries} entries"), sample));

    let big = mnt.join("big.bin");
    for label in ["cold", "warm"] {
        drop_file_cache(&big)?;
        let sample = measure(s, true, || {
            let mut f = File::open(&big).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; MIB as usize];
            let mut off = 0u64;
            let mut lat = Vec::new();
            loop {
                let t = Instant::now();
                let mut got = 0;
                while got < buf.len() {
                    let n = f.read(&mut buf[got..]).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                lat.push(t.elapsed().as_nanos() as u64);
                if got == 0 {
                    break;
                }
                check_big(off, &buf[..got])?;
                off += got as u64;
            }
            if off != tree.big_size {
                return Err(format!(
                    "read {off} B of big.bin, expected {}",
                    tree.big_size
                ));
            }
            Ok((off as f64, lat))
        })?;
        rows.push((
            format!("seq 1 MiB reads (buffered), daemon cache {label}, page cache dropped"),
            sample,
        ));
    }

    for direct in [true, false] {
        for qd in [1usize, 16, 64] {
            drop_file_cache(&big)?;
            let sample = measure(s, false, || {
                let mut o = std::fs::OpenOptions::new();
                o.read(true);
                if direct {
                    o.custom_flags(libc::O_DIRECT);
                }
                let f = o.open(&big).map_err(|e| e.to_string())?;
                let per = tree.rand_ops.div_ceil(qd);
                let res: Vec<Result<Vec<u64>, String>> = std::thread::scope(|sc| {
                    let hs: Vec<_> = (0..qd)
                        .map(|t| {
                            let f = &f;
                            sc.spawn(move || {
                                let mut buf = Aligned::new(4096);
                                let mut lat = Vec::with_capacity(per);
                                for off in rand_offsets(per, tree.big_size, 1000 + t as u64) {
                                    let t = Instant::now();
                                    let n = f.read_at(buf.buf(), off).map_err(|e| e.to_string())?;
                                    lat.push(t.elapsed().as_nanos() as u64);
                                    if n != 4096 {
                                        return Err(format!("short read {n} at {off}"));
                                    }
                                    check_big(off, buf.buf())?;
                                }
                                Ok(lat)
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                let mut lat = Vec::new();
                for r in res {
                    lat.extend(r?);
                }
                Ok((lat.len() as f64, lat))
            })?;
            let how = if direct { "O_DIRECT" } else { "buffered" };
            rows.push((format!("random 4 KiB pread, {how}, {qd} thread(s)"), sample));
        }
    }

    for label in ["cold", "warm"] {
        if label == "warm" {
            for k in 0..tree.small {
                drop_file_cache(&mnt.join(small_rel(k)))?;
            }
        }
        let sample = measure(s, false, || {
            let mut lat = Vec::with_capacity(tree.small);
            let mut buf = Vec::with_capacity(16384);
            for k in 0..tree.small {
                let p = mnt.join(small_rel(k));
                buf.clear();
                let t = Instant::now();
                File::open(&p)
                    .and_then(|mut f| f.read_to_end(&mut buf))
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                lat.push(t.elapsed().as_nanos() as u64);
                if buf != small_content(k as u64) {
                    return Err(format!("{}: wrong contents", p.display()));
                }
            }
            Ok((tree.small as f64, lat))
        })?;
        rows.push((
            format!(
                "open+read+close of {} small files, daemon cache {label}, page cache dropped",
                tree.small
            ),
            sample,
        ));
    }
    Ok(rows)
}

// ---- Subjects ----

struct Env {
    work: PathBuf,
    img: Image,
    tree: Tree,
    nydusd: Option<PathBuf>,
    virtiofsd: Option<PathBuf>,
    seq_depth: usize,
}

fn start_driver_subject(env: &Env, kind: Kind, dir: &Path) -> (Subject, PathBuf) {
    let sock = dir.join("vhost.sock");
    let cfg = dir.join("rafs.json");
    rafs_config(&env.img, &dir.join("cache"), &cfg);
    let mut cmd = match kind {
        Kind::Ours => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rafs-virtiofsd"));
            c.args(["virtiofs", "--log-level", "warn", "--num-request-queues"])
                .arg(MAX_REQUEST_QUEUES.to_string());
            c
        }
        Kind::Nydusd => {
            let mut c = Command::new(env.nydusd.as_ref().unwrap());
            c.args(["virtiofs", "--log-level", "warn", "--rlimit-nofile", "0"])
                .arg("--apisock")
                .arg(dir.join("api.sock"));
            c
        }
        Kind::Virtiofsd => {
            let mut c = Command::new(env.virtiofsd.as_ref().unwrap());
            c.arg("--socket-path")
                .arg(&sock)
                .arg("--shared-dir")
                .arg(&env.tree.dir)
                .args([
                    "--sandbox",
                    "none",
                    "--cache",
                    "auto",
                    "--log-level",
                    "warn",
                ]);
            c
        }
    };
    if kind != Kind::Virtiofsd {
        cmd.arg("--sock")
            .arg(&sock)
            .arg("--bootstrap")
            .arg(&env.img.bootstrap)
            .arg("--config")
            .arg(&cfg);
    }
    let mut s = Subject::spawn(cmd, &dir.join("daemon.log"));
    let t0 = Instant::now();
    while !sock.exists() {
        s.check_alive(kind.name());
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} never listened",
            kind.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (s, sock)
}

fn start_fuse_subject(env: &Env, kind: Kind, dir: &Path) -> Subject {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let cfg = dir.join("rafs.json");
    rafs_config(&env.img, &dir.join("cache"), &cfg);
    let mut cmd = match kind {
        Kind::Ours => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rafs-virtiofsd"));
            c.args(["fuse", "--log-level", "warn"]);
            c
        }
        Kind::Nydusd => {
            let mut c = Command::new(env.nydusd.as_ref().unwrap());
            c.args(["--log-level", "warn", "--rlimit-nofile", "0"])
                .arg("--apisock")
                .arg(dir.join("api.sock"));
            c
        }
        Kind::Virtiofsd => unreachable!("virtiofsd has no FUSE mode"),
    };
    cmd.arg("--mountpoint")
        .arg(&mnt)
        .arg("--bootstrap")
        .arg(&env.img.bootstrap)
        .arg("--config")
        .arg(&cfg);
    let mut s = Subject::spawn(cmd, &dir.join("daemon.log"));
    s.mountpoint = Some(mnt.clone());
    let t0 = Instant::now();
    while !(is_mounted(&mnt) && mnt.join("big.bin").exists()) {
        s.check_alive(kind.name());
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} never mounted",
            kind.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

fn run_subject(env: &Env, kind: Kind, mode: Mode, round: usize) -> Result<Rows, String> {
    let dir = env.work.join(format!("{}-{mode:?}-{round}", kind.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    let rows = match mode {
        Mode::Driver => {
            let (mut s, sock) = start_driver_subject(env, kind, &dir);
            driver_round(&mut s, &sock, &env.tree, env.seq_depth)
        }
        Mode::Fuse => {
            let mut s = start_fuse_subject(env, kind, &dir);
            let mnt = s.mountpoint.clone().unwrap();
            fuse_round(&mut s, &mnt, &env.tree)
        }
    };
    if rows.is_err() {
        eprintln!(
            "{} {mode:?} round {round} failed; daemon log in {}",
            kind.name(),
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    rows
}

// ---- Reporting ----

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians over rounds of each figure of one (subject, workload).
struct Med {
    rate: f64,
    bytes: bool,
    p50: f64,
    p99: f64,
    /// CPU seconds per GiB (bytes rows) or µs per op.
    cpu_unit: f64,
    rss_kib: f64,
    fds: f64,
    skipped: Option<usize>,
}

fn summarize(samples: &[Sample]) -> Med {
    let bytes = samples[0].bytes;
    if samples[0].amount.is_nan() {
        return Med {
            rate: f64::NAN,
            bytes,
            p50: 0.0,
            p99: 0.0,
            cpu_unit: f64::NAN,
            rss_kib: 0.0,
            fds: 0.0,
            skipped: Some(samples[0].fds),
        };
    }
    let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Med {
        rate: m(&|s| s.amount / s.secs.max(1e-9)),
        bytes,
        p50: m(&|s| s.p50_us),
        p99: m(&|s| s.p99_us),
        cpu_unit: m(&|s| {
            if bytes {
                s.cpu_s / (s.amount / GIB)
            } else {
                s.cpu_s * 1e6 / s.amount
            }
        }),
        rss_kib: m(&|s| s.rss_kib as f64),
        fds: m(&|s| s.fds as f64),
        skipped: None,
    }
}

fn fmt_rate(m: &Med) -> String {
    if m.bytes {
        format!("{:.0} MB/s", m.rate / 1e6)
    } else {
        format!("{:.0} op/s", m.rate)
    }
}

fn fmt_cpu(m: &Med) -> String {
    if m.bytes {
        format!("{:.2} s/GiB", m.cpu_unit)
    } else {
        format!("{:.1} µs/op", m.cpu_unit)
    }
}

fn fmt_lat(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

type Results = BTreeMap<(Mode, Kind), Vec<Rows>>;

fn print_table(mode: Mode, res: &Results) {
    let kinds: Vec<Kind> = res
        .keys()
        .filter(|(m, _)| *m == mode)
        .map(|(_, k)| *k)
        .collect();
    let Some(ours_rounds) = res.get(&(mode, Kind::Ours)) else {
        return;
    };
    let title = match mode {
        Mode::Driver => "vhost-user driver (no VM)",
        Mode::Fuse => "FUSE mode, host syscalls",
    };
    println!();
    println!("### {title}");
    println!();
    println!("| workload | daemon | rate | p50 | p99 | daemon CPU | peak RssAnon | fds | ours vs it: rate, CPU |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let workloads: Vec<String> = ours_rounds[0].iter().map(|(n, _)| n.clone()).collect();
    for (wi, w) in workloads.iter().enumerate() {
        let med = |k: Kind| -> Option<Med> {
            let rounds = res.get(&(mode, k))?;
            let samples: Vec<Sample> = rounds
                .iter()
                .filter_map(|r| r.get(wi).filter(|(n, _)| n == w).map(|(_, s)| s.clone()))
                .collect();
            (!samples.is_empty()).then(|| summarize(&samples))
        };
        let ours = med(Kind::Ours);
        for &k in &kinds {
            let Some(m) = med(k) else {
                println!("| {w} | {} | (no result) | | | | | | |", k.name());
                continue;
            };
            if let Some(nrq) = m.skipped {
                println!(
                    "| {w} | {} | skipped: {nrq} request queue(s) offered | | | | | | |",
                    k.name()
                );
                continue;
            }
            let ratio = match (&ours, k) {
                (_, Kind::Ours) => "".to_string(),
                // CPU is counted in clock ticks (10 ms): a zero on either side has no ratio.
                (Some(o), _) if o.skipped.is_none() && (o.cpu_unit == 0.0 || m.cpu_unit == 0.0) => {
                    format!("{:.2}×, CPU < 1 tick", o.rate / m.rate)
                }
                (Some(o), _) if o.skipped.is_none() => {
                    format!("{:.2}×, {:.2}×", o.rate / m.rate, o.cpu_unit / m.cpu_unit)
                }
                _ => "-".to_string(),
            };
            println!(
                "| {w} | {} | {} | {} | {} | {} | {:.1} MB | {:.0} | {ratio} |",
                k.name(),
                fmt_rate(&m),
                fmt_lat(m.p50),
                fmt_lat(m.p99),
                fmt_cpu(&m),
                m.rss_kib / 1024.0,
                m.fds,
            );
        }
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("rafs_read: a benchmark; run it with `cargo bench --bench rafs_read`");
        return;
    }
    let big_mb = env_num("RV_BENCH_BIG_MB", 1024);
    let small = env_num("RV_BENCH_SMALL", 50_000) as usize;
    let rounds = env_num("RV_BENCH_ROUNDS", 3) as usize;
    let rand_ops = env_num("RV_BENCH_RAND_OPS", 20_000) as usize;
    let seq_depth = env_num("RV_BENCH_SEQ_QD", 4) as usize;
    // RV_BENCH_DIR keeps the tree and image between runs (rebuilt when sizes change).
    let (_tmp, base) = match std::env::var_os("RV_BENCH_DIR") {
        Some(d) => (None, PathBuf::from(d)),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let tree_dir = base.join(format!("tree-{big_mb}M-{small}"));
    let stamp = tree_dir.with_extension("done");
    if !stamp.exists() {
        let _ = std::fs::remove_dir_all(&tree_dir);
        let t0 = Instant::now();
        make_tree(&tree_dir, big_mb, small);
        std::fs::write(&stamp, "").unwrap();
        eprintln!("tree written in {:.1} s", t0.elapsed().as_secs_f64());
    }
    let img_dir = base.join(format!(
        "image-{}-{big_mb}M-{small}",
        if std::env::var_os("NYDUS_IMAGE").is_some() {
            "upstream"
        } else {
            "ours"
        }
    ));
    let img = build_image(&tree_dir, &img_dir);
    let tree = Tree {
        dir: tree_dir,
        big_size: big_mb * MIB,
        small,
        rand_ops,
    };
    let existing = |var: &str| -> Result<PathBuf, String> {
        let v = std::env::var_os(var).ok_or(format!("{var} is not set"))?;
        let p = PathBuf::from(v);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{var}={} does not exist", p.display()))
        }
    };
    let work = base.join("run");
    std::fs::create_dir_all(&work).unwrap();
    let env = Env {
        work,
        img,
        tree,
        nydusd: existing("NYDUSD").ok(),
        virtiofsd: existing("RV_UPSTREAM_VIRTIOFSD").ok(),
        seq_depth,
    };
    println!("## rafs_read benchmark");
    println!();
    println!(
        "image: {} MiB random big.bin + {small} small files (64 B - 8 KiB), RAFS v6 built by {}; \
         localfs backend, blobcache, digest_validate off",
        big_mb, env.img.builder
    );
    println!(
        "{rounds} round(s), medians shown; {rand_ops} random reads per row; a fresh daemon and \
         empty cache per subject and round"
    );
    let mut subjects = vec![(Mode::Driver, Kind::Ours), (Mode::Fuse, Kind::Ours)];
    match existing("NYDUSD") {
        Ok(p) => {
            println!("nydusd: {}", p.display());
            subjects.push((Mode::Driver, Kind::Nydusd));
            subjects.push((Mode::Fuse, Kind::Nydusd));
        }
        Err(why) => println!("nydusd skipped: {why}"),
    }
    match existing("RV_UPSTREAM_VIRTIOFSD") {
        Ok(p) => {
            println!("virtiofsd: {} (serving the unpacked tree)", p.display());
            subjects.push((Mode::Driver, Kind::Virtiofsd));
        }
        Err(why) => println!("virtiofsd skipped: {why}"),
    }
    // RV_BENCH_MODES=driver or =fuse runs one mode only.
    let modes = std::env::var("RV_BENCH_MODES").unwrap_or_else(|_| "driver,fuse".into());
    subjects.retain(|(m, _)| modes.contains(&format!("{m:?}").to_lowercase()));
    let mut res: Results = BTreeMap::new();
    for round in 0..rounds {
        for &(mode, kind) in &subjects {
            let t0 = Instant::now();
            match run_subject(&env, kind, mode, round) {
                Ok(rows) => {
                    eprintln!(
                        "round {round}: {} {mode:?} done in {:.1} s",
                        kind.name(),
                        t0.elapsed().as_secs_f64()
                    );
                    res.entry((mode, kind)).or_default().push(rows);
                }
                Err(e) => println!("{} {mode:?} round {round}: FAILED: {e}", kind.name()),
            }
        }
    }
    for mode in [Mode::Driver, Mode::Fuse] {
        print_table(mode, &res);
    }
    println!();
    println!(
        "rate: MB/s (10^6 B) or operations per second; p50/p99: per request on the driver, per \
         syscall (open+read+close for small files) in FUSE mode; daemon CPU: utime+stime of the \
         daemon process per GiB or per operation; ratios: ours ÷ the peer (rate above 1 and CPU \
         below 1 favour ours)"
    );
}
