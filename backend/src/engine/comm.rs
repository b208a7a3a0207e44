//! Chunk movement with credits.
//!
//! Per ordered pair and stream, the sender numbers its chunks 0, 1, 2, … (`sent`), the receiver
//! counts what it consumed (`recvd`). Chunk `s` goes to slot `s % slots`; the sender may write it
//! only once the receiver acked chunk `s - slots` (its `ack_seq` in our signal block). Counters
//! never reset, for the life of the group: a slot is never "cleared" for reuse (DESIGN
//! invariant 1), so a late writer can never be mistaken for a new one.
use super::desc::{notice, OpDesc, PROBE};
use super::tasks::{PeerTask, SkipReason};
use crate::error::{ChorusError, Result};
use crate::membership::join::StreamCounters;
use crate::membership::liveness::Liveness;
use crate::membership::recovery;
use crate::options::TimeoutKnob;
use crate::transport::signals::{Control, SignalBlock, Stream, WaitPolicy, ABORT_DESTROYED, ABORT_FAILED};
use crate::transport::{Link, Payload, SlotMeta};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a rank that finds a peer already in a later collective waits for the mismatch notice
/// that explains it (notices cross a link in microseconds to milliseconds).
const NOTICE_GRACE: Duration = Duration::from_millis(500);

/// Per-operation context: what the chunks must carry and when to give up.
#[derive(Clone, Debug)]
pub struct OpCtx {
    pub name: &'static str,
    pub op_seq: u64,
    /// Membership epoch of the view this attempt runs under (reported in `OpInfo`).
    pub epoch: u64,
    /// Recovery rounds applied when this attempt began: what its chunks carry (see
    /// `SlotMeta::attempt`).
    pub attempt: u64,
    /// The arguments every rank must pass alike; every chunk carries them.
    pub desc: OpDesc,
    pub deadline: Instant,
    pub started: Instant,
}

/// Everything one worker needs to move chunks on one stream.
pub struct Comm {
    pub me: usize,
    pub n: usize,
    pub stream: Stream,
    pub links: Vec<Option<Arc<dyn Link>>>,
    pub signals: SignalBlock,
    pub policy: WaitPolicy,
    /// `policy` for waits on peers without shared memory (their chunks come through our helper
    /// threads): [`WaitPolicy::relayed`].
    relayed: WaitPolicy,
    pub timeout: Duration,
    /// What set `timeout` (named by timeout errors).
    pub timeout_knob: TimeoutKnob,
    pub sent: Vec<u64>,
    pub recvd: Vec<u64>,
    /// The current operation's per-peer slots.
    pub tasks: Vec<PeerTask>,
    /// Heartbeat tracking (hung peers).
    pub liveness: Arc<Liveness>,
    /// Recovery rounds this rank has applied (monotonic); a peer asking for a higher round
    /// interrupts every wait.
    pub rounds_applied: Arc<AtomicU64>,
    /// Reused staging memory (the engine allocates nothing per chunk).
    pub scratch: Vec<u8>,
    /// Reused full-size scratch for operations that need one (non-root reduce).
    pub big_scratch: Vec<u8>,
    /// Active members of the view the current operation runs under (ascending).
    pub members: Vec<usize>,
    /// The saved input of an in-place reduction, for a re-run after a failure (reused).
    pub backup: Vec<u8>,
    /// Whether the current collective could be re-run from this rank's inputs (false once an
    /// in-place reduction without a saved input started).
    pub inputs_intact: bool,
    /// Per peer: the collective of the last data chunk sent to it and `sent` just after it (a
    /// drain waits for those, not for probes).
    pub data_sent: Vec<(u64, u64)>,
    /// Per peer: the collective this rank last sent it a probe for (one probe per collective).
    pub probed: Vec<u64>,
}

/// How long a rank waits for a peer's data before it sends the peer a probe with its descriptor.
const PROBE_AFTER: Duration = Duration::from_millis(20);

impl StreamCounters for Comm {
    fn stream(&self) -> Stream {
        self.stream
    }

    fn pair(&mut self, peer: usize) -> (&mut u64, &mut u64) {
        (&mut self.sent[peer], &mut self.recvd[peer])
    }
}

