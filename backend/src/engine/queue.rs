//! The ordered queue of a group's asynchronous operations.
//!
//! Jobs run one at a time and in submission order, so every rank runs its collectives in the same
//! order. Any thread may run them: the group's worker thread picks them up on its own (an
//! operation progresses with nobody waiting for it), and a thread that waits for job `seq` and
//! finds it still queued runs the queued jobs up to and including `seq` itself. That saves the
//! 15-40 µs of waking the worker and being woken back, which is most of a small collective's cost.
//! A waiter runs a job only if the job's own deadline falls within the wait's, so a short wait
//! still returns in time (the worker runs the job instead). A waiter whose job is already running
//! elsewhere spins briefly, then sleeps until a job finishes.
//!
//! Waking the worker for every submission would cost a system call and a context switch per
//! operation even when the submitter runs the job itself a moment later (on a machine with as many
//! busy threads as cores, that switch delays the other ranks too). So while operations keep coming
//! the worker naps (wakes every [`NAP`] to look at the queue) instead of sleeping, and a submission
//! wakes a napping worker only when the last job ran on the worker, i.e. when callers let the
//! worker run their operations (overlap) rather than waiting for them at once. A worker back from a
//! nap leaves a job queued for less than [`GRACE`] to its waiter. An operation nobody waits for
//! therefore starts within a nap plus the grace at worst, and at once after a quiet spell or when
//! the worker ran the previous one.
use super::spin::Backoff;
use crate::error::{ChorusError, Result};
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub type Job = Box<dyn FnOnce() + Send>;

/// What a `Work` handle needs of the queue its operation waits in (see [`OpQueue::run_through`]).
pub trait Drain: Send + Sync {
    fn run_through(&self, seq: u64, deadline: Instant) -> bool;
}

/// Sleeping threads recheck the queue this often (a missed wake-up costs at most this).
const RECHECK: Duration = Duration::from_secs(1);
/// How long the worker naps while operations keep coming.
pub const NAP: Duration = Duration::from_micros(100);
/// A worker back from a nap (not woken for a job) leaves jobs queued for less than this to the
/// thread that will wait for them: a caller that waits at once (`async_op=True` then `wait()`)
/// arrives within microseconds, and finding its job already running on the worker would cost it a
/// sleep and a wake-up. A job nobody waits for still starts within this plus a nap.
pub const GRACE: Duration = Duration::from_micros(100);
/// Naps with no submission in between after which the worker sleeps until woken.
const NAPS: u32 = 20;

/// What the worker thread is doing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Worker {
    Awake,
    /// Parked for at most a nap: it will look at the queue soon on its own.
    Napping,
    /// Parked until a submission wakes it (or `RECHECK`).
    Asleep,
}

/// A queued job: its number, and the deadline it runs under (it may not outlast it by much).
struct Entry {
    seq: u64,
    deadline: Instant,
    /// When it was submitted: a napping worker leaves a job younger than [`GRACE`] to its waiter.
    queued: Instant,
    job: Job,
}

struct State {
    jobs: VecDeque<Entry>,
    /// A thread runs the job taken last from the front of `jobs`.
    running: bool,
    closed: bool,
    /// The worker parks on `submitted_cv` when the queue is empty.
    worker: Worker,
    /// The last job ran on a thread that waited for it, not on the worker.
    helped_last: bool,
    /// Waiters sleeping on `finished_cv` behind a job another thread runs. Finishing a job wakes
    /// them only when there are any (a wake is a system call).
    finish_sleepers: usize,
}

pub struct OpQueue {
    state: Mutex<State>,
    submitted_cv: Condvar,
    finished_cv: Condvar,
    /// Sequence number of the last job submitted (1, 2, ...); written under the lock.
    submitted: AtomicU64,
    /// Sequence number of the last job finished; jobs finish in order, so job `seq` is done once
    /// `finished >= seq`. Read without the lock by the fast paths.
    finished: AtomicU64,
}

