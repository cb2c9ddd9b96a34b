//! A userspace vhost-user-fs frontend (no VMM): guest memory in a shared memfd, split
//! virtqueues laid out in it, FUSE requests written into descriptor chains.
//!
//! Shared by tests/vhost_user.rs (protocol checks against our device) and the RAFS read
//! benchmark (benches/rafs_read.rs), which drives any vhost-user-fs backend socket: ours,
//! upstream nydusd in virtiofs mode, upstream virtiofsd. Queue 0 is the hiprio queue; request
//! queues are 1..=N. [`Queue::run`] keeps up to `depth` operations in flight on one queue and
//! records each request's latency; drive several queues at once by running each from its own
//! thread (`std::thread::scope` over `driver.queues[1..].iter_mut()`).
#![allow(dead_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_OPENDIR: u32 = 27;
pub const FUSE_RELEASEDIR: u32 = 29;
pub const FUSE_READDIRPLUS: u32 = 44;

/// Size of `fuse_out_header`.
pub const OUT_HEADER: usize = 16;
/// Size of `fuse_entry_out` (a LOOKUP reply, and the head of each `fuse_direntplus`).
pub const ENTRY_OUT: usize = 128;

/// Virtio feature bits a vhost-user-fs backend must offer: VERSION_1 (32), RING_INDIRECT_DESC
/// (28), RING_EVENT_IDX (29) and VHOST_USER_F_PROTOCOL_FEATURES (30).
pub const EXPECTED_FEATURES: [u32; 4] = [32, 28, 29, 30];

/// Guest memory: a shared memfd mapped in this process.
pub struct Mem {
    fd: std::fs::File,
    base: *mut u8,
    size: usize,
}

// SAFETY: the mapping is plain shared memory, valid for the life of `Mem`; all accesses go
// through bounds-checked helpers.
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    /// `size` bytes of guest memory (allocated lazily by the kernel, as pages are touched).
    pub fn new(size: usize) -> io::Result<Mem> {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        // SAFETY: mapping `size` bytes of a file of that size, shared; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mem {
            fd: file,
            base: base.cast(),
            size,
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn check(&self, gpa: u64, len: usize) {
        assert!(
            (gpa as usize)
                .checked_add(len)
                .is_some_and(|end| end <= self.size),
            "guest access {gpa:#x}+{len} outside {} bytes",
            self.size
        );
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.check(gpa, data.len());
        // SAFETY: in bounds of the mapping (checked above); the source is a separate buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(gpa as usize), data.len())
        };
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.read_into(gpa, &mut v);
        v
    }

    pub fn read_into(&self, gpa: u64, out: &mut [u8]) {
        self.check(gpa, out.len());
        // SAFETY: in bounds of the mapping (checked above); `out` is a separate buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(gpa as usize), out.as_mut_ptr(), out.len())
        };
    }

    pub fn u16_volatile(&self, gpa: u64) -> u16 {
        self.check(gpa, 2);
        assert_eq!(gpa % 2, 0);
        // SAFETY: in bounds (checked) and 2-byte aligned (checked): ring index fields are.
        unsafe { std::ptr::read_volatile(self.base.add(gpa as usize) as *const u16) }
    }

    pub fn u32_at(&self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read_into(gpa, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn u64_at(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read_into(gpa, &mut b);
        u64::from_le_bytes(b)
    }

    pub fn hva(&self, gpa: u64) -> u64 {
        self.base as u64 + gpa
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

/// How each queue is laid out in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Ring size (a power of two); each request takes two descriptors.
    pub queue_size: u16,
    /// Bytes of device-writable reply buffer per request slot.
    pub reply_size: u32,
}

/// Bytes of device-readable request buffer per slot.
pub const REQ_AREA: u64 = 4096;
/// Guest memory reserved for one queue's descriptor table and rings (sized for 1024 entries).
const RING_AREA: u64 = 0x8000;

impl Layout {
    pub fn slots(&self) -> u16 {
        self.queue_size / 2
    }

    fn slot_size(&self) -> u64 {
        (REQ_AREA + u64::from(self.reply_size)).next_multiple_of(4096)
    }

    fn queue_area(&self) -> u64 {
        RING_AREA + u64::from(self.slots()) * self.slot_size()
    }

    /// Guest memory needed for `nq` queues (hiprio included).
    pub fn mem_size(&self, nq: usize) -> usize {
        (self.queue_area() * nq as u64) as usize
    }
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            queue_size: 64,
            reply_size: 4096,
        }
    }
}

