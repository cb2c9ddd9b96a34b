//! Guest tests of `rafs-virtiofsd`: a real VM (QEMU q35 + the Debian cloud kernel + a busybox
//! initramfs) mounts the daemon's virtio-fs device and checks RAFS images, overlayfs on top of
//! them, runtime API mounts, VMM restarts and error handling. See guest-tests/harness/mod.rs.

mod harness;
#[path = "../tests/common/posix.rs"]
mod posix;

use harness::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

/// The tree mktree.py makes for the "small" fixtures (same seed and flags as upstream's build).
fn small_tree(dir: &Path) {
    mktree(
        dir,
        2,
        &["--big", "1", "--files", "150", "--chunk", "65536"],
    );
}

/// (a)+(b): every file's sha256, mode, owner, size, mtime, xattrs, symlink target and hard-link
/// group seen in the guest equals the source tree, for an image built by our `rafs-image` and
/// for upstream-built fixtures (v6, v5 and a merged two-layer image).
#[test]
fn guest_reads_rafs_images_identical_to_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let (boot, blobs) = build_image(&src, &tmp.path().join("img"));
    let daemon = Daemon::start(&[]);
    daemon.mount(
        "/rafs/built/lowerdir",
        "rafs",
        &boot,
        &localfs_config(&blobs),
    );
    let mut workload = String::from("rv_manifest built $RV_MNT/rafs/built/lowerdir\n");
    let mut expected = vec![("built".to_string(), host_manifest(&src, &[]))];
    for (key, name) in [
        ("v6", "v6-zstd-64k-base"),
        ("v5", "v5-zstd-64k"),
        ("merged", "v6-layers-merged"),
    ] {
        let fx = fixture(name);
        daemon.mount(
            &format!("/rafs/{key}/lowerdir"),
            "rafs",
            &fx.join("image.boot"),
            &localfs_config(&fx.join("blobs")),
        );
        let (manifest, flags) = fixture_manifest(name);
        workload.push_str(&format!(
            "rv_manifest {key} $RV_MNT/rafs/{key}/lowerdir {}\n",
            flags.join(" ")
        ));
        expected.push((key.to_string(), manifest));
    }
    let run = run_vm(&VmConfig::new(Some(&daemon.sock), &workload), |_| false);
    run.assert_ok(&[]);
    for (key, want) in &expected {
        let (mut want, mut got) = (want.clone(), run.manifest(key).to_vec());
        if key != "built" {
            // Upstream nydus-image stores 0 as the root dir's mtime for directory sources,
            // while the stored manifests carry the source dir's: blind that one field.
            blind_root_mtime(&mut want);
            blind_root_mtime(&mut got);
        }
        assert_manifests_eq(&format!("image `{key}`"), &want, &got);
    }
}

/// Replaces the mtime field of the root (".") line with "-".
fn blind_root_mtime(m: &mut [String]) {
    for l in m.iter_mut() {
        if l.starts_with(". d ") {
            let mut f: Vec<&str> = l.split(' ').collect();
            f[5] = "-";
            *l = f.join(" ");
        }
    }
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 65536];
    // SAFETY: p and n are NUL-terminated; buf is valid for buf.len() bytes.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// True if `p` is an overlayfs whiteout: a 0:0 character device.
fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// (c): the guest kernel's overlayfs stacks a RAFS lower under a passthrough upper (the Kata
/// layout). The guest creates, modifies, deletes (whiteout), renames and sets an xattr; the
/// host's upper dir then holds exactly those changes.
#[test]
fn guest_overlay_on_rafs_lower_writes_exactly_the_changes_to_upper() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let (boot, blobs) = build_image(&src, &tmp.path().join("img"));
    let share = tmp.path().join("share");
    let upper = share.join("c1/snapshotdir/fs");
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(share.join("c1/snapshotdir/work")).unwrap();
    let daemon = Daemon::start(&[]);
    daemon.mount("/containers", "passthrough_fs", &share, "");
    daemon.mount("/rafs/c1/lowerdir", "rafs", &boot, &localfs_config(&blobs));
    let workload = r#"
