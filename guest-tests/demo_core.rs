//! The demo's core, shared by `hack/demo.sh` (through guest-tests/demo_run.rs, a Debian
//! rootfs) and the guest test guest-tests/demo.rs (a small image), so the demo cannot rot.
//!
//! A RAFS image's blobs are pushed to a real `docker-registry` on 127.0.0.1. A fresh daemon
//! serves a passthrough share; a guest boots, and when it asks (`rv_sync rafs-mount`) the
//! host mounts the image through the API from the registry backend with an empty chunk
//! cache. The guest mounts an overlay (the RAFS image as lower, the passthrough share as
//! upper), runs a program from the image with `chroot`, and writes a file through the
//! overlay. The host timestamps the mount and the program's first output, and reads what
//! the registry served (its access log) and what the daemon fetched
//! (`/api/v1/metrics/backend`).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::registry;

/// Where the image is mounted in the daemon's tree.
pub const RAFS_MP: &str = "/rafs/c1/lowerdir";
/// What the guest writes through the overlay (at the overlay's root).
pub const NOTE: &str = "written in the guest through the overlay";

/// The image to run from.
pub struct DemoImage<'a> {
    pub bootstrap: &'a Path,
    /// Directory of the image's blobs, each named by its sha256 (as `rafs-image create
    /// --blob-dir` writes them).
    pub blob_dir: &'a Path,
    /// Command run in the guest as `chroot ROOT PROGRAM` (shell syntax).
    pub program: &'a str,
}

/// What the run showed.
pub struct DemoReport {
    pub bootstrap_bytes: u64,
    pub blob_bytes: u64,
    /// Bytes of blob GETs in the registry's access log, and the number of such requests.
    pub registry_bytes: u64,
    pub registry_gets: usize,
    /// `read_amount_total` and `read_count` of `/api/v1/metrics/backend`.
    pub backend_bytes: u64,
    pub backend_reads: u64,
    /// The API mount call alone.
    pub mount_api: Duration,
    /// From the start of the API mount to the program's first output in the guest.
    pub mount_to_first_output: Duration,
    /// From the guest's `chroot` to the program's first output.
    pub exec_to_first_output: Duration,
    /// The program's output lines.
    pub output: Vec<String>,
    /// The file the guest wrote, as the host sees it in the passthrough upper dir.
    pub note_on_host: String,
}

impl DemoReport {
    pub fn image_bytes(&self) -> u64 {
        self.bootstrap_bytes + self.blob_bytes
    }
}

fn workload(program: &str) -> String {
    format!(
        r#"
rv_sync rafs-mount
L=$RV_MNT{RAFS_MP}
S=$RV_MNT/containers/c1
mkdir -p /rootfs
rv_check overlay mount -t overlay overlay -o lowerdir=$L,upperdir=$S/fs,workdir=$S/work,index=off /rootfs
rv_sync exec
chroot /rootfs {program} > /tmp/out 2>&1 &
pid=$!
while [ ! -s /tmp/out ] && kill -0 $pid 2>/dev/null; do usleep 5000; done
rv_sync first-output
wait $pid
rc=$?
rv_check program [ "$rc" = 0 ]
n=0
while IFS= read -r l; do rv_data "out$n" "$l"; n=$((n + 1)); done < /tmp/out
rv_data lines $n
rv_check write sh -c 'echo "{NOTE}" > /rootfs/demo-note.txt'
rv_check umount umount /rootfs
"#
    )
}

