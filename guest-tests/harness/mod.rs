//! Guest-test harness: boots a real VM (QEMU q35, the host's Debian cloud kernel and a busybox
//! initramfs from `hack/mkinitramfs.sh`) against a `rafs-virtiofsd` daemon, runs a shell
//! workload inside the guest and collects its results from the serial console.
//!
//! Protocol with the guest (see `hack/guest/init` and `hack/guest/lib.sh`): every line the
//! guest means for us starts with `@@RV:`:
//! - `@@RV:OK NAME` / `@@RV:FAIL NAME ...`: one named check passed / failed;
//! - `@@RV:DATA KEY VALUE`: a value;
//! - `@@RV:M KEY <hexpath> <fields...>` and `@@RV:MEND KEY`: a tree manifest (same fields as
//!   `shared/tools/treemanifest.py`; paths hex-encoded);
//! - `@@RV:SYNC NAME`: the guest waits until the host has done step NAME; the host answers
//!   `ok NAME` or `fail NAME` on the serial input;
//! - `@@RV:EXIT N`: the workload ended with N failed checks.
//!
//! Each test file includes this module with `mod harness;`. Everything is cleaned up by Drop
//! guards (daemon and QEMU are killed), and a VM that does not finish in time is killed and
//! its last console lines are printed in the panic message.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

#[path = "../../tests/common/skip.rs"]
pub mod skip;
#[allow(unused_imports)] // Used by the test files that skip, not by every one.
pub use skip::skip;

/// Root of the repository (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the daemon binary built by cargo for this test.
pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rafs-virtiofsd"))
}

/// Path of the image builder built by cargo for this test.
/// The nydus-overlayfs binary under test.
pub fn overlayfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nydus-overlayfs"))
}

pub fn image_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rafs-image"))
}

/// The guest kernel: `$RV_KERNEL`, else the newest `/boot/vmlinuz-*`.
pub fn kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("RV_KERNEL") {
        return PathBuf::from(k);
    }
    let mut ks: Vec<PathBuf> = fs::read_dir("/boot")
        .expect("read /boot")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    ks.sort();
    ks.pop()
        .expect("no /boot/vmlinuz-*: run hack/setup.sh (linux-image-cloud-amd64)")
}

/// Builds (once per process; cached on disk by hack/mkinitramfs.sh) the base initramfs.
pub fn base_initramfs() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let script = repo_root().join("hack/mkinitramfs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .env("RV_KERNEL", kernel())
            .stderr(Stdio::inherit())
            .output()
            .expect("run hack/mkinitramfs.sh");
        assert!(
            out.status.success(),
            "hack/mkinitramfs.sh failed: {}",
            out.status
        );
        let p = String::from_utf8(out.stdout).expect("utf-8 path");
        PathBuf::from(p.trim())
    })
    .clone()
}

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware KVM (`-M q35,accel=kvm -cpu host`).
    Kvm,
    /// Emulation (`-M q35,accel=tcg -cpu max`).
    Tcg,
}

