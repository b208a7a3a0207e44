//! Members' protocol steps (`Membership`) driven in memory: one store, fake peers (liveness and
//! recovery counters in a shared table), a tick clock. Survivors in every position — inside the
//! interrupted collective with or without its data, or between collectives — must end that
//! collective alike, whichever member stops at whichever step.
use super::member::{Clock, Ending, Membership, Peers, Recovery, RecoveryStep, Start};
use super::View;
use crate::options::FailurePolicy;
use chorus_bootstrap::{MemStore, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const N: usize = 4;
/// Died before the round; nobody steps it.
const FAILED: usize = 3;
/// The collective the failure interrupts (4 is committed everywhere).
const OP: u64 = 5;

struct World {
    tick: AtomicU64,
    /// Per rank: the highest `Recovery` value raised in its signal block.
    requests: Mutex<Vec<u64>>,
    /// Per rank: the tick it stopped at.
    stopped: Mutex<Vec<Option<u64>>>,
    /// Ticks until a stopped member looks dead.
    delay: u64,
}

struct FakePeers {
    me: usize,
    world: Arc<World>,
}

impl Peers for FakePeers {
    fn peer_dead(&self, peer: usize) -> bool {
        let now = self.world.tick.load(Ordering::SeqCst);
        peer == FAILED || self.world.stopped.lock().unwrap()[peer].is_some_and(|t| now >= t + self.world.delay)
    }
    fn raise(&self, members: &[usize], value: u64) {
        let mut r = self.world.requests.lock().unwrap();
        for &p in members.iter().chain([self.me].iter()) {
            r[p] = r[p].max(value);
        }
    }
    fn highest_request(&self) -> u64 {
        self.world.requests.lock().unwrap()[self.me]
    }
}

struct TickClock {
    start: Instant,
    world: Arc<World>,
}

impl Clock for TickClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.world.tick.load(Ordering::SeqCst))
    }
    fn pause(&self, _d: Duration) {}
}

#[derive(Clone, Copy, Debug)]
enum Position {
    /// Inside the collective; `done`: its part is complete; `saved`: it can run it again.
    Inside { done: bool, saved: bool },
    /// Between collectives (it returned collective 4 and computes).
    Between,
    /// Still in collective 4's commit barrier (its part done; the others returned 4): the round
    /// interrupts it there, and it issues collective 5 after.
    Finishing,
}

enum Phase {
    /// Between collectives: the attendant answers rounds; after a few ticks it issues the next.
    Idle { ticks: u64 },
    Recovering(Recovery),
    /// A failure round that interrupted collective `OP - 1`'s commit barrier.
    Finishing(Recovery),
    Ended(String),
}

struct Sim {
    rank: usize,
    m: Membership,
    peers: FakePeers,
    phase: Phase,
    steps: usize,
    stops_at: Option<usize>,
}

fn describe(e: Ending) -> String {
    match e {
        Ending::Committed => "committed".into(),
        Ending::Run => "run again".into(),
        Ending::Fails(e) => format!("fails: {e}"),
    }
}

