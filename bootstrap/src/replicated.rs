//! A store replicated over several acceptors — the ranks' own replica servers and the job's store —
//! so that losing any minority of them, the process that hosts the job's store included, loses
//! nothing and stops nothing (issue 24).
//!
//! Each key is a CASPaxos register (D. Rystsov, "CASPaxos: Replicated State Machines without
//! logs", 2018): every operation is a read-modify-write `f` of the key's value, run as one Paxos
//! instance by the calling process (the proposer) against a majority of the acceptors. An acceptor
//! is any plain [`Store`]: its state for key `k` is one record under `px/<k>`, changed only by
//! compare-and-set, so the replica servers need no Paxos logic of their own.
//!
//! * prepare(b): an acceptor whose promise is below ballot `b` promises `b` and returns what it
//!   accepted; otherwise it refuses, naming its promise.
//! * With promises from a majority, the proposer takes the value accepted under the highest ballot
//!   (none: the key is absent), applies `f`, and asks the acceptors to accept the result under `b`;
//!   an acceptor accepts unless it promised a higher ballot since. A majority of acceptances makes
//!   it the key's value, and any later operation sees it, since two majorities always share an
//!   acceptor.
//!
//! Ballots are `(counter, proposer)`, the proposer a random 64-bit id per store instance, so a
//! replacement process never reuses its predecessor's ballots.
//!
//! **Acceptors that come back empty.** An acceptor that forgot its promises would let two values
//! be chosen. A slot refilled with a new, empty replica (a replacement rank's) therefore votes only
//! on keys its predecessor cannot have voted on: the caller says which
//! ([`ReplicatedStore::replace`]'s `votes_on`; for chorus, the keys of recovery rounds after the
//! last one applied before the predecessor was replaced). On other keys it counts as silent.
//! Majorities are always counted over every slot. [`ReplicatedStore::catch_up`] lets it vote on
//! an older key too, once a full round over the other acceptors has settled that key's value and
//! the new acceptor holds the settled register.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::parse_counter;
use crate::{BootstrapError, Result, Store};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Ballot {
    counter: u64,
    proposer: u64,
}

/// Which write made a value: (proposer, that proposer's write counter). A proposer whose accept
/// phase fell short retries, and may then find its write already chosen, as the value or under
/// a later proposer's write built on it: the ids tell it apart from another proposer's equal
/// bytes, so that a retry never applies the same change twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct WriteId {
    proposer: u64,
    seq: u64,
}

/// How much write history a register keeps (see [`Register::writes`]): the latest writes of each
/// proposer, and the proposers that wrote last. A retrying operation looks for its own earlier
/// writes only, so it is found unless its proposer made this many more writes to the key in the
/// meantime (concurrent operations of one process) or this many other processes wrote to it since.
const WRITES_PER_PROPOSER: usize = 16;
const PROPOSERS_REMEMBERED: usize = 128;

/// One acceptor's state for one key. The initial state (nothing promised or accepted) is the
/// key being absent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Register {
    promised: Ballot,
    accepted: Ballot,
    value: Option<Vec<u8>>,
    /// The writes the value is the outcome of: per proposer (least recent writer first), its
    /// latest write counters (oldest first).
    writes: Vec<(u64, Vec<u64>)>,
}

/// `writes` with `id` added as the latest write, trimmed to the bounds above.
fn with_write(mut writes: Vec<(u64, Vec<u64>)>, id: WriteId) -> Vec<(u64, Vec<u64>)> {
    let mut seqs = match writes.iter().position(|(p, _)| *p == id.proposer) {
        Some(i) => writes.remove(i).1,
        None => Vec::new(),
    };
    seqs.push(id.seq);
    let excess = seqs.len().saturating_sub(WRITES_PER_PROPOSER);
    seqs.drain(..excess);
    writes.push((id.proposer, seqs));
    let excess = writes.len().saturating_sub(PROPOSERS_REMEMBERED);
    writes.drain(..excess);
    writes
}

/// A value proposed in phase two, with its write history.
type Proposal = (Option<Vec<u8>>, Vec<(u64, Vec<u64>)>);

