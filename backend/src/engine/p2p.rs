//! Tagged point-to-point messages, progressed concurrently.
//!
//! One thread per group owns the point-to-point stream of every pair. It keeps every pending
//! send and receive moving at once (so `isend`/`irecv` in both directions at the same time, in
//! any order, never deadlock): each turn it puts chunks of the head message for every peer while
//! credits allow, drains every arrived chunk — into a posted receive whose (source, tag) matches,
//! or into an unexpected-message queue — and matches new receives against that queue. Messages
//! between a pair with the same tag arrive in the order they were sent.
use super::comm::{Comm, OpCtx};
use crate::error::{ChorusError, Result};
use crate::transport::{Payload, SlotMeta};
use crossbeam::channel::{Receiver, TryRecvError};
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Memory an asynchronous operation owns until it completes.
pub trait OpBuffer: Send + 'static {
    /// The buffer's contents as bytes.
    fn bytes(&self) -> &[u8];
    /// The buffer's contents as writable bytes.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// The boxed buffer as `Any`, so the caller's type can be recovered on completion.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    /// The dtype of the elements it holds, where it has one (`Vec<f32>`: `F32`); `None` for bytes,
    /// which any dtype may be read from. An operation refuses a buffer whose elements are not of
    /// the dtype it was given.
    fn element_type(&self) -> Option<chorus_kernels::DType> {
        None
    }
}

pub type Finish = Box<dyn FnOnce(Box<dyn OpBuffer>, Result<()>) + Send>;

pub enum P2pOp {
    Send { to: usize, tag: u64, buf: Box<dyn OpBuffer>, finish: Finish },
    Recv { from: usize, tag: u64, buf: Box<dyn OpBuffer>, finish: Finish },
    /// A replacement for `peer` joined: switch to `link`, forfeit what the old process left
    /// unconsumed, and publish where this stream's counters are at `reply`.
    Relink { peer: usize, link: std::sync::Arc<dyn crate::transport::Link>, reply: String, store: std::sync::Arc<dyn chorus_bootstrap::Store> },
    /// A replacement for `peer` is about to be connected: forfeit what the old process left
    /// and reply where this stream's counters are `(sent, consumed)` (a transport that carries
    /// the counters into its new connection needs them before it connects). `Relink` follows.
    Forfeit { peer: usize, reply: crossbeam::channel::Sender<(u64, u64)> },
}

struct SendOp {
    tag: u64,
    buf: Box<dyn OpBuffer>,
    off: usize,
    chunks_sent: u64,
    deadline: Instant,
    finish: Finish,
}

struct RecvOp {
    from: usize,
    tag: u64,
    buf: Box<dyn OpBuffer>,
    deadline: Instant,
    finish: Finish,
    /// Set while a message is streaming into this receive.
    streaming: bool,
}

enum Target {
    Posted(u64),
    Unexpected(Vec<u8>),
    Discard,
}

struct Incoming {
    tag: u64,
    total: u64,
    got: u64,
    target: Target,
}

/// At most this much is reserved up front for a message nobody has posted a receive for yet; the
/// rest grows as chunks actually arrive.
const UNEXPECTED_PREALLOC: usize = 16 << 20;

/// Whether chunk header `meta` continues the stream from a peer: `expected` is `(tag, total,
/// bytes so far)` of the message in progress (`None` between messages). A chunk fits in its slot,
/// continues its message in order and stays inside the message's total. The reason when not.
fn check_chunk(meta: &SlotMeta, expected: Option<(u64, u64, u64)>, slot_bytes: usize) -> std::result::Result<(), String> {
    if meta.len > slot_bytes as u64 {
        return Err(format!("a chunk of {} bytes in a slot of {slot_bytes}", meta.len));
    }
    let got = match expected {
        Some((tag, total, got)) => {
            if meta.tag != tag || meta.total != total {
                return Err(format!("chunk of message (tag {}, {} bytes) in the middle of message (tag {tag}, {total} bytes)", meta.tag, meta.total));
            }
            got
        }
        None => 0,
    };
    if meta.offset != got {
        return Err(format!("chunk at offset {} where offset {got} was due", meta.offset));
    }
    match meta.offset.checked_add(meta.len) {
        Some(end) if end <= meta.total => {}
        _ => return Err(format!("chunk of {} bytes at offset {} past the message's {} bytes", meta.len, meta.offset, meta.total)),
    }
    if meta.len == 0 && meta.total != 0 {
        return Err(format!("empty chunk of a {}-byte message", meta.total));
    }
    if usize::try_from(meta.total).is_err() {
        return Err(format!("message of {} bytes does not fit in memory", meta.total));
    }
    Ok(())
}

