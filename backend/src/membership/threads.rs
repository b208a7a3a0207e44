//! The two threads membership runs per group. The heartbeat thread only touches shared memory
//! and sockets (beats, liveness, aborting GPU communicators that span a dead peer): it never
//! waits on the store, so a slow store cannot make peers declare this rank dead. The attendant
//! thread does the store work a rank between collectives owes its peers: it answers recovery
//! rounds and notices replacement ranks asking to join.
use crate::error::{ChorusError, Result};
use std::sync::Weak;
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

/// Starts the heartbeat and attendant threads of `group` (named after `name`), each turning every
/// `interval`.
pub fn spawn<M: Member>(group: Weak<M>, name: &str, interval: Duration, fault_tolerance: bool) -> Result<Vec<JoinHandle<()>>> {
    let spawn = |thread: String, body: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new().name(thread.clone()).spawn(body).map_err(|e| ChorusError::InvalidArgument(format!("spawning {thread}: {e}")))
    };
    let mut threads = Vec::new();
    let hb = group.clone();
    threads.push(spawn(format!("chorus-hb-{name}"), Box::new(move || heartbeat_loop(hb, interval)))?);
    if fault_tolerance {
        threads.push(spawn(format!("chorus-ft-{name}"), Box::new(move || attendant_loop(group, interval)))?);
    }
    Ok(threads)
}

fn heartbeat_loop<M: Member>(group: Weak<M>, interval: Duration) {
    loop {
        {
            let Some(g) = group.upgrade() else { return };
            if !g.live() {
                return;
            }
            g.beat();
        }
        // Parked, not asleep: destroy unparks the thread so it ends at once instead of at its next
        // turn (a destroy that waited up to `interval` spread the ranks' exits far enough apart
        // for env:// re-initialisation to meet the previous incarnation's store; issue 25).
        std::thread::park_timeout(interval);
    }
}

fn attendant_loop<M: Member>(group: Weak<M>, interval: Duration) {
    let mut answered = None;
    let mut tick: u64 = 0;
    loop {
        {
            let Some(g) = group.upgrade() else { return };
            if !g.live() {
                return;
            }
            g.attend(&mut answered, tick.is_multiple_of(2));
        }
        tick += 1;
        std::thread::park_timeout(interval);
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
        threads.into_iter().for_each(|t| t.join().unwrap());
    }
}