/// What an attempt of [`ReplicatedStore::run`] returns if its accept phase succeeds.
enum Outcome<T> {
    /// `f` left the value as it was: its result.
    Ready(T),
    /// The write with this id (an earlier attempt's, or this one's) is part of the value.
    Wrote(WriteId),
}

fn encode(r: &Register) -> Vec<u8> {
    bincode::serde::encode_to_vec(r, bincode::config::standard()).expect("a register always encodes")
}

fn decode(key: &str, raw: Option<&[u8]>) -> Result<Register> {
    match raw {
        None => Ok(Register::default()),
        Some(b) => bincode::serde::decode_from_slice(b, bincode::config::standard()).map(|(r, _)| r).map_err(|e| BootstrapError::Protocol {
            op: "replicated register",
            addr: key.to_string(),
            detail: format!("unreadable register ({e}); is every rank running the same chorus version?"),
        }),
    }
}

fn register_key(key: &str) -> String {
    format!("px/{key}")
}

/// How long a [`RemoteReplica`] tries to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// How long an acceptor that failed is left alone before it is asked again, at first and at most.
const MIN_REST: Duration = Duration::from_millis(200);
const MAX_REST: Duration = Duration::from_secs(10);

/// How many times an acceptor step retries its compare-and-set when another proposer changed
/// the record in between (each retry re-reads it).
const CAS_RETRIES: usize = 64;

/// Phase one at one acceptor: `Ok(register)` is a promise, `Err(promised)` a refusal.
fn prepare(s: &dyn Store, key: &str, b: Ballot) -> Result<std::result::Result<Register, Ballot>> {
    let pk = register_key(key);
    for _ in 0..CAS_RETRIES {
        let raw = s.get(&pk)?;
        let reg = decode(key, raw.as_deref())?;
        if reg.promised >= b || reg.accepted >= b {
            return Ok(Err(reg.promised.max(reg.accepted)));
        }
        let promised = Register { promised: b, ..reg.clone() };
        if s.compare_set(&pk, raw.as_deref(), &encode(&promised))?.0 {
            return Ok(Ok(reg));
        }
    }
    Ok(Err(b))
}

/// Phase two at one acceptor: `Ok(())` accepted, `Err(promised)` refused.
fn accept(s: &dyn Store, key: &str, b: Ballot, value: &Proposal) -> Result<std::result::Result<(), Ballot>> {
    let pk = register_key(key);
    for _ in 0..CAS_RETRIES {
        let raw = s.get(&pk)?;
        let reg = decode(key, raw.as_deref())?;
        if reg.promised > b {
            return Ok(Err(reg.promised));
        }
        let accepted = Register { promised: b, accepted: b, value: value.0.clone(), writes: value.1.clone() };
        if s.compare_set(&pk, raw.as_deref(), &encode(&accepted))?.0 {
            return Ok(Ok(()));
        }
    }
    Ok(Err(b))
}

/// Puts a settled register into an acceptor that has not voted on its key (catch-up).
fn install(s: &dyn Store, key: &str, settled: &Register) -> Result<()> {
    let pk = register_key(key);
    for _ in 0..CAS_RETRIES {
        let raw = s.get(&pk)?;
        let reg = decode(key, raw.as_deref())?;
        if reg.accepted >= settled.accepted {
            return Ok(());
        }
        let new = Register { promised: reg.promised.max(settled.promised), ..settled.clone() };
        if s.compare_set(&pk, raw.as_deref(), &encode(&new))?.0 {
            return Ok(());
        }
    }
    Err(BootstrapError::Protocol { op: "replicated register", addr: key.to_string(), detail: "the register kept changing during a catch-up".into() })
}

enum Step {
    /// Reads the register without changing it.
    Peek,
    /// Catch-up of a refilled slot: takes a settled register unless it holds a later one.
    Install(Register),
    Prepare(Ballot),
    Accept(Ballot, Proposal),
    List(String),
}

enum Answer {
    /// A refilled acceptor not caught up on a guarded key: no vote.
    Abstain,
    Register(Register),
    Promise(Register),
    Accepted,
    Refused(Ballot),
    Keys(Vec<String>),
}

