//! The demo's core (guest-tests/demo_core.rs, what `hack/demo.sh` runs on a Debian rootfs) on
//! a small image, so the demo cannot rot: a RAFS image in a real registry, mounted through the
//! API with a cold cache while a guest runs, a program executed from it over an overlay with a
//! passthrough upper, and less fetched from the registry than the image holds.

mod demo_core;
mod harness;
#[path = "../tests/common/registry.rs"]
mod registry;

use harness::*;

#[test]
fn guest_runs_a_program_from_a_registry_image_with_a_cold_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let src = demo_core::small_rootfs(&tmp.path().join("src"), 16);
    let (boot, blobs) = build_image(&src, &tmp.path().join("img"));
    let program = "/bin/sh -c 'cat /etc/os-release; ls /usr/bin | wc -l'";
    let r = demo_core::run(
        &demo_core::DemoImage {
            bootstrap: &boot,
            blob_dir: &blobs,
            program,
        },
        &|s| eprintln!("demo: {s}"),
    );
    eprintln!("{}", demo_core::summary(&r));
    // The program ran from the image: its output is the image's os-release and /usr/bin.
    let os_release = std::fs::read_to_string(src.join("etc/os-release")).unwrap();
    let usr_bin = std::fs::read_dir(src.join("usr/bin")).unwrap().count();
    let mut want: Vec<String> = os_release.lines().map(str::to_string).collect();
    want.push(usr_bin.to_string());
    assert_eq!(r.output, want);
    assert_eq!(r.note_on_host.trim_end(), demo_core::NOTE);
    // Lazily: the data came from the registry, and only part of it (16 MiB of filler are never
    // read); the daemon's backend metrics agree with the registry's log.
    assert_eq!(r.blob_bytes, demo_core::dir_bytes(&blobs));
    assert!(
        r.registry_bytes > 0 && r.registry_gets > 0,
        "nothing fetched"
    );
    assert!(
        r.registry_bytes < r.blob_bytes / 4,
        "fetched {} of {} blob bytes",
        r.registry_bytes,
        r.blob_bytes
    );
    assert_eq!(r.backend_bytes, r.registry_bytes, "metrics vs registry log");
    assert!(r.backend_reads > 0);
    assert!(r.mount_to_first_output >= r.exec_to_first_output);
    let last = demo_core::summary(&r).lines().last().unwrap().to_string();
    assert!(last.starts_with("fetched from the registry: "), "{last}");
}