/// The buffer an unexpected message of `total` bytes (as its header claims) collects into:
/// capacity for the first chunks only, since `total` comes from the peer.
fn unexpected_buffer(total: u64) -> Vec<u8> {
    Vec::with_capacity(usize::try_from(total).unwrap_or(usize::MAX).min(UNEXPECTED_PREALLOC))
}

pub struct P2pEngine {
    comm: Comm,
    sends: Vec<VecDeque<SendOp>>,
    recvs: Vec<(u64, RecvOp)>,
    next_recv_id: u64,
    incoming: Vec<Option<Incoming>>,
    /// Per peer: a chunk was rejected, so chunks continuing its message are dropped.
    resync: Vec<bool>,
    unexpected: HashMap<(usize, u64), VecDeque<Vec<u8>>>,
    /// Operations that failed because their peer died, held until the group's view no longer
    /// counts that peer (the agreement the attendant threads run: `Membership::settle_between`),
    /// or until `until`: whoever sees the failure sees the shrunk view too.
    failed_on_dead: Vec<FailedOnDead>,
    /// Whether the group's view no longer counts a peer (`None`: no fault tolerance, so no view
    /// change to wait for).
    departed: Option<Departed>,
}

/// Says whether the group's current view no longer counts a rank.
pub type Departed = Box<dyn Fn(usize) -> bool + Send>;

struct FailedOnDead {
    peer: usize,
    buf: Box<dyn OpBuffer>,
    finish: Finish,
    error: ChorusError,
    until: Instant,
}

impl P2pEngine {
    /// Failed operations wait for the view to drop their dead peer for at most this long.
    const VIEW_WAIT: Duration = Duration::from_secs(5);

    /// Holds operations that failed on a dead peer until the view drops it (see
    /// [`P2pEngine::failed_on_dead`]).
    pub fn with_departed(mut self, departed: Departed) -> P2pEngine {
        self.departed = Some(departed);
        self
    }

    /// Ends `op` with `error`, at once unless the error is its peer's death and the view still
    /// counts that peer.
    fn fail_on_peer(&mut self, peer: usize, buf: Box<dyn OpBuffer>, finish: Finish, error: ChorusError) {
        let dead = matches!(error, ChorusError::PeerFailed { .. });
        match (&self.departed, dead) {
            (Some(_), true) => self.failed_on_dead.push(FailedOnDead { peer, buf, finish, error, until: Instant::now() + Self::VIEW_WAIT }),
            _ => finish(buf, Err(error)),
        }
    }

    /// Completes the held failures whose peer left the view (or that waited long enough).
    fn release_failed_on_dead(&mut self) {
        let Some(departed) = &self.departed else { return };
        let now = Instant::now();
        let (done, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.failed_on_dead).into_iter().partition(|f| departed(f.peer) || f.until <= now);
        self.failed_on_dead = held;
        for f in done {
            (f.finish)(f.buf, Err(f.error));
        }
    }

    pub fn new(comm: Comm) -> P2pEngine {
        let n = comm.n;
        P2pEngine {
            comm,
            sends: (0..n).map(|_| VecDeque::new()).collect(),
            recvs: Vec::new(),
            next_recv_id: 0,
            incoming: (0..n).map(|_| None).collect(),
            resync: vec![false; n],
            unexpected: HashMap::new(),
            failed_on_dead: Vec::new(),
            departed: None,
        }
    }

    fn idle(&self) -> bool {
        self.recvs.is_empty() && self.sends.iter().all(|q| q.is_empty()) && self.failed_on_dead.is_empty()
    }