/// Real KVM only if /dev/kvm opens and it is not the PVM software hypervisor (which cannot
/// boot a stock kernel, see shared/specs/GUEST-RECIPE.md). `RV_ACCEL=tcg|kvm` overrides.
pub fn detect_accel() -> Accel {
    match std::env::var("RV_ACCEL").as_deref() {
        Ok("tcg") => return Accel::Tcg,
        Ok("kvm") => return Accel::Kvm,
        _ => {}
    }
    let kvm_opens = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if kvm_opens && !Path::new("/sys/module/kvm_pvm").exists() {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Builds a gzip'd newc cpio archive holding `files` (path inside the guest, contents, mode).
/// Parent directories are created as needed.
pub fn cpio_gz(files: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut raw = Vec::new();
    let mut ino = 1;
    let mut dirs = std::collections::BTreeSet::new();
    for (path, data, mode) in files {
        let path = path.trim_start_matches('/');
        let mut parent = Path::new(path).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent {
            if p.as_os_str().is_empty() {
                break;
            }
            chain.push(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        for d in chain.into_iter().rev() {
            if dirs.insert(d.clone()) {
                entry(&mut raw, ino, &d, 0o040755, &[]);
                ino += 1;
            }
        }
        entry(&mut raw, ino, path, 0o100000 | mode, data);
        ino += 1;
    }
    entry(&mut raw, 0, "TRAILER!!!", 0, &[]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    gz.finish().expect("gzip")
}

/// One guest boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// vhost-user-fs socket; `None` boots without virtio-fs.
    pub socket: Option<PathBuf>,
    /// virtio-fs tag (also passed to the guest as `rv.tag=`).
    pub tag: String,
    /// Where the guest mounts virtio-fs.
    pub mountpoint: String,
    /// Shell script run inside the guest after `. /rv/lib.sh`.
    pub workload: String,
    /// Extra files for the guest (path, contents, permission bits).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Hard limit for the whole boot; QEMU is killed after it.
    pub timeout: Duration,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
}

impl VmConfig {
    /// A guest that mounts `socket`'s device (tag `rafs`) at /mnt and runs `workload`.
    pub fn new(socket: Option<&Path>, workload: &str) -> Self {
        VmConfig {
            socket: socket.map(Path::to_path_buf),
            tag: "rafs".into(),
            mountpoint: "/mnt".into(),
            workload: workload.into(),
            files: Vec::new(),
            timeout: Duration::from_secs(
                std::env::var("RV_BOOT_TIMEOUT")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(180),
            ),
            mem_mib: 1024,
        }
    }
}

impl VmConfig {
    /// Put the host binary `host` at `guest_path` in the guest, with the shared libraries
    /// `ldd` lists for it (the guest has no libc of its own).
    pub fn add_host_binary(&mut self, guest_path: &str, host: &Path) {
        let read = |p: &Path| fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        self.files.push((guest_path.to_string(), read(host), 0o755));
        let out = run_cmd(Command::new("ldd").arg(host));
        for line in out.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                if !self.files.iter().any(|(g, _, _)| g == p) {
                    self.files.push((p.to_string(), read(Path::new(p)), 0o755));
                }
            }
        }
    }
}

/// What a guest run produced.
#[derive(Debug, Default)]
pub struct GuestRun {
    /// Every console line (without `\r`).
    pub lines: Vec<String>,
    /// Checks that passed, in order.
    pub ok: Vec<String>,
    /// Checks that failed (name and reason).
    pub fails: Vec<String>,
    /// `@@RV:DATA` values.
    pub data: BTreeMap<String, String>,
    /// `@@RV:M` manifests, already decoded to `treemanifest.py`'s text form.
    pub manifests: BTreeMap<String, Vec<String>>,
    /// The workload's exit (number of failed checks), if it got that far.
    pub exit: Option<i32>,
}

impl GuestRun {
    /// The last `n` console lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].join("\n")
    }

    /// Panics unless the workload finished, no check failed and every name in `expected`
    /// passed.
    pub fn assert_ok(&self, expected: &[&str]) {
        assert!(
            self.fails.is_empty(),
            "guest checks failed: {:?}\n--- last console lines ---\n{}",
            self.fails,
            self.tail(60)
        );
        for e in expected {
            assert!(
                self.ok.iter().any(|o| o == e),
                "guest check `{e}` did not run; passed: {:?}\n--- last console lines ---\n{}",
                self.ok,
                self.tail(60)
            );
        }
        assert_eq!(
            self.exit,
            Some(0),
            "guest workload did not end cleanly\n--- last console lines ---\n{}",
            self.tail(60)
        );
    }

    /// A `@@RV:DATA` value, or a panic naming the key.
    pub fn data(&self, key: &str) -> &str {
        self.data.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "guest reported no `{key}`\n--- last console lines ---\n{}",
                self.tail(60)
            )
        })
    }

    /// A manifest the guest reported, or a panic naming the key.
    pub fn manifest(&self, key: &str) -> &[String] {
        self.manifests
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_else(|| {
                panic!(
                    "guest reported no manifest `{key}`\n--- last console lines ---\n{}",
                    self.tail(60)
                )
            })
    }
}