struct Job {
    key: String,
    step: Step,
    deadline: Instant,
    reply: mpsc::Sender<(usize, Result<Answer>)>,
}

/// One acceptor: its store is driven by its own thread, so a proposer waits for a majority and
/// never for a slow or unreachable acceptor. Jobs whose proposer gave up are skipped.
struct Slot {
    name: String,
    /// The keys this acceptor votes on: every key for one in its slot since the store was made
    /// (`None`), the keys its predecessor never saw for one that refilled the slot.
    votes_on: Option<KeyFilter>,
    /// Keys a refilled slot votes on only once it holds their register (installed by a
    /// catch-up): until then it abstains, whoever asks.
    guarded: Vec<String>,
    jobs: mpsc::Sender<Job>,
    /// Set (once, never cleared) when the slot is dropped: its thread runs no more queued jobs.
    stopping: Arc<AtomicBool>,
    /// Disconnects when the slot's thread has ended (in a mutex: a receiver is not `Sync`).
    ended: Mutex<mpsc::Receiver<()>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Which keys a refilled slot votes on.
pub type KeyFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// What a refilled slot votes on: the keys `votes_on` accepts, and each key of `guarded` once
/// it has been caught up on it ([`ReplicatedStore::catch_up`]).
pub struct Refill {
    /// The keys the refilled slot votes on.
    pub votes_on: KeyFilter,
    /// Keys it votes on only once caught up on them.
    pub guarded: Vec<String>,
}

impl Slot {
    fn start(index: usize, name: String, store: Arc<dyn Store>, refill: Option<Refill>) -> Slot {
        let (votes_on, guarded) = match refill {
            Some(r) => (Some(r.votes_on), r.guarded),
            None => (None, Vec::new()),
        };
        let abstains_on = guarded.clone();
        let (tx, rx) = mpsc::channel::<Job>();
        let (ended_tx, ended) = mpsc::channel::<()>();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread_name = format!("chorus-acceptor-{index}");
        let spawned = std::thread::Builder::new().name(thread_name).spawn(move || {
            let _ended = ended_tx;
            // An acceptor that failed is left alone for a while (doubling up to MAX_REST): a dead
            // store host costs each operation nothing, and its client's complaints (torch's
            // store logs a stack per failed call) come once per rest, not once per request.
            let mut rest_until: Option<Instant> = None;
            let mut rest = MIN_REST;
            for job in rx {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if Instant::now() >= job.deadline {
                    continue;
                }
                if rest_until.is_some_and(|t| Instant::now() < t) {
                    let _ = job.reply.send((index, Err(BootstrapError::Lost { op: "replicated register", host: "this acceptor".into(), cause: Box::new(BootstrapError::RequestTimeout { op: "resting after a failure", addr: job.key.clone(), timeout: rest }) })));
                    continue;
                }
                let answer = match &job.step {
                    Step::Peek => store.get(&register_key(&job.key)).and_then(|raw| decode(&job.key, raw.as_deref())).map(Answer::Register),
                    Step::Install(r) => install(&*store, &job.key, r).map(|()| Answer::Accepted),
                    Step::Prepare(_) | Step::Accept(..) if abstains_on.contains(&job.key) && matches!(store.get(&register_key(&job.key)), Ok(None)) => Ok(Answer::Abstain),
                    Step::Prepare(b) => prepare(&*store, &job.key, *b).map(|r| r.map_or_else(Answer::Refused, Answer::Promise)),
                    Step::Accept(b, v) => accept(&*store, &job.key, *b, v).map(|r| r.map_or_else(Answer::Refused, |()| Answer::Accepted)),
                    Step::List(prefix) => store.list_prefix(&register_key(prefix)).map(Answer::Keys),
                };
                match &answer {
                    Err(_) => {
                        rest_until = Some(Instant::now() + rest);
                        rest = (rest * 2).min(MAX_REST);
                    }
                    Ok(_) => {
                        rest_until = None;
                        rest = MIN_REST;
                    }
                }
                // The proposer may have stopped listening (it reached a majority or gave up).
                let _ = job.reply.send((index, answer));
            }
        });
        if let Err(e) = spawned {
            // Without its thread the slot stays silent: it counts as an unreachable acceptor.
            tracing::warn!(index, error = %e, "could not start an acceptor thread");
        }
        Slot { name, votes_on, guarded, jobs: tx, stopping, ended: Mutex::new(ended) }
    }
}

/// An acceptor that must still hold `sentinel` (a key written when the group was made): a store
/// that restarted empty at the same address (a restarted store host, or a caller who passes a
/// new store to a replacement process) would otherwise vote as if it remembered its promises.
/// Every time a register reads as absent, the sentinel is checked; once it is missing the
/// acceptor fails every request from then on.
pub struct Sentinel {
    inner: Arc<dyn Store>,
    sentinel: String,
    /// 0 while the sentinel was found every time; 1 forever once it was not.
    forgot: AtomicU64,
}

impl Sentinel {
    /// Wraps `inner`, the acceptor's store; `sentinel` is the key the group wrote there when it was
    /// made.
    pub fn new(inner: Arc<dyn Store>, sentinel: String) -> Sentinel {
        Sentinel { inner, sentinel, forgot: AtomicU64::new(0) }
    }

