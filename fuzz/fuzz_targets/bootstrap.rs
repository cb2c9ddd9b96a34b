//! Fuzz the bootstrap parser: open (v5 or v6) and exercise every read API on the whole tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rafs_virtiofsd::rafs::RafsImage;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = RafsImage::from_bytes(data.to_vec()) {
        rafs_virtiofsd::rafs::manifest::exercise_all(&img);
    }
});
