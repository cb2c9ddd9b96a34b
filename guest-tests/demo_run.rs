//! `hack/demo.sh`'s last step (a `[[bench]]` target only to get a release build): runs the
//! demo's core (guest-tests/demo_core.rs) on the image `hack/demo.sh` built from a Debian
//! rootfs, printing each step and then what it cost. Without `--bench` it does nothing.
//!
//! `RV_DEMO_BOOTSTRAP` and `RV_DEMO_BLOB_DIR` name the image; `RV_DEMO_PROGRAM` the command
//! run from it (default `/bin/bash -c 'cat /etc/os-release; ls /usr/bin | wc -l'`).

mod demo_core;
mod harness;
#[path = "../tests/common/registry.rs"]
mod registry;

use std::path::PathBuf;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("demo: the end of hack/demo.sh; run that");
        return;
    }
    let var = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{k} not set; run hack/demo.sh"))
    };
    let (boot, blobs) = (var("RV_DEMO_BOOTSTRAP"), var("RV_DEMO_BLOB_DIR"));
    let program = std::env::var("RV_DEMO_PROGRAM")
        .unwrap_or_else(|_| "/bin/bash -c 'cat /etc/os-release; ls /usr/bin | wc -l'".into());
    let r = demo_core::run(
        &demo_core::DemoImage {
            bootstrap: &boot,
            blob_dir: &blobs,
            program: &program,
        },
        &|s| println!("  {s}"),
    );
    println!("{}", demo_core::summary(&r));
}
