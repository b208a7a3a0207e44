//! Orders a group's collectives: one thread runs queued operations in submission order, so every
//! rank runs them in the same order; blocking calls run on the caller's thread once the queue is
//! empty.
use crate::error::{ChorusError, Result};
use crossbeam::channel::{unbounded, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Counts {
    submitted: u64,
    finished: u64,
}

pub struct Worker {
    tx: Mutex<Option<Sender<Job>>>,
    counts: Arc<(Mutex<Counts>, Condvar)>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    pub fn start(name: String) -> Worker {
        let (tx, rx) = unbounded::<Job>();
        let counts: Arc<(Mutex<Counts>, Condvar)> = Arc::default();
        let c = counts.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                for job in rx {
                    // A panic inside an operation must not kill the worker: its Work completes
                    // with an error (the completer's Drop) and later operations still run.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a collective panicked; its Work reports an error");
                    }
                    let mut g = c.0.lock().unwrap_or_else(|p| p.into_inner());
                    g.finished += 1;
                    c.1.notify_all();
                }
            })
            .expect("spawning the collective worker thread");
        Worker { tx: Mutex::new(Some(tx)), counts, handle: Mutex::new(Some(handle)) }
    }

    /// Queues a job; fails once the worker was stopped.
    pub fn submit(&self, job: Job) -> Result<()> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.as_ref().ok_or(ChorusError::Destroyed)?;
        self.counts.0.lock().unwrap_or_else(|p| p.into_inner()).submitted += 1;
        tx.send(job).map_err(|_| ChorusError::Destroyed)
    }

    /// Waits until every queued job has finished.
    pub fn quiesce(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut g = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        while g.finished < g.submitted {
            let now = Instant::now();
            if now >= deadline {
                return Err(ChorusError::Incomplete("earlier asynchronous operations did not finish in time".into()));
            }
            g = self.counts.1.wait_timeout(g, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(())
    }

    /// Stops accepting jobs, lets queued ones finish, joins the thread.
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