S=$RV_MNT/containers/c1/snapshotdir
mkdir -p /ov
rv_check overlay-mount mount -t overlay overlay -o lowerdir=$RV_MNT/rafs/c1/lowerdir,upperdir=$S/fs,workdir=$S/work,index=off /ov
rv_check lower-visible test -f /ov/big.bin
rv_check create sh -c 'echo created > /ov/created.txt'
rv_check modify sh -c 'echo appended >> /ov/.hidden'
rv_check delete rm /ov/-dash
rv_check rename mv "/ov/with space" /ov/renamed
rv_check setxattr rvhelper setxattr /ov/d00 user.rv 00ff68656c6c6f
rv_check mkdir mkdir /ov/newdir
rv_check view-created sh -c '[ "$(cat /ov/created.txt)" = created ]'
rv_check view-deleted sh -c '[ ! -e /ov/-dash ]'
rv_check view-renamed sh -c '[ ! -e "/ov/with space" ] && [ "$(cat /ov/renamed)" = "with space" ]'
rv_check view-xattr sh -c '[ "$(rvhelper getxattr /ov/d00 user.rv)" = 00ff68656c6c6f ]'
rv_data hidden "$(rvhelper sha256 /ov/.hidden)"
rv_check overlay-umount umount /ov
"#;
    let run = run_vm(&VmConfig::new(Some(&daemon.sock), workload), |_| false);
    run.assert_ok(&[
        "overlay-mount",
        "create",
        "modify",
        "delete",
        "rename",
        "setxattr",
    ]);

    // Exactly these names in the upper dir (top level), nothing else.
    let mut names: Vec<String> = fs::read_dir(&upper)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want = vec![
        ".hidden",
        "-dash",
        "created.txt",
        "d00",
        "newdir",
        "renamed",
        "with space",
    ];
    want.sort();
    assert_eq!(names, want, "entries of the upper dir");
    assert_eq!(fs::read(upper.join("created.txt")).unwrap(), b"created\n");
    let mut hidden = fs::read(src.join(".hidden")).unwrap();
    hidden.extend_from_slice(b"appended\n");
    assert_eq!(
        fs::read(upper.join(".hidden")).unwrap(),
        hidden,
        "modified file copied up"
    );
    {
        use sha2::Digest;
        assert_eq!(
            run.data("hidden"),
            hex::encode(sha2::Sha256::digest(&hidden))
        );
    }
    assert!(
        is_whiteout(&upper.join("-dash")),
        "deleted lower file is a whiteout"
    );
    assert!(
        is_whiteout(&upper.join("with space")),
        "renamed-away lower file is a whiteout"
    );
    assert_eq!(fs::read(upper.join("renamed")).unwrap(), b"with space");
    assert!(upper.join("newdir").is_dir());
    assert_eq!(
        getxattr(&upper.join("d00"), "user.rv").as_deref(),
        Some(&b"\x00\xffhello"[..]),
        "xattr set through the overlay reached the host"
    );
    // Copy-up kept the lower file's owner and mode.
    let (um, sm) = (
        fs::metadata(upper.join(".hidden")).unwrap(),
        fs::metadata(src.join(".hidden")).unwrap(),
    );
    assert_eq!(
        (um.uid(), um.gid(), um.mode()),
        (sm.uid(), sm.gid(), sm.mode())
    );
}

/// (d): a second RAFS image mounted through the API while the guest runs (percent-encoded
/// mountpoint, as runtime-rs sends it) is readable at once; after DELETE (raw mountpoint, as
/// the Go runtime sends it) the guest sees an empty directory, not an error.
#[test]
fn api_mount_and_umount_while_guest_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let (boot, blobs) = build_image(&src, &tmp.path().join("img"));
    let fx = fixture("v6-zstd-64k-base");
    let daemon = Daemon::start(&[]);
    daemon.mount(
        "/rafs/first/lowerdir",
        "rafs",
        &boot,
        &localfs_config(&blobs),
    );
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(fs::read(src.join("big.bin")).unwrap()))
    };
    let workload = r#"
rv_data first "$(rvhelper sha256 $RV_MNT/rafs/first/lowerdir/big.bin)"
if rv_sync mount-second; then
  rv_data second "$(rvhelper sha256 $RV_MNT/rafs/second/lowerdir/big.bin)"
  rv_check second-listed sh -c 'ls $RV_MNT/rafs/second/lowerdir | grep -q "^many$"'
