//! The passthrough's session state survives a hand-over: exported mid-session from one
//! `PassthroughFs`, imported into a fresh one (as a new process would), the guest-visible
//! node ids and open handles keep working. And the fd count stays bounded whatever the guest
//! looks up.

#[path = "common/fdcount.rs"]
mod fdcount;

use std::ffi::CString;

use fdcount::open_fds;
use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use rafs_virtiofsd::fs::passthrough::{Config, PassthroughFs};

fn name(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn new_fs(root: &std::path::Path) -> PassthroughFs {
    let fs = PassthroughFs::new(Config::new(root)).unwrap();
    fs.init(FsOptions::WRITEBACK_CACHE | FsOptions::HANDLE_KILLPRIV_V2)
        .unwrap();
    fs
}

#[test]
fn export_import_keeps_node_ids_and_handles() {
    let _fds = fdcount::shared();
    let share = tempfile::tempdir().unwrap();
    let h = share.path();
    std::fs::create_dir_all(h.join("a/b")).unwrap();
    std::fs::write(h.join("a/b/file"), b"0123456789").unwrap();
    std::fs::write(h.join("gone"), b"bye").unwrap();
    let ctx = Context::default();

    let old = new_fs(h);
    let a = old.lookup(&ctx, 1, &name("a")).unwrap();
    let b = old.lookup(&ctx, a.inode, &name("b")).unwrap();
    let f = old.lookup(&ctx, b.inode, &name("file")).unwrap();
    // Looked up twice: the count travels.
    old.lookup(&ctx, b.inode, &name("file")).unwrap();
    let (fh, _, _) = old.open(&ctx, f.inode, libc::O_RDWR as u32, 0).unwrap();
    let (dh, _) = old.opendir(&ctx, b.inode, 0).unwrap();
    let g = old.lookup(&ctx, 1, &name("gone")).unwrap();
    let (gh, _, _) = old.open(&ctx, g.inode, libc::O_RDONLY as u32, 0).unwrap();
    // A file created through the fs, open for writing.
    let (c, ch, _, _) = old
        .create(
            &ctx,
            a.inode,
            &name("new"),
            CreateIn {
                flags: libc::O_RDWR as u32,
                mode: 0o644,
                umask: 0,
                fuse_flags: 0,
            },
        )
        .unwrap();
    let ch = ch.unwrap();
    let fh = fh.unwrap();
    let dh = dh.unwrap();
    let gh = gh.unwrap();

    let bytes = old.export_bytes();
    // The file opened by `gh` is unlinked before the new process takes over, and the old
    // process goes away with its fds.
    drop(old);
    std::fs::remove_file(h.join("gone")).unwrap();

    let new = PassthroughFs::new(Config::new(h)).unwrap();
    let (inodes, handles) = new.import_bytes(&bytes).unwrap();
    assert_eq!(
        new.export_state().init_options(),
        (FsOptions::WRITEBACK_CACHE | FsOptions::HANDLE_KILLPRIV_V2).bits(),
        "the INIT options travel"
    );
    assert_eq!(
        inodes, 4,
        "a, b, file and new; gone was unlinked, its handle is stale"
    );
    assert_eq!(
        handles, 3,
        "file, dir b and new reopen; the unlinked one cannot"
    );

    // Node ids answer as before.
    let st = new.getattr(&ctx, f.inode, None).unwrap().0;
    assert_eq!(st.st_size, 10);
    assert_eq!(new.getattr(&ctx, c.inode, None).unwrap().0.st_size, 0);
    // A lookup finds the same node id again.
    assert_eq!(
        new.lookup(&ctx, b.inode, &name("file")).unwrap().inode,
        f.inode
    );
    assert_eq!(new.lookup(&ctx, 1, &name("a")).unwrap().inode, a.inode);
    // Handles: fstat and ftruncate through them.
    assert_eq!(new.getattr(&ctx, f.inode, Some(fh)).unwrap().0.st_size, 10);
    let mut attr = new.getattr(&ctx, f.inode, None).unwrap().0;
    attr.st_size = 4;
    new.setattr(&ctx, f.inode, attr, Some(fh), SetattrValid::SIZE)
        .unwrap();
    assert_eq!(std::fs::read(h.join("a/b/file")).unwrap(), b"0123");
    let mut attr = new.getattr(&ctx, c.inode, None).unwrap().0;
    attr.st_size = 7;
    new.setattr(&ctx, c.inode, attr, Some(ch), SetattrValid::SIZE)
        .unwrap();
    assert_eq!(std::fs::metadata(h.join("a/new")).unwrap().len(), 7);
    // The directory handle still lists.
    let mut names = Vec::new();
    new.readdir(&ctx, b.inode, dh, 4096, 0, &mut |d| {
        names.push(String::from_utf8_lossy(d.name).to_string());
        Ok(1)
    })
    .unwrap();
    assert!(names.contains(&"file".to_string()), "{names:?}");
    // The handle of the file unlinked during the hand-over gives EIO, and says so.
    let e = new.getattr(&ctx, g.inode, Some(gh)).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF)),
        "{e}"
    );
    let e = new.fsync(&ctx, g.inode, false, gh).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Forgets balance the imported counts: two lookups before, one after the import.
    new.forget(&ctx, f.inode, 3);
    new.release(&ctx, f.inode, 0, fh, false, false, None)
        .unwrap();
    assert!(new.getattr(&ctx, f.inode, None).is_err(), "forgotten");

    // State of another share is refused.
    let other = tempfile::tempdir().unwrap();
    let fs2 = PassthroughFs::new(Config::new(other.path())).unwrap();
    assert!(fs2.import_bytes(&bytes).is_err());
    assert!(fs2.import_bytes(b"not json").is_err());
}

/// Looking up 100,000 files (and keeping every lookup, as a guest with a big dentry cache
/// does) under a soft RLIMIT_NOFILE of 1,024 never fails and holds at most the fd cache's
/// worth of fds: the inodes are remembered by handle.
#[test]
fn lookups_of_many_files_hold_a_bounded_number_of_fds() {
    let _fds = fdcount::exclusive();
    let share = tempfile::tempdir().unwrap();
    let h = share.path();
    let n_dirs = 100;
    let per_dir = 1000;
    for d in 0..n_dirs {
        let dir = h.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..per_dir {
            std::fs::File::create(dir.join(format!("f{f}"))).unwrap();
        }
    }
    let ctx = Context::default();
    let fs = new_fs(h);
    // A soft fd limit far below the number of inodes: any per-inode fd would hit it.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit buffer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let low = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above; the soft limit stays below the hard one.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let before = open_fds();
    for d in 0..n_dirs {
        let de = fs.lookup(&ctx, 1, &name(&format!("d{d}"))).unwrap();
        for f in 0..per_dir {
            let e = fs.lookup(&ctx, de.inode, &name(&format!("f{f}"))).unwrap();
            fs.getattr(&ctx, e.inode, None).unwrap();
        }
    }
    let (inodes, cached, pinned, _, mounts) = fs.counts();
    assert_eq!(inodes, 1 + n_dirs + n_dirs * per_dir);
    let after = open_fds();
    assert!(
        after <= before + 256 + 4,
        "fds grew from {before} to {after} for {inodes} inodes ({cached} cached, {pinned} pinned, {mounts} mounts)"
    );
    // Every inode is still reachable after its fd left the cache.
    let de = fs.lookup(&ctx, 1, &name("d0")).unwrap();
    let e = fs.lookup(&ctx, de.inode, &name("f0")).unwrap();
    assert!(fs.getattr(&ctx, e.inode, None).is_ok());
    // SAFETY: restores the limit read above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}
