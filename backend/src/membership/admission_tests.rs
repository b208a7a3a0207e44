//! A replacement's admission driven through `Membership` in memory: one store, fake peers
//! (liveness and recovery counters in a shared table), a tick clock, and collectives simulated
//! over that table (a member's part of an attempt completes once every member of its view is in
//! the same attempt; it returns the collective once every member's part is complete). Three
//! members — computing between collectives (their attendant answers through `answer`), at the
//! boundary (`step_admission`), or already inside the next collective (the others then proceed
//! into it) — and the joiner (`step_admit`) run collectives through `LAST`, while one of them dies
//! right before or after any one of its store writes and signals, in several turn orders and with
//! deaths seen at once or later. Every survivor must end every collective alike, with the same
//! view and commit point; a live joiner must start at the collective the members first ran with
//! it; nobody may wait past a deadline.
use super::member::{Admission, AdmissionStep, Admit, AdmitStep, Clock, Ending, Membership, Peers, Recovery, RecoveryStep, Resumed, Start};
use super::recovery;
use super::View;
use crate::options::FailurePolicy;
use chorus_bootstrap::{BootstrapError, MemStore, Store};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const N: usize = 4;
const JOINER: usize = 3;
/// Collectives through this one returned everywhere before the joiner asks to be admitted.
const START: u64 = 4;
/// Every survivor runs collectives through this one.
const LAST: u64 = 8;
/// Ticks (1 ms of the fake clock each) any wait may take.
const TIMEOUT: u64 = 300;
const TICKS: u64 = 3000;

/// The shared table: what the ranks' signal blocks, links and the store's liveness show.
struct World {
    tick: AtomicU64,
    /// Ticks until a dead rank is seen dead.
    delay: u64,
    /// (rank, n): `rank` dies when it tries its effect number `n + 1` (a store write or a signal).
    dies_after: Option<(usize, u64)>,
    effects: Mutex<Vec<u64>>,
    died: Mutex<Vec<Option<u64>>>,
    /// Per rank: the highest `Recovery` value raised in its signal block.
    requests: Mutex<Vec<u64>>,
    /// Per rank: the collective attempt it is inside, `(op, attempt, part complete)`: its chunks
    /// (and, once complete, its `Done`) are visible to the others.
    inside: Mutex<Vec<Option<(u64, u64, bool)>>>,
    /// Per rank: the last collective whose result it holds.
    holds: Mutex<Vec<u64>>,
}

impl World {
    fn now(&self) -> u64 {
        self.tick.load(Ordering::SeqCst)
    }

    fn dead(&self, rank: usize) -> bool {
        self.died.lock().unwrap()[rank].is_some()
    }

    fn seen_dead(&self, rank: usize) -> bool {
        self.died.lock().unwrap()[rank].is_some_and(|t| self.now() >= t + self.delay)
    }

    /// One store write or signal of `rank`: `false` (nothing happens, and `rank` is dead from
    /// here on) once it spent its allowance.
    fn effect(&self, rank: usize) -> bool {
        if self.dead(rank) {
            return false;
        }
        let mut effects = self.effects.lock().unwrap();
        if self.dies_after.is_some_and(|(r, n)| r == rank && effects[rank] >= n) {
            self.died.lock().unwrap()[rank] = Some(self.now());
            return false;
        }
        effects[rank] += 1;
        true
    }
}

/// A rank's handle on the one store: every write is an effect; a dead rank's calls fail.
struct CrashStore {
    inner: Arc<MemStore>,
    rank: usize,
    world: Arc<World>,
}

fn gone(op: &'static str) -> BootstrapError {
    BootstrapError::Callback { op, store: "the simulated store".into(), message: "this rank died".into() }
}

impl CrashStore {
    fn write(&self, op: &'static str) -> chorus_bootstrap::Result<()> {
        if self.world.effect(self.rank) {
            Ok(())
        } else {
            Err(gone(op))
        }
    }

    fn read(&self, op: &'static str) -> chorus_bootstrap::Result<()> {
        if self.world.dead(self.rank) {
            Err(gone(op))
        } else {
            Ok(())
        }
    }
}

