//! The vhost-user-fs device: a vhost-user-backend backend that pops FUSE requests from the
//! virtqueues and serves them with fuse-backend-rs's `Server` over the daemon's [`Vfs`].
//!
//! Queues: queue 0 is the hiprio queue (FORGET/INTERRUPT), queues 1..=N are request queues.
//! Each queue has its own epoll worker thread (vhost-user-backend `queues_per_thread`). The
//! worker of a request queue pops descriptor chains and hands each to a shared
//! [`ThreadPool`]; the pool thread decodes the request, runs it, writes the reply into guest
//! memory, then, under the vring lock, adds the used element and signals the guest if
//! EVENT_IDX says it wants a notification. Hiprio requests are handled inline.
//!
//! Connections: [`serve`] accepts one VMM connection at a time on a [`Listener`]; when the
//! VMM goes away it waits for in-flight requests, drops the per-connection state and
//! accepts again. The [`FsTree`] (mounts, inodes) is kept across connections.

pub mod pool;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::timerfd::TimerFd;

use crate::fs::dispatch::Dispatcher;
use crate::fs::vfs::{FsMetrics, FsTree, InlineReads};
use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, ReadIn};
use pool::ThreadPool;
use vm_memory::{Address, ByteValued, Bytes};

/// Largest virtqueue size accepted (QEMU and cloud-hypervisor default to 1024).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Upper bound for `--num-request-queues` (queue masks are 64-bit; one thread per queue).
pub const MAX_REQUEST_QUEUES: usize = 16;
/// Index of the hiprio queue.
const HIPRIO_QUEUE: usize = 0;
/// How often each worker looks for buffers whose kick was lost (see [`VhostUserFsBackend::sweep`]).
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Virtio feature bits offered: VERSION_1, RING_INDIRECT_DESC, RING_EVENT_IDX and
/// VHOST_USER_F_PROTOCOL_FEATURES.
pub const VIRTIO_FEATURES: u64 = (1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);

type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;
type Vring = VringRwLock<GuestMem>;
type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>;

/// Errors of the vhost-user device.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserFsError {
    /// Binding the vhost-user socket failed.
    #[error("cannot listen on vhost-user socket {path}: {source}")]
    Listen {
        /// Socket path.
        path: String,
        /// Underlying error.
        source: vhost::vhost_user::Error,
    },
    /// vhost-user-backend failed to set up or run a connection.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Settings of the device, fixed for the daemon's lifetime.
#[derive(Clone)]
pub struct DeviceConfig {
    /// Number of request queues offered (the hiprio queue comes on top).
    pub num_request_queues: usize,
    /// Requests of the request queues are run on this pool (None: inline on the queue's
    /// worker thread).
    pub pool: Option<Arc<ThreadPool>>,
}

/// Per-connection backend state.
pub struct VhostUserFsBackend {
    server: Arc<Dispatcher>,
    inline: Arc<InlineReads>,
    metrics: Arc<FsMetrics>,
    cfg: DeviceConfig,
    event_idx: AtomicBool,
    mem: Mutex<Option<GuestMem>>,
    inflight: Arc<AtomicUsize>,
    exit_notifiers: Mutex<Vec<EventNotifier>>,
    /// The consumer ends of the exit events. vhost-user-backend 0.21 takes them with
    /// `into_raw_fd()` into its worker's epoll and never closes them; see
    /// [`Self::close_exit_consumers`].
    exit_consumers: Mutex<Vec<RawFd>>,
    /// Per worker thread: the timer behind the lost-kick sweep.
    sweep_timers: Mutex<Vec<TimerFd>>,
}

impl VhostUserFsBackend {
    /// New backend state for one VMM connection, serving `tree`.
    pub fn new(tree: &FsTree, cfg: DeviceConfig) -> Self {
        VhostUserFsBackend {
            server: Arc::new(tree.dispatcher()),
            inline: tree.inline_reads(),
            metrics: tree.metrics_hook(),
            cfg,
            event_idx: AtomicBool::new(false),
            mem: Mutex::new(None),
            inflight: Arc::new(AtomicUsize::new(0)),
            exit_notifiers: Mutex::new(Vec::new()),
            exit_consumers: Mutex::new(Vec::new()),
            sweep_timers: Mutex::new(Vec::new()),
        }
    }

    /// Epoll data of the sweep timer event (ids up to `num_queues()` belong to the library).
    fn sweep_event(&self) -> u16 {
        self.num_queues() as u16 + 1
    }

