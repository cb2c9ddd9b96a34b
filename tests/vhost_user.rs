//! The vhost-user-fs device driven by a vhost-user frontend in the test process (no VMM):
//! feature and queue negotiation, FUSE requests through real split virtqueues in shared
//! memory, requests served in parallel (a blocked OPEN does not stall other requests),
//! and reconnection after the frontend goes away.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::OpenOptions;
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, ZeroCopyWriter};
use fuse_backend_rs::api::BackendFileSystem;
use parking_lot::{Condvar, Mutex};
use rafs_virtiofsd::fs::vfs::{FsTree, FsType};
use rafs_virtiofsd::vhost_user::{self, pool::ThreadPool, DeviceConfig};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 64;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// Guest memory: a shared memfd mapped in the test process.
struct Mem {
    fd: std::fs::File,
    base: *mut u8,
}

// SAFETY: the mapping is plain shared memory, valid for the life of `Mem`; all accesses go
// through bounds-checked helpers.
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    fn new() -> Mem {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh, owned descriptor.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(MEM_SIZE as u64).unwrap();
        // SAFETY: mapping MEM_SIZE bytes of a file of that size, shared.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Mem {
            fd: file,
            base: base.cast(),
        }
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        assert!(gpa as usize + data.len() <= MEM_SIZE);
        // SAFETY: in bounds of the mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(gpa as usize), data.len())
        };
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        assert!(gpa as usize + len <= MEM_SIZE);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(gpa as usize), v.as_mut_ptr(), len) };
        v
    }

    fn read_u16_volatile(&self, gpa: u64) -> u16 {
        assert!(gpa as usize + 2 <= MEM_SIZE);
        // SAFETY: in bounds and 2-byte aligned (ring fields are).
        unsafe { std::ptr::read_volatile(self.base.add(gpa as usize) as *const u16) }
    }

    fn hva(&self, gpa: u64) -> u64 {
        self.base as u64 + gpa
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), MEM_SIZE) };
    }
}

/// One split virtqueue laid out in guest memory.
struct Queue {
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
}

impl Queue {
    fn new(i: u64) -> Queue {
        let base = i * 0x10000;
        Queue {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            bufs: 0x100000 + i * 0x100000,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(0).unwrap(),
        }
    }

