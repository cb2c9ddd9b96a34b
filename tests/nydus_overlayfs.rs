//! nydus-overlayfs on the host: a real overlay mount through the binary, flags checked in
//! /proc/self/mountinfo, and usage errors.

use std::fs;
use std::path::Path;
use std::process::Command;

use rafs_virtiofsd::overlay_helper::{encode_extra_option, ExtraOption};

const BIN: &str = env!("CARGO_BIN_EXE_nydus-overlayfs");

fn mount_opts_of(target: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let t = target.to_str().unwrap();
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&t)).then(|| f[5].to_string())
    })
}

fn umount(target: &Path) {
    let c = std::ffi::CString::new(target.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

#[test]
fn mounts_overlay_dropping_kata_options() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir(p(d)).unwrap();
    }
    fs::write(p("lower/from-lower"), b"lower\n").unwrap();
    let eo = encode_extra_option(&ExtraOption {
        source: "/x/image.boot".into(),
        config: "{}".into(),
        snapshotdir: "/x/snap".into(),
        fs_version: "v6".into(),
    });
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},{eo},io.katacontainers.volume=abc,nodev,index=off,dev,suid,noexec",
        p("lower").display(),
        p("upper").display(),
        p("work").display()
    );
    let out = Command::new(BIN)
        .args(["overlay", p("merged").to_str().unwrap(), "-o", &opts])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mopts = mount_opts_of(&p("merged"));
    let result = std::panic::catch_unwind(|| {
        let mopts = mopts.clone().expect("overlay is not in mountinfo");
        // `nodev` then `dev`: dev wins; `noexec` stays; `suid` is the default.
        assert!(!mopts.split(',').any(|o| o == "nodev"), "{mopts}");
        assert!(mopts.split(',').any(|o| o == "noexec"), "{mopts}");
        assert!(!mopts.split(',').any(|o| o == "nosuid"), "{mopts}");
        assert_eq!(fs::read(p("merged/from-lower")).unwrap(), b"lower\n");
        fs::write(p("merged/new"), b"upper\n").unwrap();
        assert_eq!(fs::read(p("upper/new")).unwrap(), b"upper\n");
    });
    umount(&p("merged"));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn usage_errors_exit_non_zero() {
    let cases: [&[&str]; 5] = [
        &[],
        &["overlay", "/tmp"],
        &["ext4", "/tmp", "-o", "lowerdir=/a"],
        &["overlay", "", "-o", "lowerdir=/a"],
        &["overlay", "/tmp", "-o", "extraoption=abc"],
    ];
    for args in cases {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "args {args:?}");
        assert!(!out.stderr.is_empty(), "args {args:?}: no message");
    }
}
