//! The kata-config fragments parse as TOML and set every key Kata needs for
//! shared_fs = "virtio-fs-nydus" with our daemon.

use std::path::Path;

fn load(name: &str, section: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kata-config")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
    doc["hypervisor"][section]
        .as_table()
        .unwrap_or_else(|| panic!("{name}: no [hypervisor.{section}]"))
        .clone()
}

fn check(t: &toml::Table, name: &str) {
    assert_eq!(t["shared_fs"].as_str(), Some("virtio-fs-nydus"), "{name}");
    let daemon = t["virtio_fs_daemon"].as_str().unwrap();
    assert!(daemon.ends_with("/rafs-virtiofsd"), "{name}: {daemon}");
    let valid = t["valid_virtio_fs_daemon_paths"].as_array().unwrap();
    assert!(valid.iter().any(|v| v.as_str() == Some(daemon)), "{name}");
    assert_eq!(
        t["virtio_fs_extra_args"].as_array().map(|a| a.len()),
        Some(0)
    );
    assert_eq!(t["virtio_fs_cache_size"].as_integer(), Some(0), "{name}");
    let cache = t["virtio_fs_cache"].as_str().unwrap();
    assert!(["never", "metadata", "auto", "always"].contains(&cache));
    let q = t["virtio_fs_queue_size"].as_integer().unwrap();
    assert!(q > 0 && q <= 1024 && (q & (q - 1)) == 0, "{name}: {q}");
}

#[test]
fn qemu_fragment_has_the_required_keys() {
    check(
        &load("configuration-qemu-rafs.toml", "qemu"),
        "configuration-qemu-rafs.toml",
    );
}

#[test]
fn clh_fragment_has_the_required_keys() {
    check(
        &load("configuration-clh-rafs.toml", "clh"),
        "configuration-clh-rafs.toml",
    );
}