impl Store for CrashStore {
    fn set(&self, key: &str, value: &[u8]) -> chorus_bootstrap::Result<()> {
        self.write("set")?;
        self.inner.set(key, value)
    }
    fn get(&self, key: &str) -> chorus_bootstrap::Result<Option<Vec<u8>>> {
        self.read("get")?;
        self.inner.get(key)
    }
    fn wait(&self, keys: &[&str], timeout: Duration) -> chorus_bootstrap::Result<Vec<Vec<u8>>> {
        self.read("wait")?;
        self.inner.wait(keys, timeout)
    }
    fn add(&self, key: &str, delta: i64) -> chorus_bootstrap::Result<i64> {
        self.write("add")?;
        self.inner.add(key, delta)
    }
    fn compare_set(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> chorus_bootstrap::Result<(bool, Vec<u8>)> {
        self.write("compare_set")?;
        self.inner.compare_set(key, expected, new)
    }
    fn delete(&self, key: &str) -> chorus_bootstrap::Result<bool> {
        self.write("delete")?;
        self.inner.delete(key)
    }
    fn list_prefix(&self, prefix: &str) -> chorus_bootstrap::Result<Vec<String>> {
        self.read("list_prefix")?;
        self.inner.list_prefix(prefix)
    }
}

struct FakePeers {
    me: usize,
    world: Arc<World>,
}

impl Peers for FakePeers {
    fn peer_dead(&self, peer: usize) -> bool {
        self.world.seen_dead(peer)
    }
    fn raise(&self, members: &[usize], value: u64) {
        if !self.world.effect(self.me) {
            return;
        }
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
        self.start + Duration::from_millis(self.world.now())
    }
    fn pause(&self, _d: Duration) {}
}

/// Where a member is when the joiner asks in.
#[derive(Clone, Copy, Debug)]
enum Position {
    /// Between collectives: it computes this many ticks before each collective (0: it is at the
    /// boundary, issuing the next one).
    Between(u64),
    /// Inside collective `START + 1` (it started before the round was asked for); it computes
    /// this many ticks between later collectives.
    Inside(u64),
}

enum Phase {
    /// The joiner, before it asks (at tick `from`) and while it is admitted.
    Joining { from: u64, admit: Admit },
    Computing { until: u64 },
    /// Issuing collective `next_op` (settling the rounds asked for first).
    Starting,
    Admission(Admission),
    /// A failure round; `contributors`: the members of the attempt it interrupted, if any.
    Recovering { rec: Recovery, contributors: Option<Vec<usize>> },
    Inside { op: u64, view: View, attempt: u64, done: bool, since: u64 },
    Finished,
    Failed(String),
}

struct Sim {
    rank: usize,
    m: Membership,
    peers: FakePeers,
    world: Arc<World>,
    phase: Phase,
    next_op: u64,
    compute: u64,
    /// Whether an attempt's in-place input survives it (recovery may re-run it).
    saved: bool,
    chunks_seen: bool,
    /// `(op, ticks)`: it computes this much longer before collective `op`.
    stall: Option<(u64, u64)>,
    answered: Option<(u64, u8, u64)>,
    /// What each collective came to.
    outcomes: BTreeMap<u64, String>,
    /// The joiner: the last collective before its first.
    joined: Option<u64>,
}

/// Computing before collective `next_op` (longer before the one it stalls at).
fn computing(stall: Option<(u64, u64)>, compute: u64, next_op: u64, tick: u64) -> Phase {
    let stall = stall.filter(|&(op, _)| op == next_op).map_or(0, |(_, ticks)| ticks);
    Phase::Computing { until: tick + compute + stall }
}

impl Sim {
    fn step(&mut self, tick: u64) {
        if let Err(e) = self.try_step(tick) {
            if !self.world.dead(self.rank) {
                self.phase = Phase::Failed(format!("{e}"));
            }
        }
    }