/// Decodes bytes the way Python's `bytes.decode('utf-8', 'backslashreplace')` does.
pub fn py_decode(b: &[u8]) -> String {
    let mut s = String::new();
    for chunk in b.utf8_chunks() {
        s.push_str(chunk.valid());
        for byte in chunk.invalid() {
            s.push_str(&format!("\\x{byte:02x}"));
        }
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Turns a guest manifest line (`<hexpath> fields... <hexgroup|->`) into treemanifest.py's form.
fn decode_manifest_line(line: &str) -> String {
    let mut parts: Vec<&str> = line.split(' ').collect();
    let path = unhex(parts[0])
        .map(|b| py_decode(&b))
        .unwrap_or_else(|| parts[0].to_string());
    let last = parts.len() - 1;
    let group = if parts[last] == "-" {
        "-".to_string()
    } else {
        unhex(parts[last])
            .map(|b| py_decode(&b))
            .unwrap_or_else(|| parts[last].to_string())
    };
    parts[0] = &path;
    parts[last] = &group;
    parts.join(" ")
}

/// Records one console line's marker in `run`; returns the step name of a `SYNC` request.
fn parse_line(run: &mut GuestRun, line: &str) -> Option<String> {
    // A marker may follow kernel output on the same line; take it from where it starts.
    let pos = line.find("@@RV:")?;
    let m = &line[pos + 5..];
    let (kind, rest) = m.split_once(' ').unwrap_or((m, ""));
    match kind {
        "OK" => run.ok.push(rest.to_string()),
        "FAIL" => run.fails.push(rest.to_string()),
        "DATA" => {
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            run.data.insert(k.to_string(), v.to_string());
        }
        "M" => {
            if let Some((k, l)) = rest.split_once(' ') {
                run.manifests
                    .entry(k.to_string())
                    .or_default()
                    .push(decode_manifest_line(l));
            }
        }
        "MEND" => {
            run.manifests.entry(rest.to_string()).or_default();
        }
        "SYNC" => return Some(rest.to_string()),
        "EXIT" => run.exit = rest.trim().parse().ok(),
        _ => {}
    }
    None
}

/// Parses console text (as the guest would print it) into a [`GuestRun`]; SYNC lines are
/// ignored.
pub fn parse_console(text: &str) -> GuestRun {
    let mut run = GuestRun::default();
    for l in text.lines() {
        parse_line(&mut run, l);
        run.lines.push(l.to_string());
    }
    run
}

/// Serialises guest boots inside one test process: two TCG guests on a 2-core machine only
/// slow each other down and make timeouts flaky.
static VM_LOCK: Mutex<()> = Mutex::new(());

/// Kills the child process when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots a guest and runs its workload. `on_sync(step)` is called when the guest asks for a
/// host-side step (`rv_sync STEP`); returning `false` makes the guest's `rv_sync` fail.
pub fn run_vm(cfg: &VmConfig, mut on_sync: impl FnMut(&str) -> bool) -> GuestRun {
    let _serial = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = cfg.files.clone();
    files.push((
        "rv/workload.sh".into(),
        cfg.workload.clone().into_bytes(),
        0o755,
    ));
    let mut initrd = fs::read(base_initramfs()).expect("read base initramfs");
    initrd.extend_from_slice(&cpio_gz(&files));
    let initrd_path = dir.path().join("initrd.gz");
    fs::write(&initrd_path, &initrd).expect("write initrd");

    let mem = format!("{}M", cfg.mem_mib);
    let mut args: Vec<OsString> = Vec::new();
    let (machine, cpu) = match detect_accel() {
        Accel::Kvm => ("q35,accel=kvm", "host"),
        Accel::Tcg => ("q35,accel=tcg", "max"),
    };
    for a in [
        "-M",
        machine,
        "-cpu",
        cpu,
        "-smp",
        "1",
        "-m",
        &mem,
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-numa",
        "node,memdev=mem",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ] {
        args.push(a.into());
    }
    let mut append = "console=ttyS0 quiet panic=-1".to_string();
    if let Some(sock) = &cfg.socket {
        args.push("-chardev".into());
        args.push(format!("socket,id=char0,path={}", sock.display()).into());
        args.push("-device".into());
        args.push(
            format!(
                "vhost-user-fs-pci,chardev=char0,tag={},queue-size=1024",
                cfg.tag
            )
            .into(),
        );
        append.push_str(&format!(" rv.tag={} rv.mnt={}", cfg.tag, cfg.mountpoint));
    }
    args.push("-kernel".into());
    args.push(kernel().into());
    args.push("-initrd".into());
    args.push(initrd_path.clone().into());
    args.push("-append".into());
    args.push(append.into());

    let stderr_path = dir.path().join("qemu.stderr");
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr_path).expect("qemu stderr file"))
        .spawn()
        .expect("spawn qemu-system-x86_64 (run hack/setup.sh)");
    let stdout = child.stdout.take().expect("qemu stdout");
    let mut stdin: ChildStdin = child.stdin.take().expect("qemu stdin");
    let mut qemu = KillOnDrop(child);

    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while matches!(buf.last(), Some(b'\n' | b'\r')) {
                        buf.pop();
                    }
                    let line = String::from_utf8_lossy(&buf).replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let deadline = Instant::now() + cfg.timeout;
    let mut run = GuestRun::default();
    let verbose = std::env::var_os("RV_VERBOSE").is_some();
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        let line = match rx.recv_timeout(deadline - now) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if verbose {
            eprintln!("guest| {line}");
        }
        if let Some(step) = parse_line(&mut run, &line) {
            let ok = on_sync(&step);
            let reply = format!("{} {}\n", if ok { "ok" } else { "fail" }, step);
            let _ = stdin.write_all(reply.as_bytes());
            let _ = stdin.flush();
        }
        run.lines.push(line);
    }
    if !timed_out {
        // The guest powered off; QEMU exits right after.
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = qemu.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(stdin);
    drop(qemu);
    let _ = reader.join();
    if timed_out {
        let err = fs::read_to_string(&stderr_path).unwrap_or_default();
        panic!(
            "guest did not finish within {:?}; QEMU killed\n--- qemu stderr ---\n{err}\n--- last console lines ---\n{}",
            cfg.timeout,
            run.tail(60)
        );
    }
    if run.exit.is_none() {
        let err = fs::read_to_string(&stderr_path).unwrap_or_default();
        run.lines.push(format!("(qemu stderr: {err})"));
    }
    run
}