    /// Arms a periodic timer on every worker of `daemon` that runs [`Self::sweep`].
    ///
    /// vhost-user-backend 0.21 consumes and drops a kick that arrives before
    /// SET_VRING_ENABLE has been handled, and enabling a ring does not look at it again. The
    /// guest's kick travels on its own eventfd, so it can overtake the VMM's enable message
    /// on the socket; the request would then wait forever (seen as a hung FUSE_INIT).
    fn arm_sweep(&self, daemon: &VhostUserDaemon<Arc<VhostUserFsBackend>>) -> io::Result<()> {
        let mut timers = Vec::new();
        for h in daemon.get_epoll_handlers() {
            let mut t = TimerFd::new()?;
            t.reset(SWEEP_INTERVAL, Some(SWEEP_INTERVAL))?;
            h.register_listener(t.as_raw_fd(), EventSet::IN, u64::from(self.sweep_event()))?;
            timers.push(t);
        }
        *self.sweep_timers.lock().unwrap_or_else(|e| e.into_inner()) = timers;
        Ok(())
    }

    /// Serves buffers that are waiting on a started ring although no kick is pending.
    fn sweep(&self, thread_id: usize, vrings: &[Vring]) -> io::Result<()> {
        if let Some(t) = self
            .sweep_timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(thread_id)
        {
            // Readable (epoll said so): clears the expiration count without blocking.
            t.wait()?;
        }
        let Some(mem) = self
            .mem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.memory())
        else {
            return Ok(());
        };
        for vring in vrings {
            let pending = {
                let state = vring.get_ref();
                let q = state.get_queue();
                q.ready()
                    && q.avail_idx(&*mem, std::sync::atomic::Ordering::Acquire)
                        .map(|i| i.0 != q.next_avail())
                        .unwrap_or(false)
            };
            if pending {
                log::debug!("vhost-user: worker {thread_id} serves buffers without a kick");
                self.process_queue(thread_id, vring)?;
            }
        }
        Ok(())
    }

    /// Waits (up to `timeout`) until no request handed to the pool is still running.
    pub fn drain(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while self.inflight.load(Ordering::Acquire) != 0 {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Closes the exit-event fds the library leaked, once nothing of the library can use
    /// them: `self` must be the only reference left (the daemon, its handler and the worker
    /// epoll handlers, which hold clones of the backend, are all dropped and the workers
    /// joined). Returns whether they were closed.
    pub fn close_exit_consumers(self: &Arc<Self>) -> bool {
        if Arc::strong_count(self) != 1 {
            return false;
        }
        for fd in self
            .exit_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            // SAFETY: `fd` came from our EventConsumer, whose ownership the library took
            // with into_raw_fd() and never gave to any other owner; the epoll fd it was
            // registered in is closed and no thread can wait on it (strong count 1), so
            // this is the only close and nothing uses the number afterwards.
            unsafe { libc::close(fd) };
        }
        true
    }

    /// Stops this connection's vring worker threads.
    pub fn stop_workers(&self) {
        for n in self
            .exit_notifiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = n.notify();
        }
    }

    fn process_queue(&self, qidx: usize, vring: &Vring) -> io::Result<()> {
        let mem = match self.mem.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(m) => m.memory(),
            None => return Ok(()),
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let chains: Vec<Chain> = {
                let mut state = vring.get_mut();
                state
                    .get_queue_mut()
                    .iter(mem.clone())
                    .map_err(io::Error::other)?
                    .collect()
            };
            // Inline replies are notified once per batch (and at least every
            // NOTIFY_BATCH replies), not once each: a notification is an eventfd write that
            // wakes the frontend, which cost more than a warm read (docs/performance.md).
            let mut unsignalled = 0usize;
            for chain in chains {
                if self.dispatch(qidx, vring, chain) {
                    unsignalled += 1;
                    if unsignalled >= NOTIFY_BATCH {
                        notify_if_needed(vring);
                        unsignalled = 0;
                    }
                }
            }
            if unsignalled > 0 {
                notify_if_needed(vring);
            }
            if !event_idx {
                break;
            }
            // Re-enable notifications; if the guest added buffers meanwhile, go again.
            if !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        Ok(())
    }

    /// Serves `chain` on the pool or inline. Returns whether it was completed inline without
    /// a notification (the caller then notifies).
    fn dispatch(&self, qidx: usize, vring: &Vring, chain: Chain) -> bool {
        let server = self.server.clone();
        let metrics = self.metrics.clone();
        let vring = vring.clone();
        match (&self.cfg.pool, qidx) {
            (Some(pool), q) if q != HIPRIO_QUEUE && request_may_block(&chain, &self.inline) => {
                let inflight = self.inflight.clone();
                inflight.fetch_add(1, Ordering::AcqRel);
                pool.execute(move || {
                    handle_chain(&server, &metrics, &vring, chain, true);
                    inflight.fetch_sub(1, Ordering::AcqRel);
                });
                false
            }
            _ => handle_chain(&server, &metrics, &vring, chain, false),
        }
    }
}