    fn accept(&mut self, op: P2pOp) {
        let deadline = Instant::now() + self.comm.timeout;
        match op {
            P2pOp::Send { to, tag, buf, finish } => {
                if to >= self.comm.n || to == self.comm.me {
                    finish(buf, Err(ChorusError::InvalidRank { rank: to, size: self.comm.n }));
                    return;
                }
                self.sends[to].push_back(SendOp { tag, buf, off: 0, chunks_sent: 0, deadline, finish });
            }
            P2pOp::Forfeit { peer, reply } => {
                let _ = reply.send(self.forfeit(peer));
            }
            P2pOp::Relink { peer, link, reply, store } => {
                let (sent, recvd) = self.forfeit(peer);
                self.comm.links[peer] = Some(link);
                let h = crate::membership::join::Handoff { sent, recvd, ..Default::default() };
                let bytes = bincode::serde::encode_to_vec(&h, bincode::config::standard()).expect("encodes");
                if let Err(e) = store.set(&reply, &bytes) {
                    tracing::warn!(error = %e, "publishing the point-to-point handoff failed");
                }
            }
            P2pOp::Recv { from, tag, buf, finish } => {
                if from >= self.comm.n || from == self.comm.me {
                    finish(buf, Err(ChorusError::InvalidRank { rank: from, size: self.comm.n }));
                    return;
                }
                let id = self.next_recv_id;
                self.next_recv_id += 1;
                self.recvs.push((id, RecvOp { from, tag, buf, deadline, finish, streaming: false }));
            }
        }
    }

    /// Drops what the replaced `peer` left on this stream (messages half-received from the dead
    /// process; sends to it fail) and forfeits its unconsumed chunks. Idempotent.
    fn forfeit(&mut self, peer: usize) -> (u64, u64) {
        self.incoming[peer] = None;
        self.resync[peer] = false;
        while let Some(op) = self.sends[peer].pop_front() {
            (op.finish)(op.buf, Err(ChorusError::PeerFailed { op: "send", peer, why: "the peer was replaced".into() }));
        }
        crate::membership::join::forfeit(&self.comm.signals.clone(), &mut self.comm, peer)
    }

    fn ctx(&self) -> OpCtx {
        let now = Instant::now();
        OpCtx { name: "p2p", op_seq: 0, epoch: 0, attempt: 0, desc: Default::default(), deadline: now, started: now }
    }

