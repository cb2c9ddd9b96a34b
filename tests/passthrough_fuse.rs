//! The passthrough filesystem as an overlayfs upper/work dir, through FUSE mode on the
//! host (needs root and /dev/fuse), plus containment checks against the filesystem itself.

mod support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use rafs_virtiofsd::fs::passthrough::{Config, PassthroughFs};
use rafs_virtiofsd::fs::vfs::{FsTree, FsType};
use support::*;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn setxattr(p: &Path, name: &str, val: &[u8]) -> std::io::Result<()> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r =
        unsafe { libc::lsetxattr(c(p).as_ptr(), n.as_ptr(), val.as_ptr().cast(), val.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getxattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a writable buffer of the given length.
    let r = unsafe {
        libc::lgetxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> std::io::Result<()> {
    // SAFETY: valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(a).as_ptr(),
            libc::AT_FDCWD,
            c(b).as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn is_whiteout(p: &Path) -> bool {
    let m = std::fs::symlink_metadata(p).unwrap();
    m.file_type().is_char_device() && m.rdev() == 0
}

#[test]
fn overlay_upper_operations_reach_the_host() {
    let share = tempfile::tempdir().unwrap();
    let h = share.path();
    let m = FuseMount::new(Some(h));

    // create / write / read / rename
    std::fs::write(m.p("a.txt"), b"hello").unwrap();
    assert_eq!(std::fs::read(h.join("a.txt")).unwrap(), b"hello");
    std::fs::create_dir(m.p("dir")).unwrap();
    std::fs::rename(m.p("a.txt"), m.p("dir/b.txt")).unwrap();
    assert_eq!(std::fs::read(h.join("dir/b.txt")).unwrap(), b"hello");
    assert!(!h.join("a.txt").exists());

    // xattrs, including overlayfs' trusted.overlay.*
    setxattr(&m.p("dir"), "trusted.overlay.opaque", b"y").unwrap();
    assert_eq!(
        getxattr(&h.join("dir"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    setxattr(&m.p("dir/b.txt"), "user.k", b"v").unwrap();
    assert_eq!(getxattr(&h.join("dir/b.txt"), "user.k").unwrap(), b"v");
    assert_eq!(getxattr(&m.p("dir/b.txt"), "user.k").unwrap(), b"v");

    // whiteout by mknod 0:0
    // SAFETY: valid path; creating a char device needs root, which these tests assume.
    let r = unsafe { libc::mknod(c(&m.p("wh")).as_ptr(), libc::S_IFCHR, 0) };
    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
    assert!(is_whiteout(&h.join("wh")));

    // RENAME_WHITEOUT: source becomes a whiteout
    std::fs::write(m.p("src"), b"1").unwrap();
    renameat2(&m.p("src"), &m.p("dst"), libc::RENAME_WHITEOUT).unwrap();
    assert_eq!(std::fs::read(h.join("dst")).unwrap(), b"1");
    assert!(is_whiteout(&h.join("src")));

    // RENAME_EXCHANGE
    std::fs::write(m.p("x"), b"X").unwrap();
    std::fs::write(m.p("y"), b"Y").unwrap();
    renameat2(&m.p("x"), &m.p("y"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(std::fs::read(h.join("x")).unwrap(), b"Y");
    assert_eq!(std::fs::read(h.join("y")).unwrap(), b"X");

    // symlinks are created as symlinks, not followed
    std::os::unix::fs::symlink("../../etc/passwd", m.p("ln")).unwrap();
    assert_eq!(
        std::fs::read_link(h.join("ln")).unwrap(),
        Path::new("../../etc/passwd")
    );

    // unlink / rmdir
    std::fs::remove_file(m.p("dir/b.txt")).unwrap();
    std::fs::remove_dir(m.p("dir")).unwrap();
    assert!(!h.join("dir").exists());
}

#[test]
fn api_mount_then_umount_leaves_empty_dir() {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("file"), b"data").unwrap();
    let m = FuseMount::new(None);
    let body = serde_json::json!({"fs_type":"passthrough_fs","source":share.path(),"config":""})
        .to_string();
    let r = http(
        &m.api,
        "POST",
        "/api/v1/mount?mountpoint=/rafs/c1/lowerdir",
        Some(&body),
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        std::fs::read(m.p("rafs/c1/lowerdir/file")).unwrap(),
        b"data"
    );
    let r = http(
        &m.api,
        "DELETE",
        "/api/v1/mount?mountpoint=/rafs/c1/lowerdir",
        None,
    );
    assert_eq!(r.status, 204);
    let entries: Vec<_> = std::fs::read_dir(m.p("rafs/c1/lowerdir"))
        .unwrap()
        .collect();
    assert!(
        entries.is_empty(),
        "expected an empty pseudo dir, got {entries:?}"
    );
}

/// Calls into the filesystem the way a hostile guest could, bypassing the kernel's own
/// path resolution.
#[test]
fn requests_cannot_escape_the_shared_dir() {
    let share = tempfile::tempdir().unwrap();
    let h = share.path();
    std::fs::create_dir(h.join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc", h.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../..", h.join("rel")).unwrap();
    std::os::unix::fs::symlink("/proc/self/root", h.join("magic")).unwrap();

    let fs = PassthroughFs::new(Config::new(h)).unwrap();
    fs.init(fuse_backend_rs::abi::fuse_abi::FsOptions::empty())
        .unwrap();
    let ctx = Context::default();
    let name = |s: &str| CString::new(s).unwrap();
    let root = 1u64;

    // ".." at the root is the root.
    let e = fs.lookup(&ctx, root, &name("..")).unwrap();
    let root_attr = fs.getattr(&ctx, root, None).unwrap().0;
    assert_eq!(e.attr.st_ino, root_attr.st_ino);
    // ".." from a subdirectory goes up to the root, not beyond.
    let sub = fs.lookup(&ctx, root, &name("sub")).unwrap();
    let up = fs.lookup(&ctx, sub.inode, &name("..")).unwrap();
    assert_eq!(up.attr.st_ino, root_attr.st_ino);
    let upup = fs.lookup(&ctx, up.inode, &name(".."));
    assert_eq!(upup.unwrap().attr.st_ino, root_attr.st_ino);

    // Symlinks (absolute, relative, /proc magic) are returned as symlinks and never
    // traversed by the daemon.
    for l in ["abs", "rel", "magic"] {
        let e = fs.lookup(&ctx, root, &name(l)).unwrap();
        assert_eq!(e.attr.st_mode & libc::S_IFMT, libc::S_IFLNK, "{l}");
        for child in ["passwd", "etc", ".."] {
            assert!(
                fs.lookup(&ctx, e.inode, &name(child)).is_err(),
                "lookup {child} under symlink {l} must fail"
            );
        }
        assert!(
            fs.open(&ctx, e.inode, libc::O_RDONLY as u32, 0).is_err(),
            "open {l}"
        );
        assert!(
            fs.create(
                &ctx,
                e.inode,
                &name("new"),
                fuse_backend_rs::abi::fuse_abi::CreateIn {
                    flags: libc::O_RDWR as u32,
                    mode: 0o644,
                    umask: 0,
                    fuse_flags: 0,
                }
            )
            .is_err(),
            "create under {l}"
        );
    }
    assert!(!Path::new("/etc/new").exists());
    assert!(!Path::new("/new").exists());

    // A FIFO or device node is never opened on the host (an open would block or reach a
    // device): the answer is immediate and an error.
    let fifo = h.join("fifo");
    let cfifo = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(cfifo.as_ptr(), 0o666) }, 0);
    let e = fs.lookup(&ctx, root, &name("fifo")).unwrap();
    for fl in [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR] {
        let r = fs.open(&ctx, e.inode, fl as u32, 0);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENXIO));
    }
    let null = fs.lookup(&ctx, root, &name("abs")).unwrap();
    assert!(fs.opendir(&ctx, null.inode, 0).is_err());
}

/// A host process swaps a directory of the share for a symlink to /etc, again and again,
/// while lookups walk through it: no lookup ever reaches a file outside the share.
#[test]
fn racing_dir_symlink_swaps_never_lead_outside() {
    let share = tempfile::tempdir().unwrap();
    let h = share.path().to_path_buf();
    std::fs::create_dir(h.join("d")).unwrap();
    std::fs::write(h.join("d/passwd"), b"inside").unwrap();
    let outside = std::fs::metadata("/etc/passwd").unwrap();
    let fs = PassthroughFs::new(Config::new(&h)).unwrap();
    fs.init(fuse_backend_rs::abi::fuse_abi::FsOptions::empty())
        .unwrap();
    let ctx = Context::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (h, stop) = (h.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // d -> d.real, symlink d -> /etc, then back.
                let _ = std::fs::rename(h.join("d"), h.join("d.real"));
                let _ = std::os::unix::fs::symlink("/etc", h.join("d"));
                let _ = std::fs::remove_file(h.join("d"));
                let _ = std::fs::rename(h.join("d.real"), h.join("d"));
                n += 1;
            }
            n
        })
    };
    let (mut inside, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let Ok(d) = fs.lookup(&ctx, 1, &CString::new("d").unwrap()) else {
            refused += 1;
            continue;
        };
        match fs.lookup(&ctx, d.inode, &CString::new("passwd").unwrap()) {
            Ok(e) => {
                assert!(
                    !(e.attr.st_ino == outside.ino() && e.attr.st_dev == outside.dev()),
                    "reached /etc/passwd"
                );
                inside += 1;
                fs.forget(&ctx, e.inode, 1);
            }
            Err(_) => refused += 1,
        }
        fs.forget(&ctx, d.inode, 1);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(
        swaps > 10 && inside > 0,
        "swaps {swaps}, inside {inside}, refused {refused}"
    );
}

#[test]
fn vfs_rejects_names_with_slashes() {
    let share = tempfile::tempdir().unwrap();
    std::fs::create_dir(share.path().join("d")).unwrap();
    let tree = FsTree::new();
    tree.mount(
        FsType::Passthrough,
        share.path().to_str().unwrap(),
        "",
        "/s",
    )
    .unwrap();
    let vfs = tree.vfs();
    let ctx = Context::default();
    vfs.init(fuse_backend_rs::abi::fuse_abi::FsOptions::empty())
        .unwrap();
    let s = vfs.lookup(&ctx, 1u64.into(), c"s").unwrap();
    let err = vfs.lookup(&ctx, s.inode.into(), c"d/../../..").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let err = vfs
        .mkdir(&ctx, s.inode.into(), c"..", 0o755, 0)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Looked-up inodes are remembered by file handle: walking many files grows the daemon's fd
/// count by at most its O_PATH fd cache (256 by default), whatever the number of inodes.
#[test]
fn walking_many_files_does_not_pin_fds() {
    let share = tempfile::tempdir().unwrap();
    for d in 0..20 {
        let dir = share.path().join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..200 {
            std::fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
    }
    let m = FuseMount::new(Some(share.path()));
    let pid = m.d.as_ref().unwrap().pid();
    let before = fd_count(pid);
    let mut n = 0;
    for d in 0..20 {
        for e in std::fs::read_dir(m.p(&format!("d{d}"))).unwrap() {
            std::fs::metadata(e.unwrap().path()).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 4000);
    let after = fd_count(pid);
    assert!(
        after < before + 256 + 50,
        "fd count grew from {before} to {after} after looking up {n} inodes"
    );
}

fn open_tmpfile(dir: &Path, extra: i32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | extra)
        .mode(0o640)
        .open(dir)
}

fn link_fd(f: &std::fs::File, to: &Path) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let proc = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
    // SAFETY: valid NUL-terminated paths; the return value is checked.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc.as_ptr(),
            libc::AT_FDCWD,
            c(to).as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn fsetxattr(f: &std::fs::File, name: &str, val: &[u8]) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let n = CString::new(name).unwrap();
    // SAFETY: valid fd, NUL-terminated name and a buffer of the given length.
    let r =
        unsafe { libc::fsetxattr(f.as_raw_fd(), n.as_ptr(), val.as_ptr().cast(), val.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn host_names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// O_TMPFILE (FUSE_TMPFILE): an unnamed file in the share, written, given an xattr, then
/// linked in (the overlayfs copy-up sequence), at the share root (mounted at "/") and in a
/// subdirectory; an unlinked tmpfile leaves nothing on the host; O_EXCL ones cannot be linked.
#[test]
fn o_tmpfile_is_served_and_linkable() {
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    let share = tempfile::tempdir().unwrap();
    let h = share.path();
    std::fs::create_dir(h.join("sub")).unwrap();
    let m = FuseMount::new(Some(h));
    for (rel, host) in [("", h.to_path_buf()), ("sub", h.join("sub"))] {
        let dir = m.p(rel);
        let before = host_names(&host);
        let mut f = open_tmpfile(&dir, 0).unwrap_or_else(|e| panic!("O_TMPFILE in {rel:?}: {e}"));
        f.write_all(b"tmp data").unwrap();
        f.sync_all().unwrap();
        assert_eq!(f.metadata().unwrap().nlink(), 0, "a tmpfile has no name");
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o640);
        fsetxattr(&f, "user.origin", b"\x00\x01").unwrap();
        assert_eq!(host_names(&host), before, "nothing named on the host yet");
        link_fd(&f, &dir.join("linked")).unwrap();
        assert_eq!(f.metadata().unwrap().nlink(), 1);
        // The fd stays usable after the link, and the name shows its writes.
        f.write_all_at(b"!", 8).unwrap();
        f.sync_all().unwrap();
        let mut s = String::new();
        std::fs::File::open(dir.join("linked"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "tmp data!");
        drop(f);
        assert_eq!(std::fs::read(host.join("linked")).unwrap(), b"tmp data!");
        assert_eq!(
            getxattr(&host.join("linked"), "user.origin").unwrap(),
            b"\x00\x01"
        );
        let md = std::fs::metadata(host.join("linked")).unwrap();
        assert_eq!((md.mode() & 0o7777, md.nlink()), (0o640, 1));
    }

    // Closed without a link: gone, nothing left in the host dir.
    let before = host_names(&h.join("sub"));
    let mut f = open_tmpfile(&m.p("sub"), 0).unwrap();
    f.write_all(b"scratch").unwrap();
    drop(f);
    assert_eq!(host_names(&h.join("sub")), before);

    // O_TMPFILE | O_EXCL: never linkable.
    let f = open_tmpfile(&m.p("sub"), libc::O_EXCL).unwrap();
    let e = link_fd(&f, &m.p("sub/excl")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    assert!(!h.join("sub/excl").exists());
}

/// O_TMPFILE where nothing writable is mounted (the read-only pseudo root) fails with EROFS,
/// not EOPNOTSUPP, and leaves the daemon serving.
#[test]
fn o_tmpfile_on_read_only_tree_is_erofs() {
    let m = FuseMount::new(None);
    let e = open_tmpfile(&m.p(""), 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert!(std::fs::read_dir(m.p("")).is_ok());
}

/// Voluntary context switches of the daemon's FUSE threads (`fuse-N`).
fn fuse_thread_wakeups(pid: i32) -> (u64, usize) {
    let (mut total, mut threads) = (0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("fuse-") {
            continue;
        }
        threads += 1;
        let st = std::fs::read_to_string(t.path().join("status")).unwrap();
        total += st
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap();
    }
    (total, threads)
}

/// One request wakes one FUSE thread, not all of them: each thread blocks in `read` on its
/// own clone of the /dev/fuse fd (the kernel wakes one waiter). With every thread polling
/// one fd, each request woke all of them (about `threads` wake-ups a request).
#[test]
fn a_request_wakes_one_fuse_thread() {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("f"), b"x").unwrap();
    let m = FuseMount::new(Some(share.path()));
    let pid = m.d.as_ref().unwrap().pid();
    let path = CString::new(m.p("f").as_os_str().as_bytes()).unwrap();
    let name = c"user.none";
    // Warm up (lookups, INIT settle), then count.
    let mut buf = [0u8; 16];
    for _ in 0..50 {
        // SAFETY: valid NUL-terminated strings and buffer.
        unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 16) };
    }
    let (before, threads) = fuse_thread_wakeups(pid);
    assert!(
        threads >= 4,
        "expected the default pool of FUSE threads, found {threads}"
    );
    let n = 2000u64;
    for _ in 0..n {
        // SAFETY: as above. getxattr is not cached by the kernel: every call is a request.
        let r =
            unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 16) };
        assert_eq!(r, -1);
    }
    let (after, _) = fuse_thread_wakeups(pid);
    let per_request = (after - before) as f64 / n as f64;
    assert!(
        per_request < 2.0,
        "{per_request:.2} FUSE thread wake-ups per request with {threads} threads"
    );
}