thread_local! {
    /// The queue (address) whose job this thread is running: a call from inside a job must not
    /// wait for the queue to drain, which would wait for itself.
    static IN_JOB: Cell<usize> = const { Cell::new(0) };
}

impl Default for OpQueue {
    fn default() -> Self {
        OpQueue::new()
    }
}

impl OpQueue {
    pub fn new() -> OpQueue {
        OpQueue {
            state: Mutex::new(State { jobs: VecDeque::new(), running: false, closed: false, worker: Worker::Awake, helped_last: false, finish_sleepers: 0 }),
            submitted_cv: Condvar::new(),
            finished_cv: Condvar::new(),
            submitted: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn id(&self) -> usize {
        self as *const OpQueue as usize
    }

    /// Whether the calling thread is running one of this queue's jobs.
    pub fn in_job(&self) -> bool {
        IN_JOB.with(|c| c.get()) == self.id()
    }

    /// Queues the job `make` builds, with the deadline it runs under, and returns its sequence
    /// number. `make` runs under the queue's lock, so what it numbers (the group's collective
    /// sequence) follows the queue's order even when threads submit concurrently. Fails once the
    /// queue is closed.
    pub fn submit(&self, make: impl FnOnce() -> (Job, Instant)) -> Result<u64> {
        let mut st = self.lock();
        if st.closed {
            return Err(ChorusError::Destroyed);
        }
        let seq = self.submitted.load(Ordering::Relaxed) + 1;
        let (job, deadline) = make();
        st.jobs.push_back(Entry { seq, deadline, queued: Instant::now(), job });
        self.submitted.store(seq, Ordering::Release);
        let wake = match st.worker {
            Worker::Asleep => true,
            Worker::Napping => !st.helped_last,
            Worker::Awake => false,
        };
        if wake {
            st.worker = Worker::Awake;
        }
        drop(st);
        if wake {
            self.wake_worker();
        }
        Ok(seq)
    }

    /// Wakes the worker (its state was just set to `Awake` under the lock).
    fn wake_worker(&self) {
        self.submitted_cv.notify_one();
    }

    /// Takes the front job for this thread when no other thread runs one, its number is at most
    /// `upto` and its deadline is no later than `within` (`None`: any deadline; the worker's).
    fn take(st: &mut State, upto: u64, within: Option<Instant>) -> Option<Entry> {
        let front = st.jobs.front()?;
        if st.running || front.seq > upto || within.is_some_and(|w| front.deadline > w) {
            return None;
        }
        st.running = true;
        st.jobs.pop_front()
    }

    /// Runs a job taken with `take` (`by_worker`: on the worker thread), then marks it finished.
    /// A panic inside it completes its `Work` with an error (its completer is dropped while
    /// unwinding) and goes no further.
    fn run(&self, seq: u64, job: Job, by_worker: bool) {
        let outer = IN_JOB.with(|c| c.replace(self.id()));
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a collective panicked; its Work reports an error");
        }
        IN_JOB.with(|c| c.set(outer));
        let mut st = self.lock();
        st.running = false;
        st.helped_last = !by_worker;
        self.finished.store(seq, Ordering::Release);
        let wake = st.finish_sleepers > 0;
        drop(st);
        if wake {
            self.finished_cv.notify_all();
        }
    }

    /// Runs the queued jobs up to and including `seq` on the calling thread, in order, or waits
    /// while another thread runs one of them (spinning briefly, then asleep until it finishes).
    /// Jobs whose own deadline is past `deadline` are left to the worker. True once job `seq`
    /// finished; false at `deadline`, or at once from inside one of this queue's jobs (which cannot
    /// wait for the queue).
    pub fn run_through(&self, seq: u64, deadline: Instant) -> bool {
        if self.finished.load(Ordering::Acquire) >= seq {
            return true;
        }
        if self.in_job() {
            return false;
        }
        loop {
            let mut st = self.lock();
            let seen = self.finished.load(Ordering::Acquire);
            if seen >= seq {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if let Some(e) = Self::take(&mut st, seq, Some(deadline)) {
                drop(st);
                self.run(e.seq, e.job, false);
                continue;
            }
            if !st.running {
                if st.jobs.front().is_none_or(|e| e.seq > seq) {
                    // Nothing up to `seq` is queued or running, yet it did not finish: it cannot
                    // happen with jobs finishing in order; let the caller wait on its own handle.
                    return true;
                }
                // The next job may outlast this wait: the worker runs it, now.
                if st.worker != Worker::Awake {
                    st.worker = Worker::Awake;
                    self.wake_worker();
                }
            }
            // Another thread runs (or is about to run) a job up to `seq`: spin while it likely
            // finishes soon, then sleep until it did.
            drop(st);
            let mut backoff = Backoff::new();
            while self.finished.load(Ordering::Acquire) == seen && backoff.snooze() {}
            let mut st = self.lock();
            while self.finished.load(Ordering::Acquire) == seen && (st.running || st.jobs.front().is_some_and(|e| e.deadline > deadline)) {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                st.finish_sleepers += 1;
                st = self.finished_cv.wait_timeout(st, (deadline - now).min(RECHECK)).unwrap_or_else(|p| p.into_inner()).0;
                st.finish_sleepers -= 1;
            }
        }
    }

    /// Runs or waits for every job submitted so far. With none pending it returns at once,
    /// without taking the lock.
    pub fn quiesce(&self, timeout: Duration) -> Result<()> {
        let target = self.submitted.load(Ordering::Acquire);
        if self.finished.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        if self.in_job() {
            return Err(ChorusError::Incomplete("a group's operation cannot wait for the group's queue from inside one of its operations".into()));
        }
        let deadline = Instant::now().checked_add(timeout).unwrap_or_else(|| Instant::now() + RECHECK * 86_400);
        if self.run_through(target, deadline) {
            Ok(())
        } else {
            Err(ChorusError::Incomplete("earlier asynchronous operations did not finish in time".into()))
        }
    }

    /// The worker thread's loop: runs jobs as they are queued, until the queue is closed and
    /// empty. With nothing to take it naps while submissions keep coming (or a waiter runs the
    /// front job), else sleeps.
    pub fn serve(&self) {
        let mut st = self.lock();
        let (mut seen, mut idle_naps) = (0u64, 0u32);
        // Whether the worker was woken for work (or just ran a job) rather than back from a nap.
        let mut called = true;
        loop {
            let young = st.jobs.front().map(|e| e.queued.elapsed()).filter(|age| !called && *age < GRACE);
            if young.is_none() {
                if let Some(e) = Self::take(&mut st, u64::MAX, None) {
                    drop(st);
                    self.run(e.seq, e.job, true);
                    st = self.lock();
                    called = true;
                    continue;
                }
            }
            if st.closed && st.jobs.is_empty() {
                return;
            }
            // Queued jobs here mean a waiter runs the front one: the worker naps meanwhile rather
            // than asking to be woken when it finishes (a wake-up per job is what naps avoid).
            let submitted = self.submitted.load(Ordering::Relaxed);
            if submitted != seen || !st.jobs.is_empty() {
                (seen, idle_naps) = (submitted, 0);
            }
            let (mode, nap) = if idle_naps < NAPS { (Worker::Napping, NAP) } else { (Worker::Asleep, RECHECK) };
            let nap = young.map_or(nap, |age| nap.min(GRACE - age));
            idle_naps += 1;
            st.worker = mode;
            st = self.submitted_cv.wait_timeout(st, nap).unwrap_or_else(|p| p.into_inner()).0;
            // A submission or a waiter that wants the worker sets it awake before the wake-up.
            called = st.worker == Worker::Awake;
            st.worker = Worker::Awake;
        }
    }

    /// Refuses further jobs; those queued still run (the worker drains them before it returns).
    pub fn close(&self) {
        self.lock().closed = true;
        self.submitted_cv.notify_all();
        self.finished_cv.notify_all();
    }
}

impl Drain for OpQueue {
    fn run_through(&self, seq: u64, deadline: Instant) -> bool {
        OpQueue::run_through(self, seq, deadline)
    }
}

#[cfg(test)]
mod tests;
