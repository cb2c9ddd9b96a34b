//! `nydus-overlayfs overlay TARGET -o OPTIONS`: the mount.fuse helper for rootfs mounts of type
//! `fuse.nydus-overlayfs`. Drops Kata-only options and mounts a kernel overlay.

use rafs_virtiofsd::overlay_helper::{mount_overlay, parse_args, HelperError};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let req = match parse_args(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nydus-overlayfs: {e}");
            if e == HelperError::Usage {
                eprintln!("mounts an overlay, dropping extraoption= and io.katacontainers.volume= options");
            }
            std::process::exit(1);
        }
    };
    if let Err(e) = mount_overlay(&req) {
        eprintln!("nydus-overlayfs: mount overlay on {}: {e}", req.target);
        std::process::exit(1);
    }
}
