//! Replays fuzz/regressions/<target>/* (inputs that once crashed a fuzz target, see
//! hack/fuzz.sh) and the fixtures through the fuzz harnesses: each must return cleanly.

use std::path::Path;

use rafs_virtiofsd::rafs::manifest::{exercise_all, exercise_blob};
use rafs_virtiofsd::rafs::RafsImage;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if e.path().is_file() {
                v.push((
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn bootstrap_regressions() {
    for (name, data) in inputs("bootstrap") {
        eprintln!("replaying {name}");
        if let Ok(img) = RafsImage::from_bytes(data) {
            exercise_all(&img);
        }
    }
}

#[test]
fn ci_toc_regressions() {
    for (name, data) in inputs("ci_toc") {
        eprintln!("replaying {name}");
        exercise_blob(&data);
    }
}

#[test]
fn ci_toc_harness_on_fixture_blobs() {
    // The harness on real per-layer blobs reaches the inlined bootstraps and ci arrays.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/v6-layers-merged");
    let img = RafsImage::open(&dir.join("image.boot")).unwrap();
    let (_, _, _, entries) = img.v6_tables().unwrap();
    for (e, b) in entries.iter().zip(img.blobs()) {
        let mut data = e.to_bytes();
        data.extend_from_slice(&std::fs::read(dir.join("blobs").join(&b.blob_id)).unwrap());
        exercise_blob(&data);
        for cut in [1usize, 100, 700, 5000] {
            exercise_blob(&data[..data.len().saturating_sub(cut)]);
        }
    }
}
