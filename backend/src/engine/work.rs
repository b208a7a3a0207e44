//! `Work`: the handle of an asynchronous operation.
//!
//! Waiting is cheap when the operation is close to done: a waiter whose operation is still queued
//! runs it itself (through the queue's [`Drain`] hook, see `queue`), and a waiter whose operation
//! runs on another thread spins briefly before it sleeps; completing wakes sleepers only when
//! there are any. A `Work` is also a [`Future`]: `.await` gives the buffers back with the
//! operation's report, or the error with the buffers where the operation still had them.
use super::queue::Drain;
use super::spin::Backoff;
use crate::error::{ChorusError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

enum Slot<R> {
    Pending,
    /// The result, and on failure the operation's buffers where it still had them.
    Ready(Result<R>, Option<R>),
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

impl OpInfo {
    /// What a failed operation reports: errors that end a collective alike on every survivor
    /// still say who failed and the epoch, a peer's death (a point-to-point message's, say) names
    /// the peer; others report nothing.
    pub fn of_error(e: &ChorusError) -> OpInfo {
        match e {
            ChorusError::FailedByPolicy { failed, epoch, .. } | ChorusError::NotRecoverable { failed, epoch, .. } | ChorusError::AgreedTimeout { failed, epoch, .. } => {
                OpInfo { epoch: *epoch, failed: failed.clone(), contributors: Vec::new() }
            }
            ChorusError::PeerFailed { peer, .. } => OpInfo { failed: vec![*peer], ..OpInfo::default() },
            _ => OpInfo::default(),
        }
    }
}

struct State<R> {
    slot: Slot<R>,
    /// Waiters asleep on `cv` (completing skips the wake-up call when there are none).
    sleepers: usize,
    /// The task that last polled the work as a future.
    waker: Option<Waker>,
}

struct Inner<R> {
    name: &'static str,
    info: Mutex<OpInfo>,
    state: Mutex<State<R>>,
    /// Set once `st.slot` left `Pending`: read without the lock by `is_completed` and spinners.
    done: AtomicBool,
    cv: Condvar,
}

impl<R> Inner<R> {
    fn state(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a queued operation waits: its queue and its number there.
struct Queued {
    queue: Weak<dyn Drain>,
    seq: u64,
}

/// Handle of an operation in flight. `wait` returns the operation's buffers (for the owned-buffer
/// async API) or `()`; [`Work::outcome`] and `.await` return them with the operation's report,
/// and give them back on failure too.
#[must_use = "an operation's result and buffers come back through its Work: wait for it or .await it"]
pub struct Work<R = ()> {
    inner: Arc<Inner<R>>,
    queued: Option<Queued>,
}

/// The engine's side of a [`Work`]. Dropping it without completing (a panic in the engine)
/// completes the work with an error, so no waiter is left behind.
pub struct Completer<R> {
    inner: Option<Arc<Inner<R>>>,
}

pub fn pair<R>(name: &'static str) -> (Work<R>, Completer<R>) {
    let inner = Arc::new(Inner {
        name,
        info: Mutex::new(OpInfo::default()),
        state: Mutex::new(State { slot: Slot::Pending, sleepers: 0, waker: None }),
        done: AtomicBool::new(false),
        cv: Condvar::new(),
    });
    (Work { inner: inner.clone(), queued: None }, Completer { inner: Some(inner) })
}

fn fill<R>(inner: &Inner<R>, result: Result<R>, kept: Option<R>) {
    let mut st = inner.state();
    st.slot = Slot::Ready(result, kept);
    inner.done.store(true, Ordering::Release);
    let wake = st.sleepers > 0;
    let waker = st.waker.take();
    drop(st);
    if wake {
        inner.cv.notify_all();
    }
    if let Some(w) = waker {
        w.wake();
    }
}

/// A failed operation, as [`Work::outcome`] and `.await` report it: the error, what the operation
/// reported (who failed, the epoch), and its buffers where it still had them (it was refused, or
/// it failed while running; not when the engine lost them).
#[derive(Debug)]
pub struct OpError<R> {
    /// Why the operation failed.
    pub error: ChorusError,
    /// The operation's report (who failed, the epoch; empty where the error says nothing).
    pub info: OpInfo,
    /// The operation's buffers, where it still had them.
    pub buffers: Option<R>,
}

impl<R> std::fmt::Display for OpError<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<R: std::fmt::Debug> std::error::Error for OpError<R> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl<R> From<OpError<R>> for ChorusError {
    fn from(e: OpError<R>) -> Self {
        e.error
    }
}

/// What a finished operation gives back: its buffers and its report, or an [`OpError`].
pub type Outcome<R> = std::result::Result<(R, OpInfo), OpError<R>>;

impl<R> Completer<R> {
    pub fn set_info(&self, info: OpInfo) {
        if let Some(inner) = &self.inner {
            *inner.info.lock().unwrap_or_else(|p| p.into_inner()) = info;
        }
    }

    pub fn complete(mut self, result: Result<R>) {
        if let Some(inner) = self.inner.take() {
            fill(&inner, result, None);
        }
    }

    /// Completes with `error`, giving the operation's `buffers` back to the waiter.
    pub fn fail_returning(mut self, error: ChorusError, buffers: R) {
        if let Some(inner) = self.inner.take() {
            fill(&inner, Err(error), Some(buffers));
        }
    }
}

impl<R> Drop for Completer<R> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let name = inner.name;
            fill(&inner, Err(ChorusError::Incomplete(format!("{name} was abandoned by the engine (internal error; see the log)"))), None);
        }
    }
}

impl<R> std::fmt::Debug for Work<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work").field("name", &self.inner.name).field("completed", &self.is_completed()).finish()
    }
}