/// One round; returns (rank, what collective `OP` came to, the view) for every member that did
/// not stop.
fn run(positions: &[(usize, Position)], stopper: Option<(usize, usize)>, delay: u64) -> Vec<(usize, String, View)> {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let world = Arc::new(World { tick: AtomicU64::new(0), requests: Mutex::new(vec![0; N]), stopped: Mutex::new(vec![None; N]), delay });
    let start = Instant::now();
    let mut sims: Vec<Sim> = positions
        .iter()
        .map(|&(rank, pos)| {
            let clock = Arc::new(TickClock { start, world: world.clone() });
            let m = Membership::new(rank, N, "sim", store.clone(), FailurePolicy::Shrink, Duration::from_secs(10), clock, None);
            m.set_progress(None, Some(OP - 1 - matches!(pos, Position::Finishing) as u64));
            let peers = FakePeers { me: rank, world: world.clone() };
            let phase = match pos {
                Position::Inside { done, saved } => {
                    m.set_progress(Some((OP, done)), None);
                    m.set_can_rerun(saved);
                    // It saw rank FAILED die during the collective.
                    Phase::Recovering(m.begin_recovery())
                }
                Position::Between => Phase::Idle { ticks: 0 },
                Position::Finishing => {
                    m.set_progress(Some((OP - 1, true)), None);
                    Phase::Finishing(m.begin_recovery())
                }
            };
            Sim { rank, m, peers, phase, steps: 0, stops_at: stopper.filter(|s| s.0 == rank).map(|s| s.1) }
        })
        .collect();
    let mut answered = vec![None; N];
    for tick in 0..500u64 {
        world.tick.store(tick, Ordering::SeqCst);
        for s in sims.iter_mut() {
            if world.stopped.lock().unwrap()[s.rank].is_some() || matches!(s.phase, Phase::Ended(_)) {
                continue;
            }
            if s.stops_at == Some(s.steps) {
                world.stopped.lock().unwrap()[s.rank] = Some(tick);
                continue;
            }
            s.steps += 1;
            let next = match &mut s.phase {
                Phase::Idle { ticks } => {
                    // The attendant thread answers a pending round for it.
                    answered[s.rank] = s.m.answer(&s.peers, answered[s.rank]).unwrap();
                    *ticks += 1;
                    if *ticks < 4 {
                        None
                    } else {
                        // Its next collective: a pending round is settled first; with none, the
                        // attempt meets the dead rank and recovers from inside it.
                        let _pending = s.m.start_attempt(&s.peers, "all_reduce", OP);
                        Some(Phase::Recovering(s.m.begin_recovery()))
                    }
                }
                Phase::Finishing(rec) => match s.m.step_recovery(&s.peers, rec).unwrap() {
                    RecoveryStep::Applied => {
                        assert!(matches!(s.m.ending("all_reduce", OP - 1), Ending::Committed), "rank {}: collective {} (every part done) not committed", s.rank, OP - 1);
                        // Its next collective: the decision may have ended it already.
                        Some(match s.m.start_attempt(&s.peers, "all_reduce", OP) {
                            Start::Ended(e) => Phase::Ended(describe(Ending::Fails(e))),
                            Start::Started => Phase::Ended(describe(Ending::Run)),
                            Start::Settle(..) => panic!("rank {}: a round pending after the one applied", s.rank),
                        })
                    }
                    RecoveryStep::Posted | RecoveryStep::Waiting => None,
                },
                Phase::Recovering(rec) => match s.m.step_recovery(&s.peers, rec).unwrap() {
                    RecoveryStep::Applied => Some(Phase::Ended(describe(s.m.ending("all_reduce", OP)))),
                    RecoveryStep::Posted | RecoveryStep::Waiting => None,
                },
                Phase::Ended(_) => None,
            };
            if let Some(p) = next {
                s.phase = p;
            }
        }
        if sims.iter().all(|s| world.stopped.lock().unwrap()[s.rank].is_some() || matches!(s.phase, Phase::Ended(_))) {
            break;
        }
    }
    let stopped = world.stopped.lock().unwrap().clone();
    sims.into_iter()
        .filter(|s| stopped[s.rank].is_none())
        .map(|s| match s.phase {
            Phase::Ended(e) => (s.rank, e, s.m.view()),
            _ => panic!("rank {} never finished the round (stopper {stopper:?}, delay {delay})", s.rank),
        })
        .collect()
}

fn check(positions: &[(usize, Position)], expect: &str) {
    for delay in [0, 2] {
        let mut cases: Vec<Option<(usize, usize)>> = vec![None];
        for &(rank, _) in positions {
            cases.extend((0..6).map(|step| Some((rank, step))));
        }
        for stopper in cases {
            let out = run(positions, stopper, delay);
            let what = format!("{positions:?}, stopper (rank, step) {stopper:?}, seen dead after {delay} ticks");
            let (_, first, view) = out.first().unwrap_or_else(|| panic!("{what}: no survivor"));
            for (rank, e, v) in &out {
                assert_eq!((e, v), (first, view), "{what}: rank {rank} ended differently");
            }
            assert!(!view.is_active(FAILED), "{what}: the failed rank is still a member");
            if stopper.is_none() {
                assert!(first.starts_with(expect), "{what}: {first}, expected {expect}");
            }
        }
    }
}

#[test]
fn survivors_in_every_position_end_the_interrupted_collective_alike() {
    let inside = |done| Position::Inside { done, saved: true };
    check(&[(0, inside(true)), (1, inside(false)), (2, Position::Between)], "run again");
    check(&[(0, inside(true)), (1, inside(true)), (2, inside(true))], "committed");
    check(&[(0, Position::Between), (1, inside(false)), (2, Position::Between)], "run again");
    check(&[(0, inside(false)), (1, Position::Finishing), (2, Position::Between)], "run again");
}

#[test]
fn an_unsaved_input_fails_the_collective_on_every_survivor() {
    check(&[(0, Position::Inside { done: false, saved: false }), (1, Position::Inside { done: true, saved: true }), (2, Position::Between)], "fails: all_reduce cannot complete");
    // A rank still in the commit barrier of the collective before fails it too, without running
    // it (it used to run it alone, after applying the decision that failed it on the others).
    check(&[(0, Position::Inside { done: false, saved: false }), (1, Position::Finishing), (2, Position::Between)], "fails: all_reduce cannot complete");
}