else
  rv_fail mount-second "host could not mount"
fi
if rv_sync umount-second; then
  echo 2 > /proc/sys/vm/drop_caches
  rv_check second-gone-empty sh -c 'd=$RV_MNT/rafs/second/lowerdir; [ -d $d ] && [ -z "$(ls -A $d)" ]'
else
  rv_fail umount-second "host could not unmount"
fi
rv_check first-still-there rvhelper sha256 $RV_MNT/rafs/first/lowerdir/big.bin
"#;
    let mut log = Vec::new();
    let run = run_vm(&VmConfig::new(Some(&daemon.sock), workload), |step| {
        let cfg = localfs_config(&fx.join("blobs"));
        match step {
            "mount-second" => {
                let body = serde_json::json!({
                    "fs_type": "rafs",
                    "source": fx.join("image.boot").to_string_lossy(),
                    "config": cfg,
                })
                .to_string();
                let r = daemon.api(
                    "POST",
                    "/api/v1/mount?mountpoint=%2Frafs%2Fsecond%2Flowerdir",
                    Some(&body),
                );
                log.push(format!("mount: {r:?}"));
                matches!(r, Ok((204, _)))
            }
            "umount-second" => {
                let st = daemon.umount("/rafs/second/lowerdir");
                log.push(format!("umount: {st}"));
                st == 204
            }
            _ => false,
        }
    });
    run.assert_ok(&["second-listed", "second-gone-empty", "first-still-there"]);
    let fx_big = fixture_manifest("v6-zstd-64k-base")
        .0
        .into_iter()
        .find(|l| l.starts_with("big.bin "))
        .expect("big.bin in manifest");
    let prefix = fx_big.split(' ').nth(9).unwrap().to_string();
    assert!(
        run.data("second").starts_with(&prefix),
        "second image's big.bin: {} vs manifest {prefix}; api: {log:?}",
        run.data("second")
    );
    assert_eq!(run.data("second").len(), 64);
    assert_eq!(
        run.data("first"),
        want,
        "first image read before the runtime mount"
    );
}

/// (e): after the VMM exits, a new VMM connects to the same daemon process and sees what the
/// first guest wrote (the sandbox share is mounted before the VMM starts, as Kata does).
#[test]
fn vmm_restart_reconnects_to_the_same_daemon() {
    let share = tempfile::tempdir().unwrap();
    fs::write(share.path().join("from-host.txt"), b"host data\n").unwrap();
    let mut daemon = Daemon::start(&[]);
    daemon.mount("/containers", "passthrough_fs", share.path(), "");
    let first = run_vm(
        &VmConfig::new(
            Some(&daemon.sock),
            r#"
rv_check read-host sh -c '[ "$(cat $RV_MNT/containers/from-host.txt)" = "host data" ]'
rv_check write sh -c 'echo "boot one" > $RV_MNT/containers/from-guest.txt && sync'
"#,
        ),
        |_| false,
    );
    first.assert_ok(&["read-host", "write"]);
    assert!(
        daemon.is_running(),
        "daemon died with the first VMM:\n{}",
        daemon.output()
    );
    assert_eq!(
        fs::read(share.path().join("from-guest.txt")).unwrap(),
        b"boot one\n"
    );
    let second = run_vm(
        &VmConfig::new(
            Some(&daemon.sock),
            r#"rv_check read-previous sh -c '[ "$(cat $RV_MNT/containers/from-guest.txt)" = "boot one" ]'"#,
        ),
        |_| false,
    );
    second.assert_ok(&["read-previous"]);
    assert!(daemon.is_running());
    let st = daemon.stop(Duration::from_secs(5));
    assert!(st.is_some(), "daemon did not exit within 5 s of SIGTERM");
}

/// The passthrough share meets what the guest kernel's overlayfs needs of a remote upper fs
/// (trusted.* xattrs, RENAME_WHITEOUT, O_TMPFILE, RENAME_EXCHANGE, whiteout mknod), and an
/// overlay with lower and upper both on the share works; the host sees the changes.
#[test]
fn passthrough_share_serves_as_guest_overlay_upper() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path();
    for d in ["lower", "upper", "work", "t"] {
        fs::create_dir_all(share.join(d)).unwrap();
    }
    fs::write(share.join("lower/keep.txt"), b"keep\n").unwrap();
    fs::write(share.join("lower/gone.txt"), b"gone\n").unwrap();
    let daemon = Daemon::start(&[]);
    daemon.mount("/containers", "passthrough_fs", share, "");
    let workload = r#"