    fn try_step(&mut self, tick: u64) -> crate::error::Result<()> {
        if matches!(self.phase, Phase::Failed(_)) {
            return Ok(());
        }
        // The attendant thread's turn: it answers rounds for this rank (as between collectives,
        // or inside one), whatever the collective path does.
        self.answered = self.m.answer(&self.peers, self.answered)?;
        let world = self.world.clone();
        let next = match &mut self.phase {
            Phase::Joining { from, admit } => {
                if tick < *from {
                    return Ok(());
                }
                match self.m.step_admit(&self.peers, admit)? {
                    AdmitStep::Admitted(next) => {
                        self.joined = Some(next);
                        self.next_op = next + 1;
                        world.holds.lock().unwrap()[self.rank] = next;
                        Some(Phase::Starting)
                    }
                    AdmitStep::Raised | AdmitStep::Waiting => None,
                }
            }
            Phase::Computing { until } => (tick >= *until).then_some(Phase::Starting),
            Phase::Starting => Some(self.start(tick)),
            Phase::Admission(adm) => {
                let applied = self.m.rounds_applied();
                let ring = self.m.view().members();
                let me = self.rank;
                let chunks_seen = self.chunks_seen;
                // A member's chunk of a later collective reaches its successor in the ring.
                let started_after = |p: usize, boundary: u64| {
                    let successor = ring.iter().position(|&r| r == p).map(|i| ring[(i + 1) % ring.len()]);
                    chunks_seen && successor == Some(me) && world.inside.lock().unwrap()[p].is_some_and(|(op, a, _)| op > boundary && a == applied)
                };
                match self.m.step_admission(&self.peers, adm, &started_after)? {
                    AdmissionStep::Posted | AdmissionStep::Waiting => None,
                    AdmissionStep::Proceed => Some(Phase::Starting),
                    AdmissionStep::Applied => Some(self.end(None, tick)),
                }
            }
            Phase::Recovering { rec, contributors } => match self.m.step_recovery(&self.peers, rec)? {
                RecoveryStep::Applied => {
                    let c = contributors.take();
                    Some(self.end(c, tick))
                }
                RecoveryStep::Posted | RecoveryStep::Waiting => None,
            },
            Phase::Inside { op, view, attempt, done, since } => {
                let (op, attempt) = (*op, *attempt);
                let others: Vec<usize> = view.members().into_iter().filter(|&p| p != self.rank).collect();
                let inside = world.inside.lock().unwrap().clone();
                let holds = world.holds.lock().unwrap().clone();
                let interrupted = recovery::interrupts(self.peers.highest_request(), self.m.rounds_applied())
                    || others.iter().any(|&p| world.seen_dead(p) || inside[p].is_some_and(|(o, a, _)| o == op && a > attempt));
                let with_me = |p: usize, need_done: bool| holds[p] >= op || inside[p].is_some_and(|(o, a, d)| o == op && a == attempt && (d || !need_done));
                if interrupted {
                    self.m.set_can_rerun(self.saved);
                    Some(Phase::Recovering { rec: self.m.begin_recovery(), contributors: Some(view.members()) })
                } else if !*done {
                    if others.iter().all(|&p| with_me(p, false)) {
                        *done = true;
                        self.m.set_progress(Some((op, true)), None);
                        world.inside.lock().unwrap()[self.rank] = Some((op, attempt, true));
                    }
                    None
                } else if others.iter().all(|&p| with_me(p, true)) {
                    self.m.set_progress(None, Some(op));
                    world.inside.lock().unwrap()[self.rank] = None;
                    world.holds.lock().unwrap()[self.rank] = op;
                    self.outcomes.insert(op, format!("result over {:?}", view.members()));
                    self.next_op = op + 1;
                    Some(computing(self.stall, self.compute, self.next_op, tick))
                } else {
                    None
                }
                .or_else(|| {
                    // Its deadline passed (the engine's `Timeout`): a timeout round, naming a
                    // member whose part it still waits for.
                    let waited = others.iter().copied().find(|&p| !with_me(p, *done))?;
                    (tick >= *since + TIMEOUT).then(|| {
                        self.m.set_can_rerun(self.saved);
                        self.m.set_timed_out(waited);
                        Phase::Recovering { rec: self.m.begin_recovery(), contributors: Some(view.members()) }
                    })
                })
            }
            Phase::Finished | Phase::Failed(_) => None,
        };
        if let Some(p) = next {
            self.phase = p;
        }
        Ok(())
    }

    fn computing(&self, tick: u64) -> Phase {
        computing(self.stall, self.compute, self.next_op, tick)
    }

