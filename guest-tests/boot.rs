//! Guest bring-up tests: the initramfs, /init, the marker protocol and the static helper,
//! without virtio-fs. They need qemu-system-x86_64, a kernel in /boot and busybox-static
//! (hack/setup.sh installs them).

mod harness;

use harness::*;
use std::process::Command;

/// One boot checks: modules load (virtio-pci, fuse, virtiofs, overlay), the static helper runs
/// and hashes like the host, the host<->guest sync channel works, data reaches the host, and a
/// failing guest command is reported as a failure (never silently passed).
#[test]
fn guest_boots_runs_workload_and_reports_failures() {
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&payload))
    };
    let mut cfg = VmConfig::new(
        None,
        r#"
rv_check modules sh -c 'for m in virtio_pci fuse virtiofs overlay; do grep -q "^$m " /proc/modules || exit 1; done'
rv_data sha "$(rvhelper sha256 /rv/payload.bin)"
rv_check tmpfs-xattr sh -c 'echo x > /tmp/f && rvhelper setxattr /tmp/f user.k 00ff10 2>/dev/null || rvhelper setxattr /tmp/f trusted.k 00ff10'
rv_data xattr "$(rvhelper getxattr /tmp/f trusted.k 2>/dev/null || rvhelper getxattr /tmp/f user.k)"
rv_check rename-exchange sh -c 'echo a > /tmp/a && echo b > /tmp/b && rvhelper rename-exchange /tmp/a /tmp/b && [ "$(cat /tmp/a)" = b ] && [ "$(cat /tmp/b)" = a ]'
rv_check sync sh -c '. /rv/lib.sh; rv_sync step-one'
rv_sync step-refused && rv_fail refused-sync "host refused but guest went on"
rv_check expected-failure false
"#,
    );
    cfg.files
        .push(("rv/payload.bin".into(), payload.clone(), 0o644));
    let mut steps = Vec::new();
    let run = run_vm(&cfg, |s| {
        steps.push(s.to_string());
        s == "step-one"
    });
    assert_eq!(
        steps,
        ["step-one", "step-refused"],
        "sync steps seen by the host"
    );
    assert_eq!(run.data("sha"), want, "guest sha256 of the payload");
    assert_eq!(
        run.data("xattr"),
        "00ff10",
        "binary xattr round trip in the guest"
    );
    for c in ["modules", "tmpfs-xattr", "rename-exchange", "sync"] {
        assert!(
            run.ok.iter().any(|o| o == c),
            "check {c} did not pass:\n{}",
            run.tail(40)
        );
    }
    assert_eq!(
        run.fails,
        ["expected-failure rc=1"],
        "only the deliberate failure fails"
    );
    assert_eq!(run.exit, Some(1), "workload exit = number of failed checks");
}

/// The guest manifest helper prints exactly what shared/tools/treemanifest.py prints (after
/// the harness decodes its hex paths), on a mktree.py tree full of edge cases. Runs on the host.
#[test]
fn rvhelper_manifest_matches_treemanifest() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("rvhelper");
    run_cmd(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(repo_root().join("hack/guest/rvhelper.c")),
    );
    let tree = dir.path().join("tree");
    mktree(
        &tree,
        2,
        &["--big", "1", "--files", "150", "--chunk", "65536"],
    );
    let host = host_manifest(&tree, &[]);
    let out = run_cmd(
        Command::new(&bin)
            .arg("manifest")
            .arg(&tree)
            .args(["--prefix", "@@RV:M t "]),
    );
    let guest = parse_console(&out).manifest("t").to_vec();
    assert!(host.len() > 200, "tree too small: {}", host.len());
    assert_manifests_eq("rvhelper vs treemanifest.py", &host, &guest);
}

/// Reference run against upstream virtiofsd (path in `$RV_UPSTREAM_VIRTIOFSD`; skipped
/// without it): proves the harness's vhost-user-fs plumbing and that this guest kernel can use
/// a virtio-fs passthrough as an overlayfs upper, independently of our daemon.
#[test]
fn guest_uses_upstream_virtiofsd_share_as_overlay_upper() {
    let Some(bin) = std::env::var_os("RV_UPSTREAM_VIRTIOFSD") else {
        skip("no upstream virtiofsd (set RV_UPSTREAM_VIRTIOFSD or put virtiofsd on PATH)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir_all(share.join(d)).unwrap();
    }
    std::fs::write(share.join("lower/hello.txt"), b"hello from the host\n").unwrap();
    let sock = tmp.path().join("vfsd.sock");
    let child = Command::new(bin)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&share)
        .args([
            "--sandbox",
            "none",
            "--xattr",
            "--cache",
            "auto",
            "--modcaps=+sys_admin",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn upstream virtiofsd");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < end,
            "virtiofsd socket did not appear"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let workload = r#"
rv_check read sh -c '[ "$(cat $RV_MNT/lower/hello.txt)" = "hello from the host" ]'
rv_check trusted-xattr sh -c 'echo x > $RV_MNT/work/x && rvhelper setxattr $RV_MNT/work/x trusted.overlay.t 30'
rv_check rename-whiteout sh -c 'echo y > $RV_MNT/work/y && rvhelper rename-whiteout $RV_MNT/work/y $RV_MNT/work/z'
rv_check cleanup rm -f $RV_MNT/work/x $RV_MNT/work/y $RV_MNT/work/z
mkdir -p /ov
rv_check overlay mount -t overlay overlay -o lowerdir=$RV_MNT/lower,upperdir=$RV_MNT/upper,workdir=$RV_MNT/work,index=off /ov
rv_check write sh -c 'echo from-guest > /ov/new.txt && rm /ov/hello.txt'
rv_check umount umount /ov
dmesg | grep -i overlay
"#;
    let run = run_vm(&VmConfig::new(Some(&sock), workload), |_| false);
    run.assert_ok(&["read", "overlay", "write", "umount"]);
    assert_eq!(
        std::fs::read(share.join("upper/new.txt")).unwrap(),
        b"from-guest\n"
    );
    let wh = std::fs::symlink_metadata(share.join("upper/hello.txt")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout in upper"
    );
}

/// A guest that never finishes is killed at the hard timeout and the test fails with the last
/// console lines (here: the line printed just before the hang).
#[test]
fn hung_guest_is_killed_at_the_timeout() {
    let mut cfg = VmConfig::new(None, "echo before-the-hang\nsleep 1000\n");
    cfg.timeout = std::time::Duration::from_secs(45);
    let t0 = std::time::Instant::now();
    let err = std::panic::catch_unwind(|| run_vm(&cfg, |_| false)).expect_err("run_vm must fail");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("guest did not finish within 45s"), "{msg}");
    assert!(
        msg.contains("before-the-hang"),
        "last console lines in the message: {msg}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(90),
        "killed promptly"
    );
}