/// A running `rafs-virtiofsd` (killed on drop), with its sockets in a private temp dir.
pub struct Daemon {
    child: Option<Child>,
    /// vhost-user socket.
    pub sock: PathBuf,
    /// HTTP API socket.
    pub apisock: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
    /// Private dir holding the sockets and log.
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `rafs-virtiofsd virtiofs --sock S --apisock A --log-level info EXTRA...` and
    /// waits until the socket exists and the API reports RUNNING.
    pub fn start(extra: &[&str]) -> Daemon {
        let mut d = Daemon::spawn(|sock, api| {
            let mut a: Vec<OsString> = vec!["virtiofs".into(), "--sock".into(), sock.into()];
            a.extend([
                "--apisock".into(),
                api.into(),
                "--log-level".into(),
                "info".into(),
            ]);
            a.extend(extra.iter().map(OsString::from));
            a
        });
        d.wait_ready(Duration::from_secs(15));
        d
    }

    /// Spawns the daemon with the argv `args(sock, apisock)` builds, without waiting for it.
    pub fn spawn(args: impl FnOnce(&Path, &Path) -> Vec<OsString>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("rv")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let sock = dir.path().join("vfs.sock");
        let apisock = dir.path().join("api.sock");
        let log = dir.path().join("daemon.log");
        let child = Command::new(daemon_bin())
            .args(args(&sock, &apisock))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).expect("log"))
            .stderr(fs::File::create(dir.path().join("daemon.stderr")).expect("log"))
            .spawn()
            .expect("spawn rafs-virtiofsd");
        Daemon {
            child: Some(child),
            sock,
            apisock,
            log,
            dir,
        }
    }

    /// The daemon's output so far (stdout and stderr).
    pub fn output(&self) -> String {
        let a = fs::read_to_string(&self.log).unwrap_or_default();
        let b = fs::read_to_string(self.dir.path().join("daemon.stderr")).unwrap_or_default();
        format!("{a}{b}")
    }

    fn wait_ready(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("rafs-virtiofsd exited early ({st}):\n{}", self.output());
            }
            let sock_ok = fs::metadata(&self.sock).is_ok_and(|m| m.file_type().is_socket());
            if sock_ok {
                if let Ok((200, body)) = self.api("GET", "/api/v1/daemon", None) {
                    if body.contains("\"RUNNING\"") {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < end,
                "rafs-virtiofsd not ready within {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One HTTP/1.1 request on the API socket; returns status and body.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        http_unix(&self.apisock, method, path, body)
    }

    /// `POST /api/v1/mount?mountpoint=MP` with the given fs_type, source and config string;
    /// panics unless the answer is 204.
    pub fn mount(&self, mountpoint: &str, fs_type: &str, source: &Path, config: &str) {
        let body = serde_json::json!({
            "fs_type": fs_type,
            "source": source.to_string_lossy(),
            "config": config,
        })
        .to_string();
        let (st, resp) = self
            .api(
                "POST",
                &format!("/api/v1/mount?mountpoint={mountpoint}"),
                Some(&body),
            )
            .expect("API request");
        assert_eq!(
            st,
            204,
            "mount {mountpoint} ({fs_type}) failed: {resp}\n{}",
            self.output()
        );
    }

    /// `DELETE /api/v1/mount?mountpoint=MP`; returns the status.
    pub fn umount(&self, mountpoint: &str) -> u16 {
        self.api(
            "DELETE",
            &format!("/api/v1/mount?mountpoint={mountpoint}"),
            None,
        )
        .expect("API request")
        .0
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then waits up to `limit`; returns the exit status (None if it had to be killed).
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of a child we own and have not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Minimal HTTP/1.1 client over a unix socket (one request per connection).
pub fn http_unix(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: unix\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    // Read until the body is complete (Content-Length) or the server closes.
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&buf[..n]);
        if let Some(hend) = find(&resp, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&resp[..hend]).to_ascii_lowercase();
            let cl = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let no_body = status == 204 || status == 304 || (100..200).contains(&status);
            if no_body || cl.is_some_and(|cl| resp.len() >= hend + 4 + cl) {
                break;
            }
        }
    }
    let hend = find(&resp, b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP header"))?;
    let head = String::from_utf8_lossy(&resp[..hend]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad status line"))?;
    let mut body = resp[hend + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(e) = find(b, b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..e]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < e + 2 + size {
            break;
        }
        out.extend_from_slice(&b[e + 2..e + 2 + size]);
        b = &b[(e + 4 + size).min(b.len())..];
    }
    out
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run_cmd(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the shared tools live: `$RV_SHARED_TOOLS`, else `../shared/tools` beside the repo,
/// else /work/shared/tools.
pub fn shared_tool(name: &str) -> PathBuf {
    let mut cands = Vec::new();
    if let Some(d) = std::env::var_os("RV_SHARED_TOOLS") {
        cands.push(PathBuf::from(d));
    }
    cands.push(repo_root().join("tests/tools"));
    cands.push(repo_root().join("../shared/tools"));
    cands.push(PathBuf::from("/work/shared/tools"));
    for c in &cands {
        if c.join(name).exists() {
            return c.join(name);
        }
    }
    panic!("{name} not found in {cands:?}")
}

/// Makes a deterministic test tree with mktree.py.
pub fn mktree(out: &Path, seed: u32, extra: &[&str]) {
    run_cmd(
        Command::new("python3")
            .arg(shared_tool("mktree.py"))
            .arg(out)
            .arg(seed.to_string())
            .args(extra),
    );
}

/// The host-side manifest of a tree (treemanifest.py), one entry per line.
pub fn host_manifest(dir: &Path, flags: &[&str]) -> Vec<String> {
    run_cmd(
        Command::new("python3")
            .arg(shared_tool("treemanifest.py"))
            .arg(dir)
            .args(flags),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// Panics with a readable diff unless two manifests are equal.
pub fn assert_manifests_eq(what: &str, host: &[String], guest: &[String]) {
    if host == guest {
        return;
    }
    let hs: std::collections::BTreeSet<&String> = host.iter().collect();
    let gs: std::collections::BTreeSet<&String> = guest.iter().collect();
    let only_host: Vec<_> = hs.difference(&gs).take(20).collect();
    let only_guest: Vec<_> = gs.difference(&hs).take(20).collect();
    panic!(
        "{what}: manifests differ ({} host lines, {} guest lines)\nonly on host:\n{}\nonly in guest:\n{}",
        host.len(),
        guest.len(),
        only_host.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"),
        only_guest.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"),
    );
}

/// A RAFS fixture built by upstream nydus-image, copied into tests/fixtures/images/NAME.
pub fn fixture(name: &str) -> PathBuf {
    let p = repo_root().join("tests/fixtures/images").join(name);
    assert!(
        p.join("image.boot").exists(),
        "fixture {} missing",
        p.display()
    );
    p
}

/// The manifest stored for a fixture tree (tests/fixtures/manifests/TREE.manifest) and the
/// flags it was made with.
pub fn fixture_manifest(name: &str) -> (Vec<String>, Vec<String>) {
    let dir = fixture(name);
    let tree = fs::read_to_string(dir.join("TREE")).expect("TREE");
    let text = fs::read_to_string(
        repo_root()
            .join("tests/fixtures/manifests")
            .join(format!("{}.manifest", tree.trim())),
    )
    .expect("fixture manifest");
    let flags = fs::read_to_string(dir.join("MANIFEST_FLAGS"))
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    (text.lines().map(str::to_string).collect(), flags)
}

/// Builds a RAFS v6 image of `src` with our `rafs-image` (zstd, 64 KiB chunks) into `out`;
/// returns (bootstrap, blob dir).
pub fn build_image(src: &Path, out: &Path) -> (PathBuf, PathBuf) {
    let boot = out.join("image.boot");
    let blobs = out.join("blobs");
    fs::create_dir_all(&blobs).expect("mkdir blobs");
    run_cmd(
        Command::new(image_bin())
            .arg("create")
            .arg("--bootstrap")
            .arg(&boot)
            .arg("--blob-dir")
            .arg(&blobs)
            .args([
                "--fs-version",
                "6",
                "--compressor",
                "zstd",
                "--chunk-size",
                "0x10000",
            ])
            .arg(src),
    );
    (boot, blobs)
}

/// A v1 RAFS config reading blobs of `repo` from a plain-http registry at `host`, with the
/// shared chunk cache in `cache` and no prefetch (what the lazy-loading tests measure).
pub fn registry_config(host: &str, repo: &str, cache: &Path) -> String {
    serde_json::json!({
        "device": {
            "backend": {"type": "registry", "config": {
                "host": host, "repo": repo, "scheme": "http",
                "timeout": 10, "connect_timeout": 5, "retry_limit": 2
            }},
            "cache": {"type": "blobcache", "config": {"work_dir": cache.to_string_lossy()}}
        },
        "mode": "direct",
        "digest_validate": false,
        "enable_xattr": true,
        "fs_prefetch": {"enable": false}
    })
    .to_string()
}

/// nydusd v1 config JSON (as nydus-snapshotter writes it) for a localfs blob dir.
pub fn localfs_config(blob_dir: &Path) -> String {
    serde_json::json!({
        "device": {
            "backend": {"type": "localfs", "config": {"dir": blob_dir.to_string_lossy()}},
            "cache": {"type": ""}
        },
        "mode": "direct",
        "digest_validate": false,
        "enable_xattr": true,
        "fs_prefetch": {"enable": false}
    })
    .to_string()
}
