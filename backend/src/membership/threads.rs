//! The two threads membership runs per group. The heartbeat thread only touches shared memory
//! and sockets (beats, liveness, aborting GPU communicators that span a dead peer): it never
//! waits on the store, so a slow store cannot make peers declare this rank dead. The attendant
//! thread does the store work a rank between collectives owes its peers: it answers recovery
//! rounds and notices replacement ranks asking to join.
use crate::error::{ChorusError, Result};
use std::sync::Weak;
use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the membership threads need from the group they serve.
pub trait Member: Send + Sync + 'static {
    /// Whether the group is still live (the threads end when it is not, or is gone).
    fn live(&self) -> bool;
    /// One beat to every linked peer, and what follows from peers found dead; no store access.
    fn beat(&self);
    /// One turn of store work: answer a pending recovery round for a rank between collectives
    /// (`answered` is what it posted last time, so each answer is posted once) and, when
    /// `poll_joins`, look for join requests.
    fn attend(&self, answered: &mut Option<(u64, u8, u64)>, poll_joins: bool);
}

/// The running membership threads of a group and the means to stop them.
///
/// They wait between turns on a channel nobody sends on; [`MembershipThreads::stop`] drops its
/// sender, which wakes every wait at once and for good (a disconnected channel stays so). A
/// `park_timeout` woken by `unpark` lost that wake-up whenever the thread consumed the token
/// inside its turn (channel and store waits park too) and then slept a whole interval, so a
/// destroy took up to the heartbeat interval (issue 25's `recreate` test, 5 s, on a loaded CI run).
#[derive(Default)]
pub struct MembershipThreads {
    stop: Option<Sender<()>>,
    handles: Vec<JoinHandle<()>>,
}

impl MembershipThreads {
    /// Wakes the threads, which end since the group is no longer live, and joins them (all but
    /// the calling thread, should a membership thread itself stop the group). Idempotent.
    pub fn stop(&mut self) {
        self.stop.take();
        for h in self.handles.drain(..) {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

/// Starts the heartbeat and attendant threads of `group` (named after `name`), each turning every
/// `interval`.
pub fn spawn<M: Member>(group: Weak<M>, name: &str, interval: Duration, fault_tolerance: bool) -> Result<MembershipThreads> {
    let (stop, stopped) = crossbeam::channel::bounded::<()>(0);
    let mut threads = MembershipThreads { stop: Some(stop), handles: Vec::new() };
    let mut spawn = |thread: String, body: Box<dyn FnOnce() + Send>| -> Result<()> {
        let h = std::thread::Builder::new().name(thread.clone()).spawn(body).map_err(|e| ChorusError::InvalidArgument(format!("spawning {thread}: {e}")))?;
        threads.handles.push(h);
        Ok(())
    };
    let (hb, hb_stopped) = (group.clone(), stopped.clone());
    spawn(format!("chorus-hb-{name}"), Box::new(move || turn_until_stopped(hb, interval, &hb_stopped, |g, _| g.beat())))?;
    if fault_tolerance {
        let mut answered = None;
        spawn(
            format!("chorus-ft-{name}"),
            Box::new(move || turn_until_stopped(group, interval, &stopped, |g, tick| g.attend(&mut answered, tick.is_multiple_of(2)))),
        )?;
    }
    Ok(threads)
}

/// Runs `turn` (with the turn's number) every `interval` while the group lives and `stopped` is
/// connected.
fn turn_until_stopped<M: Member>(group: Weak<M>, interval: Duration, stopped: &Receiver<()>, mut turn: impl FnMut(&M, u64)) {
    for tick in 0u64.. {
        {
            let Some(g) = group.upgrade() else { return };
            if !g.live() {
                return;
            }
            turn(&g, tick);
        }
        if let Err(RecvTimeoutError::Disconnected) = stopped.recv_timeout(interval) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// A member whose store work hangs (a store that stopped answering).
    struct StuckStore {
        beats: AtomicU64,
        stuck: AtomicBool,
        live: AtomicBool,
    }

    impl Member for StuckStore {
        fn live(&self) -> bool {
            self.live.load(Ordering::SeqCst)
        }
        fn beat(&self) {
            self.beats.fetch_add(1, Ordering::SeqCst);
        }
        fn attend(&self, _answered: &mut Option<(u64, u8, u64)>, _poll_joins: bool) {
            self.stuck.store(true, Ordering::SeqCst);
            let until = Instant::now() + Duration::from_millis(600);
            while Instant::now() < until && self.live() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Issue 21: the heartbeat thread made store calls, so a slow store stopped the beats.
    #[test]
    fn beats_go_on_while_the_store_hangs() {
        let m = Arc::new(StuckStore { beats: AtomicU64::new(0), stuck: AtomicBool::new(false), live: AtomicBool::new(true) });
        let threads = spawn(Arc::downgrade(&m), "test", Duration::from_millis(10), true).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(m.stuck.load(Ordering::SeqCst), "the attendant is inside the store call");
        let before = m.beats.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        let after = m.beats.load(Ordering::SeqCst);
        assert!(after >= before + 10, "beats stalled behind the store: {before} -> {after}");
        m.live.store(false, Ordering::SeqCst);
        let mut threads = threads;
        threads.stop();
    }

    /// A member whose turn itself waits on a channel (as store calls do): the thread's park token
    /// is no longer how a stop reaches it.
    struct WaitsInItsTurn {
        turns: AtomicU64,
        live: AtomicBool,
    }

    impl Member for WaitsInItsTurn {
        fn live(&self) -> bool {
            self.live.load(Ordering::SeqCst)
        }
        fn beat(&self) {
            self.turns.fetch_add(1, Ordering::SeqCst);
            let (_tx, rx) = crossbeam::channel::bounded::<()>(0);
            let _ = rx.recv_timeout(Duration::from_millis(20));
        }
        fn attend(&self, _answered: &mut Option<(u64, u8, u64)>, _poll_joins: bool) {
            self.beat();
        }
    }

    /// Issue 25: a stop that arrives while a turn waits is not lost, however long the interval.
    #[test]
    fn a_stop_during_a_turn_ends_the_threads_at_once() {
        for _ in 0..20 {
            let m = Arc::new(WaitsInItsTurn { turns: AtomicU64::new(0), live: AtomicBool::new(true) });
            let mut threads = spawn(Arc::downgrade(&m), "test", Duration::from_secs(30), true).unwrap();
            while m.turns.load(Ordering::SeqCst) < 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(5));
            m.live.store(false, Ordering::SeqCst);
            let t0 = Instant::now();
            threads.stop();
            assert!(t0.elapsed() < Duration::from_secs(5), "stopping took {:?}: a thread slept its interval", t0.elapsed());
        }
    }
}
