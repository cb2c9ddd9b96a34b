//! A small fixed-size thread pool for FUSE requests, so a request that blocks (e.g. a RAFS
//! read waiting for a registry fetch) does not stall the queue it came from.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// A fixed set of worker threads fed by a FIFO queue. Idle workers sleep on a condition
/// variable: no spinning or yielding while waiting (a spinning channel receiver cost the
/// daemon about a tenth of its CPU in the passthrough benchmark). Dropping the pool lets the
/// workers finish queued jobs and exit (they are detached).
pub struct ThreadPool {
    shared: Arc<Shared>,
    size: usize,
}

impl ThreadPool {
    /// Starts `size` (at least 1) workers named `name-N`.
    pub fn new(name: &str, size: usize) -> std::io::Result<Arc<Self>> {
        let size = size.max(1);
        let shared = Arc::new(Shared::default());
        for i in 0..size {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = {
                        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if let Some(job) = q.jobs.pop_front() {
                                break job;
                            }
                            if q.closed {
                                return;
                            }
                            q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    job();
                })?;
        }
        Ok(Arc::new(ThreadPool { shared, size }))
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Queues `job`; it runs on some worker thread.
    pub fn execute<F: FnOnce() + Send + 'static>(&self, job: F) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .jobs
            .push_back(Box::new(job));
        self.shared.ready.notify_one();
    }
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