    /// Submits a request with a device-readable buffer `req` and a writable buffer of
    /// `reply_len` bytes. Returns (head, reply gpa).
    fn submit(&mut self, mem: &Mem, req: &[u8], reply_len: u32) -> (u16, u64) {
        let head = self.next_desc;
        let slot = u64::from(head / 2);
        let rq = self.bufs + slot * 0x4000;
        let rp = rq + 0x1000;
        mem.write(rq, req);
        let d0 = head;
        let d1 = head + 1;
        self.next_desc = (self.next_desc + 2) % QSIZE;
        let mut e = Vec::new();
        e.extend_from_slice(&rq.to_le_bytes());
        e.extend_from_slice(&(req.len() as u32).to_le_bytes());
        e.extend_from_slice(&VIRTQ_DESC_F_NEXT.to_le_bytes());
        e.extend_from_slice(&d1.to_le_bytes());
        mem.write(self.desc + u64::from(d0) * 16, &e);
        let mut e = Vec::new();
        e.extend_from_slice(&rp.to_le_bytes());
        e.extend_from_slice(&reply_len.to_le_bytes());
        e.extend_from_slice(&VIRTQ_DESC_F_WRITE.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        mem.write(self.desc + u64::from(d1) * 16, &e);
        let ring_slot = self.avail + 4 + u64::from(self.avail_idx % QSIZE) * 2;
        mem.write(ring_slot, &head.to_le_bytes());
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write(self.avail + 2, &self.avail_idx.to_le_bytes());
        fence(Ordering::SeqCst);
        self.kick.write(1).unwrap();
        (head, rp)
    }

    /// Waits up to `limit` for the next used element; returns (id, len).
    fn wait_used(&mut self, mem: &Mem, limit: Duration) -> Option<(u32, u32)> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            let idx = mem.read_u16_volatile(self.used + 2);
            if idx != self.last_used {
                fence(Ordering::SeqCst);
                let off = self.used + 4 + u64::from(self.last_used % QSIZE) * 8;
                let b = mem.read(off, 8);
                self.last_used = self.last_used.wrapping_add(1);
                return Some((
                    u32::from_le_bytes(b[0..4].try_into().unwrap()),
                    u32::from_le_bytes(b[4..8].try_into().unwrap()),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }
}

fn fuse_req(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((40 + body.len()) as u32).to_le_bytes());
    v.extend_from_slice(&opcode.to_le_bytes());
    v.extend_from_slice(&unique.to_le_bytes());
    v.extend_from_slice(&nodeid.to_le_bytes());
    v.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
    v.extend_from_slice(body);
    v
}

/// (len, error, unique) of the reply at `gpa`.
fn out_header(mem: &Mem, gpa: u64) -> (u32, i32, u64) {
    let b = mem.read(gpa, 16);
    (
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        i32::from_le_bytes(b[4..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..16].try_into().unwrap()),
    )
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_INIT: u32 = 26;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;

struct Driver {
    fe: Frontend,
    mem: Arc<Mem>,
    queues: Vec<Queue>,
    unique: u64,
}

impl Driver {
    fn connect(sock: &Path, mem: Arc<Mem>, nq: usize) -> Driver {
        let mut d = Driver::connect_disabled(sock, mem, nq);
        d.enable_all();
        d
    }

    /// Sets everything up but leaves the rings disabled (no SET_VRING_ENABLE yet).
    fn connect_disabled(sock: &Path, mem: Arc<Mem>, nq: usize) -> Driver {
        let mut fe = Frontend::connect(sock, nq as u64).unwrap();
        fe.set_owner().unwrap();
        let features = fe.get_features().unwrap();
        for bit in [32, 28, 29, 30] {
            assert_ne!(features & (1 << bit), 0, "feature bit {bit} not offered");
        }
        // VERSION_1 | PROTOCOL_FEATURES; no EVENT_IDX: every completion is signalled.
        fe.set_features((1 << 32) | (1 << 30)).unwrap();
        let pf = fe.get_protocol_features().unwrap();
        assert!(pf.contains(
            VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                | VhostUserProtocolFeatures::REPLY_ACK
        ));
        fe.set_protocol_features(
            VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK,
        )
        .unwrap();
        assert_eq!(fe.get_queue_num().unwrap(), nq as u64);
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.hva(0),
            mmap_offset: 0,
            mmap_handle: mem.fd.as_raw_fd(),
        };
        fe.set_mem_table(&[region]).unwrap();
        let mut queues = Vec::new();
        for i in 0..nq {
            let q = Queue::new(i as u64);
            fe.set_vring_num(i, QSIZE).unwrap();
            fe.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: mem.hva(q.desc),
                    used_ring_addr: mem.hva(q.used),
                    avail_ring_addr: mem.hva(q.avail),
                    log_addr: None,
                },
            )
            .unwrap();
            fe.set_vring_base(i, 0).unwrap();
            fe.set_vring_call(i, &q.call).unwrap();
            fe.set_vring_kick(i, &q.kick).unwrap();
            queues.push(q);
        }
        Driver {
            fe,
            mem,
            queues,
            unique: 1,
        }
    }

    fn enable_all(&mut self) {
        for i in 0..self.queues.len() {
            self.fe.set_vring_enable(i, true).unwrap();
        }
    }

    fn send(&mut self, q: usize, opcode: u32, nodeid: u64, body: &[u8]) -> (u16, u64, u64) {
        self.unique += 1;
        let req = fuse_req(opcode, self.unique, nodeid, body);
        let (head, rp) = self.queues[q].submit(&self.mem, &req, 4096);
        (head, rp, self.unique)
    }

