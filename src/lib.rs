//! rafs-virtiofsd: a vhost-user-fs daemon that serves a pseudo tree of passthrough and
//! Nydus RAFS filesystems to VMs.
//!
//! Modules, one concern each (see docs/architecture.md):
//! - [`rafs`]: the RAFS v5/v6 on-disk format: reader and builder.
//! - [`storage`]: blob backends, the host blob cache, chunk decompression and verification.
//! - [`config`]: nydusd-compatible configuration (v1 and v2).
//! - [`fs`]: FUSE filesystems: RAFS, passthrough and their composition.
//! - [`vhost_user`]: the vhost-user-fs device.
//! - [`api`]: the nydusd-compatible HTTP API on a unix socket.
//! - [`overlay_helper`]: the `nydus-overlayfs` mount helper.
//! - [`sandbox`]: least privilege: capabilities, no_new_privs, seccomp, mount namespace.
//! - [`procfs`]: the host's `/proc`, opened once, so it stays reachable after a chroot.
//! - [`thread_class`]: which kind of work a thread does, for the sandbox's per-class filters.
//! - [`daemon`]: process wiring, signals and the CLI's run loops.

pub mod api;
pub mod config;
pub mod convert;
pub mod daemon;
pub mod fs;
pub mod fusedev;
pub mod overlay_helper;
pub mod procfs;
pub mod rafs;
pub mod sandbox;
pub mod storage;
pub mod thread_class;
pub mod vhost_user;
