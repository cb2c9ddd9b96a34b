//! Cold start, a benchmark (never a test): from the API mount to the first byte a guest reads,
//! for a real rootfs (a debootstrap bookworm minbase tar) served lazily as RAFS from a
//! `docker-registry` on 127.0.0.1, side by side with the OCI way: download the same content as
//! a gzip layer from the same registry, unpack it, share it, read it.
//!
//! Run it with `hack/bench-coldstart.sh` (makes the rootfs tar, then `cargo bench --bench
//! coldstart`). Without `--bench` it does nothing. See docs/performance.md.
//!
//! One guest per run, with a fresh daemon and a cold chunk cache. The guest asks the host for
//! each step over the serial console (`rv_sync`), and the host timestamps the steps:
//! - RAFS: the host POSTs the RAFS mount (registry backend), the guest reads the first byte of
//!   /etc/os-release, then runs `chroot ROOT /bin/true` (the dynamic loader and libc come from
//!   the image: a container's first exec);
//! - OCI: the host streams the layer blob from the registry through `tar -xz` into a
//!   directory, POSTs a passthrough mount of it, and the guest does the same two reads.
//!
//! A console round trip (measured first) is subtracted from each guest-side interval.

mod harness;
#[path = "../tests/common/registry.rs"]
mod registry;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;

const WORKLOAD: &str = r#"
rv_sync rtt-a
rv_sync rtt-b
rv_sync rafs-mount
R=$RV_MNT/rafs/cold
rv_check rafs-first-byte sh -c "head -c1 $R/etc/os-release > /dev/null"
rv_sync rafs-first-byte
rv_check rafs-exec chroot $R /bin/true
rv_sync rafs-exec
rv_sync oci-mount
O=$RV_MNT/oci/cold
rv_check oci-first-byte sh -c "head -c1 $O/etc/os-release > /dev/null"
rv_sync oci-first-byte
rv_check oci-exec chroot $O /bin/true
rv_sync oci-exec
"#;