    /// One non-blocking turn; returns whether anything moved.
    fn progress(&mut self) -> bool {
        let mut moved = false;
        // Sends: the head message of every peer, while credits allow.
        for to in 0..self.comm.n {
            while let Some(head) = self.sends[to].front_mut() {
                let Ok(link) = self.comm.link(to) else { break };
                let geo = link.geometry();
                let seq = self.comm.sent[to];
                if seq >= geo.slots as u64 && self.comm.signals.ack_seq(to, self.comm.stream).load(Ordering::Acquire) < seq + 1 - geo.slots as u64 {
                    break;
                }
                let total = head.buf.bytes().len();
                let len = (total - head.off).min(geo.slot_bytes);
                let meta = SlotMeta { op_seq: 0, desc: 0, total: total as u64, offset: head.off as u64, tag: head.tag, len: len as u64, attempt: 0 };
                let data = &head.buf.bytes()[head.off..head.off + len];
                if let Err(e) = link.put(self.comm.stream, seq, &meta, Payload::Bytes(data)) {
                    let op = self.sends[to].pop_front().expect("head");
                    (op.finish)(op.buf, Err(e));
                    break;
                }
                self.comm.sent[to] = seq + 1;
                head.off += len;
                head.chunks_sent += 1;
                moved = true;
                if head.off == total {
                    let op = self.sends[to].pop_front().expect("head");
                    (op.finish)(op.buf, Ok(()));
                }
            }
        }
        // Arrived chunks from every peer.
        for from in 0..self.comm.n {
            if from == self.comm.me {
                continue;
            }
            while self.comm.chunk_ready(from) {
                let seq = self.comm.recvd[from];
                let Ok(link) = self.comm.link(from) else { break };
                let ring = link.inbound(self.comm.stream);
                // The header was written by the peer: every length and offset in it is checked
                // before it sizes, indexes or allocates anything here.
                let meta = ring.meta(seq);
                if self.resync[from] {
                    // The rest of a rejected message: dropped until a message starts afresh.
                    if meta.offset != 0 {
                        if let Err(e) = self.comm.release(from, seq) {
                            tracing::debug!(error = %e, "returning a point-to-point credit failed");
                        }
                        moved = true;
                        continue;
                    }
                    self.resync[from] = false;
                }
                let expected = self.incoming[from].as_ref().map(|i| (i.tag, i.total, i.got));
                if let Err(why) = check_chunk(&meta, expected, ring.geometry().slot_bytes) {
                    self.reject_chunk(from, seq, why);
                    moved = true;
                    continue;
                }
                if self.incoming[from].is_none() {
                    self.incoming[from] = Some(self.start_message(from, &meta));
                }
                let payload = ring.payload(seq, meta.len as usize);
                let inc = self.incoming[from].as_mut().expect("set above");
                let off = meta.offset as usize;
                match &mut inc.target {
                    Target::Posted(id) => {
                        if let Some((_, r)) = self.recvs.iter_mut().find(|(i, _)| i == id) {
                            // In bounds: the posted buffer has `total` bytes and check_chunk
                            // bounded `offset + len` by `total`.
                            if let Some(dst) = r.buf.bytes_mut().get_mut(off..off + payload.len()) {
                                dst.copy_from_slice(payload);
                            }
                        }
                    }
                    // Chunks arrive in order (check_chunk: offset == bytes so far), so the
                    // message grows by what actually arrived, never by what the header claims.
                    Target::Unexpected(v) => v.extend_from_slice(payload),
                    Target::Discard => {}
                }
                inc.got += meta.len;
                let complete = inc.got >= inc.total;
                if let Err(e) = self.comm.release(from, seq) {
                    tracing::debug!(error = %e, "returning a point-to-point credit failed");
                }
                moved = true;
                if complete {
                    let inc = self.incoming[from].take().expect("set above");
                    match inc.target {
                        Target::Posted(id) => self.finish_recv(id, Ok(())),
                        Target::Unexpected(v) => self.unexpected.entry((from, inc.tag)).or_default().push_back(v),
                        Target::Discard => {}
                    }
                }
            }
        }
        // Receives that an unexpected message already satisfies.
        let mut i = 0;
        while i < self.recvs.len() {
            let (id, r) = &self.recvs[i];
            let (id, key) = (*id, (r.from, r.tag));
            if !r.streaming {
                if let Some(msg) = self.unexpected.get_mut(&key).and_then(|q| q.pop_front()) {
                    let result = self.deliver(i, &msg);
                    self.finish_recv(id, result);
                    moved = true;
                    continue;
                }
            }
            i += 1;
        }
        moved
    }

    /// Drops a chunk whose header does not fit the stream (a peer that is not a chorus of this
    /// build, or memory corruption): the receive it was streaming into fails, the rest of that
    /// message is discarded, and the credit goes back so the stream keeps moving.
    fn reject_chunk(&mut self, from: usize, seq: u64, why: String) {
        tracing::warn!(peer = from, seq, %why, "malformed point-to-point chunk");
        let err = || ChorusError::Protocol { peer: from, why: why.clone() };
        match self.incoming[from].take() {
            Some(Incoming { target: Target::Posted(id), .. }) => self.finish_recv(id, Err(err())),
            Some(_) => {}
            None => {
                // A message that never started: the first posted receive from this peer that is
                // not streaming learns about it rather than waiting for its deadline.
                if let Some(id) = self.recvs.iter().find(|(_, r)| r.from == from && !r.streaming).map(|(i, _)| *i) {
                    self.finish_recv(id, Err(err()));
                }
            }
        }
        // The rejected message's remaining chunks are dropped; the next message (offset 0) is taken.
        self.resync[from] = true;
        if let Err(e) = self.comm.release(from, seq) {
            tracing::debug!(error = %e, "returning a point-to-point credit failed");
        }
    }

    fn deliver(&mut self, index: usize, msg: &[u8]) -> Result<()> {
        let r = &mut self.recvs[index].1;
        let have = r.buf.bytes().len();
        if have != msg.len() {
            return Err(ChorusError::InvalidArgument(format!(
                "recv from rank {} with tag {}: the message has {} bytes but the receive buffer has {have}",
                r.from,
                r.tag,
                msg.len()
            )));
        }
        r.buf.bytes_mut().copy_from_slice(msg);
        Ok(())
    }