C=$RV_MNT/containers
rv_check trusted-xattr sh -c "echo x > $C/t/x && rvhelper setxattr $C/t/x trusted.overlay.opaque 79 && [ \"\$(rvhelper getxattr $C/t/x trusted.overlay.opaque)\" = 79 ]"
rv_check binary-xattr sh -c "rvhelper setxattr $C/t/x user.bin 00ff00 && [ \"\$(rvhelper getxattr $C/t/x user.bin)\" = 00ff00 ]"
rv_check rename-whiteout sh -c "echo y > $C/t/y && rvhelper rename-whiteout $C/t/y $C/t/y2 && [ -c $C/t/y ]"
rv_check rename-exchange sh -c "echo a > $C/t/a && echo b > $C/t/b && rvhelper rename-exchange $C/t/a $C/t/b && [ \"\$(cat $C/t/a)\" = b ]"
rv_check mknod-whiteout mknod $C/t/wh c 0 0
mkdir -p /ov
rv_check overlay mount -t overlay overlay -o lowerdir=$C/lower,upperdir=$C/upper,workdir=$C/work,index=off /ov
rv_check overlay-write sh -c 'echo new > /ov/new.txt && echo more >> /ov/keep.txt && rm /ov/gone.txt'
rv_check overlay-view sh -c '[ ! -e /ov/gone.txt ] && [ "$(cat /ov/new.txt)" = new ]'
rv_check overlay-umount umount /ov
"#;
    let run = run_vm(&VmConfig::new(Some(&daemon.sock), workload), |_| false);
    run.assert_ok(&[
        "trusted-xattr",
        "binary-xattr",
        "rename-whiteout",
        "rename-exchange",
        "mknod-whiteout",
        "overlay",
        "overlay-write",
        "overlay-view",
    ]);
    assert_eq!(
        getxattr(&share.join("t/x"), "user.bin").as_deref(),
        Some(&[0u8, 0xff, 0][..])
    );
    assert!(is_whiteout(&share.join("t/y")) && is_whiteout(&share.join("t/wh")));
    assert_eq!(fs::read(share.join("upper/new.txt")).unwrap(), b"new\n");
    assert_eq!(
        fs::read(share.join("upper/keep.txt")).unwrap(),
        b"keep\nmore\n"
    );
    assert!(
        is_whiteout(&share.join("upper/gone.txt")),
        "whiteout for the deleted lower file"
    );
    assert_eq!(
        fs::read(share.join("lower/keep.txt")).unwrap(),
        b"keep\n",
        "lower untouched"
    );
}

/// (f): reading a RAFS file whose blob is missing gives EIO in the guest; metadata still works
/// and the daemon stays up and keeps answering its API.
#[test]
fn missing_blob_gives_eio_and_daemon_survives() {
    let fx = fixture("v6-zstd-64k-base");
    let empty = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&[]);
    daemon.mount(
        "/rafs/broken/lowerdir",
        "rafs",
        &fx.join("image.boot"),
        &localfs_config(empty.path()),
    );
    let workload = r#"
D=$RV_MNT/rafs/broken/lowerdir
rv_check metadata-readable sh -c "ls $D | grep -q '^big.bin$'"
rv_data read "$(rvhelper read $D/big.bin)"
rv_check still-serving sh -c "ls $D/many | grep -q f00000"
"#;
    let run = run_vm(&VmConfig::new(Some(&daemon.sock), workload), |_| false);
    run.assert_ok(&["metadata-readable", "still-serving"]);
    assert_eq!(
        run.data("read"),
        "errno=5",
        "read of a file whose blob is missing"
    );
    assert!(daemon.is_running(), "daemon died:\n{}", daemon.output());
    let (st, body) = daemon.api("GET", "/api/v1/daemon", None).expect("API");
    assert_eq!(st, 200, "{body}");
}