impl Comm {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: usize,
        n: usize,
        stream: Stream,
        links: Vec<Option<Arc<dyn Link>>>,
        signals: SignalBlock,
        policy: WaitPolicy,
        timeout: Duration,
        timeout_knob: TimeoutKnob,
        liveness: Arc<Liveness>,
        rounds_applied: Arc<AtomicU64>,
    ) -> Comm {
        let tasks = (0..n).map(|_| PeerTask::Skipped(SkipReason::NotInPlan)).collect();
        let relayed = policy.relayed();
        Comm { me, n, stream, links, signals, policy, relayed, timeout, timeout_knob, sent: vec![0; n], recvd: vec![0; n], tasks, liveness, rounds_applied, scratch: Vec::new(), big_scratch: Vec::new(), backup: Vec::new(), inputs_intact: true, members: (0..n).collect(), data_sent: vec![(0, 0); n], probed: vec![0; n] }
    }

    /// The highest recovery round a peer asked for that must interrupt this rank's operation (a
    /// failure round, or a round after the next: this rank is behind), and who asked. Admission
    /// rounds interrupt nothing: they are settled between collectives (`membership::recovery`).
    pub fn recovery_requested(&self) -> Option<(usize, u64)> {
        let applied = self.rounds_applied.load(Ordering::SeqCst);
        (0..self.n)
            .map(|p| (p, self.signals.control(p, Control::Recovery).load(Ordering::SeqCst)))
            .filter(|&(_, v)| recovery::interrupts(v, applied))
            .max_by_key(|&(_, v)| v)
            .map(|(p, v)| (p, recovery::round_of(v)))
    }

    /// Whether `peer` already sent a chunk of a collective after `op_seq` in the attempt this rank
    /// would run now (it started that collective).
    pub fn peer_started_after(&self, peer: usize, op_seq: u64) -> bool {
        if !self.chunk_ready(peer) {
            return false;
        }
        let Some(link) = self.links.get(peer).and_then(|l| l.as_ref()) else { return false };
        let meta = link.inbound(self.stream).meta(self.recvd[peer]);
        meta.op_seq > op_seq && meta.attempt == self.rounds_applied.load(Ordering::SeqCst)
    }

    pub fn link(&self, peer: usize) -> Result<Arc<dyn Link>> {
        self.links
            .get(peer)
            .and_then(|l| l.clone())
            .ok_or(ChorusError::InvalidRank { rank: peer, size: self.n })
    }

    /// Error if the group was aborted (by any rank) or `peer` is gone.
    pub fn check(&self, op: &'static str, peer: Option<usize>) -> Result<()> {
        if self.signals.abort_count().load(Ordering::SeqCst) > 0 {
            let reason = self.signals.abort_reason().load(Ordering::SeqCst);
            let reporter = (reason >> 32) as usize;
            return Err(match reason & 0xffff_ffff {
                ABORT_DESTROYED => ChorusError::Aborted(format!("rank {reporter} destroyed the group")),
                ABORT_FAILED => ChorusError::Aborted(format!("rank {reporter} reported a failure")),
                c => ChorusError::Aborted(format!("rank {reporter} aborted with code {c}")),
            });
        }
        if let Some((peer, round)) = self.recovery_requested() {
            return Err(ChorusError::RecoveryRequested { op, peer, round });
        }
        if let Some(p) = peer {
            self.check_peer(op, p)?;
        }
        Ok(())
    }

    /// Error if `p` is known to be gone (process exited, socket closed, heartbeat stalled).
    pub fn check_peer(&self, op: &'static str, p: usize) -> Result<()> {
        self.link(p)?.check_alive().map_err(|e| match e {
            ChorusError::PeerFailed { peer, why, .. } => ChorusError::PeerFailed { op, peer, why },
            e => e,
        })?;
        if let Some(quiet) = self.liveness.stalled(&self.signals, p) {
            return Err(ChorusError::PeerFailed { op, peer: p, why: format!("no heartbeat for {} ms", quiet.as_millis()) });
        }
        Ok(())
    }

    /// Waits for `ready`, re-checking liveness of `peer`, the abort counter and this collective's
    /// mismatch notices and probes (`check_op`).
    fn wait_for<T>(&self, ctx: &OpCtx, peer: usize, what: &'static str, ready: impl FnMut() -> Option<T>) -> Result<T> {
        match self.wait_until(ctx, ctx.deadline, peer, ready)? {
            Some(v) => Ok(v),
            None => {
                let link = self.links.get(peer).and_then(|l| l.as_ref()).map_or_else(|| "no link".to_string(), |l| l.describe());
                let (data, acks) = (self.signals.data_seq(peer, self.stream).load(Ordering::SeqCst), self.signals.ack_seq(peer, self.stream).load(Ordering::SeqCst));
                let done = self.signals.control(peer, Control::Done).load(Ordering::SeqCst);
                tracing::warn!(op = ctx.name, op_seq = ctx.op_seq, peer, what, sent = self.sent[peer], consumed = self.recvd[peer], data_seq = data, ack_seq = acks, peer_done = done, %link, "deadline passed");
                Err(ChorusError::Timeout { op: ctx.name, what, peer, waited_ms: ctx.started.elapsed().as_millis() as u64, knob: self.timeout_knob })
            }
        }
    }

    /// `wait_for` until `deadline`: `None` once it passed.
    fn wait_until<T>(&self, ctx: &OpCtx, deadline: Instant, peer: usize, ready: impl FnMut() -> Option<T>) -> Result<Option<T>> {
        // A rank about to wait owes nobody a credit (see `transport::tcp::credits`).
        self.flush_credits();
        let check = || self.check_op(ctx, Some(peer));
        let shared = self.links.get(peer).and_then(|l| l.as_ref()).is_none_or(|l| l.shares_memory());
        let policy = if shared { &self.policy } else { &self.relayed };
        match self.signals.wait(policy, deadline, ready, check) {
            Ok(v) => Ok(Some(v)),
            Err(Some(e)) => Err(e),
            Err(None) => {
                // A last look: a failure is a better error than a timeout.
                self.check_op(ctx, Some(peer))?;
                Ok(None)
            }
        }
    }

    /// `check`, plus what fails this collective alone: a peer's notice that the ranks disagree on
    /// it, or a probe from a peer that disagrees (in any peer's arrived chunks: the peer that
    /// waits for this rank need not be the one this rank waits for).
    pub fn check_op(&self, ctx: &OpCtx, peer: Option<usize>) -> Result<()> {
        self.check(ctx.name, peer)?;
        self.check_notice(ctx)?;
        for p in (0..self.n).filter(|&p| p != self.me) {
            let Some(link) = self.links.get(p).and_then(|l| l.as_ref()) else { continue };
            let arrived = self.signals.data_seq(p, self.stream).load(Ordering::Acquire);
            for seq in self.recvd[p]..arrived {
                let meta = link.inbound(self.stream).meta(seq);
                if meta.offset == PROBE && meta.op_seq == ctx.op_seq && meta.attempt == ctx.attempt {
                    self.compare_desc(ctx, p, &meta)?;
                }
            }
        }
        Ok(())
    }

    /// Error if a peer sent a mismatch notice about this collective.
    fn check_notice(&self, ctx: &OpCtx) -> Result<()> {
        let notice = self.signals.mismatch_notice().load(Ordering::SeqCst);
        match notice::about(notice & 0xffff_ffff, ctx.op_seq) {
            Some(what) => Err(ChorusError::PeerReportedMismatch { op: ctx.name, peer: (notice >> 32) as usize, what }),
            None => Ok(()),
        }
    }

    /// Error (and a notice to every peer) when `meta`, a chunk of this collective from `from`,
    /// carries other arguments than this rank's.
    fn compare_desc(&self, ctx: &OpCtx, from: usize, meta: &SlotMeta) -> Result<()> {
        match ctx.desc.disagreement(&OpDesc::from_words([meta.desc, meta.tag])) {
            Some((what, mine, theirs)) => Err(self.mismatch(ctx, from, what, mine, theirs)),
            None => Ok(()),
        }
    }

    /// The error for a disagreement with `peer` on `what`, after telling every peer, so that each
    /// fails this collective (and only this one) instead of waiting for its deadline.
    fn mismatch(&self, ctx: &OpCtx, peer: usize, what: &'static str, mine: String, theirs: String) -> ChorusError {
        tracing::warn!(op = ctx.name, op_seq = ctx.op_seq, attempt = ctx.attempt, peer, what, %mine, %theirs, "ranks disagree on a collective");
        let code = notice::encode(ctx.op_seq, what);
        for l in self.links.iter().flatten() {
            l.send_abort(self.me, code);
        }
        ChorusError::Mismatch { op: ctx.name, what, rank: self.me, mine, peer, theirs }
    }

    /// Sends one chunk of `len` bytes (`payload`) to `to`.
    pub fn send(&mut self, ctx: &OpCtx, to: usize, meta_total: u64, len: usize, payload: Payload<'_>) -> Result<()> {
        let link = self.link(to)?;
        let slots = link.geometry().slots as u64;
        let seq = self.sent[to];
        if seq >= slots {
            self.wait_credit(ctx, to, seq + 1 - slots)?;
        }
        let [desc, size] = ctx.desc.words();
        let meta = SlotMeta { op_seq: ctx.op_seq, desc, total: meta_total, offset: 0, tag: size, len: len as u64, attempt: ctx.attempt };
        link.put(self.stream, seq, &meta, payload)?;
        self.sent[to] = seq + 1;
        self.data_sent[to] = (ctx.op_seq, seq + 1);
        Ok(())
    }

    /// Waits until `to` consumed `need` of our chunks. Meanwhile takes in the header-only chunks
    /// `to` sent us (probes, and leftovers of a collective that failed): `to` may be waiting for
    /// a slot from us just the same.
    fn wait_credit(&mut self, ctx: &OpCtx, to: usize, need: u64) -> Result<()> {
        loop {
            if self.signals.ack_seq(to, self.stream).load(Ordering::Acquire) >= need {
                return Ok(());
            }
            if self.skip_control_chunks(ctx, to)? {
                continue;
            }
            let acks = self.signals.ack_seq(to, self.stream);
            tracing::debug!(op = ctx.name, peer = to, need, "waiting for a free slot (credit)");
            // A data chunk at the head stays there until the plan takes it: wait for the credit only.
            let head_is_data = self.chunk_ready(to);
            let (recvd, data) = (self.recvd[to], self.signals.data_seq(to, self.stream));
            let credited = self.wait_for(ctx, to, "a free slot (credit)", || {
                if acks.load(Ordering::Acquire) >= need {
                    Some(true)
                } else if !head_is_data && data.load(Ordering::Acquire) > recvd {
                    Some(false)
                } else {
                    None
                }
            })?;
            if credited {
                return Ok(());
            }
        }
    }

    /// Sends `to` a header-only probe with this rank's descriptor of `ctx`, once per collective and
    /// only into a free slot (a probe never waits).
    pub fn probe(&mut self, ctx: &OpCtx, to: usize) -> Result<()> {
        if self.probed[to] == ctx.op_seq {
            return Ok(());
        }
        let link = self.link(to)?;
        let seq = self.sent[to];
        let slots = link.geometry().slots as u64;
        if seq >= slots && self.signals.ack_seq(to, self.stream).load(Ordering::Acquire) < seq + 1 - slots {
            return Ok(());
        }
        let [desc, size] = ctx.desc.words();
        let meta = SlotMeta { op_seq: ctx.op_seq, desc, total: 0, offset: PROBE, tag: size, len: 0, attempt: ctx.attempt };
        tracing::debug!(op = ctx.name, op_seq = ctx.op_seq, peer = to, "probing a peer that keeps us waiting");
        link.put(self.stream, seq, &meta, Payload::Bytes(&[]))?;
        self.sent[to] = seq + 1;
        self.probed[to] = ctx.op_seq;
        Ok(())
    }

    /// Waits until `peer` raised its control counter `c` in our block to at least `value`.
    pub fn wait_control(&self, ctx: &OpCtx, peer: usize, c: Control, value: u64) -> Result<()> {
        let counter = self.signals.control(peer, c);
        if counter.load(Ordering::Acquire) >= value {
            return Ok(());
        }
        self.wait_for(ctx, peer, "the commit barrier", || (counter.load(Ordering::Acquire) >= value).then_some(()))
    }

    /// Waits until the next chunk from `from` has arrived; returns its sequence number. A peer
    /// that keeps us waiting gets a probe: if it runs this collective with other arguments (a
    /// root or kind under which it waits for us too), it finds out.
    pub fn wait_chunk(&mut self, ctx: &OpCtx, from: usize) -> Result<u64> {
        let seq = self.recvd[from];
        let data = self.signals.data_seq(from, self.stream);
        if data.load(Ordering::Acquire) > seq {
            return Ok(seq);
        }
        tracing::debug!(op = ctx.name, peer = from, seq, "waiting for data");
        if self.probed[from] != ctx.op_seq {
            let soon = (Instant::now() + PROBE_AFTER).min(ctx.deadline);
            if self.wait_until(ctx, soon, from, || (data.load(Ordering::Acquire) > seq).then_some(()))?.is_some() {
                return Ok(seq);
            }
            self.probe(ctx, from)?;
        }
        let data = self.signals.data_seq(from, self.stream);
        self.wait_for(ctx, from, "data", || (data.load(Ordering::Acquire) > seq).then_some(()))?;
        Ok(seq)
    }

    /// Takes in the header-only and left-over chunks at the head of `from`'s inbound ring: chunks
    /// of an attempt a recovery cancelled, of a collective this rank already returned (one that
    /// failed, on some rank, before every chunk was taken), and probes of this collective (checked
    /// against this rank's arguments). Whether it took any.
    fn skip_control_chunks(&mut self, ctx: &OpCtx, from: usize) -> Result<bool> {
        let mut took = false;
        while self.chunk_ready(from) {
            let seq = self.recvd[from];
            let meta = self.link(from)?.inbound(self.stream).meta(seq);
            let stale = meta.op_seq < ctx.op_seq || (meta.op_seq == ctx.op_seq && meta.attempt < ctx.attempt);
            if meta.offset == PROBE && !stale {
                if meta.op_seq > ctx.op_seq || meta.attempt > ctx.attempt {
                    break;
                }
                self.compare_desc(ctx, from, &meta)?;
            } else if !stale {
                break;
            }
            tracing::debug!(op = ctx.name, peer = from, seq, op_seq = meta.op_seq, attempt = meta.attempt, probe = meta.offset == PROBE, "taking in a chunk that carries no data for this collective");
            self.release(from, seq)?;
            took = true;
        }
        Ok(took)
    }

    /// Waits for the next data chunk from `from` that belongs to this attempt (probes and
    /// leftovers are taken in on the way: `skip_control_chunks`); a chunk from a higher attempt
    /// means this rank is behind (it stays queued for the re-run). Then checks the header.
    pub fn next_chunk(&mut self, ctx: &OpCtx, from: usize, expect_len: usize, expect_total: Option<u64>) -> Result<u64> {
        loop {
            let seq = self.wait_chunk(ctx, from)?;
            if self.skip_control_chunks(ctx, from)? {
                continue;
            }
            let meta = self.link(from)?.inbound(self.stream).meta(seq);
            if meta.attempt > ctx.attempt {
                return Err(ChorusError::ViewChanged { op: ctx.name, mine: ctx.attempt, theirs: meta.attempt });
            }
            self.validate(ctx, from, seq, expect_len, expect_total)?;
            return Ok(seq);
        }
    }

    /// Whether the next chunk from `from` is already there (no waiting).
    pub fn chunk_ready(&self, from: usize) -> bool {
        self.signals.data_seq(from, self.stream).load(Ordering::Acquire) > self.recvd[from]
    }

    /// Checks the header of the arrived chunk `seq` from `from` against what this rank expects;
    /// on a mismatch tells every peer and returns the error.
    pub fn validate(&self, ctx: &OpCtx, from: usize, seq: u64, expect_len: usize, expect_total: Option<u64>) -> Result<SlotMeta> {
        let meta = self.link(from)?.inbound(self.stream).meta(seq);
        if meta.op_seq != ctx.op_seq {
            // A peer that moved on to a later collective without the chunk this rank waits for
            // failed this one. Its own notice arrived before its later chunks; but it may have
            // failed on a third rank's notice, which comes over another link, possibly later:
            // wait a little for it, so that every rank names the same cause.
            let until = Instant::now() + NOTICE_GRACE.min(ctx.deadline.saturating_duration_since(Instant::now()));
            loop {
                self.check_notice(ctx)?;
                if meta.op_seq < ctx.op_seq || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let (mine, theirs) = (format!("collective #{}", ctx.op_seq), format!("collective #{}", meta.op_seq));
            return Err(self.mismatch(ctx, from, "the sequence of collectives", mine, theirs));
        }
        self.compare_desc(ctx, from, &meta)?;
        if meta.len != expect_len as u64 {
            let (mine, theirs) = (format!("a {expect_len}-byte chunk expected"), format!("a {}-byte chunk sent", meta.len));
            return Err(self.mismatch(ctx, from, "the count", mine, theirs));
        }
        if let Some(total) = expect_total.filter(|&t| t != meta.total) {
            let (mine, theirs) = (format!("{total} bytes expected from rank {from}"), format!("{} bytes sent to rank {}", meta.total, self.me));
            return Err(self.mismatch(ctx, from, "the message size", mine, theirs));
        }
        Ok(meta)
    }

    /// Returns the credit for chunk `seq` from `from`.
    ///
    /// A failed credit return is not this operation's failure: we already hold the data, and a
    /// peer that finished and left (closing its socket) no longer needs credits. If the peer
    /// died, the next wait on it reports that.
    pub fn release(&mut self, from: usize, seq: u64) -> Result<()> {
        self.recvd[from] = seq + 1;
        if let Err(e) = self.link(from)?.ack(self.stream, seq + 1) {
            tracing::debug!(peer = from, error = %e, "returning a credit failed");
        }
        Ok(())
    }

    /// Sends the credits a link held back to batch them ([`Link::flush_acks`]): before a wait that
    /// may block, and when an operation ends. As with [`Comm::release`], a failure is not this
    /// operation's.
    pub fn flush_credits(&self) {
        for l in self.links.iter().flatten() {
            if let Err(e) = l.flush_acks() {
                tracing::debug!(peer = l.peer(), error = %e, "returning credits failed");
            }
        }
    }

    /// Waits until every peer consumed the data we sent it in this collective (so a receiver's
    /// complaint reaches us within this operation).
    pub fn drain(&mut self, ctx: &OpCtx) -> Result<()> {
        for peer in 0..self.n {
            let (op_seq, need) = self.data_sent[peer];
            if !self.tasks[peer].is_active() || op_seq != ctx.op_seq {
                continue;
            }
            loop {
                if self.signals.ack_seq(peer, self.stream).load(Ordering::Acquire) >= need {
                    break;
                }
                if self.skip_control_chunks(ctx, peer)? {
                    continue;
                }
                let head_waiting = self.chunk_ready(peer);
                if head_waiting {
                    // A data chunk of this same collective that the plan never took: the peer runs
                    // it with other arguments (e.g. another root) and waits for us as we wait for it.
                    let meta = self.link(peer)?.inbound(self.stream).meta(self.recvd[peer]);
                    if meta.op_seq == ctx.op_seq && meta.attempt == ctx.attempt {
                        self.compare_desc(ctx, peer, &meta)?;
                        return Err(self.mismatch(ctx, peer, "the root", format!("no data expected from rank {peer}"), format!("data sent to rank {}", self.me)));
                    }
                    // A later collective's chunk: the peer moved on; wait for the credit only.
                }
                let (acks, recvd, data) = (self.signals.ack_seq(peer, self.stream), self.recvd[peer], self.signals.data_seq(peer, self.stream));
                let credited = self.wait_for(ctx, peer, "the receiver to consume our data", || {
                    if acks.load(Ordering::Acquire) >= need {
                        Some(true)
                    } else if !head_waiting && data.load(Ordering::Acquire) > recvd {
                        Some(false)
                    } else {
                        None
                    }
                })?;
                if credited {
                    break;
                }
            }
        }
        // A receiver that found a mismatch sent a notice instead of (or before) acking.
        self.check_op(ctx, None)
    }
}
