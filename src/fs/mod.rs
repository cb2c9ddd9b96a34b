//! FUSE filesystems: RAFS, passthrough, and their composition.
pub mod mountroot;
pub mod passthrough;
pub mod rafs;
pub mod tmpfile;
pub mod vfs;