    /// Sends and waits for the reply; returns (error, reply gpa).
    fn call(&mut self, q: usize, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, u64) {
        let (head, rp, unique) = self.send(q, opcode, nodeid, body);
        let (id, len) = self.queues[q]
            .wait_used(&self.mem, Duration::from_secs(10))
            .expect("no reply");
        assert_eq!(id, u32::from(head));
        let (olen, err, ou) = out_header(&self.mem, rp);
        assert_eq!(ou, unique);
        assert_eq!(olen, len, "used length must equal the FUSE reply length");
        (err, rp)
    }

    fn init(&mut self) {
        let mut body = Vec::new();
        for v in [7u32, 31, 0x20000, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let (err, rp) = self.call(1, FUSE_INIT, 0, &body);
        assert_eq!(err, 0);
        let major = u32::from_le_bytes(self.mem.read(rp + 16, 4).try_into().unwrap());
        assert_eq!(major, 7);
    }

    fn lookup(&mut self, q: usize, parent: u64, name: &str) -> u64 {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        let (err, rp) = self.call(q, FUSE_LOOKUP, parent, &body);
        assert_eq!(err, 0, "lookup {name}");
        u64::from_le_bytes(self.mem.read(rp + 16, 8).try_into().unwrap())
    }
}

fn getattr_body() -> Vec<u8> {
    vec![0u8; 16]
}

/// The daemon's accept loop on a fresh socket, in a thread.
struct TestServer {
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), rafs_virtiofsd::vhost_user::VhostUserFsError>>,
}

impl TestServer {
    fn start(
        tree: &Arc<FsTree>,
        num_request_queues: usize,
        pool: usize,
        on_connect: Box<dyn Fn(bool) + Send + Sync>,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vhost.sock");
        let mut listener = vhost_user::listen(&sock).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = DeviceConfig {
            num_request_queues,
            pool: (pool > 0).then(|| ThreadPool::new("test-pool", pool).unwrap()),
        };
        let thread = {
            let tree = tree.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                vhost_user::serve(&mut listener, tree, cfg, stop, &*on_connect)
            })
        };
        TestServer {
            _dir: dir,
            sock,
            stop,
            thread,
        }
    }

    /// Stops the loop (no VMM connected) and checks it returns within 10 s without error.
    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let t0 = Instant::now();
        while !self.thread.is_finished() {
            assert!(t0.elapsed() < Duration::from_secs(10), "serve did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.thread.join().unwrap().unwrap();
    }
}

