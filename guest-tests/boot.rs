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