/// One FUSE request to send.
#[derive(Clone, Debug)]
pub struct Req {
    pub opcode: u32,
    pub nodeid: u64,
    pub body: Vec<u8>,
    /// Device-writable bytes offered for the reply (header included).
    pub reply_len: u32,
}

impl Req {
    pub fn new(opcode: u32, nodeid: u64, body: Vec<u8>, reply_len: u32) -> Req {
        Req {
            opcode,
            nodeid,
            body,
            reply_len,
        }
    }
}

/// A completed request's reply, still in guest memory.
pub struct Reply<'a> {
    pub error: i32,
    /// Reply length from the FUSE header (equal to the used length; checked).
    pub len: u32,
    mem: &'a Mem,
    gpa: u64,
}

impl Reply<'_> {
    /// Payload bytes after the header.
    pub fn payload_len(&self) -> usize {
        (self.len as usize).saturating_sub(OUT_HEADER)
    }

    /// Copies `len` payload bytes from payload offset `off`.
    pub fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.payload_len());
        self.mem.read(self.gpa + (OUT_HEADER + off) as u64, len)
    }

    pub fn read_into(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= self.payload_len());
        self.mem
            .read_into(self.gpa + (OUT_HEADER + off) as u64, out)
    }

    pub fn u32_at(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.payload_len());
        self.mem.u32_at(self.gpa + (OUT_HEADER + off) as u64)
    }

    pub fn u64_at(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.payload_len());
        self.mem.u64_at(self.gpa + (OUT_HEADER + off) as u64)
    }
}

