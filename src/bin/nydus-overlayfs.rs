//! `nydus-overlayfs overlay TARGET -o OPTIONS`: the mount.fuse helper for rootfs mounts of type
//! `fuse.nydus-overlayfs`. Drops Kata-only options and mounts a kernel overlay.

use rafs_virtiofsd::overlay_helper::{mount_overlay, parse_args, HelperError};

/// `--help`: the usage mount(8) calls the helper with, and each argument.
const HELP: &str = "\
Mount helper for rootfs mounts of type fuse.nydus-overlayfs (as nydus-snapshotter sets them up):
mounts a kernel overlay with the given options, without the ones meant for Kata.

Usage: nydus-overlayfs overlay <TARGET> -o <OPTIONS>

Arguments:
  overlay    The mount source; must be the word overlay
  <TARGET>   Directory to mount the overlay on

Options:
  -o <OPTIONS>   Comma-separated overlay mount options (lowerdir=, upperdir=, workdir=, ro, nodev, ...); extraoption= and io.katacontainers.volume= are dropped; required
  -h, --help     Print help
  -V, --version  Print version
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["-h"] | ["--help"] => {
            print!("{HELP}");
            return;
        }
        ["-V"] | ["--version"] => {
            println!("nydus-overlayfs {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        _ => {}
    }
    let req = match parse_args(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nydus-overlayfs: {e}");
            if e == HelperError::Usage {
                eprintln!("mounts an overlay, dropping extraoption= and io.katacontainers.volume= options (see --help)");
            }
            std::process::exit(1);
        }
    };
    if let Err(e) = mount_overlay(&req) {
        eprintln!("nydus-overlayfs: mount overlay on {}: {e}", req.target);
        std::process::exit(1);
    }
}
