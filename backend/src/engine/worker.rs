//! The group's worker thread: runs the operations of the group's [`OpQueue`] as they are queued,
//! so asynchronous operations progress with nobody waiting for them. Waiters and blocking calls
//! help drain the same queue on their own threads (see `queue`).
use super::queue::{Job, OpQueue};
use crate::error::Result;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Worker {
    queue: Arc<OpQueue>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    pub fn start(name: String) -> Worker {
        let queue = Arc::new(OpQueue::new());
        let q = queue.clone();
        let handle = std::thread::Builder::new().name(name).spawn(move || q.serve()).expect("spawning the collective worker thread");
        Worker { queue, handle: Mutex::new(Some(handle)) }
    }

    pub fn queue(&self) -> &Arc<OpQueue> {
        &self.queue
    }

    /// Queues the job `make` builds, with its deadline (under the queue's lock); its sequence
    /// number in the queue.
    pub fn submit(&self, make: impl FnOnce() -> (Job, Instant)) -> Result<u64> {
        self.queue.submit(make)
    }

    /// Runs (or waits for) every queued job; at once when none is pending.
    pub fn quiesce(&self, timeout: Duration) -> Result<()> {
        self.queue.quiesce(timeout)
    }

    /// Stops accepting jobs, lets queued ones finish, joins the thread. From inside one of the
    /// queue's jobs (the group dropped by its own operation) it does not join: the worker drains
    /// the queue and exits on its own.
    pub fn stop(&self) {
        self.queue.close();
        if self.queue.in_job() {
            return;
        }
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
