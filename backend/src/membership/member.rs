//! One rank's membership: its view, where it is in the collective sequence, the recovery rounds
//! it applied, and the protocol steps that change them (rounds after a failure, admission of a
//! replacement). The store and the clock are passed in; what it needs from the rank's links and
//! signal block comes through [`Peers`]. The engine drives it between and around collectives
//! (`api::ft`); the group serves joins with its join counters. `recovery.rs` has the rules.
use super::marks::{self, Marks, ResumePoint};
use super::recovery::{self, Decision, Post, Round};
use super::{View, ViewStore};
use crate::error::{ChorusError, Result};
use crate::options::{FailurePolicy, TimeoutKnob};
use chorus_bootstrap::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Time, as membership sees it (tests step a fake one).
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    /// Waits `d` (or less, when something may have moved).
    fn pause(&self, d: Duration);
}

/// The process's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn pause(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// What membership needs from this rank's links and signal block.
pub trait Peers {
    /// Whether `peer` is known to be gone (its process exited, its socket closed, its beats stopped).
    fn peer_dead(&self, peer: usize) -> bool;
    /// Raises this rank's `Recovery` counter to `value` at every rank of `members` and at itself.
    fn raise(&self, members: &[usize], value: u64);
    /// The highest `Recovery` counter any rank raised in this rank's signal block.
    fn highest_request(&self) -> u64;
}

/// A rank's position in the collective sequence, as reported to recovery. Guarded by one lock:
/// the attendant thread answers recovery for a rank between collectives under it, and a
/// collective starts (sets `current`) under it, so an answer never describes a rank that has
/// already moved on.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The last collective this rank returned (a result or an error every survivor got alike).
    pub committed: u64,
    /// The collective this rank is inside, and whether its part is complete.
    pub current: Option<(u64, bool)>,
    /// Whether the current collective can be re-run from this rank's inputs (meaningful while
    /// `current` is set; reset when an attempt starts).
    pub can_rerun: bool,
    /// `(round, boundary)`: admission round `round` is pending, and another member is already
    /// inside the collective after `boundary`, so this rank runs it under the old view too.
    pub proceed: Option<(u64, u64)>,
    /// The ranks the current attempt waited for past its deadline (reset when an attempt starts).
    pub timed_out: Vec<usize>,
    /// Where the application marked its loop (reports carry them to a replacement).
    pub marks: Marks,
    /// The round the collective path is settling between collectives (the attendant thread
    /// leaves it to it); cleared when a decision is applied.
    pub settling: Option<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { committed: 0, current: None, can_rerun: true, proceed: None, timed_out: Vec::new(), marks: Marks::default(), settling: None }
    }
}

/// How a collective ends after the last decision this rank applied.
pub enum Ending {
    /// Committed by the decision (this rank holds its result).
    Committed,
    /// It fails with the same error on every survivor (counted as returned).
    Fails(ChorusError),
    /// It runs (again) under the decision's view.
    Run,
}

/// What issuing a collective came to ([`Membership::start_attempt`]).
pub enum Start {
    /// The attempt started: this rank is inside the collective.
    Started,
    /// Round `.0` (a failure round if `.1`) must be settled first.
    Settle(u64, bool),
    /// A decision this rank applied while it finished the collective before already failed this
    /// one on every survivor: it fails here too, with this error, without running.
    Ended(ChorusError),
}

/// A failure round this rank takes part in.
pub struct Recovery {
    round: u64,
    view: View,
    deadline: Instant,
    posted: bool,
}

/// What a step of a failure round did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryStep {
    /// Posted this rank's report and raised the round at every member.
    Posted,
    /// No decision yet (a live member has not posted).
    Waiting,
    /// The decision is applied.
    Applied,
}

/// An admission round this rank takes part in at a boundary between collectives.
pub struct Admission {
    round: u64,
    view: View,
    /// The last collective this rank returned.
    boundary: u64,
    others: Vec<usize>,
    deadline: Instant,
    posted: bool,
    /// The failure round the admission round turned into.
    failure: Option<Recovery>,
}

