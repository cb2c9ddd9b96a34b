//! Fuzz the ci-array, blob.meta, ToC and inlined-bootstrap parsers.
//! Input: a 256-byte v6 blob-table entry, then the blob bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rafs_virtiofsd::rafs::manifest::exercise_blob(data);
});
