//! The RAFS v5/v6 on-disk format: an mmap-based, on-demand reader ([`RafsImage`]) and the
//! builder behind `rafs-image`.
//!
//! See docs/format.md for the design and ../shared/specs/RAFS-FORMAT.md for the format facts.

pub mod builder;
pub mod codec;
pub mod error;
pub mod layout;
pub mod types;

pub use error::RafsError;
pub use types::*;
