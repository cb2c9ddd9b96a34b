//! The thread pool for FUSE requests that may wait on storage, so a request that blocks (a
//! RAFS read waiting for a registry fetch) does not stall the queue it came from, nor the
//! requests behind it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Extra workers the pool may add beyond its resident ones while all of them are busy.
pub const MAX_EXTRA_WORKERS: usize = 64;
/// How long an extra worker waits for work before it exits.
const EXTRA_IDLE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Workers free to take a job (waiting, or just started).
    idle: usize,
    /// Workers alive (resident and extra).
    workers: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    name: String,
    resident: usize,
    max_workers: usize,
    extra_idle: Duration,
}

/// `size` resident worker threads fed by a FIFO queue, plus up to [`MAX_EXTRA_WORKERS`] extra
/// ones started while every worker is busy (as when a slow registry holds several reads):
/// a read the cache can serve then still finds a thread, even with `--thread-pool-size=1`
/// (Kata's default argument for virtiofsd). Extra workers exit after 10 s without work.
/// Idle workers sleep on a condition variable: no spinning or yielding while waiting (a
/// spinning channel receiver cost the daemon about a tenth of its CPU in the passthrough
/// benchmark). Dropping the pool lets the workers finish queued jobs and exit.
pub struct ThreadPool {
    shared: Arc<Shared>,
    size: usize,
}

impl ThreadPool {
    /// Starts `size` (at least 1) resident workers named `name-N`.
    pub fn new(name: &str, size: usize) -> std::io::Result<Arc<Self>> {
        Self::with_limits(name, size, MAX_EXTRA_WORKERS, EXTRA_IDLE)
    }

    /// Starts `size` resident workers and lets up to `max_extra` more start while every
    /// worker is busy; an extra one exits after `extra_idle` without work.
    pub fn with_limits(
        name: &str,
        size: usize,
        max_extra: usize,
        extra_idle: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            name: name.to_string(),
            resident: size,
            max_workers: size + max_extra,
            extra_idle,
        });
        for i in 0..size {
            {
                let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.workers += 1;
                q.idle += 1;
            }
            if let Err(e) = spawn_worker(&shared, i, true) {
                let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.workers -= 1;
                q.idle -= 1;
                return Err(e);
            }
        }
        Ok(Arc::new(ThreadPool { shared, size }))
    }

    /// Number of resident worker threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Worker threads alive now (resident and extra).
    pub fn workers(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .workers
    }

    /// Queues `job`; it runs on some worker thread, a new extra one if all are busy.
    pub fn execute<F: FnOnce() + Send + 'static>(&self, job: F) {
        let extra = {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.jobs.push_back(Box::new(job));
            if q.jobs.len() > q.idle && q.workers < self.shared.max_workers {
                q.workers += 1;
                q.idle += 1;
                Some(q.workers)
            } else {
                None
            }
        };
        self.shared.ready.notify_one();
        if let Some(n) = extra {
            if let Err(e) = spawn_worker(&self.shared, n - 1, false) {
                log::warn!("cannot start an extra FUSE worker: {e}");
                let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.workers -= 1;
                q.idle -= 1;
            }
        }
    }
}

/// Starts a worker; the caller has already counted it in `workers` and `idle` (a new worker
/// is free until it takes a job).
fn spawn_worker(shared: &Arc<Shared>, index: usize, resident: bool) -> std::io::Result<()> {
    let shared = shared.clone();
    let name = if resident {
        format!("{}-{index}", shared.name)
    } else {
        format!("{}-x{index}", shared.name)
    };
    thread::Builder::new().name(name).spawn(move || {
        let lock = || shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut q = lock();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                q.idle -= 1;
                drop(q);
                crate::thread_class::enter(crate::thread_class::ThreadClass::Guest);
                job();
                q = lock();
                q.idle += 1;
                continue;
            }
            if q.closed {
                q.idle -= 1;
                q.workers -= 1;
                return;
            }
            if resident {
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            } else {
                let (g, t) = shared
                    .ready
                    .wait_timeout(q, shared.extra_idle)
                    .unwrap_or_else(|e| e.into_inner());
                q = g;
                if t.timed_out() && q.jobs.is_empty() && q.workers > shared.resident {
                    q.idle -= 1;
                    q.workers -= 1;
                    return;
                }
            }
        }
    })?;
    Ok(())
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn jobs_run_in_parallel() {
        let pool = ThreadPool::new("t", 3).unwrap();
        // Three jobs that all wait for each other can only finish if they run concurrently.
        let barrier = Arc::new(Barrier::new(4));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let b = barrier.clone();
            let d = done.clone();
            pool.execute(move || {
                b.wait();
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        barrier.wait();
        while done.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        assert_eq!(pool.size(), 3);
    }

    /// With every resident worker blocked (a slow registry), a new job still runs at once on
    /// an extra worker, which goes away when idle.
    #[test]
    fn a_blocked_pool_grows_and_shrinks_back() {
        let pool = ThreadPool::with_limits("t", 1, 4, Duration::from_millis(200)).unwrap();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        pool.execute(move || {
            let _ = release_rx.recv();
        });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        pool.execute(move || done_tx.send(()).unwrap());
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the second job waited for the blocked one");
        assert_eq!(pool.workers(), 2);
        release_tx.send(()).unwrap();
        let t0 = std::time::Instant::now();
        while pool.workers() > 1 {
            assert!(t0.elapsed() < Duration::from_secs(5), "extra worker stayed");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Never beyond the limit: 10 blocked jobs on 1 + 4 workers.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for _ in 0..10 {
            let rx = rx.clone();
            pool.execute(move || {
                let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(5));
            });
        }
        assert!(pool.workers() <= 5, "{} workers", pool.workers());
        drop(tx);
    }

    #[test]
    fn queued_jobs_finish_after_drop() {
        let pool = ThreadPool::new("t", 1).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..50 {
            let d = done.clone();
            let tx = tx.clone();
            pool.execute(move || {
                d.fetch_add(1, Ordering::SeqCst);
                if i == 49 {
                    tx.send(()).unwrap();
                }
            });
        }
        drop(pool);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 50);
    }
}
