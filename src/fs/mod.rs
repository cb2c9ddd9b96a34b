//! FUSE filesystems: RAFS, passthrough, and their composition.
pub mod dispatch;
pub mod mountroot;
pub mod passthrough;
pub mod rafs;
pub mod vfs;
