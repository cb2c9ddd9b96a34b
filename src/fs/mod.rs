//! FUSE filesystems: RAFS, passthrough, and their composition.