    fn check(&self) -> Result<()> {
        if self.forgot.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        Err(BootstrapError::AcceptorForgot { host: self.inner.host(), sentinel: self.sentinel.clone() })
    }

    /// `Ok(None)` from the inner store, after making sure that means the key is absent.
    fn absent(&self) -> Result<Option<Vec<u8>>> {
        if self.inner.get(&self.sentinel)?.is_none() {
            if self.forgot.fetch_max(1, Ordering::SeqCst) == 0 {
                tracing::warn!(store = %self.inner.host(), sentinel = %self.sentinel, "a membership acceptor lost the group's records (restarted empty?): it is left out from now on");
            }
            self.check()?;
        }
        Ok(None)
    }
}

impl Store for Sentinel {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.check()?;
        self.inner.set(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.check()?;
        match self.inner.get(key)? {
            Some(v) => Ok(Some(v)),
            None => self.absent(),
        }
    }
    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        self.check()?;
        self.inner.wait(keys, timeout)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.check()?;
        self.inner.add(key, delta)
    }
    fn compare_set(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(bool, Vec<u8>)> {
        self.check()?;
        self.inner.compare_set(key, expected, new)
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.check()?;
        self.inner.delete(key)
    }
    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        self.check()?;
        self.inner.list_prefix(prefix)
    }
    fn host(&self) -> String {
        self.inner.host()
    }
}

/// A [`Store`] whose every key is a register replicated over a fixed number of acceptor slots.
pub struct ReplicatedStore {
    slots: RwLock<Vec<Slot>>,
    proposer: u64,
    /// The highest ballot counter seen (own or refused with): the next ballot goes above it.
    counter: AtomicU64,
    /// Writes proposed so far (the `seq` of [`WriteId`]).
    writes: AtomicU64,
    /// Deadline of one operation (every attempt together).
    op_timeout: Duration,
    /// How long one phase waits for a majority before it tries again with a higher ballot.
    phase_timeout: Duration,
}