struct RunResult {
    rtt: Duration,
    rafs_mount_api: Duration,
    rafs_first_byte: Duration,
    rafs_exec: Duration,
    rafs_bytes: u64,
    oci_fetch_unpack: Duration,
    oci_first_byte: Duration,
    oci_exec: Duration,
    oci_bytes: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn one_run(
    reg: &registry::Registry,
    boot: &Path,
    rafs_blobs: &[String],
    oci_blob: &str,
    work: &Path,
) -> RunResult {
    let cache = work.join("cache");
    let unpack = work.join("oci-rootfs");
    let _ = fs::remove_dir_all(&cache);
    let _ = fs::remove_dir_all(&unpack);
    fs::create_dir_all(&cache).unwrap();
    fs::create_dir_all(&unpack).unwrap();
    // Write back what earlier runs left dirty, so it does not land in this run's timings.
    run_cmd(&mut Command::new("sync"));
    let config = registry_config(&reg.host(), "bench/rafs", &cache);
    let served = |hexes: &[String]| -> u64 { hexes.iter().map(|h| reg.served_bytes(h)).sum() };
    let rafs_before = served(rafs_blobs);
    let oci_before = reg.served_bytes(oci_blob);

    let daemon = Daemon::start(&[]);
    let mut at: HashMap<String, Instant> = HashMap::new();
    let mut rafs_mount_api = Duration::ZERO;
    let mut oci_fetch_unpack = Duration::ZERO;
    let mut cfg = VmConfig::new(Some(&daemon.sock), WORKLOAD);
    cfg.mem_mib = 1024;
    let run = run_vm(&cfg, |step| {
        at.insert(step.to_string(), Instant::now());
        match step {
            "rafs-mount" => {
                let t = Instant::now();
                daemon.mount("/rafs/cold", "rafs", boot, &config);
                rafs_mount_api = t.elapsed();
            }
            "oci-mount" => {
                let t = Instant::now();
                let url = format!("http://{}/v2/bench/oci/blobs/sha256:{oci_blob}", reg.host());
                run_cmd(Command::new("sh").arg("-c").arg(format!(
                    "curl -sSf '{url}' | tar -xzf - -C '{}'",
                    unpack.display()
                )));
                oci_fetch_unpack = t.elapsed();
                daemon.mount("/oci/cold", "passthrough_fs", &unpack, "");
            }
            _ => {}
        }
        true
    });
    run.assert_ok(&["rafs-first-byte", "rafs-exec", "oci-first-byte", "oci-exec"]);
    let t = |s: &str| at[s];
    let rtt = t("rtt-b") - t("rtt-a");
    let between = |a: &str, b: &str| (t(b) - t(a)).saturating_sub(rtt);
    RunResult {
        rtt,
        rafs_mount_api,
        rafs_first_byte: between("rafs-mount", "rafs-first-byte"),
        rafs_exec: between("rafs-first-byte", "rafs-exec"),
        rafs_bytes: served(rafs_blobs) - rafs_before,
        oci_fetch_unpack,
        oci_first_byte: between("oci-mount", "oci-first-byte"),
        oci_exec: between("oci-first-byte", "oci-exec"),
        oci_bytes: reg.served_bytes(oci_blob) - oci_before,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("coldstart: a benchmark; run it with hack/bench-coldstart.sh");
        return;
    }
    let tar = std::env::var_os("RV_COLDSTART_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debian-rootfs/rootfs.tar"));
    if !tar.exists() {
        println!(
            "coldstart: {} not found; hack/debian-rootfs.sh makes it with debootstrap",
            tar.display()
        );
        return;
    }
    let runs: usize = std::env::var("RV_COLDSTART_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("rafs/image.boot");
    let blobs = tmp.path().join("rafs/blobs");
    fs::create_dir_all(&blobs).unwrap();
    let t = Instant::now();
    run_cmd(
        Command::new(image_bin())
            .args(["create", "-t", "tar-rafs", "--bootstrap"])
            .arg(&boot)
            .arg("--blob-dir")
            .arg(&blobs)
            .arg(&tar),
    );
    let rafs_build = t.elapsed();
    let layer = tmp.path().join("layer.tar.gz");
    let t = Instant::now();
    run_cmd(Command::new("sh").arg("-c").arg(format!(
        "gzip -c '{}' > '{}'",
        tar.display(),
        layer.display()
    )));
    let oci_build = t.elapsed();

    let reg = registry::Registry::start(None);
    let mut rafs_hexes = Vec::new();
    let mut rafs_size = 0u64;
    for e in fs::read_dir(&blobs).unwrap() {
        let data = fs::read(e.unwrap().path()).unwrap();
        rafs_size += data.len() as u64;
        rafs_hexes.push(reg.push_blob("bench/rafs", &data));
    }
    let layer_data = fs::read(&layer).unwrap();
    let oci_hex = reg.push_blob("bench/oci", &layer_data);
    let tar_size = fs::metadata(&tar).unwrap().len();
    let files = run_cmd(
        Command::new("sh")
            .arg("-c")
            .arg(format!("tar -tf '{}' | wc -l", tar.display())),
    );
    println!(
        "rootfs: {} ({} bytes as tar, {} entries); RAFS: bootstrap {} bytes + blob {} bytes \
         (built in {:.1} s); OCI layer: {} bytes (gzip in {:.1} s)",
        tar.display(),
        tar_size,
        files.trim(),
        fs::metadata(&boot).unwrap().len(),
        rafs_size,
        rafs_build.as_secs_f64(),
        layer_data.len(),
        oci_build.as_secs_f64()
    );

    let work = tmp.path().join("work");
    let mut results = Vec::new();
    for i in 0..runs {
        let r = one_run(&reg, &boot, &rafs_hexes, &oci_hex, &work);
        println!(
            "run {}: console rtt {:.0} ms | RAFS mount API {:.1} ms, first byte {:.0} ms, \
             exec {:.0} ms, fetched {} B | OCI fetch+unpack {:.0} ms, first byte (incl.) {:.0} ms, \
             exec {:.0} ms, fetched {} B",
            i + 1,
            ms(r.rtt),
            ms(r.rafs_mount_api),
            ms(r.rafs_first_byte),
            ms(r.rafs_exec),
            r.rafs_bytes,
            ms(r.oci_fetch_unpack),
            ms(r.oci_first_byte),
            ms(r.oci_exec),
            r.oci_bytes
        );
        results.push(r);
    }
    let med = |f: &dyn Fn(&RunResult) -> f64| median(results.iter().map(f).collect());
    // Both intervals start when the host starts the mount step; for OCI that step includes
    // the download and unpack.
    let rafs_fb = med(&|r| ms(r.rafs_first_byte));
    let oci_fb = med(&|r| ms(r.oci_first_byte));
    println!();
    println!("| medians of {runs} runs | RAFS (lazy, registry) | OCI (download + unpack) |");
    println!("|---|---|---|");
    println!(
        "| mount step start → first byte in the guest | {:.0} ms | {:.0} ms (of which fetch + unpack {:.0} ms) |",
        rafs_fb,
        oci_fb,
        med(&|r| ms(r.oci_fetch_unpack)),
    );
    println!(
        "| … then `chroot ROOT /bin/true` | {:.0} ms | {:.0} ms |",
        med(&|r| ms(r.rafs_exec)),
        med(&|r| ms(r.oci_exec))
    );
    println!(
        "| bytes fetched from the registry | {:.0} | {:.0} |",
        med(&|r| r.rafs_bytes as f64),
        med(&|r| r.oci_bytes as f64)
    );
    println!(
        "| mount API call alone | {:.1} ms | (passthrough) |",
        med(&|r| ms(r.rafs_mount_api))
    );
}
