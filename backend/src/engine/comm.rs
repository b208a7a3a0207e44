//! Chunk movement with credits.
//!
//! Per ordered pair and stream, the sender numbers its chunks 0, 1, 2, … (`sent`), the receiver
//! counts what it consumed (`recvd`). Chunk `s` goes to slot `s % slots`; the sender may write it
//! only once the receiver acked chunk `s - slots` (its `ack_seq` in our signal block). Counters
//! never reset, for the life of the group: a slot is never "cleared" for reuse (DESIGN
//! invariant 1), so a late writer can never be mistaken for a new one.
use super::tasks::{PeerTask, SkipReason};
use crate::error::{ChorusError, Result};
use crate::membership::join::StreamCounters;
use crate::membership::liveness::Liveness;
use crate::membership::recovery;
use crate::options::TimeoutKnob;
use crate::transport::signals::{Control, SignalBlock, Stream, WaitPolicy, ABORT_DESTROYED, ABORT_FAILED, ABORT_MISMATCH};
use crate::transport::{Link, SlotMeta};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub desc: u64,
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
}

/// FNV-1a over the words that describe an operation; ranks compare it chunk by chunk.
pub fn describe(words: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

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
        Comm { me, n, stream, links, signals, policy, timeout, timeout_knob, sent: vec![0; n], recvd: vec![0; n], tasks, liveness, rounds_applied, scratch: Vec::new(), big_scratch: Vec::new(), backup: Vec::new(), inputs_intact: true, members: (0..n).collect() }
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
                ABORT_MISMATCH => ChorusError::PeerReportedMismatch { op, peer: reporter },
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

    /// Waits for `ready`, re-checking liveness of `peer` and the abort counter.
    fn wait_for<T>(&self, ctx: &OpCtx, peer: usize, what: &'static str, ready: impl FnMut() -> Option<T>) -> Result<T> {
        let check = || self.check(ctx.name, Some(peer));
        match self.signals.wait(&self.policy, ctx.deadline, ready, check) {
            Ok(v) => Ok(v),
            Err(Some(e)) => Err(e),
            Err(None) => {
                // A last look: a failure is a better error than a timeout.
                self.check(ctx.name, Some(peer))?;
                let link = self.links.get(peer).and_then(|l| l.as_ref()).map_or_else(|| "no link".to_string(), |l| l.describe());
                let (data, acks) = (self.signals.data_seq(peer, self.stream).load(Ordering::SeqCst), self.signals.ack_seq(peer, self.stream).load(Ordering::SeqCst));
                let done = self.signals.control(peer, Control::Done).load(Ordering::SeqCst);
                tracing::warn!(op = ctx.name, op_seq = ctx.op_seq, peer, what, sent = self.sent[peer], consumed = self.recvd[peer], data_seq = data, ack_seq = acks, peer_done = done, %link, "deadline passed");
                Err(ChorusError::Timeout { op: ctx.name, what, peer, waited_ms: ctx.started.elapsed().as_millis() as u64, knob: self.timeout_knob })
            }
        }
    }

    /// Sends one chunk of `len` bytes produced by `fill` to `to`.
    pub fn send(&mut self, ctx: &OpCtx, to: usize, meta_total: u64, tag: u64, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let link = self.link(to)?;
        let slots = link.geometry().slots as u64;
        let seq = self.sent[to];
        if seq >= slots {
            let need = seq + 1 - slots;
            let acks = self.signals.ack_seq(to, self.stream);
            if acks.load(Ordering::Acquire) < need {
                tracing::debug!(op = ctx.name, peer = to, seq, "waiting for a free slot (credit)");
                self.wait_for(ctx, to, "a free slot (credit)", || (acks.load(Ordering::Acquire) >= need).then_some(()))?;
            }
        }
        let meta = SlotMeta { op_seq: ctx.op_seq, desc: ctx.desc, total: meta_total, offset: 0, tag, len: len as u64, attempt: ctx.attempt };
        link.put(self.stream, seq, &meta, fill)?;
        self.sent[to] = seq + 1;
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

    /// Waits until the next chunk from `from` has arrived; returns its sequence number.
    pub fn wait_chunk(&self, ctx: &OpCtx, from: usize) -> Result<u64> {
        let seq = self.recvd[from];
        let data = self.signals.data_seq(from, self.stream);
        if data.load(Ordering::Acquire) <= seq {
            tracing::debug!(op = ctx.name, peer = from, seq, "waiting for data");
            self.wait_for(ctx, from, "data", || (data.load(Ordering::Acquire) > seq).then_some(()))?;
        }
        Ok(seq)
    }

    /// Waits for the next chunk from `from` that belongs to this attempt: chunks left over from an
    /// attempt a recovery cancelled (lower attempt) are dropped; a chunk from a higher attempt means
    /// this rank is behind (it stays queued for the re-run). Then checks the header.
    pub fn next_chunk(&mut self, ctx: &OpCtx, from: usize, expect_len: usize, expect_total: Option<u64>) -> Result<u64> {
        loop {
            let seq = self.wait_chunk(ctx, from)?;
            let meta = self.link(from)?.inbound(self.stream).meta(seq);
            if meta.attempt < ctx.attempt {
                tracing::debug!(op = ctx.name, peer = from, seq, attempt = meta.attempt, "dropping a chunk of a cancelled attempt");
                self.release(from, seq)?;
                continue;
            }
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
    /// on a mismatch tells every peer to abort and returns the error.
    pub fn validate(&self, ctx: &OpCtx, from: usize, seq: u64, expect_len: usize, expect_total: Option<u64>) -> Result<SlotMeta> {
        let meta = self.link(from)?.inbound(self.stream).meta(seq);
        let mismatch = if meta.op_seq != ctx.op_seq {
            Some(("the sequence of collectives", ctx.op_seq, meta.op_seq))
        } else if meta.desc != ctx.desc {
            Some(("the operation, dtype, count or root", ctx.desc, meta.desc))
        } else if meta.len != expect_len as u64 {
            Some(("the number of bytes", expect_len as u64, meta.len))
        } else if expect_total.is_some_and(|t| t != meta.total) {
            Some(("the message size", expect_total.unwrap_or(0), meta.total))
        } else {
            None
        };
        if let Some((what, mine, theirs)) = mismatch {
            tracing::warn!(op = ctx.name, op_seq = ctx.op_seq, attempt = ctx.attempt, peer = from, seq, chunk_op_seq = meta.op_seq, chunk_attempt = meta.attempt, what, "chunk does not match this collective");
            self.abort_all(ABORT_MISMATCH);
            return Err(ChorusError::Mismatch { op: ctx.name, what, peer: from, mine, theirs });
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

    /// Waits until every peer consumed everything we sent (so a receiver's complaint reaches us
    /// within this operation).
    pub fn drain(&self, ctx: &OpCtx) -> Result<()> {
        for (peer, task) in self.tasks.iter().enumerate() {
            if !task.is_active() || self.sent[peer] == 0 {
                continue;
            }
            let need = self.sent[peer];
            let acks = self.signals.ack_seq(peer, self.stream);
            if acks.load(Ordering::Acquire) < need {
                // A chunk of this same collective arriving now was never expected: the peer runs
                // it with other arguments (e.g. another root) and waits for us as we wait for it.
                let data = self.signals.data_seq(peer, self.stream);
                let recvd = self.recvd[peer];
                let unexpected = self.wait_for(ctx, peer, "the receiver to consume our data", || {
                    if acks.load(Ordering::Acquire) >= need {
                        Some(false)
                    } else if data.load(Ordering::Acquire) > recvd {
                        Some(true)
                    } else {
                        None
                    }
                })?;
                if unexpected {
                    let meta = self.link(peer)?.inbound(self.stream).meta(recvd);
                    if meta.op_seq == ctx.op_seq && meta.attempt == ctx.attempt {
                        self.abort_all(ABORT_MISMATCH);
                        return Err(ChorusError::Mismatch { op: ctx.name, what: "the roots or roles", peer, mine: ctx.desc, theirs: meta.desc });
                    }
                    // A later collective's chunk: the peer moved on; keep waiting for the credit.
                    self.wait_for(ctx, peer, "the receiver to consume our data", || (acks.load(Ordering::Acquire) >= need).then_some(()))?;
                }
            }
        }
        // A receiver that found a mismatch raised our abort counter instead of (or before) acking.
        self.check(ctx.name, None)
    }

    /// Raises the abort counter of every peer (and our own).
    pub fn abort_all(&self, code: u64) {
        for l in self.links.iter().flatten() {
            l.send_abort(self.me, code);
        }
        self.signals.raise_abort(self.me, code);
    }
}