/// What a step of an admission round at a boundary did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionStep {
    /// Posted this rank's boundary (or, in the failure round it turned into, its report).
    Posted,
    /// No decision yet.
    Waiting,
    /// A decision is applied (or the round was settled already).
    Applied,
    /// Another member already runs the next collective: this rank runs it under the old view.
    Proceed,
}

/// A replacement's admission.
pub struct Admit {
    deadline: Instant,
    /// The round asked for and the view it was asked under.
    asked: Option<(u64, View)>,
    /// Whether this rank raised the asked round as a failure round (a member died).
    failure_raised: bool,
}

/// What a step of a replacement's admission did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmitStep {
    /// Raised the round at every member (as an admission round, or as a failure round).
    Raised,
    /// No decision holds this rank yet.
    Waiting,
    /// Admitted: the last collective before this rank's first.
    Admitted(u64),
}

/// Where a replacement starts: the state it takes over from the survivors' handoffs.
pub struct Resumed {
    pub view: View,
    pub committed: u64,
    pub rounds: u64,
}

pub struct Membership {
    rank: usize,
    uid: String,
    store: Arc<dyn Store>,
    views: ViewStore,
    policy: FailurePolicy,
    timeout: Duration,
    /// What set `timeout` (named by timeout errors).
    timeout_knob: TimeoutKnob,
    clock: Arc<dyn Clock>,
    /// The view collectives run under (changes only by agreed decisions).
    view: Arc<Mutex<View>>,
    progress: Mutex<Progress>,
    /// Recovery rounds applied (monotonic; the engine stamps attempts with it).
    rounds_applied: Arc<AtomicU64>,
    /// Ranks removed by recovery and not yet reported by a collective.
    pending_failed: Mutex<Vec<usize>>,
    /// The last decision applied (what it says about the collective it interrupted).
    last_decision: Mutex<Option<Decision>>,
    /// Join requests announced in the store (seen by the attendant thread) and served (linked
    /// by the collective path); both monotonic.
    joins_announced: AtomicU64,
    joins_served: AtomicU64,
    /// A replacement's place in the survivors' loop, from the decision that admitted it.
    resume: Mutex<Option<ResumePoint>>,
    /// A joining process's activation request: its place in the request list (0: none). A view
    /// that holds it without this rank active turned it down.
    join_request: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Membership {
    #[allow(clippy::too_many_arguments)]
    pub fn new(rank: usize, size: usize, uid: &str, store: Arc<dyn Store>, policy: FailurePolicy, timeout: Duration, clock: Arc<dyn Clock>, resumed: Option<Resumed>) -> Membership {
        let mut view = View::full(size);
        let mut progress = Progress::default();
        let mut rounds = 0;
        if let Some(r) = resumed {
            view = r.view;
            progress.committed = r.committed;
            rounds = r.rounds;
        }
        Membership {
            rank,
            uid: uid.to_string(),
            views: ViewStore::new(store.clone(), uid, size),
            store,
            policy,
            timeout,
            timeout_knob: TimeoutKnob::Options,
            clock,
            view: Arc::new(Mutex::new(view)),
            progress: Mutex::new(progress),
            rounds_applied: Arc::new(AtomicU64::new(rounds)),
            pending_failed: Mutex::new(Vec::new()),
            last_decision: Mutex::new(None),
            joins_announced: AtomicU64::new(0),
            joins_served: AtomicU64::new(0),
            resume: Mutex::new(None),
            join_request: AtomicU64::new(0),
        }
    }

    /// A joining process asked to be active with the request at `place` ([`ViewStore::ask_to_join`]).
    pub fn asked_to_join(&self, place: u64) {
        self.join_request.store(place, Ordering::SeqCst);
    }

    /// A group created with empty slots: epoch 0 has only `initial`'s members. A rank that
    /// creates the group starts there (`adopt`); a joiner keeps the view it resumed.
    pub fn with_initial_view(mut self, initial: View, adopt: bool) -> Membership {
        if adopt {
            *lock(&self.view) = initial.clone();
        }
        self.views = ViewStore::starting_from(self.store.clone(), &self.uid, initial);
        self
    }

    /// Says what set the timeout (the group's options), for timeout errors.
    pub fn with_timeout_knob(mut self, knob: TimeoutKnob) -> Membership {
        self.timeout_knob = knob;
        self
    }

    /// The view collectives run under now.
    pub fn view(&self) -> View {
        lock(&self.view).clone()
    }

    /// The view, shared (the group's API reads it).
    pub fn view_handle(&self) -> Arc<Mutex<View>> {
        self.view.clone()
    }

    /// The rounds-applied counter, shared (the engine stamps attempts with it).
    pub fn rounds_handle(&self) -> Arc<AtomicU64> {
        self.rounds_applied.clone()
    }

    pub fn rounds_applied(&self) -> u64 {
        self.rounds_applied.load(Ordering::SeqCst)
    }

    pub fn views(&self) -> &ViewStore {
        &self.views
    }

    pub fn committed(&self) -> u64 {
        lock(&self.progress).committed
    }

    /// The application marked `value` with `issued` collectives issued ([`marks`]).
    pub fn mark(&self, value: u64, issued: u64) {
        let mut p = lock(&self.progress);
        let committed = p.committed;
        p.marks.set(value, issued, committed);
    }

    /// Where this rank joined the survivors' loop, if it is a replacement and they marked it.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        *lock(&self.resume)
    }

