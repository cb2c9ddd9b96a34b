//! A small fixed-size thread pool for FUSE requests, so a request that blocks (e.g. a RAFS
//! read waiting for a registry fetch) does not stall the queue it came from.

use std::sync::Arc;
use std::thread;

use crossbeam_channel::{unbounded, Sender};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of worker threads fed by an unbounded channel. Dropping the pool lets the
/// workers finish queued jobs and exit (they are detached).
pub struct ThreadPool {
    tx: Sender<Job>,
    size: usize,
}

impl ThreadPool {
    /// Starts `size` (at least 1) workers named `name-N`.
    pub fn new(name: &str, size: usize) -> std::io::Result<Arc<Self>> {
        let size = size.max(1);
        let (tx, rx) = unbounded::<Job>();
        for i in 0..size {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })?;
        }
        Ok(Arc::new(ThreadPool { tx, size }))
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Queues `job`; it runs on some worker thread. If the workers are gone (only possible
    /// while the process is exiting), the job runs on the caller's thread.
    pub fn execute<F: FnOnce() + Send + 'static>(&self, job: F) {
        if let Err(e) = self.tx.send(Box::new(job)) {
            (e.into_inner())();
        }
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
}