    /// Issues collective `next_op`: settles a pending round first, else starts an attempt.
    fn start(&mut self, tick: u64) -> Phase {
        if self.next_op > LAST {
            return Phase::Finished;
        }
        match self.m.start_attempt(&self.peers, "all_reduce", self.next_op) {
            Start::Ended(e) => {
                self.outcomes.insert(self.next_op, format!("fails: {e}"));
                self.next_op += 1;
                self.computing(tick)
            }
            Start::Settle(_, true) => Phase::Recovering { rec: self.m.begin_recovery(), contributors: None },
            Start::Settle(round, false) => Phase::Admission(self.m.begin_admission(round)),
            Start::Started => {
                let view = self.m.view();
                if !view.is_active(self.rank) {
                    return Phase::Failed(format!("excluded at epoch {}", view.epoch));
                }
                let attempt = self.m.rounds_applied();
                self.world.inside.lock().unwrap()[self.rank] = Some((self.next_op, attempt, false));
                Phase::Inside { op: self.next_op, view, attempt, done: false, since: tick }
            }
        }
    }

    /// After a decision: how collective `next_op` ends on this rank.
    fn end(&mut self, contributors: Option<Vec<usize>>, tick: u64) -> Phase {
        let op = self.next_op;
        self.world.inside.lock().unwrap()[self.rank] = None;
        match self.m.ending("all_reduce", op) {
            Ending::Run => return Phase::Starting,
            Ending::Committed => {
                self.m.set_progress(None, None);
                self.world.holds.lock().unwrap()[self.rank] = op;
                self.outcomes.insert(op, format!("result over {:?}", contributors.unwrap_or_else(|| self.m.view().members())));
            }
            Ending::Fails(e) => {
                self.outcomes.insert(op, format!("fails: {e}"));
            }
        }
        self.next_op = op + 1;
        self.computing(tick)
    }

