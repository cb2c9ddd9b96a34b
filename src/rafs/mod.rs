//! The RAFS v5/v6 on-disk format: an mmap-based, on-demand reader ([`RafsImage`]) and the
//! builder behind `rafs-image`.
//!
//! See docs/format.md for the design and ../shared/specs/RAFS-FORMAT.md for the format facts.

pub mod builder;
pub mod ci;
pub mod codec;
pub mod error;
pub mod image;
pub mod layout;
pub mod manifest;
pub mod toc;
pub mod types;
pub mod v5;
pub mod v6;

pub use error::RafsError;
pub use image::RafsImage;
pub use types::*;