fn mib(b: u64) -> String {
    if b < 1 << 20 {
        format!("{:.0} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Runs the demo's core on `img`, telling each step to `say`.
pub fn run(img: &DemoImage, say: &dyn Fn(&str)) -> DemoReport {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry::Registry::start(None);
    let repo = "demo/rootfs";
    let mut hexes = Vec::new();
    let mut blob_bytes = 0;
    for e in fs::read_dir(img.blob_dir).unwrap() {
        let p = e.unwrap().path();
        let data = fs::read(&p).unwrap();
        blob_bytes += data.len() as u64;
        let h = reg.push_blob(repo, &data);
        assert_eq!(
            p.file_name().unwrap().to_string_lossy(),
            h,
            "blob files are named by their sha256"
        );
        hexes.push(h);
    }
    let bootstrap_bytes = fs::metadata(img.bootstrap).unwrap().len();
    say(&format!(
        "registry: docker-registry on {} (access log {}); pushed {} blob(s) of {} to {repo}; \
         the bootstrap ({}) stays on the host",
        reg.host(),
        reg.log.display(),
        hexes.len(),
        mib(blob_bytes),
        mib(bootstrap_bytes)
    ));

    let share = tmp.path().join("share");
    let (upper, work) = (share.join("c1/fs"), share.join("c1/work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let cache = tmp.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    let daemon = Daemon::start(&[]);
    say(&format!(
        "daemon: {} virtiofs --sock {} --apisock {}",
        daemon_bin().display(),
        daemon.sock.display(),
        daemon.apisock.display()
    ));
    daemon.mount("/containers", "passthrough_fs", &share, "");
    say(&format!(
        "API: POST /api/v1/mount?mountpoint=/containers: passthrough of {} (the overlay's upper)",
        share.display()
    ));

    let config = registry_config(&reg.host(), repo, &cache);
    let mut cfg = VmConfig::new(Some(&daemon.sock), &workload(img.program));
    cfg.mem_mib = 1024;
    say(&format!(
        "guest: booting QEMU ({:?}); it asks for the RAFS mount once up",
        detect_accel()
    ));
    let mut at: Vec<(String, Instant)> = Vec::new();
    let mut mount_api = Duration::ZERO;
    let run = run_vm(&cfg, |step| {
        let now = Instant::now();
        at.push((step.to_string(), now));
        match step {
            "rafs-mount" => {
                assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "cache not cold");
                daemon.mount(RAFS_MP, "rafs", img.bootstrap, &config);
                mount_api = now.elapsed();
                say(&format!(
                    "API: POST /api/v1/mount?mountpoint={RAFS_MP}: rafs {} from the registry \
                     backend, empty cache {} ({:.1} ms)",
                    img.bootstrap.display(),
                    cache.display(),
                    mount_api.as_secs_f64() * 1e3
                ));
            }
            "exec" => say(&format!(
                "guest: overlay lowerdir=RAFS,upperdir=passthrough on /rootfs; chroot /rootfs {}",
                img.program
            )),
            _ => {}
        }
        true
    });
    run.assert_ok(&["overlay", "program", "write", "umount"]);
    let t = |s: &str| at.iter().find(|(n, _)| n == s).unwrap().1;
    let n: usize = run.data("lines").parse().unwrap();
    let output: Vec<String> = (0..n)
        .map(|i| run.data(&format!("out{i}")).to_string())
        .collect();

    let registry_bytes = hexes.iter().map(|h| reg.served_bytes(h)).sum();
    let log = fs::read_to_string(&reg.log).unwrap_or_default();
    let registry_gets = log
        .lines()
        .filter(|l| l.contains("\"GET ") && hexes.iter().any(|h| l.contains(h.as_str())))
        .count();
    let (st, body) = daemon
        .api(
            "GET",
            &format!("/api/v1/metrics/backend?id={RAFS_MP}"),
            None,
        )
        .unwrap();
    assert_eq!(st, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    let note_on_host = fs::read_to_string(upper.join("demo-note.txt")).unwrap_or_default();
    DemoReport {
        bootstrap_bytes,
        blob_bytes,
        registry_bytes,
        registry_gets,
        backend_bytes: m["read_amount_total"].as_u64().unwrap_or(0),
        backend_reads: m["read_count"].as_u64().unwrap_or(0),
        mount_api,
        mount_to_first_output: t("first-output") - t("rafs-mount"),
        exec_to_first_output: t("first-output") - t("exec"),
        output,
        note_on_host,
    }
}

/// The report as the demo prints it; the last line is what was fetched against the image.
pub fn summary(r: &DemoReport) -> String {
    let mut s = String::new();
    s.push_str("guest output of the program:\n");
    for l in &r.output {
        s.push_str(&format!("  | {l}\n"));
    }
    s.push_str(&format!(
        "host: the guest's write landed in the passthrough upper: {:?}\n",
        r.note_on_host.trim_end()
    ));
    s.push_str(&format!(
        "time: RAFS mount (API call {:.1} ms) to the program's first output: {:.0} ms \
         (chroot to first output: {:.0} ms)\n",
        r.mount_api.as_secs_f64() * 1e3,
        r.mount_to_first_output.as_secs_f64() * 1e3,
        r.exec_to_first_output.as_secs_f64() * 1e3
    ));
    s.push_str(&format!(
        "registry access log: {} GETs of the blob, {} bytes; /api/v1/metrics/backend: {} reads, \
         read_amount_total {} bytes\n",
        r.registry_gets, r.registry_bytes, r.backend_reads, r.backend_bytes
    ));
    s.push_str(&format!(
        "fetched from the registry: {} bytes ({}) of a {}-byte image ({}: bootstrap {} + blob {}), \
         {:.1}%",
        r.registry_bytes,
        mib(r.registry_bytes),
        r.image_bytes(),
        mib(r.image_bytes()),
        r.bootstrap_bytes,
        r.blob_bytes,
        100.0 * r.registry_bytes as f64 / r.image_bytes().max(1) as f64
    ));
    s
}

/// The blob dir's total size (for callers that build their own image).
pub fn dir_bytes(d: &Path) -> u64 {
    fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// A small image tree with one real program: the host's static busybox at /usr/bin (with
/// `sh`, `cat`, `ls` and `wc` links, `/bin` -> `usr/bin`), an /etc/os-release, and
/// `filler_mib` MiB of incompressible data the program never reads.
pub fn small_rootfs(dir: &Path, filler_mib: usize) -> PathBuf {
    let bin = dir.join("usr/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("usr/share/filler")).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static (hack/setup.sh)");
    for l in ["sh", "cat", "ls", "wc"] {
        std::os::unix::fs::symlink("busybox", bin.join(l)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
    fs::write(
        dir.join("etc/os-release"),
        "PRETTY_NAME=\"rafs-virtiofsd demo image (busybox)\"\nID=rvdemo\n",
    )
    .unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..filler_mib {
        let mut buf = vec![0u8; 1 << 20];
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        fs::write(dir.join(format!("usr/share/filler/{i:02}.bin")), buf).unwrap();
    }
    dir.to_path_buf()
}