#[test]
fn fuse_over_virtqueues_parallel_and_reconnect() {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("hello"), b"hi").unwrap();
    let tree = Arc::new(FsTree::new());
    tree.mount(
        FsType::Passthrough,
        share.path().to_str().unwrap(),
        "",
        "/containers",
    )
    .unwrap();
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    tree.mount_backend(
        Box::new(SlowFs { gate: gate.clone() }),
        FsType::Rafs,
        "slowfs",
        serde_json::Value::Null,
        "/slow",
    )
    .unwrap();
    let srv = TestServer::start(&tree, 2, 4, Box::new(|_| {}));
    let sock = srv.sock.clone();

    let mem = Arc::new(Mem::new());
    let mut drv = Driver::connect(&sock, mem.clone(), 3);
    drv.init();
    let containers = drv.lookup(1, 1, "containers");
    let hello = drv.lookup(1, containers, "hello");
    let slow = drv.lookup(1, 1, "slow");
    let blocked = drv.lookup(1, slow, "blocked");

    // READ of "blocked" blocks in the backend until the gate opens.
    let (err, rp) = drv.call(1, FUSE_OPEN, blocked, &[0u8; 8]);
    assert_eq!(err, 0);
    let fh = u64::from_le_bytes(mem.read(rp + 16, 8).try_into().unwrap());
    let mut read_in = Vec::new();
    read_in.extend_from_slice(&fh.to_le_bytes()); // fh
    read_in.extend_from_slice(&0u64.to_le_bytes()); // offset
    read_in.extend_from_slice(&4096u32.to_le_bytes()); // size
    read_in.extend_from_slice(&[0u8; 20]); // read_flags, lock_owner, flags, padding
    let (slow_head, slow_rp, _) = drv.send(1, FUSE_READ, blocked, &read_in);
    let early = drv.queues[1].wait_used(&mem, Duration::from_millis(300));
    assert!(early.is_none(), "blocked READ completed early: {early:?}");
    // Meanwhile other requests on the same queue and on the other queue complete.
    let (err, _) = drv.call(1, FUSE_GETATTR, hello, &getattr_body());
    assert_eq!(err, 0);
    let (err, _) = drv.call(2, FUSE_GETATTR, hello, &getattr_body());
    assert_eq!(err, 0);
    // Open the gate: the blocked request completes.
    *gate.0.lock() = true;
    gate.1.notify_all();
    let (id, _) = drv.queues[1]
        .wait_used(&mem, Duration::from_secs(10))
        .expect("blocked GETATTR never completed");
    assert_eq!(id, u32::from(slow_head));
    assert_eq!(out_header(&mem, slow_rp).1, 0);

    // The VMM goes away and a new one connects: same tree, FUSE_INIT accepted again.
    drop(drv);
    let mem2 = Arc::new(Mem::new());
    let mut drv2 = Driver::connect(&sock, mem2, 3);
    drv2.init();
    let containers = drv2.lookup(2, 1, "containers");
    drv2.lookup(2, containers, "hello");
    drop(drv2);

    srv.stop();
}

/// A backend whose GETATTR of inode 2 waits for a gate: stands in for a RAFS read
/// waiting on a slow registry.
struct SlowFs {
    gate: Arc<(Mutex<bool>, Condvar)>,
}

fn attr(ino: u64, mode: u32) -> libc::stat64 {
    // SAFETY: stat64 is plain old data; all-zero is a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = ino;
    st.st_mode = mode;
    st.st_nlink = 1;
    st
}

impl FileSystem for SlowFs {
    type Inode = u64;
    type Handle = u64;

    fn lookup(&self, _: &Context, parent: u64, name: &std::ffi::CStr) -> std::io::Result<Entry> {
        if parent == 1 && name.to_bytes() == b"blocked" {
            Ok(Entry {
                inode: 2,
                generation: 0,
                attr: attr(2, libc::S_IFREG | 0o644),
                attr_flags: 0,
                attr_timeout: Duration::ZERO,
                entry_timeout: Duration::ZERO,
            })
        } else {
            Err(std::io::Error::from_raw_os_error(libc::ENOENT))
        }
    }

    fn getattr(
        &self,
        _: &Context,
        inode: u64,
        _: Option<u64>,
    ) -> std::io::Result<(libc::stat64, Duration)> {
        match inode {
            1 => Ok((attr(1, libc::S_IFDIR | 0o755), Duration::ZERO)),
            2 => Ok((attr(2, libc::S_IFREG | 0o644), Duration::ZERO)),
            _ => Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    fn open(
        &self,
        _: &Context,
        _: u64,
        _: u32,
        _: u32,
    ) -> std::io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        Ok((Some(7), OpenOptions::empty(), None))
    }

    /// READ of "blocked" waits for the gate, like a RAFS read waiting on a slow registry.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _: &Context,
        inode: u64,
        _: u64,
        w: &mut dyn ZeroCopyWriter,
        _: u32,
        _: u64,
        _: Option<u64>,
        _: u32,
    ) -> std::io::Result<usize> {
        if inode == 2 {
            let mut open = self.gate.0.lock();
            while !*open {
                self.gate.1.wait(&mut open);
            }
        }
        std::io::Write::write(w, b"slow")
    }
}