/// FUSE opcodes that may wait on storage: data transfer (a RAFS READ may wait for a
/// registry fetch), syncs, SETATTR (but a passthrough's), blocking locks. They run on the pool so they
/// cannot stall the queue; everything else (lookups, getattr, readdir, xattrs, open,
/// release, namespace changes: answered from the RAFS mmap or by one quick host syscall)
/// runs inline on the queue's worker, which saves two thread switches per request.
const POOLED_OPCODES: [Opcode; 8] = [
    Opcode::Read,
    Opcode::Write,
    Opcode::Fsync,
    Opcode::Fsyncdir,
    Opcode::Setattr,
    Opcode::Setlkw,
    Opcode::Fallocate,
    Opcode::CopyFileRange,
];

/// Whether the request in `chain` should go to the pool (see [`POOLED_OPCODES`]). A header
/// that cannot be read is answered inline (with the server's error). READ, WRITE and SETATTR
/// of a passthrough, and READs that [`InlineReads`] finds warm (every chunk already verified in
/// the cache), are served inline, as virtiofsd serves its reads: they wait on the host's page
/// cache or disk, never on a registry, and the hand-off to the pool cost more CPU than the
/// read (docs/performance.md).
fn request_may_block(chain: &Chain, inline: &InlineReads) -> bool {
    let Some(desc) = chain.clone().next() else {
        return false;
    };
    if desc.is_write_only() || (desc.len() as usize) < std::mem::size_of::<InHeader>() {
        return false;
    }
    let Ok(ih) = chain.memory().read_obj::<InHeader>(desc.addr()) else {
        return false;
    };
    // Passthrough WRITE and SETATTR are one host syscall on the page cache, as for virtiofsd
    // (a SETATTR follows every close under the writeback cache: mtime).
    if (ih.opcode == Opcode::Write as u32 || ih.opcode == Opcode::Setattr as u32)
        && inline.is_local((ih.nodeid >> 56) as u8)
    {
        return false;
    }
    if ih.opcode == Opcode::Read as u32 {
        return match read_args(chain) {
            Some(r) => !inline.read_is_inline(ih.nodeid, r.offset, r.size),
            None => true,
        };
    }
    POOLED_OPCODES.iter().any(|&op| op as u32 == ih.opcode)
}

/// The READ arguments that follow the header, wherever the driver split its descriptors
/// (Linux puts the header and the arguments in separate ones).
fn read_args(chain: &Chain) -> Option<ReadIn> {
    let want = std::mem::size_of::<InHeader>()
        ..std::mem::size_of::<InHeader>() + std::mem::size_of::<ReadIn>();
    let mut buf = [0u8; std::mem::size_of::<ReadIn>()];
    let mut pos = 0usize;
    for d in chain.clone() {
        if d.is_write_only() {
            break;
        }
        let (start, end) = (pos, pos + d.len() as usize);
        pos = end;
        let (a, b) = (want.start.max(start), want.end.min(end));
        if a < b {
            let at = d.addr().checked_add((a - start) as u64)?;
            chain
                .memory()
                .read_slice(&mut buf[a - want.start..b - want.start], at)
                .ok()?;
        }
        if pos >= want.end {
            // ReadIn is plain old data (ByteValued): any bytes are a value.
            return Some(*ReadIn::from_slice(&buf)?);
        }
    }
    None
}

/// Serves one FUSE request and completes its descriptor chain; with `notify`, also tells the
/// frontend if it wants to know. Returns whether the chain was completed.
fn handle_chain(
    server: &Dispatcher,
    metrics: &FsMetrics,
    vring: &Vring,
    chain: Chain,
    notify: bool,
) -> bool {
    let head = chain.head_index();
    let mem = chain.memory();
    let len = match Reader::from_descriptor_chain(mem, chain.clone())
        .and_then(|r| VirtioFsWriter::new(mem, chain.clone()).map(|w| (r, w)))
    {
        Ok((reader, writer)) => {
            let r = server.handle_message(reader, writer.into(), None, Some(metrics));
            metrics.record_reply(&r);
            match r {
                Ok(n) => n as u32,
                Err(e) => {
                    log::warn!("failed to handle FUSE request: {e:?}");
                    0
                }
            }
        }
        Err(e) => {
            log::warn!("invalid descriptor chain: {e:?}");
            0
        }
    };
    // Completion and notification happen under one vring lock, so concurrent completions
    // from pool threads cannot lose an EVENT_IDX notification; a deferred one (`notify`
    // false) checks everything used since the last signal, so it loses none either.
    let mut state = vring.get_mut();
    if let Err(e) = state.add_used(head, len) {
        log::warn!("cannot add used descriptor {head}: {e:?}");
        return false;
    }
    if notify {
        signal_if_needed(&mut state);
    }
    true
}

