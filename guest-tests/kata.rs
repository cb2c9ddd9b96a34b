//! Kata replay: drives `rafs-virtiofsd` exactly the way Kata's Go runtime and runtime-rs drive
//! upstream nydusd in `shared_fs = "virtio-fs-nydus"` mode (shared/specs/KATA-CONTRACT.md
//! §1–3), with a real guest doing what the Kata agent does.

mod harness;

use harness::*;
use rafs_virtiofsd::overlay_helper::{encode_extra_option, parse_extra_option, ExtraOption};
use std::ffi::{CString, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Runtime {
    /// Kata's Go runtime: raw mountpoints in the query, no `--hybrid-mode`.
    Go,
    /// runtime-rs: `--hybrid-mode`, percent-encoded mountpoints.
    Rs,
}

/// Percent-encodes every byte outside `[A-Za-z0-9-._~]`, as runtime-rs does.
fn encode_all(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn mount_query(rt: Runtime, mp: &str) -> String {
    match rt {
        Runtime::Go => format!("/api/v1/mount?mountpoint={mp}"),
        Runtime::Rs => format!("/api/v1/mount?mountpoint={}", encode_all(mp)),
    }
}

/// A bind mount that is undone on drop (Kata binds the snapshot dir into the share).
struct Bind(PathBuf);

impl Bind {
    fn new(src: &Path, dst: &Path) -> Bind {
        fs::create_dir_all(dst).unwrap();
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let (s, d) = (c(src), c(dst));
        // SAFETY: valid NUL-terminated paths; null fstype/data are allowed for MS_BIND.
        let rc = unsafe {
            libc::mount(
                s.as_ptr(),
                d.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "bind {src:?} -> {dst:?}: {}",
            std::io::Error::last_os_error()
        );
        Bind(dst.to_path_buf())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.0.as_os_str().as_bytes()) {
            // SAFETY: valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Kata's readiness probe: `GET /api/v1/daemon` until `state == "RUNNING"`; runtime-rs also
/// needs status 200 and the five version strings.
fn wait_ready_like_kata(daemon: &Daemon, rt: Runtime) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((status, body)) = daemon.api("GET", "/api/v1/daemon", None) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                if v["state"] == "RUNNING" {
                    if rt == Runtime::Rs {
                        assert_eq!(status, 200, "{body}");
                        for k in [
                            "package_ver",
                            "git_commit",
                            "build_time",
                            "profile",
                            "rustc",
                        ] {
                            assert!(v["version"][k].is_string(), "version.{k} missing: {body}");
                        }
                    }
                    return;
                }
            }
        }
        assert!(
            Instant::now() < end,
            "daemon not RUNNING within 10 s:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn replay(rt: Runtime, confined: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("v6-zstd-64k-base");
    let cache = tmp.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    // The snapshotter's config for this image (nydusd v1 JSON), shared cache dir.
    let config = serde_json::json!({
        "device": {
            "backend": {"type": "localfs", "config": {"dir": fx.join("blobs").to_string_lossy(), "readahead": false}},
            "cache": {"type": "blobcache", "compressed": false, "config": {"work_dir": cache.to_string_lossy(), "disable_indexed_map": false}}
        },
        "mode": "direct",
        "digest_validate": false,
        "iostats_files": false,
        "enable_xattr": true,
        "fs_prefetch": {"enable": false, "threads_count": 4}
    })
    .to_string();

    // Host share dir (Go: sandboxes/<sid>/shared, runtime-rs: sandboxes/<sid>/rw).
    let share = tmp.path().join(match rt {
        Runtime::Go => "sandboxes/sid/shared",
        Runtime::Rs => "sandboxes/sid/rw",
    });
    fs::create_dir_all(&share).unwrap();

    // Confined: the host side is a shared mount (as systemd makes `/`), so the bind mounts
    // Kata makes in the share later propagate into the daemon's namespace.
    let _shared = confined.then(|| {
        let b = Bind::new(tmp.path(), tmp.path());
        let c = CString::new(tmp.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path; null source/fstype/data are allowed here.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "make-shared: {}", std::io::Error::last_os_error());
        b
    });

    // 1. argv exactly as Kata builds it; virtio_fs_extra_args = [].
    let mut daemon = Daemon::spawn(|sock, api| {
        let mut a: Vec<OsString> = vec!["virtiofs".into()];
        if rt == Runtime::Rs {
            a.push("--hybrid-mode".into());
        }
        a.extend([
            "--log-level".into(),
            "info".into(),
            "--apisock".into(),
            api.into(),
            "--sock".into(),
            sock.into(),
        ]);
        if confined {
            // kata-config's confinement fragment: only the sandboxes, the snapshotter's tree
            // (here the fixture and the cache) are visible.
            a.extend(["--sandbox".into(), "namespace".into()]);
            for r in [tmp.path(), fx.as_path()] {
                a.extend(["--allowed-root".into(), r.into()]);
            }
        }
        a
    });
    // 2. readiness, 3. the sandbox share; the VM starts only after that 204.
    wait_ready_like_kata(&daemon, rt);
    let body = serde_json::json!({"fs_type": "passthrough_fs", "source": share.to_string_lossy(), "config": ""}).to_string();
    let (st, resp) = daemon
        .api("POST", &mount_query(rt, "/containers"), Some(&body))
        .expect("API");
    assert_eq!(st, 204, "mount /containers: {resp}");

    // Two containers of the same image. The snapshotter hands each a fuse.nydus-overlayfs
    // mount whose extraoption carries source, config and snapshotdir.
    let cids = ["c1aaaa", "c2bbbb"];
    let mut binds = Vec::new();
    let mut extras = Vec::new();
    for cid in cids {
        let snap = tmp.path().join(format!("snapshots/{cid}"));
        fs::create_dir_all(snap.join("fs")).unwrap();
        fs::create_dir_all(snap.join("work")).unwrap();
        let eo = ExtraOption {
            source: fx.join("image.boot").to_string_lossy().into_owned(),
            config: config.clone(),
            snapshotdir: snap.to_string_lossy().into_owned(),
            fs_version: "v6".into(),
        };
        let options = vec![
            format!("lowerdir={}", snap.join("lower").display()),
            format!("upperdir={}", snap.join("fs").display()),
            format!("workdir={}", snap.join("work").display()),
            encode_extra_option(&eo),
        ];
        let parsed = parse_extra_option(&options).expect("extraoption");
        assert_eq!(parsed, eo);
        extras.push(parsed);
    }

    // The guest assembles each rootfs with our nydus-overlayfs helper, given options shaped
    // like the snapshotter's (extraoption= included) plus the ",dev,suid" mount.fuse adds.
    let overlays: String = cids
        .iter()
        .zip(&extras)
        .map(|(cid, eo)| {
            let k = "/run/kata-containers/shared";
            format!(
                "    rv_check overlay-{cid} /bin/nydus-overlayfs overlay {k}/containers/{cid}/rootfs -o 'lowerdir={k}/rafs/{cid}/lowerdir,upperdir={k}/containers/{cid}/snapshotdir/fs,workdir={k}/containers/{cid}/snapshotdir/work,index=off,{},io.katacontainers.volume=x,dev,suid'\n",
                encode_extra_option(eo)
            )
        })
        .collect();
    let workload = format!(
        r#"
K=/run/kata-containers/shared
rv_check share-mounted sh -c "grep -q ' $K virtiofs ' /proc/mounts"
if rv_sync create-containers; then
{overlays}  for cid in {c1} {c2}; do
    R=$K/containers/$cid/rootfs
    rv_data read-$cid "$(rvhelper sha256 $R/big.bin)"
    rv_check write-$cid sh -c "echo written-by-$cid > $R/out.txt && echo $cid >> $R/.hidden && rm $R/-dash"
    rv_check view-$cid sh -c "[ \"\$(cat $R/out.txt)\" = written-by-$cid ] && [ ! -e $R/-dash ]"
  done
  for cid in {c1} {c2}; do
    rv_check umount-$cid umount $K/containers/$cid/rootfs
  done
  rv_sync teardown || rv_fail teardown "host DELETE failed"
  echo 2 > /proc/sys/vm/drop_caches
  rv_check rafs-gone sh -c '[ -z "$(ls -A $K/rafs/{c1}/lowerdir 2>/dev/null)" ]'
else
  rv_fail create-containers "host could not mount the RAFS lowerdirs"
fi
"#,
        c1 = cids[0],
        c2 = cids[1],
        overlays = overlays,
    );
    let mut cfg = VmConfig::new(Some(&daemon.sock), &workload);
    cfg.add_host_binary("/bin/nydus-overlayfs", &overlayfs_bin());
    cfg.tag = "kataShared".into();
    cfg.mountpoint = "/run/kata-containers/shared".into();
    let mut api_log = Vec::new();
    let run = run_vm(&cfg, |step| match step {
        "create-containers" => {
            for (cid, eo) in cids.iter().zip(&extras) {
                let mp = format!("/rafs/{cid}/lowerdir");
                let body = serde_json::json!({"fs_type": "rafs", "source": eo.source, "config": eo.config}).to_string();
                let r = daemon.api("POST", &mount_query(rt, &mp), Some(&body));
                api_log.push(format!("POST {mp}: {r:?}"));
                if !matches!(r, Ok((204, _))) {
                    return false;
                }
                fs::create_dir_all(share.join(cid).join("rootfs")).unwrap();
                binds.push(Bind::new(
                    Path::new(&eo.snapshotdir),
                    &share.join(cid).join("snapshotdir"),
                ));
            }
            true
        }
        "teardown" => cids.iter().all(|cid| {
            let mp = format!("/rafs/{cid}/lowerdir");
            let r = daemon.api("DELETE", &mount_query(rt, &mp), None);
            api_log.push(format!("DELETE {mp}: {r:?}"));
            matches!(r, Ok((204, _)))
        }),
        _ => false,
    });
    let mut expect = vec!["share-mounted".to_string(), "rafs-gone".to_string()];
    for cid in cids {
        for c in ["overlay", "write", "view", "umount"] {
            expect.push(format!("{c}-{cid}"));
        }
    }
    let expect_refs: Vec<&str> = expect.iter().map(String::as_str).collect();
    if !run.fails.is_empty() {
        eprintln!(
            "API calls: {api_log:#?}\ndaemon output:\n{}",
            daemon.output()
        );
    }
    run.assert_ok(&expect_refs);
    let big = fixture_manifest("v6-zstd-64k-base")
        .0
        .into_iter()
        .find(|l| l.starts_with("big.bin "))
        .unwrap();
    let prefix = big.split(' ').nth(9).unwrap();
    for cid in cids {
        assert!(
            run.data(&format!("read-{cid}")).starts_with(prefix),
            "{cid} read big.bin"
        );
        let upper = tmp.path().join(format!("snapshots/{cid}/fs"));
        assert_eq!(
            fs::read_to_string(upper.join("out.txt")).unwrap(),
            format!("written-by-{cid}\n"),
            "container {cid}'s write is in its own upper dir"
        );
        let hidden = fs::read_to_string(upper.join(".hidden")).unwrap();
        assert_eq!(hidden, format!(".hidden{cid}\n"));
    }
    drop(binds);
    // Teardown: SIGTERM; Kata waits 5 s before SIGKILL.
    let st = daemon.stop(Duration::from_secs(5));
    assert!(
        st.is_some(),
        "daemon did not exit within 5 s of SIGTERM:\n{}",
        daemon.output()
    );
}

/// Kata Go runtime sequence: raw mountpoints, no `--hybrid-mode`.
#[test]
fn kata_go_runtime_replay() {
    replay(Runtime::Go, false);
}

/// The Go runtime sequence with `virtio_fs_extra_args` from kata-config's confinement
/// fragment: `--sandbox namespace` and `--allowed-root` for the sandboxes and images.
#[test]
fn kata_go_runtime_replay_confined() {
    replay(Runtime::Go, true);
}

/// Kata runtime-rs sequence: `--hybrid-mode`, percent-encoded mountpoints.
#[test]
fn kata_runtime_rs_replay() {
    replay(Runtime::Rs, false);
}