/// O_TMPFILE on the passthrough share (overlayfs uses it for copy-up when available).
/// The daemon serves FUSE_TMPFILE itself (src/fs/dispatch.rs into the passthrough); the
/// guest writes the unnamed file and links it in with linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW).
#[test]
fn passthrough_supports_o_tmpfile() {
    let share = tempfile::tempdir().unwrap();
    let h = share.path();
    for d in ["lower", "upper", "work"] {
        fs::create_dir_all(h.join(d)).unwrap();
    }
    fs::write(h.join("lower/big.txt"), b"lower data\n").unwrap();
    let daemon = Daemon::start(&[]);
    daemon.mount("/containers", "passthrough_fs", h, "");
    // With tmpfile support the guest's overlayfs copies up through O_TMPFILE in the work dir
    // instead of printing "upper fs does not support tmpfile" at mount.
    let workload = r#"
C=$RV_MNT/containers
rv_check tmpfile rvhelper tmpfile $C linked "tmp data"
mkdir -p /ov
rv_check overlay mount -t overlay overlay -o lowerdir=$C/lower,upperdir=$C/upper,workdir=$C/work,index=off /ov
rv_check overlay-uses-tmpfile sh -c '! dmesg | grep -q "does not support tmpfile"'
rv_check copy-up sh -c 'echo more >> /ov/big.txt && [ "$(cat /ov/big.txt)" = "$(printf "lower data\nmore")" ]'
rv_check overlay-umount umount /ov
"#;
    let run = run_vm(&VmConfig::new(Some(&daemon.sock), workload), |_| false);
    run.assert_ok(&[
        "tmpfile",
        "overlay",
        "overlay-uses-tmpfile",
        "copy-up",
        "overlay-umount",
    ]);
    assert_eq!(fs::read(h.join("linked")).unwrap(), b"tmp data");
    assert_eq!(
        fs::read(h.join("upper/big.txt")).unwrap(),
        b"lower data\nmore\n"
    );
    assert_eq!(fs::read(h.join("lower/big.txt")).unwrap(), b"lower data\n");
    // Nothing left behind in the work dir (its "work" subdirectory is overlayfs's own).
    let leftovers: Vec<_> = fs::read_dir(h.join("work/work"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "work dir leftovers: {leftovers:?}");
}

/// POSIX conformance over virtio-fs: `rvhelper posix` runs the same checks as
/// tests/posix_conformance.rs (ownership, setgid inheritance, EACCES/EPERM rules, killpriv,
/// sticky dirs, default ACLs, rename flags, unlinked-but-open files, O_TMPFILE) in the guest
/// as root and as two non-root users with their own gids, on a passthrough share. The
/// expected lines come from running the same helper on the host's ext4 in this test.
#[test]
fn guest_passthrough_posix_matches_host_ext4() {
    let bin = tempfile::tempdir().unwrap();
    let helper = posix::build_helper(bin.path());
    // Both trees must be reachable by the non-root users (tempdirs are 0700).
    let open_dir = |d: &Path| {
        fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap()
    };
    let reference = tempfile::tempdir_in("/var/tmp").unwrap();
    open_dir(reference.path());
    let r = reference.path().join("t");
    fs::create_dir(&r).unwrap();
    let want = posix::run_all(&helper, &r);

    let share = tempfile::tempdir_in("/var/tmp").unwrap();
    open_dir(share.path());
    fs::create_dir(share.path().join("t")).unwrap();
    let daemon = Daemon::start(&[]);
    daemon.mount("/containers", "passthrough_fs", share.path(), "");
    let mut workload =
        String::from("C=$RV_MNT/containers\nrv_check setup rvhelper posix setup $C/t\n");
    for (u, g) in posix::USERS {
        let args = posix::run_args("$C/t", u, g);
        workload.push_str(&format!(
            "rv_check run-{u} sh -c \"rvhelper {args} > $C/out-{u}.txt\"\n"
        ));
    }
    let vm = run_vm(&VmConfig::new(Some(&daemon.sock), &workload), |_| false);
    vm.assert_ok(&["setup", "run-0", "run-1001", "run-1002"]);
    let got: Vec<String> = posix::USERS
        .iter()
        .map(|(u, _)| fs::read_to_string(share.path().join(format!("out-{u}.txt"))).unwrap())
        .collect();
    posix::assert_same(&want, &got, "guest");
}