    fn start_message(&mut self, from: usize, meta: &SlotMeta) -> Incoming {
        // Earlier-posted receives match first; a receive already satisfied by an unexpected
        // message of the same tag must take that one (FIFO per tag).
        let queued = self.unexpected.get(&(from, meta.tag)).map_or(0, |q| q.len());
        let mut skip = queued;
        let mut target = None;
        for (id, r) in self.recvs.iter_mut() {
            if r.from == from && r.tag == meta.tag && !r.streaming {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                if r.buf.bytes().len() as u64 != meta.total {
                    target = Some(Err(*id));
                } else {
                    r.streaming = true;
                    target = Some(Ok(*id));
                }
                break;
            }
        }
        let target = match target {
            Some(Ok(id)) => Target::Posted(id),
            Some(Err(id)) => {
                let have = self.recvs.iter().find(|(i, _)| *i == id).map_or(0, |(_, r)| r.buf.bytes().len());
                self.finish_recv(
                    id,
                    Err(ChorusError::InvalidArgument(format!(
                        "recv from rank {from} with tag {}: the message has {} bytes but the receive buffer has {have}",
                        meta.tag, meta.total
                    ))),
                );
                Target::Discard
            }
            None => Target::Unexpected(unexpected_buffer(meta.total)),
        };
        Incoming { tag: meta.tag, total: meta.total, got: 0, target }
    }

    fn finish_recv(&mut self, id: u64, result: Result<()>) {
        if let Some(pos) = self.recvs.iter().position(|(i, _)| *i == id) {
            let (_, r) = self.recvs.remove(pos);
            (r.finish)(r.buf, result);
        }
    }

    /// Fails operations whose deadline passed or whose peer is gone.
    fn expire(&mut self) {
        let now = Instant::now();
        let ctx = self.ctx();
        for to in 0..self.comm.n {
            let dead = self.sends[to].front().is_some() && self.comm.check_peer(ctx.name, to).is_err();
            while let Some(head) = self.sends[to].front() {
                if !(dead || head.deadline <= now) {
                    break;
                }
                let op = self.sends[to].pop_front().expect("head");
                let err = self.comm.check_peer("send", to).err().unwrap_or(ChorusError::Timeout {
                    op: "send",
                    what: "the receiver to post a matching recv",
                    peer: to,
                    waited_ms: self.comm.timeout.as_millis() as u64,
                    knob: self.comm.timeout_knob,
                });
                let _ = op.chunks_sent;
                self.fail_on_peer(to, op.buf, op.finish, err);
            }
        }
        let mut i = 0;
        while i < self.recvs.len() {
            let r = &self.recvs[i].1;
            let peer_err = self.comm.check_peer("recv", r.from).err();
            if r.deadline <= now || (peer_err.is_some() && !self.comm.chunk_ready(r.from)) {
                let (_, r) = self.recvs.remove(i);
                let err = peer_err.unwrap_or(ChorusError::Timeout {
                    op: "recv",
                    what: "a matching send",
                    peer: r.from,
                    waited_ms: self.comm.timeout.as_millis() as u64,
                    knob: self.comm.timeout_knob,
                });
                self.fail_on_peer(r.from, r.buf, r.finish, err);
                continue;
            }
            i += 1;
        }
    }

    fn fail_all(&mut self, mk: impl Fn() -> ChorusError) {
        for f in self.failed_on_dead.drain(..) {
            (f.finish)(f.buf, Err(f.error));
        }
        for q in &mut self.sends {
            while let Some(op) = q.pop_front() {
                (op.finish)(op.buf, Err(mk()));
            }
        }
        for (_, r) in self.recvs.drain(..) {
            (r.finish)(r.buf, Err(mk()));
        }
    }