/// One operation made of dependent requests (e.g. OPEN, READ, RELEASE).
pub trait Op {
    /// The next request, given the reply to the previous one (`None` at the start), or
    /// `Ok(None)` when the operation is complete. An `Err` stops the run.
    fn step(&mut self, prev: Option<&Reply<'_>>) -> Result<Option<Req>, String>;
}

/// Per-request and per-operation latencies of a [`Queue::run`], in nanoseconds.
#[derive(Default, Debug)]
pub struct RunStats {
    pub req_ns: Vec<u64>,
    pub op_ns: Vec<u64>,
    /// Reply payload bytes received.
    pub payload: u64,
    pub elapsed: Duration,
}

impl RunStats {
    pub fn merge(&mut self, other: RunStats) {
        self.req_ns.extend(other.req_ns);
        self.op_ns.extend(other.op_ns);
        self.payload += other.payload;
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// One split virtqueue laid out in guest memory.
pub struct Queue {
    pub index: usize,
    mem: Arc<Mem>,
    layout: Layout,
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
    avail_idx: u16,
    last_used: u16,
    in_flight: Vec<bool>,
    next_slot: u16,
    unique: u64,
    kick: EventFd,
    call: EventFd,
    /// See [`Strict::used_len`].
    strict_used_len: bool,
}

impl Queue {
    fn new(mem: Arc<Mem>, layout: Layout, index: usize) -> io::Result<Queue> {
        let base = index as u64 * layout.queue_area();
        Ok(Queue {
            index,
            mem,
            layout,
            desc: base,
            avail: base + 0x4000,
            used: base + 0x5000,
            bufs: base + RING_AREA,
            avail_idx: 0,
            last_used: 0,
            in_flight: vec![false; usize::from(layout.slots())],
            next_slot: 0,
            unique: ((index as u64) << 48) + 1,
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            strict_used_len: true,
            call: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Guest address of the reply buffer of `slot`.
    pub fn reply_gpa(&self, slot: u16) -> u64 {
        self.bufs + u64::from(slot) * self.layout.slot_size() + REQ_AREA
    }

    /// Writes raw request bytes `req` into `slot` and makes its two-descriptor chain
    /// available (request readable, `reply_len` bytes writable). Does not kick.
    pub fn push_raw(&mut self, slot: u16, req: &[u8], reply_len: u32) -> u64 {
        assert!(!self.in_flight[usize::from(slot)], "slot {slot} is busy");
        assert!(req.len() as u64 <= REQ_AREA, "request too long");
        assert!(reply_len <= self.layout.reply_size, "reply buffer too long");
        let rq = self.bufs + u64::from(slot) * self.layout.slot_size();
        let rp = rq + REQ_AREA;
        self.mem.write(rq, req);
        let d0 = slot * 2;
        let d1 = d0 + 1;
        let mut e = [0u8; 32];
        e[0..8].copy_from_slice(&rq.to_le_bytes());
        e[8..12].copy_from_slice(&(req.len() as u32).to_le_bytes());
        e[12..14].copy_from_slice(&VIRTQ_DESC_F_NEXT.to_le_bytes());
        e[14..16].copy_from_slice(&d1.to_le_bytes());
        e[16..24].copy_from_slice(&rp.to_le_bytes());
        e[24..28].copy_from_slice(&reply_len.to_le_bytes());
        e[28..30].copy_from_slice(&VIRTQ_DESC_F_WRITE.to_le_bytes());
        e[30..32].copy_from_slice(&0u16.to_le_bytes());
        self.mem.write(self.desc + u64::from(d0) * 16, &e);
        let ring_slot = self.avail + 4 + u64::from(self.avail_idx % self.layout.queue_size) * 2;
        self.mem.write(ring_slot, &d0.to_le_bytes());
        // The descriptors and ring entry must be visible before the new index.
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write(self.avail + 2, &self.avail_idx.to_le_bytes());
        self.in_flight[usize::from(slot)] = true;
        rp
    }

    /// Pushes a FUSE request into `slot` (not kicked); returns its `unique`.
    pub fn push(&mut self, slot: u16, r: &Req) -> u64 {
        self.unique += 1;
        let req = fuse_req(r.opcode, self.unique, r.nodeid, &r.body);
        self.push_raw(slot, &req, r.reply_len);
        self.unique
    }

    /// Tells the device that new requests are available.
    pub fn kick(&self) {
        fence(Ordering::SeqCst);
        self.kick.write(1).expect("kick eventfd");
    }

    /// Submits raw request bytes in the next free slot and kicks. Returns (head, reply gpa).
    pub fn submit(&mut self, req: &[u8], reply_len: u32) -> (u16, u64) {
        let n = self.layout.slots();
        let slot = (0..n)
            .map(|i| (self.next_slot + i) % n)
            .find(|&s| !self.in_flight[usize::from(s)])
            .expect("all slots in flight");
        self.next_slot = (slot + 1) % n;
        let rp = self.push_raw(slot, req, reply_len);
        self.kick();
        (slot * 2, rp)
    }

    /// The next used element, if any: (descriptor head, used length). Frees its slot.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let idx = self.mem.u16_volatile(self.used + 2);
        if idx == self.last_used {
            return None;
        }
        // Read the element only after seeing the index that publishes it.
        fence(Ordering::SeqCst);
        let off = self.used + 4 + u64::from(self.last_used % self.layout.queue_size) * 8;
        let id = self.mem.u32_at(off);
        let len = self.mem.u32_at(off + 4);
        self.last_used = self.last_used.wrapping_add(1);
        if let Some(f) = self.in_flight.get_mut((id / 2) as usize) {
            *f = false;
        }
        Some((id, len))
    }

    /// Waits up to `limit` for the next used element; returns (id, len).
    pub fn wait_used(&mut self, limit: Duration) -> Option<(u32, u32)> {
        let t0 = Instant::now();
        loop {
            if let Some(u) = self.pop_used() {
                return Some(u);
            }
            let left = limit.saturating_sub(t0.elapsed());
            if left.is_zero() {
                return None;
            }
            // The used ring is checked again after every wake-up and at least every 100 ms,
            // so a missed or coalesced interrupt costs time, never a lost completion.
            self.wait_call(left.min(Duration::from_millis(100)));
        }
    }

    /// Blocks until the device signals the call eventfd or `limit` passes; resets it.
    fn wait_call(&self, limit: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            // Non-blocking: EAGAIN only means another wake-up already reset it.
            let _ = self.call.read();
        }
    }

    /// Runs operations from `next_op` with up to `depth` of them in flight, each request
    /// waiting at most `timeout`. Every reply is checked (used length equals the FUSE reply
    /// length, `unique` matches) before the operation sees it.
    pub fn run<O, F>(
        &mut self,
        depth: usize,
        timeout: Duration,
        mut next_op: F,
    ) -> io::Result<RunStats>
    where
        O: Op,
        F: FnMut() -> Option<O>,
    {
        let depth = depth.clamp(1, usize::from(self.layout.slots()));
        assert!(self.in_flight.iter().all(|f| !f), "run needs an idle queue");
        struct Slot<O> {
            op: O,
            unique: u64,
            op_start: Instant,
            req_start: Instant,
        }
        let mut slots: Vec<Option<Slot<O>>> = (0..depth).map(|_| None).collect();
        let mut stats = RunStats::default();
        let mut active = 0usize;
        let mut exhausted = false;
        let t0 = Instant::now();
        let fail = |m: String| io::Error::other(format!("queue: {m}"));
        // Fills idle slots with new operations; returns whether anything was pushed.
        let mut fill = |q: &mut Queue,
                        slots: &mut Vec<Option<Slot<O>>>,
                        active: &mut usize,
                        exhausted: &mut bool|
         -> io::Result<bool> {
            let mut pushed = false;
            for (i, s) in slots.iter_mut().enumerate() {
                while s.is_none() && !*exhausted {
                    let Some(mut op) = next_op() else {
                        *exhausted = true;
                        break;
                    };
                    if let Some(req) = op.step(None).map_err(fail)? {
                        let now = Instant::now();
                        let unique = q.push(i as u16, &req);
                        *s = Some(Slot {
                            op,
                            unique,
                            op_start: now,
                            req_start: now,
                        });
                        *active += 1;
                        pushed = true;
                    }
                }
            }
            Ok(pushed)
        };
        if fill(self, &mut slots, &mut active, &mut exhausted)? {
            self.kick();
        }
        let mut last_progress = Instant::now();
        while active > 0 {
            let mut pushed = false;
            let mut progressed = false;
            while let Some((id, used_len)) = self.pop_used() {
                progressed = true;
                let now = Instant::now();
                let slot = (id / 2) as usize;
                let Some(mut s) = slots.get_mut(slot).and_then(Option::take) else {
                    return Err(fail(format!("used id {id} was not in flight")));
                };
                stats.req_ns.push((now - s.req_start).as_nanos() as u64);
                let rp = self.reply_gpa(slot as u16);
                let (len, error, unique) = out_header(&self.mem, rp);
                if unique != s.unique {
                    return Err(fail(format!("reply unique {unique}, sent {}", s.unique)));
                }
                if len != used_len && (self.strict_used_len || used_len != 0) {
                    return Err(fail(format!(
                        "FUSE reply length {len}, used length {used_len}"
                    )));
                }
                let reply = Reply {
                    error,
                    len,
                    mem: &self.mem,
                    gpa: rp,
                };
                stats.payload += reply.payload_len() as u64;
                match s.op.step(Some(&reply)).map_err(fail)? {
                    Some(req) => {
                        s.unique = self.push(slot as u16, &req);
                        s.req_start = Instant::now();
                        slots[slot] = Some(s);
                        pushed = true;
                    }
                    None => {
                        stats.op_ns.push((now - s.op_start).as_nanos() as u64);
                        active -= 1;
                    }
                }
            }
            pushed |= fill(self, &mut slots, &mut active, &mut exhausted)?;
            if pushed {
                self.kick();
            }
            if progressed {
                last_progress = Instant::now();
            } else if last_progress.elapsed() > timeout {
                return Err(fail(format!("no completion within {timeout:?}")));
            }
            if active > 0 && !pushed {
                self.wait_call(Duration::from_millis(100));
            }
        }
        stats.elapsed = t0.elapsed();
        Ok(stats)
    }
}

/// A request's bytes: `fuse_in_header` (uid, gid, pid 0) and `body`.
pub fn fuse_req(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + body.len());
    v.extend_from_slice(&((40 + body.len()) as u32).to_le_bytes());
    v.extend_from_slice(&opcode.to_le_bytes());
    v.extend_from_slice(&unique.to_le_bytes());
    v.extend_from_slice(&nodeid.to_le_bytes());
    v.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
    v.extend_from_slice(body);
    v
}

/// (len, error, unique) of the reply at `gpa`.
pub fn out_header(mem: &Mem, gpa: u64) -> (u32, i32, u64) {
    let mut b = [0u8; 16];
    mem.read_into(gpa, &mut b);
    (
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        i32::from_le_bytes(b[4..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..16].try_into().unwrap()),
    )
}

/// `fuse_init_in` for protocol 7.31.
pub fn init_body() -> Vec<u8> {
    let mut body = Vec::new();
    for v in [7u32, 31, 0x20000, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body
}

/// `fuse_getattr_in` without a file handle.
pub fn getattr_body() -> Vec<u8> {
    vec![0u8; 16]
}

/// `fuse_open_in` with `flags`.
pub fn open_body(flags: u32) -> Vec<u8> {
    let mut v = flags.to_le_bytes().to_vec();
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// `fuse_read_in` (also READDIRPLUS's).
pub fn read_body(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&fh.to_le_bytes());
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(&[0u8; 20]); // read_flags, lock_owner, flags, padding
    v
}

/// `fuse_release_in` for `fh`.
pub fn release_body(fh: u64) -> Vec<u8> {
    let mut v = fh.to_le_bytes().to_vec();
    v.extend_from_slice(&[0u8; 16]); // flags, release_flags, lock_owner
    v
}

/// NUL-terminated name, a LOOKUP body.
pub fn name_body(name: &[u8]) -> Vec<u8> {
    let mut v = name.to_vec();
    v.push(0);
    v
}

/// One entry of a READDIRPLUS reply.
#[derive(Clone, Debug)]
pub struct DirentPlus {
    pub nodeid: u64,
    pub name: Vec<u8>,
    /// `st_mode` from the entry's attributes.
    pub mode: u32,
    pub size: u64,
    /// The directory offset of the next entry.
    pub off: u64,
}

/// Parses a READDIRPLUS reply payload.
pub fn parse_direntplus(buf: &[u8]) -> Vec<DirentPlus> {
    let mut out = Vec::new();
    let mut p = 0usize;
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
    while p + ENTRY_OUT + 24 <= buf.len() {
        let nodeid = u64_at(p);
        // fuse_attr starts at 40 in fuse_entry_out: ino, size, ... mode at 40 + 60.
        let size = u64_at(p + 40 + 8);
        let mode = u32_at(p + 40 + 60);
        let d = p + ENTRY_OUT;
        let off = u64_at(d + 8);
        let namelen = u32_at(d + 16) as usize;
        if d + 24 + namelen > buf.len() {
            break;
        }
        out.push(DirentPlus {
            nodeid,
            name: buf[d + 24..d + 24 + namelen].to_vec(),
            mode,
            size,
            off,
        });
        p = d + (24 + namelen).next_multiple_of(8);
    }
    out
}

/// What [`Driver::connect_with`] insists on, beyond what any vhost-user-fs backend offers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Strict {
    /// Every bit of [`EXPECTED_FEATURES`] must be offered.
    pub features: bool,
    /// MQ, CONFIGURE_MEM_SLOTS and REPLY_ACK must be offered.
    pub protocol: bool,
    /// GET_QUEUE_NUM must equal the number of queues asked for.
    pub exact_queues: bool,
    /// The used length must equal the FUSE reply length. nydusd always reports 0, which
    /// Linux accepts (it takes the length from the FUSE header); without this, so do we.
    pub used_len: bool,
}

impl Strict {
    pub fn all() -> Strict {
        Strict {
            features: true,
            protocol: true,
            exact_queues: true,
            used_len: true,
        }
    }
}

/// A connected frontend: the vhost-user socket, guest memory and the queues set up in it.
pub struct Driver {
    pub fe: Frontend,
    pub mem: Arc<Mem>,
    /// Queue 0 is hiprio; 1.. are request queues.
    pub queues: Vec<Queue>,
    /// What GET_QUEUE_NUM reported (hiprio included).
    pub backend_queues: u64,
}

fn vu<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> io::Result<T> {
    r.map_err(|e| io::Error::other(format!("vhost-user {what}: {e}")))
}

impl Driver {
    /// Connects with the default layout and strict checks (for testing our device), and
    /// enables every ring.
    pub fn connect(sock: &Path, nq: usize) -> Driver {
        let mut d = Driver::connect_disabled(sock, nq);
        d.enable_all().unwrap();
        d
    }

    /// Sets everything up but leaves the rings disabled (no SET_VRING_ENABLE yet).
    pub fn connect_disabled(sock: &Path, nq: usize) -> Driver {
        Driver::connect_with(sock, nq, Layout::default(), Strict::all()).unwrap()
    }

    /// Connects to any vhost-user-fs backend and sets up to `want` queues (hiprio included)
    /// laid out as `layout`, rings not enabled yet. With a non-strict `strict`, asks only for
    /// what every backend offers (VERSION_1, PROTOCOL_FEATURES; MQ and REPLY_ACK if offered)
    /// and uses as many queues as the backend has, up to `want` (at least hiprio and one
    /// request queue).
    pub fn connect_with(
        sock: &Path,
        want: usize,
        layout: Layout,
        strict: Strict,
    ) -> io::Result<Driver> {
        assert!(layout.queue_size.is_power_of_two() && layout.queue_size <= 1024);
        assert!(want >= 2, "hiprio and at least one request queue");
        let mut fe = vu("connect", Frontend::connect(sock, want as u64))?;
        vu("SET_OWNER", fe.set_owner())?;
        let features = vu("GET_FEATURES", fe.get_features())?;
        if strict.features {
            for bit in EXPECTED_FEATURES {
                if features & (1 << bit) == 0 {
                    return Err(io::Error::other(format!("feature bit {bit} not offered")));
                }
            }
        }
        for bit in [32, 30] {
            if features & (1 << bit) == 0 {
                return Err(io::Error::other(format!("feature bit {bit} not offered")));
            }
        }
        // VERSION_1 | PROTOCOL_FEATURES; no EVENT_IDX: every completion is signalled.
        vu("SET_FEATURES", fe.set_features((1 << 32) | (1 << 30)))?;
        let pf = vu("GET_PROTOCOL_FEATURES", fe.get_protocol_features())?;
        let wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::REPLY_ACK;
        if strict.protocol && !pf.contains(wanted) {
            return Err(io::Error::other(format!(
                "protocol features {pf:?} lack some of {wanted:?}"
            )));
        }
        let acked = pf & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
        vu("SET_PROTOCOL_FEATURES", fe.set_protocol_features(acked))?;
        let backend_queues = if acked.contains(VhostUserProtocolFeatures::MQ) {
            vu("GET_QUEUE_NUM", fe.get_queue_num())?
        } else {
            2
        };
        if strict.exact_queues && backend_queues != want as u64 {
            return Err(io::Error::other(format!(
                "backend has {backend_queues} queues, {want} asked for"
            )));
        }
        let nq = want.min(backend_queues as usize);
        if nq < 2 {
            return Err(io::Error::other(format!(
                "backend has {backend_queues} queues"
            )));
        }
        let mem = Arc::new(Mem::new(layout.mem_size(nq))?);
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: mem.size() as u64,
            userspace_addr: mem.hva(0),
            mmap_offset: 0,
            mmap_handle: mem.fd.as_raw_fd(),
        };
        vu("SET_MEM_TABLE", fe.set_mem_table(&[region]))?;
        let mut queues = Vec::new();
        for i in 0..nq {
            let mut q = Queue::new(mem.clone(), layout, i)?;
            q.strict_used_len = strict.used_len;
            vu("SET_VRING_NUM", fe.set_vring_num(i, layout.queue_size))?;
            vu(
                "SET_VRING_ADDR",
                fe.set_vring_addr(
                    i,
                    &VringConfigData {
                        queue_max_size: layout.queue_size,
                        queue_size: layout.queue_size,
                        flags: 0,
                        desc_table_addr: mem.hva(q.desc),
                        used_ring_addr: mem.hva(q.used),
                        avail_ring_addr: mem.hva(q.avail),
                        log_addr: None,
                    },
                ),
            )?;
            vu("SET_VRING_BASE", fe.set_vring_base(i, 0))?;
            vu("SET_VRING_CALL", fe.set_vring_call(i, &q.call))?;
            vu("SET_VRING_KICK", fe.set_vring_kick(i, &q.kick))?;
            queues.push(q);
        }
        Ok(Driver {
            fe,
            mem,
            queues,
            backend_queues,
        })
    }

    pub fn enable_all(&mut self) -> io::Result<()> {
        for i in 0..self.queues.len() {
            vu("SET_VRING_ENABLE", self.fe.set_vring_enable(i, true))?;
        }
        Ok(())
    }

    /// Sends a request on queue `q` (kicked); returns (head, reply gpa, unique).
    pub fn send(&mut self, q: usize, opcode: u32, nodeid: u64, body: &[u8]) -> (u16, u64, u64) {
        let queue = &mut self.queues[q];
        queue.unique += 1;
        let unique = queue.unique;
        let req = fuse_req(opcode, unique, nodeid, body);
        let reply_len = queue.layout.reply_size;
        let (head, rp) = queue.submit(&req, reply_len);
        (head, rp, unique)
    }

    /// Sends and waits for the reply; returns (error, reply gpa).
    pub fn call(&mut self, q: usize, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, u64) {
        self.try_call(q, opcode, nodeid, body, Duration::from_secs(10))
            .unwrap()
    }

    /// [`Self::call`] returning protocol violations and timeouts as errors.
    pub fn try_call(
        &mut self,
        q: usize,
        opcode: u32,
        nodeid: u64,
        body: &[u8],
        limit: Duration,
    ) -> io::Result<(i32, u64)> {
        let (head, rp, unique) = self.send(q, opcode, nodeid, body);
        let (id, len) = self.queues[q]
            .wait_used(limit)
            .ok_or_else(|| io::Error::other(format!("opcode {opcode}: no reply in {limit:?}")))?;
        let (olen, err, ou) = out_header(&self.mem, rp);
        let len_ok = olen == len || (len == 0 && !self.queues[q].strict_used_len);
        if id != u32::from(head) || ou != unique || !len_ok {
            return Err(io::Error::other(format!(
                "opcode {opcode}: used id {id} (sent {head}), unique {ou} (sent {unique}), \
                 FUSE length {olen}, used length {len}"
            )));
        }
        Ok((err, rp))
    }

    /// FUSE_INIT on the first request queue.
    pub fn init(&mut self) {
        self.try_init().unwrap()
    }

    pub fn try_init(&mut self) -> io::Result<()> {
        let (err, rp) = self.try_call(1, FUSE_INIT, 0, &init_body(), Duration::from_secs(10))?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(-err));
        }
        let major = self.mem.u32_at(rp + 16);
        if major != 7 {
            return Err(io::Error::other(format!("FUSE major {major}")));
        }
        Ok(())
    }

    pub fn lookup(&mut self, q: usize, parent: u64, name: &str) -> u64 {
        let (err, rp) = self.call(q, FUSE_LOOKUP, parent, &name_body(name.as_bytes()));
        assert_eq!(err, 0, "lookup {name}");
        self.mem.u64_at(rp + 16)
    }
}
