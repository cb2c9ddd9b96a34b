//! Lazy loading, measured at the registry: a guest reads one 4 KiB file from a 1 GiB RAFS
//! image served from a real `docker-registry` on 127.0.0.1, and the registry's own access log
//! shows under 2 MiB served (storage issue, acceptance "Lazy").

mod harness;
#[path = "../tests/common/registry.rs"]
mod registry;

use harness::*;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes `len` pseudo-random (incompressible) bytes; fast xorshift, deterministic by `seed`.
fn write_random(path: &Path, len: usize, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

#[test]
fn guest_reads_4k_from_1gib_image_fetching_under_2mib() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("data")).unwrap();
    fs::create_dir_all(src.join("etc")).unwrap();
    for i in 0..16 {
        write_random(
            &src.join(format!("data/part{i:02}.bin")),
            64 << 20,
            2 * i + 1001, // distinct odd seeds: identical files would be deduplicated
        );
    }
    let small: Vec<u8> = (0..4096u32).map(|i| (i % 61) as u8 + b'A').collect();
    fs::write(src.join("etc/config-4k.txt"), &small).unwrap();
    let (boot, blobs) = build_image(&src, &tmp.path().join("img"));
    fs::remove_dir_all(&src).unwrap();

    let reg = registry::Registry::start(None);
    let mut pushed = Vec::new();
    let mut total = 0u64;
    for e in fs::read_dir(&blobs).unwrap() {
        let p = e.unwrap().path();
        let data = fs::read(&p).unwrap();
        total += data.len() as u64;
        let hexd = reg.push_blob("lazy/image", &data);
        assert_eq!(
            p.file_name().unwrap().to_string_lossy(),
            hexd,
            "blob files are named by their sha256"
        );
        pushed.push(hexd);
    }
    assert!(total > 900 << 20, "blob data is ~1 GiB (got {total} bytes)");
    let cache = tmp.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    let config = registry_config(&reg.host(), "lazy/image", &cache);
    let daemon = Daemon::start(&[]);
    daemon.mount("/rafs/lazy/lowerdir", "rafs", &boot, &config);
    let run = run_vm(
        &VmConfig::new(
            Some(&daemon.sock),
            r#"
L=$RV_MNT/rafs/lazy/lowerdir
rv_check listed sh -c "ls -l $L/data | grep -c part | grep -qx 16"
rv_data small "$(rvhelper sha256 $L/etc/config-4k.txt)"
"#,
        ),
        |_| false,
    );
    run.assert_ok(&["listed"]);
    {
        use sha2::Digest;
        assert_eq!(run.data("small"), hex::encode(sha2::Sha256::digest(&small)));
    }
    let served: u64 = pushed.iter().map(|h| reg.served_bytes(h)).sum();
    eprintln!("registry served {served} bytes for one 4 KiB file of a {total}-byte image");
    assert!(served > 0, "the 4 KiB file must come from the registry");
    assert!(
        served < 2 << 20,
        "registry served {served} bytes for one 4 KiB file of a {total}-byte image"
    );
}