    /// The progress thread's loop: runs until the op channel closes and nothing is pending.
    pub fn run(mut self, ops: Receiver<P2pOp>) {
        let mut last_expire = Instant::now();
        loop {
            // Take new operations.
            loop {
                match ops.try_recv() {
                    Ok(op) => self.accept(op),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.fail_all(|| ChorusError::Destroyed);
                        return;
                    }
                }
            }
            if self.idle() {
                self.comm.flush_credits();
                match ops.recv_timeout(Duration::from_millis(50)) {
                    Ok(op) => self.accept(op),
                    Err(crossbeam::channel::RecvTimeoutError::Timeout) => continue,
                    Err(crossbeam::channel::RecvTimeoutError::Disconnected) => return,
                }
            }
            let moved = self.progress();
            if !moved {
                // Nothing moved this turn: whoever waits for our credits gets them now.
                self.comm.flush_credits();
            }
            if last_expire.elapsed() > Duration::from_millis(20) {
                self.expire();
                self.release_failed_on_dead();
                last_expire = Instant::now();
            }
            if !moved && !self.idle() {
                // Sleep on the doorbell until a chunk, a credit or a new operation arrives.
                let deadline = Instant::now() + Duration::from_millis(20);
                let me = self.comm.me;
                let ready = || {
                    let chunk = (0..self.comm.n).any(|p| p != me && self.comm.chunk_ready(p));
                    let credit = (0..self.comm.n).any(|p| {
                        !self.sends[p].is_empty()
                            && self.comm.link(p).is_ok_and(|l| {
                                let slots = l.geometry().slots as u64;
                                let seq = self.comm.sent[p];
                                seq < slots || self.comm.signals.ack_seq(p, self.comm.stream).load(Ordering::Acquire) >= seq + 1 - slots
                            })
                    });
                    (chunk || credit || !ops.is_empty()).then_some(())
                };
                let _ = self.comm.signals.wait(&self.comm.policy, deadline, ready, || Ok::<(), ()>(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check_chunk, SlotMeta};

    fn chunk(tag: u64, total: u64, offset: u64, len: u64) -> SlotMeta {
        SlotMeta { tag, total, offset, len, ..Default::default() }
    }

    #[test]
    fn well_formed_chunks_pass() {
        assert_eq!(check_chunk(&chunk(7, 10, 0, 4), None, 4), Ok(()));
        assert_eq!(check_chunk(&chunk(7, 10, 4, 4), Some((7, 10, 4)), 4), Ok(()));
        assert_eq!(check_chunk(&chunk(7, 10, 8, 2), Some((7, 10, 8)), 4), Ok(()));
        assert_eq!(check_chunk(&chunk(7, 0, 0, 0), None, 4), Ok(()));
    }

    #[test]
    fn peer_written_headers_that_would_panic_or_allocate_are_rejected() {
        // Longer than its slot (drove the ring's assert).
        assert!(check_chunk(&chunk(1, 100, 0, 5), None, 4).is_err());
        // Offset past the message (drove a slice index out of bounds).
        assert!(check_chunk(&chunk(1, 10, 8, 4), Some((1, 10, 8)), 4).is_err());
        assert!(check_chunk(&chunk(1, u64::MAX, u64::MAX, 4), Some((1, u64::MAX, u64::MAX)), 4).is_err());
        // Out of order, or a different message in the middle of one.
        assert!(check_chunk(&chunk(1, 10, 4, 4), None, 4).is_err());
        assert!(check_chunk(&chunk(1, 10, 0, 4), Some((1, 10, 4)), 4).is_err());
        assert!(check_chunk(&chunk(2, 10, 4, 4), Some((1, 10, 4)), 4).is_err());
        assert!(check_chunk(&chunk(1, 11, 4, 4), Some((1, 10, 4)), 4).is_err());
        // An empty chunk of a non-empty message would never finish it.
        assert!(check_chunk(&chunk(1, 10, 0, 0), None, 4).is_err());
    }

    #[test]
    fn a_huge_claimed_total_reserves_only_the_prealloc_cap() {
        // The header may claim any total; the reservation for an unexpected message is capped and
        // grows with the bytes that arrive (a claim of u64::MAX once aborted on allocation).
        let meta = chunk(1, 1 << 50, 0, 4);
        assert_eq!(check_chunk(&meta, None, 4), Ok(()));
        assert_eq!(super::unexpected_buffer(meta.total).capacity(), super::UNEXPECTED_PREALLOC);
        assert_eq!(super::unexpected_buffer(u64::MAX).capacity(), super::UNEXPECTED_PREALLOC);
        assert_eq!(super::unexpected_buffer(10).capacity(), 10);
    }
}