impl ReplicatedStore {
    /// `acceptors`: (name for errors, store, and `None` for an acceptor that was there from the
    /// start or the keys a refilled one votes on) per slot, in an order every proposer shares.
    /// `op_timeout` bounds every operation.
    pub fn new(acceptors: Vec<(String, Arc<dyn Store>, Option<Refill>)>, op_timeout: Duration) -> Result<ReplicatedStore> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| BootstrapError::Random { purpose: "a proposer id", detail: e.to_string() })?;
        let slots = acceptors.into_iter().enumerate().map(|(i, (name, s, refill))| Slot::start(i, name, s, refill)).collect();
        Ok(ReplicatedStore {
            slots: RwLock::new(slots),
            proposer: u64::from_le_bytes(id),
            counter: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            op_timeout,
            phase_timeout: op_timeout.min(Duration::from_millis(500)),
        })
    }

    /// Puts a new, empty acceptor in slot `index` (a replacement rank's replica); it votes on
    /// the keys `votes_on` accepts (see the module docs).
    pub fn replace(&self, index: usize, name: String, store: Arc<dyn Store>, refill: Refill) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if index < slots.len() {
            slots[index] = Slot::start(index, name, store, Some(refill));
        }
    }

    /// Has every acceptor look at a key now, without waiting for the answers: an acceptor on
    /// another process connects while that process is certainly alive, so that its death later
    /// shows as a closed connection at once rather than as connection attempts.
    pub fn warm_up(&self) {
        let (tx, _rx) = mpsc::channel();
        let deadline = Instant::now() + self.phase_timeout;
        for s in self.slots.read().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = s.jobs.send(Job { key: "warm-up".into(), step: Step::Peek, deadline, reply: tx.clone() });
        }
    }

    /// Catches the refilled slot `index` up on `keys` (guarded ones, which its predecessor may
    /// have voted on): for each, a full round over the other acceptors (it abstains, holding no
    /// register) settles the value under a ballot, that register is installed in the new
    /// acceptor, and from then on it votes on the key, for every proposer. Safe
    /// because the settled value is chosen: every later round learns it from the majority that
    /// accepted it, whatever the new acceptor answers.
    pub fn catch_up(&self, index: usize, keys: &[String]) -> Result<()> {
        for key in keys {
            let (_, settled) = self.run("catch-up", key, |_| (None, ()))?;
            let (tx, rx) = mpsc::channel();
            let deadline = Instant::now() + self.op_timeout;
            {
                let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
                let Some(slot) = slots.get(index) else { return Ok(()) };
                let _ = slot.jobs.send(Job { key: key.clone(), step: Step::Install(settled), deadline, reply: tx });
            }
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((_, Ok(_))) => {}
                Ok((_, Err(e))) => return Err(e),
                Err(_) => return Err(BootstrapError::RequestTimeout { op: "catch-up", addr: key.clone(), timeout: self.op_timeout }),
            }
        }
        Ok(())
    }

    /// Stops every acceptor thread and waits for them, up to `wait` in all: after this the store
    /// is never called again from here (the job's store may be a caller's callbacks into an
    /// interpreter that is about to exit). Operations afterwards fail with no quorum.
    pub fn close(&self, wait: Duration) {
        let slots = std::mem::take(&mut *self.slots.write().unwrap_or_else(|p| p.into_inner()));
        let deadline = Instant::now() + wait;
        let ended: Vec<(String, mpsc::Receiver<()>)> = slots
            .into_iter()
            .map(|mut s| {
                let ended = std::mem::replace(s.ended.get_mut().unwrap_or_else(|p| p.into_inner()), mpsc::channel().1);
                (std::mem::take(&mut s.name), ended)
            })
            .collect();
        for (name, ended) in ended {
            if let Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                tracing::warn!(acceptor = %name, ?wait, "a membership acceptor's store call outlasted the group; it ends on its own");
            }
        }
    }

    /// Fails once [`ReplicatedStore::close`] ran.
    fn check_open(&self, op: &'static str, key: &str) -> Result<()> {
        match self.slots() {
            0 => Err(BootstrapError::Protocol { op, addr: key.to_string(), detail: "the membership store was closed (its group was destroyed)".into() }),
            _ => Ok(()),
        }
    }

    /// A read that never writes: the value a majority of acceptors holds under one accepted
    /// ballot, or `None` when they do not agree right now (a write under way) or do not answer
    /// within a phase. For polling hints; [`Store::get`] settles instead.
    pub fn peek(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.check_open("peek", key)?;
        Ok(self.agreed(key).flatten())
    }

    /// `Some(value)` when a majority holds the same accepted ballot (its value is chosen, and no
    /// later write is yet).
    fn agreed(&self, key: &str) -> Option<Option<Vec<u8>>> {
        let need = self.slots() / 2 + 1;
        let until = Instant::now() + self.phase_timeout;
        let (answers, _) = self.ask(key, || Step::Peek, until, need, |a| matches!(a, Answer::Register(_)));
        let registers: Vec<Register> = answers
            .into_iter()
            .filter_map(|(_, a)| match a {
                Answer::Register(r) => Some(r),
                _ => None,
            })
            .collect();
        if registers.len() < need {
            return None;
        }
        let newest = registers.iter().map(|r| r.accepted).max().unwrap_or_default();
        if registers.iter().filter(|r| r.accepted == newest).count() < need {
            return None;
        }
        registers.into_iter().find(|r| r.accepted == newest).map(|r| r.value)
    }

    /// The number of acceptor slots.
    pub fn slots(&self) -> usize {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sends `step` to every slot that may vote on `key`; returns the answers, stopping at
    /// `enough` of the kind `counts` accepts, or at `until`.
    fn ask(&self, key: &str, step: impl Fn() -> Step, until: Instant, enough: usize, counts: impl Fn(&Answer) -> bool) -> (Vec<(usize, Answer)>, Vec<String>) {
        let (tx, rx) = mpsc::channel();
        let mut asked = 0;
        let mut names = Vec::new();
        {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            for s in slots.iter() {
                names.push(s.name.clone());
                if s.votes_on.as_ref().is_some_and(|votes| !votes(key)) && !s.guarded.iter().any(|k| k == key) {
                    continue;
                }
                let job = Job { key: key.to_string(), step: step(), deadline: until, reply: tx.clone() };
                if s.jobs.send(job).is_ok() {
                    asked += 1;
                }
            }
        }
        drop(tx);
        let mut answers = Vec::new();
        let mut answered = vec![false; names.len()];
        let mut good = 0;
        while answers.len() < asked && good < enough {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, Ok(a))) => {
                    good += counts(&a) as usize;
                    answered[i] = true;
                    answers.push((i, a));
                }
                Ok((i, Err(e))) => {
                    tracing::debug!(acceptor = %names[i], error = %e, "acceptor did not answer");
                    asked -= 1;
                }
                Err(_) => break,
            }
        }
        let silent = names.into_iter().enumerate().filter(|(i, _)| !answered[*i]).map(|(_, n)| n).collect();
        (answers, silent)
    }

    fn ballot(&self) -> Ballot {
        Ballot { counter: self.counter.fetch_add(1, Ordering::SeqCst) + 1, proposer: self.proposer }
    }

    fn saw(&self, b: Ballot) {
        self.counter.fetch_max(b.counter, Ordering::SeqCst);
    }

    /// Runs `f` on `key`'s value as one linearizable step: `f` returns the new value (`None` in
    /// the outer option: unchanged) and the operation's result. `f` may run more than once (once
    /// per attempt); only the last run's change is applied.
    pub fn update<T>(&self, op: &'static str, key: &str, f: impl Fn(Option<&[u8]>) -> (Option<Option<Vec<u8>>>, T)) -> Result<T> {
        self.run(op, key, f).map(|(out, _)| out)
    }

    /// [`ReplicatedStore::update`], also returning the register the key holds after it at the
    /// acceptors that accepted (for catch-up).
    fn run<T>(&self, op: &'static str, key: &str, f: impl Fn(Option<&[u8]>) -> (Option<Option<Vec<u8>>>, T)) -> Result<(T, Register)> {
        let deadline = Instant::now() + self.op_timeout;
        let need = self.slots() / 2 + 1;
        self.check_open(op, key)?;
        let mut attempt = 0u32;
        // The results of this operation's attempts that proposed a change, by write id: if one
        // of them is found chosen later, that attempt's result is the operation's.
        let mut proposed: Vec<(WriteId, T)> = Vec::new();
        // The attempt that came closest: (acceptors that agreed, those that stayed silent).
        let mut best: Option<(usize, Vec<String>)> = None;
        loop {
            let b = self.ballot();
            let until = (Instant::now() + self.phase_timeout).min(deadline);
            let (answers, silent) = self.ask(key, || Step::Prepare(b), until, need, |a| matches!(a, Answer::Promise(_)));
            let mut promises = Vec::new();
            for (_, a) in answers {
                match a {
                    Answer::Promise(r) => promises.push(r),
                    Answer::Refused(other) => self.saw(other),
                    _ => {}
                }
            }
            let mut failure = (promises.len(), silent);
            if promises.len() >= need {
                let current = promises.into_iter().max_by_key(|r| r.accepted).unwrap_or_default();
                // This operation's latest write found in the value's history: an earlier
                // attempt's accept reached some acceptor and the value now builds on it, so
                // that attempt's result stands and `f` must not run again.
                let mine = current.writes.iter().find(|(p, _)| *p == self.proposer).map(|(_, seqs)| seqs.as_slice()).unwrap_or_default();
                let found = mine.iter().rev().map(|&seq| WriteId { proposer: self.proposer, seq }).find(|id| proposed.iter().any(|(p, _)| p == id));
                let (value, outcome) = match found {
                    Some(id) => ((current.value, current.writes), Outcome::Wrote(id)),
                    None => match f(current.value.as_deref()) {
                        (None, out) => ((current.value, current.writes), Outcome::Ready(out)),
                        (Some(v), out) => {
                            let id = WriteId { proposer: self.proposer, seq: self.writes.fetch_add(1, Ordering::SeqCst) + 1 };
                            proposed.push((id, out));
                            ((v, with_write(current.writes, id)), Outcome::Wrote(id))
                        }
                    },
                };
                let until = (Instant::now() + self.phase_timeout).min(deadline);
                let (answers, silent) = self.ask(key, || Step::Accept(b, value.clone()), until, need, |a| matches!(a, Answer::Accepted));
                let mut accepted = 0;
                for (_, a) in answers {
                    match a {
                        Answer::Accepted => accepted += 1,
                        Answer::Refused(other) => self.saw(other),
                        _ => {}
                    }
                }
                if accepted >= need {
                    let settled = Register { promised: b, accepted: b, value: value.0, writes: value.1 };
                    let out = match outcome {
                        Outcome::Ready(out) => out,
                        Outcome::Wrote(id) => match proposed.iter().position(|(p, _)| *p == id) {
                            Some(i) => proposed.swap_remove(i).1,
                            // Unreachable: every write proposed keeps its result until chosen.
                            None => return Err(BootstrapError::Protocol { op, addr: key.to_string(), detail: "a chosen write lost its result".into() }),
                        },
                    };
                    return Ok((out, settled));
                }
                failure = (accepted, silent);
            }
            if best.as_ref().is_none_or(|b| failure.0 >= b.0) {
                best = Some(failure);
            }
            if Instant::now() >= deadline || self.slots() == 0 {
                self.check_open(op, key)?;
                let total = self.slots();
                let (answered, silent) = best.unwrap_or_default();
                return Err(BootstrapError::NoQuorum { op, key: key.to_string(), answered, needed: need, total, silent: silent.join(", ") });
            }
            // Another proposer holds the key (or acceptors are slow): back off for a random time
            // that grows with the attempts, so that one of the proposers gets through.
            attempt += 1;
            let cap_us = 500u64 << attempt.min(6);
            std::thread::sleep(Duration::from_micros(self.random() % cap_us));
        }
    }

    /// A pseudo-random number (xorshift over the proposer id and a counter): backoff jitter.
    fn random(&self) -> u64 {
        let mut x = self.proposer ^ self.writes.load(Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.counter.fetch_add(0, Ordering::Relaxed).rotate_left(17) ^ u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0));
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }

    /// A read. When a majority holds the same accepted ballot, its value is chosen (a ballot has
    /// one value) and no later write has been chosen yet, so it is the value now: read without
    /// promising anything, so that pollers do not outbid a writer. Otherwise (a write is under
    /// way) a full round settles it.
    fn read(&self, op: &'static str, key: &str) -> Result<Option<Vec<u8>>> {
        self.check_open(op, key)?;
        match self.agreed(key) {
            Some(value) => Ok(value),
            None => self.update(op, key, |v| (None, v.map(<[u8]>::to_vec))),
        }
    }
}

