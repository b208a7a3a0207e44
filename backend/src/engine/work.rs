//! `Work`: the handle of an asynchronous operation.
use crate::error::{ChorusError, Result};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

enum Slot<R> {
    Pending,
    Ready(Result<R>),
    /// The result was handed to `wait`; only the error text remains for `error()`.
    Taken(Option<String>),
}

/// What a completed collective reports beyond its data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpInfo {
    /// Membership epoch the result was computed under.
    pub epoch: u64,
    /// Ranks that failed during the operation (removed from the group).
    pub failed: Vec<usize>,
    /// The ranks whose data the result contains.
    pub contributors: Vec<usize>,
}

struct Inner<R> {
    name: &'static str,
    info: Mutex<OpInfo>,
    slot: Mutex<Slot<R>>,
    cv: Condvar,
}

/// Handle of an operation in flight. `wait` returns the operation's buffers (for the owned-buffer
/// async API) or `()`.
pub struct Work<R = ()> {
    inner: Arc<Inner<R>>,
}

/// The engine's side of a [`Work`]. Dropping it without completing (a panic in the engine)
/// completes the work with an error, so no waiter is left behind.
pub struct Completer<R> {
    inner: Option<Arc<Inner<R>>>,
}

pub fn pair<R>(name: &'static str) -> (Work<R>, Completer<R>) {
    let inner = Arc::new(Inner { name, info: Mutex::new(OpInfo::default()), slot: Mutex::new(Slot::Pending), cv: Condvar::new() });
    (Work { inner: inner.clone() }, Completer { inner: Some(inner) })
}

fn fill<R>(inner: &Inner<R>, result: Result<R>) {
    let mut slot = inner.slot.lock().unwrap_or_else(|p| p.into_inner());
    *slot = Slot::Ready(result);
    inner.cv.notify_all();
}

impl<R> Completer<R> {
    pub fn set_info(&self, info: OpInfo) {
        if let Some(inner) = &self.inner {
            *inner.info.lock().unwrap_or_else(|p| p.into_inner()) = info;
        }
    }

    pub fn complete(mut self, result: Result<R>) {
        if let Some(inner) = self.inner.take() {
            fill(&inner, result);
        }
    }
}

impl<R> Drop for Completer<R> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let name = inner.name;
            fill(&inner, Err(ChorusError::Incomplete(format!("{name} was abandoned by the engine (internal error; see the log)"))));
        }
    }
}

impl<R> Work<R> {
    /// A handle that is already complete.
    pub fn ready(name: &'static str, result: Result<R>) -> Work<R> {
        let (w, c) = pair(name);
        c.complete(result);
        w
    }

    /// Failed ranks, epoch and contributors of the completed operation.
    pub fn info(&self) -> OpInfo {
        self.inner.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ranks that failed during the operation.
    pub fn failed_ranks(&self) -> Vec<usize> {
        self.info().failed
    }

    /// The operation's name.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Whether the operation finished (successfully or not).
    pub fn is_completed(&self) -> bool {
        !matches!(*self.inner.slot.lock().unwrap_or_else(|p| p.into_inner()), Slot::Pending)
    }

    /// Waits up to `timeout` for completion; returns whether it completed.
    pub fn wait_for(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut slot = self.inner.slot.lock().unwrap_or_else(|p| p.into_inner());
        while matches!(*slot, Slot::Pending) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            slot = self.inner.cv.wait_timeout(slot, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// The error message, if the operation failed.
    pub fn error(&self) -> Option<String> {
        match &*self.inner.slot.lock().unwrap_or_else(|p| p.into_inner()) {
            Slot::Ready(Err(e)) => Some(e.to_string()),
            Slot::Taken(e) => e.clone(),
            _ => None,
        }
    }

    /// Waits for completion and returns the result. Operations carry their own deadline (the
    /// group's timeout), so this returns; `timeout` bounds the wait here as well.
    pub fn wait_timeout(self, timeout: Duration) -> Result<R> {
        if !self.wait_for(timeout) {
            return Err(ChorusError::Incomplete(format!("{} did not complete within {} ms", self.inner.name, timeout.as_millis())));
        }
        let mut slot = self.inner.slot.lock().unwrap_or_else(|p| p.into_inner());
        let err = match &*slot {
            Slot::Ready(Err(e)) => Some(e.to_string()),
            _ => None,
        };
        match std::mem::replace(&mut *slot, Slot::Taken(err)) {
            Slot::Ready(r) => r,
            _ => Err(ChorusError::Incomplete(format!("the result of {} was already taken", self.inner.name))),
        }
    }

    /// Waits for completion (bounded by a day: every operation has its own, shorter deadline).
    pub fn wait(self) -> Result<R> {
        self.wait_timeout(Duration::from_secs(86_400))
    }
}