    fn round<'a>(&'a self, round: u64, view: &'a View) -> Round<'a> {
        Round { store: &self.store, views: &self.views, uid: &self.uid, me: self.rank, round, view }
    }

    /// The next recovery round (the one after those applied), if any rank asked for it (or a
    /// later one), and whether it is a failure round. Every rank's counter counts, not only the
    /// members': a replacement asks to be admitted before it is one.
    pub fn pending_round(&self, peers: &dyn Peers) -> Option<(u64, bool)> {
        let next = self.rounds_applied() + 1;
        let v = peers.highest_request();
        (recovery::round_of(v) >= next).then_some((next, v >= recovery::signal(next, true)))
    }

    /// Asks every member of `members` (and this rank) to take part in recovery round `round`, a
    /// failure round (it interrupts their waits) or an admission round.
    pub fn raise(&self, peers: &dyn Peers, round: u64, failure: bool, members: &[usize]) {
        peers.raise(members, recovery::signal(round, failure));
    }

    /// The attendant thread's part in recovery, for a rank that is not in a position to answer
    /// itself: between collectives it posts a failure report or, for an admission round, the
    /// boundary it is at (the collective path then starts nothing until the round is settled:
    /// both happen under the progress lock); inside a collective it says so for an admission
    /// round (the collective's own waits answer failure rounds). `last` is what it posted last
    /// time (so it posts each answer once); returns what it posted now.
    pub fn answer(&self, peers: &dyn Peers, last: Option<(u64, u8, u64)>) -> Result<Option<(u64, u8, u64)>> {
        if self.pending_round(peers).is_none() {
            return Ok(last);
        }
        let progress = lock(&self.progress);
        let Some((mut round, mut failure)) = self.pending_round(peers) else { return Ok(last) };
        // A failure round beyond the next: the next was decided (whoever asked for this one
        // applied it) while this rank was between collectives, so it is not in the one after
        // either, whichever way the next ended for it (it applies both, in order, when it issues
        // its next collective). Answered too, else a rank computing through a timeout round
        // holds up the failure round after it.
        let highest = peers.highest_request();
        if progress.current.is_none() && recovery::round_of(highest) > round && highest == recovery::signal(recovery::round_of(highest), true) {
            (round, failure) = (recovery::round_of(highest), true);
        }
        let view = self.view();
        if !view.is_active(self.rank) {
            return Ok(last);
        }
        let answer = match (failure, progress.current) {
            (true, None) => (round, 0, progress.committed),
            (false, None) => (round, 1, progress.committed),
            (false, Some((op, _))) => (round, 2, op),
            (true, Some(_)) => return Ok(last),
        };
        if last == Some(answer) {
            return Ok(last);
        }
        let r = self.round(round, &view);
        match answer.1 {
            0 => self.post_failure(peers, &progress, &view, round)?,
            1 => {
                r.post_boundary(progress.committed, progress.marks.recent())?;
                self.raise(peers, round, false, &view.members());
            }
            _ => r.post_inside(answer.2)?,
        }
        tracing::debug!(round, kind = answer.1, at = answer.2, "answered recovery from the attendant thread");
        Ok(Some(answer))
    }