impl Drop for ReplicatedStore {
    fn drop(&mut self) {
        self.close(CLOSE_WAIT);
    }
}

/// How long dropping a [`ReplicatedStore`] waits for store calls in flight on its acceptor threads.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

impl Store for ReplicatedStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.update("set", key, |_| (Some(Some(value.to_vec())), ()))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read("get", key)
    }

    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + timeout.min(crate::store::MAX_WAIT);
        let mut found: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        loop {
            for (k, slot) in keys.iter().zip(found.iter_mut()) {
                if slot.is_none() {
                    *slot = self.read("wait", k)?;
                }
            }
            if found.iter().all(Option::is_some) {
                return Ok(found.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                let missing = keys.iter().zip(&found).filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_string()).collect();
                return Err(BootstrapError::WaitTimeout { missing, timeout });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.update("add", key, |v| {
            let current = match v {
                None => Ok(0),
                Some(b) => parse_counter(key, b),
            };
            match current.and_then(|c| c.checked_add(delta).ok_or(BootstrapError::CounterOverflow { key: key.to_string(), current: c, delta })) {
                Ok(n) => (Some(Some(n.to_string().into_bytes())), Ok(n)),
                Err(e) => (None, Err(e)),
            }
        })?
    }

    fn compare_set(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(bool, Vec<u8>)> {
        self.update("compare_set", key, |v| {
            if v == expected {
                (Some(Some(new.to_vec())), (true, new.to_vec()))
            } else {
                (None, (false, v.map(<[u8]>::to_vec).unwrap_or_default()))
            }
        })
    }

    fn delete(&self, key: &str) -> Result<bool> {
        self.update("delete", key, |v| (Some(None), v.is_some()))
    }

    /// Keys with a register on any acceptor that answers in time: every key written, deleted
    /// ones included, and some only read (their records stay on the acceptors; listing is for
    /// clean-up).
    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let until = Instant::now() + self.phase_timeout;
        let (answers, _) = self.ask(prefix, || Step::List(prefix.to_string()), until, usize::MAX, |_| true);
        let mut keys: Vec<String> = answers
            .into_iter()
            .filter_map(|(_, a)| match a {
                Answer::Keys(k) => Some(k),
                _ => None,
            })
            .flatten()
            .filter_map(|k| k.strip_prefix("px/").map(str::to_string))
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    fn host(&self) -> String {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        format!("the group's membership replicas ({})", slots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "))
    }
}

/// An acceptor on another process's replica server, connected on first use (and again after a
/// failed connection), so that making the store costs no connection to replicas never asked.
pub struct RemoteReplica {
    addr: String,
    timeout: Duration,
    secret: Option<crate::JobSecret>,
    client: std::sync::Mutex<Option<Arc<crate::StoreClient>>>,
}

impl RemoteReplica {
    /// `timeout` bounds the connection and every request.
    pub fn new(addr: String, timeout: Duration, secret: Option<crate::JobSecret>) -> RemoteReplica {
        RemoteReplica { addr, timeout, secret, client: std::sync::Mutex::new(None) }
    }

    fn client(&self) -> Result<Arc<crate::StoreClient>> {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        // A short connection deadline: a replica that does not accept now belongs to a process
        // that is gone or stalled, and waiting longer only holds up this acceptor's queue.
        let new = Arc::new(crate::StoreClient::connect_with(&self.addr, self.timeout.min(CONNECT_TIMEOUT), self.secret.clone())?.with_op_timeout(self.timeout));
        *c = Some(new.clone());
        Ok(new)
    }
}

impl Store for RemoteReplica {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.client()?.set(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.client()?.get(key)
    }
    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        self.client()?.wait(keys, timeout)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.client()?.add(key, delta)
    }
    fn compare_set(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(bool, Vec<u8>)> {
        self.client()?.compare_set(key, expected, new)
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.client()?.delete(key)
    }
    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        self.client()?.list_prefix(prefix)
    }
    fn host(&self) -> String {
        format!("the replica at {}", self.addr)
    }
}

#[cfg(test)]
#[path = "replicated_tests.rs"]
mod tests;