impl BackendFileSystem for SlowFs {
    fn mount(&self) -> std::io::Result<(Entry, u64)> {
        Ok((
            Entry {
                inode: 1,
                generation: 0,
                attr: attr(1, libc::S_IFDIR | 0o755),
                attr_flags: 0,
                attr_timeout: Duration::ZERO,
                entry_timeout: Duration::ZERO,
            },
            2,
        ))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A guest kick can overtake the VMM's SET_VRING_ENABLE (it travels on its own eventfd).
/// vhost-user-backend drops such a kick; the device's sweep must still serve the request.
#[test]
fn kick_before_vring_enable_is_not_lost() {
    let tree = Arc::new(FsTree::new());
    let srv = TestServer::start(&tree, 1, 0, Box::new(|_| {}));
    let sock = srv.sock.clone();
    let mem = Arc::new(Mem::new());
    let mut drv = Driver::connect_disabled(&sock, mem.clone(), 2);
    let mut body = Vec::new();
    for v in [7u32, 31, 0x20000, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let (head, _, _) = drv.send(1, FUSE_INIT, 0, &body);
    // Let the backend consume (and drop) the kick while the ring is still disabled.
    std::thread::sleep(Duration::from_millis(300));
    drv.enable_all();
    let (id, _) = drv.queues[1]
        .wait_used(&mem, Duration::from_secs(5))
        .expect("FUSE_INIT sent before SET_VRING_ENABLE was never served");
    assert_eq!(id, u32::from(head));
    drop(drv);
    srv.stop();
}

/// Mounts the v6-zstd-64k-base fixture (localfs blobs) at `mountpoint`.
fn mount_fixture(tree: &FsTree, mountpoint: &str) {
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/v6-zstd-64k-base");
    let config = serde_json::json!({
        "device": {"backend": {"type": "localfs", "config": {"dir": img}}},
        "mode": "direct",
    })
    .to_string();
    tree.mount(
        FsType::Rafs,
        img.join("image.boot").to_str().unwrap(),
        &config,
        mountpoint,
    )
    .unwrap();
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Reconnecting VMMs do not leak fds in the daemon: vring eventfds, worker exit events (which
/// vhost-user-backend 0.21 leaks, reclaimed by `close_exit_consumers`) and memory mappings
/// are all released with each connection. Served here: a RAFS image and a passthrough share
/// (whose inodes, cached fds and mount fds go with the session).
#[test]
fn reconnects_do_not_leak_fds() {
    let tree = Arc::new(FsTree::new());
    mount_fixture(&tree, "/rafs/img");
    let share = tempfile::tempdir().unwrap();
    std::fs::create_dir(share.path().join("d")).unwrap();
    std::fs::write(share.path().join("d/f"), b"x").unwrap();
    tree.mount(
        FsType::Passthrough,
        share.path().to_str().unwrap(),
        "",
        "/pt",
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    let tx = Mutex::new(tx);
    let srv = TestServer::start(
        &tree,
        2,
        2,
        Box::new(move |c| {
            let _ = tx.lock().send(c);
        }),
    );
    let sock = srv.sock.clone();
    let round = |n: usize| {
        for _ in 0..n {
            let mem = Arc::new(Mem::new());
            let mut drv = Driver::connect(&sock, mem, 3);
            drv.init();
            let rafs = drv.lookup(1, 1, "rafs");
            let img = drv.lookup(1, rafs, "img");
            drv.lookup(2, img, "big.bin");
            let pt = drv.lookup(1, 1, "pt");
            let d = drv.lookup(2, pt, "d");
            drv.lookup(1, d, "f");
            drop(drv);
            // Wait for the daemon side to finish tearing the connection down.
            while rx
                .recv_timeout(Duration::from_secs(10))
                .expect("disconnect seen")
            {}
        }
        open_fds()
    };
    let after_warmup = round(2);
    let after_many = round(20);
    assert!(
        after_many <= after_warmup + 2,
        "fds grew from {after_warmup} to {after_many} over 20 reconnects"
    );
    srv.stop();
}

/// A hostile guest: 1,500 FUSE requests with random opcodes, node ids (real ones, the
/// tmpfile range, random), truncated headers, lying length fields and random bodies with
/// path-like names. Every request is completed (no hang), the daemon keeps serving, and
/// nothing outside the shared directory changes.
#[test]
fn random_requests_get_answers_and_stay_inside_the_share() {
    let top = tempfile::tempdir().unwrap();
    let share = top.path().join("share");
    let outside = top.path().join("outside");
    std::fs::create_dir_all(share.join("dir")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(share.join("hello"), b"hi").unwrap();
    std::fs::write(outside.join("secret"), b"keep").unwrap();
    let tree = Arc::new(FsTree::new());
    tree.mount(
        FsType::Passthrough,
        share.to_str().unwrap(),
        "",
        "/containers",
    )
    .unwrap();
    mount_fixture(&tree, "/rafs/img");
    let srv = TestServer::start(&tree, 1, 2, Box::new(|_| {}));
    let mem = Arc::new(Mem::new());
    let mut drv = Driver::connect(&srv.sock, mem.clone(), 2);
    drv.init();
    let containers = drv.lookup(1, 1, "containers");
    let hello = drv.lookup(1, containers, "hello");
    let dir = drv.lookup(1, containers, "dir");
    let rafs = drv.lookup(1, 1, "rafs");
    let img_root = drv.lookup(1, rafs, "img");
    let big = drv.lookup(1, img_root, "big.bin");

    // RV_FUZZ_SEED / RV_FUZZ_COUNT run other or longer sequences.
    let mut seed = std::env::var("RV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64)
        | 1;
    let count: u64 = std::env::var("RV_FUZZ_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let nodeids = [
        0,
        1,
        containers,
        hello,
        dir,
        rafs,
        img_root,
        big,
        1 << 55,
        (1 << 55) + 1,
        u64::MAX,
    ];
    let names: [&[u8]; 8] = [
        b"hello",
        b"..",
        b".",
        b"a/b",
        b"/etc/passwd",
        b"new",
        b"",
        b"dir",
    ];
    // FALLOCATE and COPY_FILE_RANGE are left out only so that a random length cannot fill
    // the test machine's disk.
    let skip = [43u32, 47];
    for i in 0..count {
        let opcode = loop {
            let op = (rnd() % 52) as u32 + 1;
            if !skip.contains(&op) {
                break op;
            }
        };
        let nodeid = if rnd() % 8 == 0 {
            rnd()
        } else {
            nodeids[(rnd() % nodeids.len() as u64) as usize]
        };
        let mut body: Vec<u8> = (0..rnd() % 64).map(|_| rnd() as u8).collect();
        if rnd() % 2 == 0 {
            body.extend_from_slice(names[(rnd() % names.len() as u64) as usize]);
            body.push(0);
        }
        let mut req = fuse_req(opcode, 1000 + i, nodeid, &body);
        match rnd() % 10 {
            0 => req.truncate((rnd() % 40) as usize + 1), // header cut short
            1 => req[0..4].copy_from_slice(&(rnd() as u32).to_le_bytes()), // lying length
            _ => {}
        }
        let (head, _) = drv.queues[1].submit(&mem, &req, 4096);
        let (id, _) = drv.queues[1]
            .wait_used(&mem, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("request {i} (opcode {opcode}) never completed"));
        assert_eq!(id, u32::from(head));
    }
    // Still serving, and the tree is intact.
    let (err, _) = drv.call(1, FUSE_GETATTR, 1, &getattr_body());
    assert_eq!(err, 0);
    assert!(!srv.thread.is_finished(), "the accept loop ended");
    drop(drv);
    let outside_names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside_names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"keep");
    let top_names: Vec<_> = std::fs::read_dir(top.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top_names.len(), 2, "{top_names:?}");
    srv.stop();
}
