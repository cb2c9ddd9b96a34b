//! FUSE filesystems: RAFS, passthrough, and their composition.
pub mod passthrough;
pub mod vfs;