    fn post_failure(&self, peers: &dyn Peers, progress: &Progress, view: &View, round: u64) -> Result<()> {
        let dead: Vec<usize> = view.members().into_iter().filter(|&p| p != self.rank && peers.peer_dead(p)).collect();
        let timed_out = if progress.current.is_some() { progress.timed_out.clone() } else { Vec::new() };
        let post = Post { committed: progress.committed, current: progress.current, dead, epoch: view.epoch, can_rerun: progress.can_rerun, timed_out, marks: progress.marks.recent() };
        self.round(round, view).post(&post)?;
        self.raise(peers, round, true, &view.members());
        Ok(())
    }

    /// From the attendant thread, while this rank is between collectives: a member found dead
    /// starts a failure round now, and a failure round every live member reported on is decided
    /// and applied here. So the view drops a dead rank without waiting for a collective (a
    /// point-to-point failure completes under the shrunk view; a rank that is computing sees it in
    /// `active_ranks`). Under the progress lock: no collective starts meanwhile, and one that
    /// starts afterwards runs under the decided view and ends as the decision says (`ending`).
    pub fn settle_between(&self, peers: &dyn Peers) -> Result<()> {
        let mut progress = lock(&self.progress);
        let view = self.view();
        if progress.current.is_some() || progress.settling.is_some() || !view.is_active(self.rank) {
            return Ok(());
        }
        let round = self.rounds_applied() + 1;
        match self.pending_round(peers) {
            None => {
                let dead: Vec<usize> = view.members().into_iter().filter(|&p| p != self.rank && peers.peer_dead(p)).collect();
                if !dead.is_empty() {
                    tracing::info!(?dead, round, "a member died while this rank is between collectives: starting a failure round");
                    self.post_failure(peers, &progress, &view, round)?;
                }
            }
            Some((r, true)) if r == round => {
                let rec = self.round(round, &view);
                if !rec.posted(self.rank) {
                    self.post_failure(peers, &progress, &view, round)?;
                }
                if let Some(d) = rec.try_failure(|p| p != self.rank && peers.peer_dead(p))? {
                    self.apply_locked(&mut progress, round, d);
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Sets the collective this rank is inside (or none) and raises the committed one.
    pub fn set_progress(&self, current: Option<(u64, bool)>, committed: Option<u64>) {
        let mut p = lock(&self.progress);
        p.current = current;
        if let Some(c) = committed {
            p.committed = p.committed.max(c);
        }
    }

    /// Whether the current attempt could be run again from this rank's inputs.
    pub fn set_can_rerun(&self, can: bool) {
        lock(&self.progress).can_rerun = can;
    }

    /// The current attempt waited for `peer` past its deadline: the next failure report says so,
    /// and the round it starts (a timeout round) fails the collective alike on every rank unless
    /// it completed everywhere.
    pub fn set_timed_out(&self, peer: usize) {
        let mut p = lock(&self.progress);
        if !p.timed_out.contains(&peer) {
            p.timed_out.push(peer);
        }
    }

    /// Starts an attempt of collective `op_seq` (named `op`) unless a round must be settled first
    /// (this rank is between collectives meanwhile), or a decision already ended it. Under the
    /// progress lock, so the attendant thread never answers for this rank as idle once it started.
    pub fn start_attempt(&self, peers: &dyn Peers, op: &'static str, op_seq: u64) -> Start {
        let mut p = loop {
            // A decision applied while this rank was still finishing the collective before (in
            // that one's commit barrier), or by the attendant thread between collectives, may
            // have failed this one on the others: it fails here too.
            let applied = self.rounds_applied();
            if let Ending::Fails(e) = self.ending(op, op_seq) {
                return Start::Ended(e);
            }
            let p = lock(&self.progress);
            // The attendant applies decisions under this lock: none came in since the look above.
            if self.rounds_applied() == applied {
                break p;
            }
        };
        let pending = match self.pending_round(peers) {
            // Admission pending, but a member already runs the next collective: run it too.
            Some((round, false)) if p.proceed == Some((round, p.committed)) => None,
            other => other,
        };
        match pending {
            None => {
                p.current = Some((op_seq, false));
                p.settling = None;
                p.can_rerun = true;
                p.timed_out.clear();
                Start::Started
            }
            Some((round, failure)) => {
                p.current = None;
                // The collective path settles this round: the attendant leaves it alone.
                p.settling = Some(round);
                Start::Settle(round, failure)
            }
        }
    }

    /// Ranks removed since the last collective that reported removals (reported once, by the
    /// first collective that completes under the new view).
    pub fn take_failed(&self) -> Vec<usize> {
        let mut f = std::mem::take(&mut *lock(&self.pending_failed));
        f.sort_unstable();
        f.dedup();
        f
    }

    /// The last decision's word on collective `op_seq` (named `op`): the same on every survivor,
    /// whether it was inside the collective when the round started or had not begun it.
    pub fn ending(&self, op: &'static str, op_seq: u64) -> Ending {
        if self.committed() >= op_seq {
            return Ending::Committed;
        }
        let (interrupted, rerun_possible, timed_out) = match &*lock(&self.last_decision) {
            Some(d) => (d.interrupted && d.commit_through + 1 == op_seq, d.rerun_possible, d.timed_out.clone()),
            None => (false, true, Vec::new()),
        };
        if !interrupted || (timed_out.is_empty() && rerun_possible && self.policy == FailurePolicy::Shrink) {
            return Ending::Run;
        }
        // Every survivor gets the same decision, hence the same error; the collective counts as
        // returned so later ones line up.
        self.set_progress(None, Some(op_seq));
        let failed = self.take_failed();
        let epoch = self.view().epoch;
        if !timed_out.is_empty() {
            Ending::Fails(ChorusError::AgreedTimeout { op, waited_for: timed_out, failed, epoch, knob: self.timeout_knob })
        } else if self.policy == FailurePolicy::Abort {
            Ending::Fails(ChorusError::FailedByPolicy { op, failed, epoch })
        } else {
            Ending::Fails(ChorusError::NotRecoverable { op, failed, epoch })
        }
    }

    /// Joins (or starts) the next recovery round as a failure round and applies its decision (the
    /// removed ranks are queued for the next collective's report).
    pub fn recover(&self, peers: &dyn Peers) -> Result<()> {
        let mut rec = self.begin_recovery();
        loop {
            match self.step_recovery(peers, &mut rec)? {
                RecoveryStep::Applied => return Ok(()),
                RecoveryStep::Posted => {}
                RecoveryStep::Waiting => self.clock.pause(Duration::from_millis(2)),
            }
        }
    }

    /// Starts taking part in the next failure round (stepped by [`Membership::step_recovery`]).
    pub fn begin_recovery(&self) -> Recovery {
        Recovery { round: self.rounds_applied() + 1, view: self.view(), deadline: self.clock.now() + self.timeout, posted: false }
    }

    /// One step of a failure round: the first posts this rank's report and asks every member to
    /// take part; each later one tries to decide (a compare-and-set once every member posted or
    /// is dead) and, once there is a decision, applies it.
    pub fn step_recovery(&self, peers: &dyn Peers, rec: &mut Recovery) -> Result<RecoveryStep> {
        let _span = tracing::info_span!("recovery", round = rec.round).entered();
        if !rec.posted {
            let progress = lock(&self.progress);
            self.post_failure(peers, &progress, &rec.view, rec.round)?;
            rec.posted = true;
            return Ok(RecoveryStep::Posted);
        }
        let r = self.round(rec.round, &rec.view);
        if let Some(d) = r.try_failure(|p| p != self.rank && peers.peer_dead(p))? {
            self.apply(rec.round, d);
            return Ok(RecoveryStep::Applied);
        }
        if self.clock.now() >= rec.deadline {
            let missing = rec.view.members().into_iter().find(|&m| !r.posted(m) && !peers.peer_dead(m));
            return Err(ChorusError::Timeout { op: "recovery", what: "a failure report", peer: missing.unwrap_or(self.rank), waited_ms: self.timeout.as_millis() as u64, knob: self.timeout_knob });
        }
        Ok(RecoveryStep::Waiting)
    }

    /// Admission round `round` at the boundary after this rank's last returned collective: posts
    /// the boundary and waits for the decision (blocking form of [`Membership::step_admission`]).
    /// Returns whether a decision was applied (`false`: another member already runs the next
    /// collective, so this rank runs it under the old view and posts again at the next boundary).
    /// `wait(d)` waits for a signal.
    pub fn admission(&self, peers: &dyn Peers, round: u64, started_after: &dyn Fn(usize, u64) -> bool, wait: &dyn Fn(Duration)) -> Result<bool> {
        let mut adm = self.begin_admission(round);
        loop {
            match self.step_admission(peers, &mut adm, started_after)? {
                AdmissionStep::Applied => return Ok(true),
                AdmissionStep::Proceed => return Ok(false),
                AdmissionStep::Posted => {}
                AdmissionStep::Waiting => wait(Duration::from_millis(2)),
            }
        }
    }

    /// Starts taking part in admission round `round` at this rank's boundary (stepped by
    /// [`Membership::step_admission`]).
    pub fn begin_admission(&self, round: u64) -> Admission {
        let view = self.view();
        let others = view.members().into_iter().filter(|&p| p != self.rank).collect();
        Admission { round, boundary: self.committed(), view, others, deadline: self.clock.now() + self.timeout, posted: false, failure: None }
    }

    /// One step of an admission round at a boundary: the first posts the boundary; each later one
    /// tries to decide (a compare-and-set once every member posted the same boundary) and applies
    /// the decision. `started_after(peer, boundary)`: whether `peer` is already inside a later
    /// collective (its chunk is here); then this rank runs that collective under the old view too
    /// ([`AdmissionStep::Proceed`]). A member found dead, or a failure signal, turns the round
    /// into a failure round, which the following steps take part in.
    pub fn step_admission(&self, peers: &dyn Peers, adm: &mut Admission, started_after: &dyn Fn(usize, u64) -> bool) -> Result<AdmissionStep> {
        let _span = tracing::info_span!("admission", round = adm.round).entered();
        if let Some(rec) = &mut adm.failure {
            return Ok(match self.step_recovery(peers, rec)? {
                RecoveryStep::Applied => AdmissionStep::Applied,
                RecoveryStep::Posted => AdmissionStep::Posted,
                RecoveryStep::Waiting => AdmissionStep::Waiting,
            });
        }
        let r = self.round(adm.round, &adm.view);
        if !adm.posted {
            let marks = lock(&self.progress).marks.recent();
            r.post_boundary(adm.boundary, marks)?;
            // The joiner that asked may have no link to every member (one admitted after it
            // linked): pass the round on, as failure posts do.
            self.raise(peers, adm.round, false, &adm.view.members());
            adm.posted = true;
            return Ok(AdmissionStep::Posted);
        }
        if let Some(d) = r.try_admission()? {
            self.apply(adm.round, d);
            return Ok(AdmissionStep::Applied);
        }
        match self.pending_round(peers) {
            Some((q, false)) if q == adm.round => {}
            // A failure during the admission round: it is a failure round now.
            Some((q, true)) if q == adm.round => {
                adm.failure = Some(self.begin_recovery());
                return Ok(AdmissionStep::Waiting);
            }
            _ => return Ok(AdmissionStep::Applied),
        }
        if adm.others.iter().any(|&p| peers.peer_dead(p)) {
            adm.failure = Some(self.begin_recovery());
            return Ok(AdmissionStep::Waiting);
        }
        if adm.others.iter().any(|&p| started_after(p, adm.boundary)) || r.inside_after(adm.boundary)? {
            tracing::debug!(boundary = adm.boundary, "a member already runs the next collective: running it under the old view");
            lock(&self.progress).proceed = Some((adm.round, adm.boundary));
            return Ok(AdmissionStep::Proceed);
        }
        if self.clock.now() >= adm.deadline {
            return Err(ChorusError::Timeout { op: "recovery", what: "the members' positions for an admission", peer: adm.others.first().copied().unwrap_or(self.rank), waited_ms: self.timeout.as_millis() as u64, knob: self.timeout_knob });
        }
        Ok(AdmissionStep::Waiting)
    }

    /// A replacement rank asks the survivors to admit it (an admission round: they adopt the
    /// grown view between two collectives, so no collective is interrupted), waits for the
    /// decision that does, and returns the last collective before its first (blocking form of
    /// [`Membership::step_admit`]).
    pub fn admit(&self, peers: &dyn Peers) -> Result<u64> {
        let mut adm = self.begin_admit();
        loop {
            match self.step_admit(peers, &mut adm)? {
                AdmitStep::Admitted(next) => return Ok(next),
                AdmitStep::Raised => {}
                AdmitStep::Waiting => self.clock.pause(Duration::from_millis(2)),
            }
        }
    }

    /// Starts a replacement's admission (stepped by [`Membership::step_admit`]).
    pub fn begin_admit(&self) -> Admit {
        Admit { deadline: self.clock.now() + self.timeout, asked: None, failure_raised: false }
    }

    /// One step of a replacement's admission: the first raises the next round (an admission
    /// round) at every member; later ones help decide (the replacement reads the members' posts
    /// like they do), turn the round into a failure round if a member dies, and apply the
    /// decision. A decision that does not hold this rank (it asked after the round's requests
    /// were read) makes it ask again in the next round.
    pub fn step_admit(&self, peers: &dyn Peers, adm: &mut Admit) -> Result<AdmitStep> {
        let Some((round, view)) = &adm.asked else {
            let round = self.rounds_applied() + 1;
            let view = self.view();
            self.raise(peers, round, false, &view.members());
            adm.asked = Some((round, view));
            adm.failure_raised = false;
            return Ok(AdmitStep::Raised);
        };
        let (round, members) = (*round, view.members());
        let r = self.round(round, view);
        let decided = match r.try_admission()? {
            Some(d) => Some(d),
            None => r.try_failure(|p| peers.peer_dead(p))?,
        };
        let Some(d) = decided else {
            if !adm.failure_raised && members.iter().any(|&p| peers.peer_dead(p)) {
                self.raise(peers, round, true, &members);
                adm.failure_raised = true;
                return Ok(AdmitStep::Raised);
            }
            if self.clock.now() >= adm.deadline {
                return Err(ChorusError::InvalidArgument(format!(
                    "join: the survivors did not admit rank {} in time (view {:?}); they admit between collectives, so they must keep running them",
                    self.rank, members
                )));
            }
            return Ok(AdmitStep::Waiting);
        };
        tracing::info!(round, commit_through = d.commit_through, epoch = d.view.epoch, "admission round decided");
        let fails = d.interrupted && (!d.rerun_possible || self.policy == FailurePolicy::Abort || !d.timed_out.is_empty());
        let next = d.commit_through + fails as u64;
        let resume = marks::position(&d.marks, next);
        let removed = d.removed.clone();
        self.apply(round, d);
        adm.asked = None;
        let view = self.view();
        if !view.is_active(self.rank) {
            // The view holds our request but not us: it admitted ranks we have no link to.
            let asked = self.join_request.load(Ordering::SeqCst);
            if asked > 0 && view.requests >= asked {
                return Err(ChorusError::JoinOutdated { rank: self.rank, epoch: view.epoch });
            }
            return Ok(AdmitStep::Waiting);
        }
        // The survivors' next collective is ours too: one they re-run or that simply comes next
        // (it reports the removals this decision made); one that fails on them is theirs.
        lock(&self.progress).committed = next;
        *lock(&self.resume) = resume;
        *lock(&self.pending_failed) = if fails { Vec::new() } else { removed };
        tracing::info!(epoch = view.epoch, next_collective = next + 1, "rejoined");
        Ok(AdmitStep::Admitted(next))
    }

    /// Applies round `round`'s decision and publishes its view.
    fn apply(&self, round: u64, decision: Decision) {
        let mut p = lock(&self.progress);
        self.apply_locked(&mut p, round, decision);
    }

    /// [`Membership::apply`] under the progress lock. A round applied already (by the attendant
    /// thread and the collective path both) is applied once.
    fn apply_locked(&self, p: &mut Progress, round: u64, decision: Decision) {
        if self.rounds_applied() >= round {
            return;
        }
        tracing::info!(round, commit_through = decision.commit_through, epoch = decision.view.epoch, removed = ?decision.removed, interrupted = decision.interrupted, rerun_possible = decision.rerun_possible, "recovery decided");
        {
            // Everything up to commit_through is committed; this rank held the data for it (the
            // decision rule guarantees it), so its result stands.
            p.committed = p.committed.max(decision.commit_through);
            p.proceed = None;
            p.settling = None;
        }
        *lock(&self.view) = decision.view.clone();
        // Every rank that applies a decision publishes its view (a replacement waits for it to
        // see its predecessor removed); publishing again, or late, changes nothing.
        if let Err(e) = self.views.publish(&decision.view) {
            tracing::warn!(error = %e, epoch = decision.view.epoch, "publishing the decided view failed (the other members publish it too)");
        }
        lock(&self.pending_failed).extend(decision.removed.iter().copied());
        *lock(&self.last_decision) = Some(decision);
        self.rounds_applied.fetch_max(round, Ordering::SeqCst);
    }

    /// Join requests seen in the store so far (the attendant thread raises it).
    pub fn joins_announced(&self, n: u64) {
        self.joins_announced.fetch_max(n, Ordering::SeqCst);
    }

    /// Joins before this rank existed are not for it.
    pub fn skip_joins(&self, n: u64) {
        self.joins_announced.fetch_max(n, Ordering::SeqCst);
        self.joins_served.fetch_max(n, Ordering::SeqCst);
    }

    /// The join requests announced and not served yet, by number.
    pub fn joins_to_serve(&self) -> std::ops::RangeInclusive<u64> {
        self.joins_served.load(Ordering::SeqCst) + 1..=self.joins_announced.load(Ordering::SeqCst)
    }

    /// Join request `seq` was served (linked, or given up on).
    pub fn join_served(&self, seq: u64) {
        self.joins_served.fetch_max(seq, Ordering::SeqCst);
    }
}