impl<R> Work<R> {
    /// A handle that is already complete.
    pub fn ready(name: &'static str, result: Result<R>) -> Work<R> {
        let (w, c) = pair(name);
        c.complete(result);
        w
    }

    /// A handle of an operation refused before it ran, which gives its `buffers` back.
    pub fn refused(name: &'static str, error: ChorusError, buffers: R) -> Work<R> {
        let (w, c) = pair(name);
        c.fail_returning(error, buffers);
        w
    }

    /// A handle that is already complete, with what the operation reported.
    pub fn ready_with(name: &'static str, result: Result<R>, info: OpInfo) -> Work<R> {
        let (w, c) = pair(name);
        c.set_info(info);
        c.complete(result);
        w
    }

    /// Marks the work as job `seq` of `queue`: a waiter that finds it still queued runs it (and the
    /// jobs queued before it) on its own thread.
    pub fn queued_on(mut self, queue: Weak<dyn Drain>, seq: u64) -> Work<R> {
        self.queued = Some(Queued { queue, seq });
        self
    }

    /// Failed ranks, epoch and contributors of the completed operation.
    pub fn info(&self) -> OpInfo {
        self.inner.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Moves the report out (`info` reads the default afterwards): for a caller that keeps it
    /// elsewhere once the operation completed.
    pub fn take_info(&self) -> OpInfo {
        std::mem::take(&mut *self.inner.info.lock().unwrap_or_else(|p| p.into_inner()))
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
        self.inner.done.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for completion; returns whether it completed. If the operation is
    /// still queued, the calling thread runs it (after the operations queued before it) when their
    /// own deadlines (the group's timeout from their start) fall within `timeout`; shorter waits
    /// leave them to the group's worker. A zero `timeout` only looks.
    pub fn wait_for(&self, timeout: Duration) -> bool {
        if self.is_completed() {
            return true;
        }
        let now = Instant::now();
        // A deadline past the clock's range is as good as none (a wait of ~a year).
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
        if let Some(q) = &self.queued {
            if let Some(queue) = q.queue.upgrade() {
                if !queue.run_through(q.seq, deadline) {
                    return self.is_completed();
                }
            }
        }
        self.park(deadline)
    }

    /// Waits for another thread to complete the operation: spins briefly, then sleeps.
    fn park(&self, deadline: Instant) -> bool {
        let mut backoff = Backoff::new();
        while !self.is_completed() {
            if !backoff.snooze() {
                break;
            }
        }
        let mut st = self.inner.state();
        while matches!(st.slot, Slot::Pending) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st.sleepers += 1;
            st = self.inner.cv.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
            st.sleepers -= 1;
        }
        true
    }

    /// The error message, if the operation failed.
    pub fn error(&self) -> Option<String> {
        match &self.inner.state().slot {
            Slot::Ready(Err(e), _) => Some(e.to_string()),
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
        self.take().map(|(r, _)| r).map_err(|e| e.error)
    }

    /// Waits for completion (bounded by a day, as [`Work::wait`]) and returns the buffers with the
    /// operation's report, or the error with the buffers where the operation still had them.
    pub fn outcome(self) -> Outcome<R> {
        if !self.wait_for(Duration::from_secs(86_400)) {
            let error = ChorusError::Incomplete(format!("{} did not complete within a day", self.inner.name));
            return Err(OpError { error, info: OpInfo::default(), buffers: None });
        }
        self.take()
    }

    /// Moves the result of the completed operation out (the error text stays for `error()`).
    fn take(&self) -> Outcome<R> {
        let mut st = self.inner.state();
        let err = match &st.slot {
            Slot::Ready(Err(e), _) => Some(e.to_string()),
            _ => None,
        };
        let taken = std::mem::replace(&mut st.slot, Slot::Taken(err));
        drop(st);
        let info = self.take_info();
        match taken {
            Slot::Ready(Ok(r), _) => Ok((r, info)),
            Slot::Ready(Err(error), buffers) => Err(OpError { error, info, buffers }),
            Slot::Pending | Slot::Taken(_) => {
                let error = ChorusError::Incomplete(format!("the result of {} was already taken", self.inner.name));
                Err(OpError { error, info, buffers: None })
            }
        }
    }

    /// Waits for completion (bounded by a day: every operation has its own, shorter deadline).
    pub fn wait(self) -> Result<R> {
        self.wait_timeout(Duration::from_secs(86_400))
    }
}

/// `.await` on a `Work` parks no thread: the group's worker (or a thread waiting on an earlier
/// operation) runs the operation and wakes the task when it completes.
impl<R> Future for Work<R> {
    type Output = Outcome<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<R>> {
        if !self.is_completed() {
            let mut st = self.inner.state();
            if matches!(st.slot, Slot::Pending) {
                match &mut st.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
        }
        Poll::Ready(self.take())
    }
}
