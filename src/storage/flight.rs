//! Single-flight: concurrent requests for one key inside this process run the work once;
//! the others wait for, and share, its result.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::{Result, StorageError};

struct Call<V> {
    /// `None` while running; then the value, or the leader's error message.
    done: Mutex<Option<std::result::Result<V, String>>>,
    cv: Condvar,
}

/// A table of in-flight calls keyed by `K`.
pub struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Arc<Call<V>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Run `f` for `key` unless a call for `key` is already running, in which case wait for
    /// that call and return its result (an error is passed on as [`StorageError::Backend`]
    /// with the leader's message). Returns whether this caller ran `f`, too.
    pub fn run(&self, key: K, f: impl FnOnce() -> Result<V>) -> (Result<V>, bool) {
        let (call, leader) = {
            let mut calls = self.calls.lock();
            match calls.get(&key) {
                Some(c) => (c.clone(), false),
                None => {
                    let c = Arc::new(Call {
                        done: Mutex::new(None),
                        cv: Condvar::new(),
                    });
                    calls.insert(key.clone(), c.clone());
                    (c, true)
                }
            }
        };
        if leader {
            // The entry is removed even if `f` panics, so later callers do not wait forever.
            struct Remove<'a, K: Hash + Eq, V> {
                calls: &'a Mutex<HashMap<K, Arc<Call<V>>>>,
                key: &'a K,
                call: &'a Call<V>,
            }
            impl<K: Hash + Eq, V> Drop for Remove<'_, K, V> {
                fn drop(&mut self) {
                    self.calls.lock().remove(self.key);
                    let mut d = self.call.done.lock();
                    if d.is_none() {
                        *d = Some(Err("single-flight leader failed".into()));
                    }
                    self.call.cv.notify_all();
                }
            }
            let _guard = Remove {
                calls: &self.calls,
                key: &key,
                call: &call,
            };
            let r = f();
            *call.done.lock() = Some(match &r {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(e.to_string()),
            });
            (r, true)
        } else {
            let mut d = call.done.lock();
            while d.is_none() {
                call.cv.wait(&mut d);
            }
            let r = match d.as_ref() {
                Some(Ok(v)) => Ok(v.clone()),
                Some(Err(e)) => Err(StorageError::Backend(e.clone())),
                None => Err(StorageError::Backend("single-flight: no result".into())),
            };
            (r, false)
        }
    }

    /// Whether a call for `key` is running now.
    pub fn is_running(&self, key: &K) -> bool {
        self.calls.lock().contains_key(key)
    }

    /// Number of calls running now.
    pub fn in_flight(&self) -> usize {
        self.calls.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[test]
    fn concurrent_calls_run_once() {
        let sf = Arc::new(SingleFlight::<u32, u32>::default());
        let runs = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (sf, runs) = (sf.clone(), runs.clone());
                std::thread::spawn(move || {
                    sf.run(7, || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        Ok(42)
                    })
                    .0
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0);
        // A later call runs again.
        assert_eq!(sf.run(7, || Ok(1)).0.unwrap(), 1);
    }

    #[test]
    fn errors_reach_followers_and_are_not_cached() {
        let sf = Arc::new(SingleFlight::<u32, u32>::default());
        let sf2 = sf.clone();
        let leader = std::thread::spawn(move || {
            sf2.run(1, || {
                std::thread::sleep(Duration::from_millis(200));
                Err(StorageError::Backend("boom".into()))
            })
        });
        std::thread::sleep(Duration::from_millis(50));
        let (r, led) = sf.run(1, || Ok(5));
        let (lr, _) = leader.join().unwrap();
        assert!(lr.is_err());
        if !led {
            assert!(r.unwrap_err().to_string().contains("boom"));
        }
        assert_eq!(sf.run(1, || Ok(6)).0.unwrap(), 6);
    }
}