    fn describe(&self) -> String {
        match &self.phase {
            Phase::Joining { .. } => "joining".into(),
            Phase::Computing { .. } => format!("computing before {}", self.next_op),
            Phase::Starting => format!("issuing {}", self.next_op),
            Phase::Admission(_) => format!("in an admission round before {}", self.next_op),
            Phase::Recovering { .. } => format!("in a failure round at {}", self.next_op),
            Phase::Inside { op, .. } => format!("inside {op}"),
            Phase::Finished => "finished".into(),
            Phase::Failed(e) => format!("failed: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    positions: [Position; 3],
    /// The tick the joiner asks at (`None`: there is no joiner).
    join_at: Option<u64>,
    saved: bool,
    delay: u64,
    /// Whether a member's first chunk of a collective shows a boundary member that it started
    /// (false: only its attendant's post under `inside/` does, as when it receives first).
    chunks_seen: bool,
    /// `(rank, op, ticks)`: that member computes this much longer before collective `op`.
    stall: Option<(usize, u64, u64)>,
}

struct Run {
    sims: Vec<Sim>,
    died: Vec<Option<u64>>,
    effects: Vec<u64>,
    holds: Vec<u64>,
}

fn run(case: Case, order: &[usize], dies_after: Option<(usize, u64)>) -> Run {
    let store = Arc::new(MemStore::new());
    let world = Arc::new(World {
        tick: AtomicU64::new(0),
        delay: case.delay,
        dies_after,
        effects: Mutex::new(vec![0; N]),
        died: Mutex::new(vec![None; N]),
        requests: Mutex::new(vec![0; N]),
        inside: Mutex::new(vec![None; N]),
        holds: Mutex::new(vec![START; N]),
    });
    // Round 1 removed the joiner's predecessor; collectives through START returned since.
    let view = View::full(N).next(&[], &[JOINER]);
    super::ViewStore::new(store.clone(), "adm", N).publish(&view).unwrap();
    let start = Instant::now();
    let mut sims: Vec<Sim> = (0..N)
        .map(|rank| {
            let clock = Arc::new(TickClock { start, world: world.clone() });
            let own: Arc<dyn Store> = Arc::new(CrashStore { inner: store.clone(), rank, world: world.clone() });
            let resumed = Resumed { view: view.clone(), committed: START, rounds: 1 };
            let m = Membership::new(rank, N, "adm", own, FailurePolicy::Shrink, Duration::from_millis(TIMEOUT), clock, Some(resumed));
            let peers = FakePeers { me: rank, world: world.clone() };
            let (phase, compute) = match case.positions.get(rank) {
                None => (Phase::Joining { from: case.join_at.unwrap_or(u64::MAX), admit: m.begin_admit() }, 1),
                Some(&Position::Between(c)) => (Phase::Computing { until: c + case.stall.filter(|s| s.0 == rank && s.1 == START + 1).map_or(0, |s| s.2) }, c),
                Some(&Position::Inside(c)) => (Phase::Starting, c),
            };
            Sim { rank, m, peers, world: world.clone(), phase, next_op: START + 1, compute, saved: case.saved, chunks_seen: case.chunks_seen, stall: case.stall.filter(|s| s.0 == rank).map(|s| (s.1, s.2)), answered: None, outcomes: BTreeMap::new(), joined: None }
        })
        .collect();
    // The members inside START + 1 started it before anyone asked for a round.
    for s in sims.iter_mut().filter(|s| matches!(s.phase, Phase::Starting)) {
        s.phase = s.start(0);
        assert!(matches!(s.phase, Phase::Inside { .. }));
    }
    // The joiner asked to be active before it asks for the round (a store write: a crash point).
    if case.join_at.is_none() {
        world.died.lock().unwrap()[JOINER] = Some(0);
    } else if let Err(e) = sims[JOINER].m.views().activate(&[JOINER]) {
        assert!(world.dead(JOINER), "activating: {e}");
    }
    for tick in 0..TICKS {
        world.tick.store(tick, Ordering::SeqCst);
        for &rank in order {
            if !world.dead(rank) {
                sims[rank].step(tick);
            }
        }
        if sims.iter().all(|s| world.dead(s.rank) || matches!(s.phase, Phase::Finished | Phase::Failed(_))) {
            break;
        }
    }
    let died = world.died.lock().unwrap().clone();
    let effects = world.effects.lock().unwrap().clone();
    let holds = world.holds.lock().unwrap().clone();
    Run { sims, died, effects, holds }
}

/// Survivors ended every collective alike and agree on the view and the commit point; a live
/// joiner runs from the collective the members first ran with it; a rank that died is out of
/// the view unless it died after returning the last collective.
fn check(r: &Run, case: Case, what: &str) {
    let survivors: Vec<&Sim> = r.sims.iter().filter(|s| r.died[s.rank].is_none()).collect();
    for s in &survivors {
        assert!(matches!(s.phase, Phase::Finished), "{what}: rank {} did not finish: {}", s.rank, s.describe());
    }
    let first = survivors[0];
    let (view, committed) = (first.m.view(), first.m.committed());
    assert_eq!(committed, LAST, "{what}: rank {} committed {committed}", first.rank);
    for s in &survivors {
        assert_eq!((s.m.view(), s.m.committed()), (view.clone(), committed), "{what}: rank {} ended in another view or commit point than rank {}", s.rank, first.rank);
    }
    for op in START + 1..=LAST {
        let seen: Vec<(usize, &String)> = survivors.iter().filter_map(|s| s.outcomes.get(&op).map(|o| (s.rank, o))).collect();
        for (rank, o) in &seen {
            assert_eq!(*o, seen[0].1, "{what}: collective {op} ended differently on rank {rank} than on rank {}", seen[0].0);
        }
        if case.stall.is_none() {
            assert!(!seen[0].1.contains("timed out"), "{what}: collective {op} timed out: {}", seen[0].1);
        }
        // Every member that survived returned every collective.
        for s in survivors.iter().filter(|s| s.rank != JOINER) {
            assert!(s.outcomes.contains_key(&op), "{what}: rank {} never ended collective {op}", s.rank);
        }
    }
    for (rank, died) in r.died.iter().enumerate() {
        if died.is_some() && view.is_active(rank) {
            assert_eq!(r.holds[rank], LAST, "{what}: rank {rank} died before the end and is still in the view");
        }
    }
    let joiner = &r.sims[JOINER];
    if case.join_at.is_some() && r.died[JOINER].is_none() {
        let joined = joiner.joined.unwrap_or_else(|| panic!("{what}: the joiner was never admitted"));
        assert!(view.is_active(JOINER), "{what}: the live joiner is not in the final view");
        // The members' first collective with the joiner is the joiner's first.
        let member = survivors.iter().find(|s| s.rank != JOINER).expect("a member survives");
        let with_joiner = member.outcomes.iter().find(|(_, o)| o.starts_with("result over") && o.contains(&JOINER.to_string())).map(|(&op, _)| op);
        let first_result = joiner.outcomes.iter().find(|(_, o)| o.starts_with("result over")).map(|(&op, _)| op);
        assert_eq!(with_joiner, first_result, "{what}: the joiner (admitted after {joined}) and rank {} disagree on the first collective together", member.rank);
        assert_eq!(joiner.outcomes.keys().next().copied(), Some(joined + 1), "{what}: the joiner's first collective");
    }
}

fn orders() -> Vec<Vec<usize>> {
    vec![vec![0, 1, 2, 3], vec![3, 2, 1, 0], vec![1, 3, 0, 2]]
}

/// Every rank dies at every one of its crash points (before its first effect, between any two,
/// or never), in every turn order.
fn check_case(case: Case) -> usize {
    let mut runs = 0;
    for order in orders() {
        let what = format!("{case:?}, order {order:?}");
        let clean = run(case, &order, None);
        check(&clean, case, &format!("{what}, nobody dies"));
        let present: Vec<usize> = (0..N).filter(|&r| r != JOINER || case.join_at.is_some()).collect();
        assert_eq!(clean.sims[0].m.view().members(), present, "{what}: without deaths everyone ends in the view");
        runs += 1;
        for &rank in &present {
            for n in 0.. {
                let r = run(case, &order, Some((rank, n)));
                runs += 1;
                if r.died[rank].is_none() {
                    // It made fewer effects than allowed: every crash point of this rank was tried.
                    assert!(r.effects[rank] <= n);
                    break;
                }
                check(&r, case, &format!("{what}, rank {rank} dies after {n} effects"));
            }
        }
    }
    runs
}

#[test]
fn admission_agrees_whoever_dies_wherever() {
    let mut runs = 0;
    let positions = [
        [Position::Between(3), Position::Between(0), Position::Inside(2)],
        [Position::Inside(1), Position::Inside(4), Position::Between(6)],
        [Position::Between(0), Position::Between(2), Position::Between(5)],
    ];
    for positions in positions {
        for join_at in [0, 3] {
            for delay in [0, 4] {
                for chunks_seen in [true, false] {
                    runs += check_case(Case { positions, join_at: Some(join_at), saved: true, delay, chunks_seen, stall: None });
                }
            }
        }
    }
    assert!(runs > 500, "only {runs} runs");
}

/// Interrupted collectives whose input was not saved fail alike; a joiner admitted by the
/// failure round skips the one that failed on the survivors.
#[test]
fn admission_with_unsaved_inputs_agrees_whoever_dies_wherever() {
    for delay in [0, 4] {
        check_case(Case { positions: [Position::Inside(1), Position::Between(0), Position::Inside(3)], join_at: Some(1), saved: false, delay, chunks_seen: true, stall: None });
    }
}

/// Issue 25: a member computes past the others' deadline before collective 6. The ranks waiting
/// inside it go through a timeout round; every rank — the late one when it issues it — ends it
/// with the same timeout error naming the late rank, nobody is removed, and the next
/// collectives run over everyone. Also with a joiner asking in meanwhile, and with any rank dying
/// at any of its crash points (then the survivors still agree).
#[test]
fn a_timeout_ends_the_collective_alike_on_every_rank() {
    let late = 2;
    for positions in [[Position::Between(1), Position::Between(2), Position::Between(0)], [Position::Inside(1), Position::Between(0), Position::Between(3)]] {
        for join_at in [None, Some(TIMEOUT + 20)] {
            for delay in [0, 4] {
                let case = Case { positions, join_at, saved: true, delay, chunks_seen: true, stall: Some((late, 6, 3 * TIMEOUT / 2)) };
                check_case(case);
                let clean = run(case, &[0, 1, 2, 3], None);
                let ended: Vec<&String> = clean.sims.iter().filter_map(|s| s.outcomes.get(&6)).collect();
                assert_eq!(ended.len(), 3 + join_at.is_some() as usize * (clean.sims[JOINER].joined < Some(6)) as usize, "{case:?}: {ended:?}");
                assert!(ended[0].starts_with("fails: all_reduce timed out") && ended[0].contains(&format!("rank(s) [{late}]")), "{case:?}: collective 6: {}", ended[0]);
                for op in [7, LAST] {
                    let members = clean.sims[0].outcomes.get(&op).cloned().unwrap_or_default();
                    assert!(members.starts_with("result over [0, 1, 2"), "{case:?}: collective {op} after the timeout: {members}");
                }
            }
        }
    }
}