/// Most inline replies completed before one notification (bounds the added latency). At 16,
/// a driver keeping 16 reads in flight saw no reply until all 16 were done, so it refilled
/// the queue in lock-step: random 4 KiB reads at QD 16 ran at 125-130k op/s, against
/// 265-279k at 4 and 270-274k at 1; QD 64 was the same at all three (docs/performance.md).
const NOTIFY_BATCH: usize = 4;

/// Notifies the frontend of used buffers if it wants to know (EVENT_IDX) or always.
fn notify_if_needed(vring: &Vring) {
    signal_if_needed(&mut vring.get_mut());
}

fn signal_if_needed(
    state: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>,
) {
    match state.needs_notification() {
        Ok(true) => {
            if let Err(e) = state.signal_used_queue() {
                log::warn!("cannot signal used queue: {e}");
            }
        }
        Ok(false) => {}
        Err(e) => log::warn!("cannot check notification: {e:?}"),
    }
}

impl VhostUserBackend for VhostUserFsBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        1 + self.cfg.num_request_queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        VIRTIO_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        let keep = notifier.try_clone().ok()?;
        self.exit_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(consumer.as_raw_fd());
        self.exit_notifiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(keep);
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        crate::thread_class::enter(crate::thread_class::ThreadClass::Guest);
        if device_event == self.sweep_event() {
            return self.sweep(thread_id, vrings);
        }
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "unexpected event set {evset:?} on queue event {device_event}"
            )));
        }
        // One queue per thread: the thread id is the queue index, the event its slot.
        let vring = vrings
            .get(device_event as usize)
            .ok_or_else(|| io::Error::other(format!("bad queue event {device_event}")))?;
        self.process_queue(thread_id, vring)
    }
}

/// Binds the vhost-user socket at `path`, removing a stale socket file first.
pub fn listen(path: &Path) -> Result<Listener, VhostUserFsError> {
    Listener::new(path, true).map_err(|e| VhostUserFsError::Listen {
        path: path.display().to_string(),
        source: e,
    })
}

/// Waits until `fd` is readable or `timeout_ms` passes. Returns whether it is readable.
fn poll_readable(fd: i32, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd array of length 1 that lives across the call.
    let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0 && pfd.revents & libc::POLLIN != 0)
}

/// Serves VMM connections on `listener`, one at a time, until `stop` is set (checked while
/// no VMM is connected; a connected VMM is served until it disconnects).
/// `on_connect` is called with `true` when a VMM connects and `false` when it leaves.
pub fn serve(
    listener: &mut Listener,
    tree: Arc<FsTree>,
    cfg: DeviceConfig,
    stop: Arc<AtomicBool>,
    on_connect: &(dyn Fn(bool) + Sync),
) -> Result<(), VhostUserFsError> {
    loop {
        while !poll_readable(listener.as_raw_fd(), 100)? {
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let backend = Arc::new(VhostUserFsBackend::new(&tree, cfg.clone()));
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("rafs-virtiofsd".into(), backend.clone(), mem)
            .map_err(|e| VhostUserFsError::Daemon(e.to_string()))?;
        backend.arm_sweep(&daemon)?;
        daemon
            .start(listener)
            .map_err(|e| VhostUserFsError::Daemon(e.to_string()))?;
        log::info!("vhost-user: VMM connected");
        on_connect(true);
        match daemon.wait() {
            Ok(()) => log::info!("vhost-user: VMM disconnected"),
            Err(e) => log::info!("vhost-user: connection ended: {e}"),
        }
        backend.stop_workers();
        drop(daemon);
        if !backend.drain(Duration::from_secs(5)) {
            log::warn!("vhost-user: requests still running 5 s after disconnect");
        }
        // Forget the guest's FUSE session (inodes, handles, INIT state) so that the next
        // VMM can send FUSE_INIT again. Mounts stay.
        tree.end_session();
        if !backend.close_exit_consumers() {
            log::warn!(
                "vhost-user: connection state still referenced; {} fds kept",
                backend.num_queues()
            );
        }
        on_connect(false);
        log::info!("vhost-user: listening for a new connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(n: usize) -> VhostUserFsBackend {
        VhostUserFsBackend::new(
            &FsTree::new(),
            DeviceConfig {
                num_request_queues: n,
                pool: None,
            },
        )
    }

    #[test]
    fn queue_layout_and_features() {
        let b = backend(3);
        assert_eq!(b.num_queues(), 4);
        assert_eq!(b.queues_per_thread(), vec![1, 2, 4, 8]);
        assert_eq!(b.max_queue_size(), 1024);
        let f = b.features();
        for bit in [32, 28, 29, 30] {
            assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
        }
        let p = b.protocol_features();
        assert!(p.contains(VhostUserProtocolFeatures::MQ));
        assert!(p.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
        assert!(p.contains(VhostUserProtocolFeatures::REPLY_ACK));
    }
}
