//! The rdma protocol as a pure state machine (no I/O, no verbs): what to post, when a write may
//! be issued, what a completion means, how credits return. [`super::link`] drives it with real
//! queue pairs; the tests drive two of them against each other in memory, with lost (error)
//! completions, reordered completions and dead peers.
//!
//! Per stream, the sender numbers chunks 0, 1, 2, … exactly as the engine does; chunk `s` goes
//! to slot `s % slots` of the peer's inbound ring as one RDMA WRITE WITH IMM of header+payload,
//! the immediate naming (stream, s). The receiver turns contiguous arrivals into its `data_seq`
//! counter. Credits return as zero-length WRITE WITH IMM carrying the consumed count; credit
//! returns are cumulative, so at most one per stream is in flight and newer values coalesce.
//!
//! Resources bounded here:
//! - send queue: data writes may use `send_depth - (streams + CONTROLS + 1)` entries; the rest
//!   is reserved so a credit return, a control update or an abort is never stuck behind data
//!   (that would deadlock both sides). Control updates coalesce like credits (one in flight per
//!   control id, the newest value goes next);
//! - receive queue: every WRITE WITH IMM consumes one receive WR at the target; the receiver
//!   re-posts one on every successful receive completion, so `recv_depth` WRs stay posted. In
//!   flight towards a receiver there are at most `streams·slots` data writes (slot credits), one
//!   credit return per stream, one update per control id and one abort, which `recv_depth` covers
//!   ([`Config::for_geometry`]); RNR retry (infinite) covers a poller that is late re-posting.
use super::wire::{widen, widen_forward, Imm, CONTROL_BITS};
use crate::transport::signals::CONTROLS;
use crate::transport::ring::HEADER;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

/// `IBV_WC_RECV_RDMA_WITH_IMM`.
pub const OPCODE_RECV_RDMA_WITH_IMM: u32 = 129;
/// `IBV_WC_RDMA_WRITE`.
pub const OPCODE_RDMA_WRITE: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub slots: u64,
    pub slot_bytes: u64,
    pub streams: usize,
    pub send_depth: u32,
    pub recv_depth: u32,
}

impl Config {
    pub fn for_geometry(slots: usize, slot_bytes: usize, streams: usize) -> Config {
        let s = slots as u32 * streams as u32;
        Config {
            slots: slots as u64,
            slot_bytes: slot_bytes as u64,
            streams,
            send_depth: s + streams as u32 + CONTROLS as u32 + 1 + 4,
            recv_depth: s + streams as u32 + CONTROLS as u32 + 1 + 8,
        }
    }

    pub fn ring_bytes(&self) -> u64 {
        self.slots * (HEADER as u64 + self.slot_bytes)
    }

    /// Offset of chunk `seq`'s slot of `stream` inside a region of `streams` rings.
    pub fn slot_offset(&self, stream: usize, seq: u64) -> u64 {
        stream as u64 * self.ring_bytes() + (seq % self.slots) * (HEADER as u64 + self.slot_bytes)
    }

    fn data_budget(&self) -> usize {
        (self.send_depth as usize).saturating_sub(self.streams + CONTROLS + 1)
    }
}

/// What a send work request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Data { stream: usize, seq: u64 },
    Ack { stream: usize, acked: u64 },
    Abort { code: u32 },
    Control { id: usize, value: u64 },
}

/// A send work request to post: RDMA WRITE WITH IMM of `len` bytes from `local_offset` of our
/// staging rings to `remote_offset` of the peer's inbound rings (`len == 0`: immediate only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Post {
    pub wr_id: u64,
    pub work: Work,
    /// Host order; the FFI layer converts to network order.
    pub imm: u32,
    pub local_offset: u64,
    pub remote_offset: u64,
    pub len: u32,
}

/// Why a write cannot be issued now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The receiver has not returned the credit for the slot (the engine should have waited).
    NoCredit { stream: usize, seq: u64, acked: u64 },
    /// Every data entry of the send queue is in flight; retry after send completions.
    SendQueueFull,
    /// Chunks must be written in sequence order.
    OutOfOrder { stream: usize, expected: u64, got: u64 },
    TooLong { len: u64, slot_bytes: u64 },
    /// The connection failed (peer dead, QP in error); the link reports PeerFailed.
    Failed(String),
}

/// What the owner must do with a completion's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Raise our `data_seq(peer, stream)` to `data_seq` (chunks `..data_seq` are in our ring).
    Delivered { stream: usize, data_seq: u64 },
    /// Raise our `ack_seq(peer, stream)` to `acked` (the peer consumed our chunks `..acked`).
    Credit { stream: usize, acked: u64 },
    /// The peer aborted the group.
    Abort { code: u32 },
    /// Raise the control counter `id` the peer keeps in our block to `value`.
    Control { id: usize, value: u64 },
    /// The connection is dead (reported once).
    Failed { why: String },
}

/// One polled completion, reduced to what the protocol needs (`imm` in host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub wr_id: u64,
    pub status: u32,
    pub opcode: u32,
    pub byte_len: u32,
    pub imm: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub posts: Vec<Post>,
    /// Receive WRs to post now (one per consumed receive).
    pub reposts: u32,
    pub events: Vec<Event>,
}

/// Counters where an endpoint resumes (all zero for a new group; a rejoined peer's new QP
/// continues from the values the membership layer agreed, since counters never reset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    pub tx_next: Vec<u64>,
    pub tx_acked: Vec<u64>,
    pub rx_delivered: Vec<u64>,
    pub rx_acked: Vec<u64>,
    /// Control counters the peer keeps in our block (index = control id).
    pub rx_control: Vec<u64>,
}

impl Resume {
    /// Where a pair's new QP continues, from this side's per-stream `(sent, consumed)` chunk
    /// counts after a rejoin: every chunk sent before is treated as credited (the old peer's
    /// unconsumed chunks are forfeited) and the next arrival is the next unconsumed chunk.
    pub fn continuing(per_stream: &[(u64, u64)]) -> Resume {
        let sent: Vec<u64> = per_stream.iter().map(|c| c.0).collect();
        let consumed: Vec<u64> = per_stream.iter().map(|c| c.1).collect();
        Resume { tx_next: sent.clone(), tx_acked: sent, rx_delivered: consumed.clone(), rx_acked: consumed, rx_control: Vec::new() }
    }
}

/// One side of one connection.
#[derive(Debug)]
pub struct Endpoint {
    cfg: Config,
    tx_next: Vec<u64>,
    tx_acked: Vec<u64>,
    rx_delivered: Vec<u64>,
    rx_arrived: Vec<BTreeSet<u64>>,
    /// Latest consumed count the engine gave us (what the peer's credit is measured against).
    rx_acked: Vec<u64>,
    ack_inflight: Vec<bool>,
    ack_posted: Vec<u64>,
    abort_sent: bool,
    ctl_value: [u64; CONTROLS],
    ctl_posted: [u64; CONTROLS],
    ctl_inflight: [bool; CONTROLS],
    rx_control: [u64; CONTROLS],
    outstanding: HashMap<u64, Work>,
    data_outstanding: usize,
    next_wr: u64,
    recv_posted: u32,
    failed: Option<String>,
    pub stats: Stats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub acks_posted: u64,
    pub acks_coalesced: u64,
    pub recv_completions: u64,
    pub flushed: u64,
}

pub fn wc_status_name(s: u32) -> &'static str {
    match s {
        0 => "success",
        1 => "local length error",
        2 => "local QP operation error",
        3 => "local EE context operation error",
        4 => "local protection error",
        5 => "work request flushed (QP in error state)",
        6 => "memory window bind error",
        7 => "bad response",
        8 => "local access error",
        9 => "remote invalid request",
        10 => "remote access error",
        11 => "remote operation error",
        12 => "transport retry counter exceeded (peer unreachable or dead)",
        13 => "RNR retry counter exceeded",
        14 => "local RDD violation",
        15 => "remote invalid RD request",
        16 => "remote aborted",
        17 => "invalid EE context number",
        18 => "invalid EE context state",
        19 => "fatal error",
        20 => "response timeout",
        21 => "general error",
        _ => "unknown status",
    }
}

impl Endpoint {
    pub fn new(cfg: Config) -> Endpoint {
        Endpoint::resume(cfg, Resume::default())
    }

    pub fn resume(cfg: Config, r: Resume) -> Endpoint {
        let v = |x: &Vec<u64>| (0..cfg.streams).map(|i| x.get(i).copied().unwrap_or(0)).collect::<Vec<u64>>();
        let rx_acked = v(&r.rx_acked);
        Endpoint {
            tx_next: v(&r.tx_next),
            tx_acked: v(&r.tx_acked),
            rx_delivered: v(&r.rx_delivered),
            rx_arrived: (0..cfg.streams).map(|_| BTreeSet::new()).collect(),
            ack_posted: rx_acked.clone(),
            rx_acked,
            ack_inflight: vec![false; cfg.streams],
            abort_sent: false,
            ctl_value: [0; CONTROLS],
            ctl_posted: [0; CONTROLS],
            ctl_inflight: [false; CONTROLS],
            rx_control: std::array::from_fn(|i| r.rx_control.get(i).copied().unwrap_or(0)),
            outstanding: HashMap::new(),
            data_outstanding: 0,
            next_wr: 1,
            recv_posted: 0,
            failed: None,
            stats: Stats::default(),
            cfg,
        }
    }

    /// Moves a connection that has carried nothing yet to the counters `r` (a rejoining rank
    /// connects its QPs before it learns where the survivors' counters are). Receive WRs
    /// already posted stay counted. Refused once any work request was posted.
    pub fn rebase(&mut self, r: Resume) -> Result<(), String> {
        if !self.outstanding.is_empty() || self.next_wr != 1 || self.stats != Stats::default() {
            return Err("rebase of a connection that already carried traffic".into());
        }
        let recv_posted = self.recv_posted;
        *self = Endpoint { recv_posted, ..Endpoint::resume(self.cfg, r) };
        Ok(())
    }

    /// The counters in words, for a log line when a wait on this connection times out.
    pub fn describe(&self) -> String {
        format!(
            "tx_next {:?} tx_acked {:?} rx_delivered {:?} rx_acked {:?} acks_in_flight {:?} controls {:?} posted {:?} in_flight {:?} rx_controls {:?} send_outstanding {} receives_posted {} failed {:?} {:?}",
            self.tx_next, self.tx_acked, self.rx_delivered, self.rx_acked, self.ack_inflight, self.ctl_value, self.ctl_posted, self.ctl_inflight, self.rx_control, self.outstanding.len(), self.recv_posted, self.failed, self.stats
        )
    }

    pub fn config(&self) -> Config {
        self.cfg
    }

    /// Receive WRs to post before the QP goes to RTR (the whole receive queue).
    pub fn initial_receives(&mut self) -> u32 {
        let n = self.cfg.recv_depth - self.recv_posted;
        self.recv_posted += n;
        n
    }

    pub fn recv_posted(&self) -> u32 {
        self.recv_posted
    }

    pub fn send_outstanding(&self) -> usize {
        self.outstanding.len()
    }

    pub fn is_failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn tx_acked(&self, stream: usize) -> u64 {
        self.tx_acked[stream]
    }

    pub fn rx_delivered(&self, stream: usize) -> u64 {
        self.rx_delivered[stream]
    }

    fn wr(&mut self, work: Work) -> u64 {
        let id = self.next_wr;
        self.next_wr += 1;
        self.outstanding.insert(id, work);
        id
    }

    /// Marks the connection dead (QP error event, peer process gone); returns the one
    /// `Failed` event, or nothing if it had failed already.
    pub fn fail(&mut self, why: impl Into<String>) -> Option<Event> {
        if self.failed.is_some() {
            return None;
        }
        let why = why.into();
        self.failed = Some(why.clone());
        Some(Event::Failed { why })
    }

    /// Chunk `seq` of `stream` with `payload_len` bytes after its header: may it be written now?
    pub fn write(&mut self, stream: usize, seq: u64, payload_len: u64) -> Result<Post, Refused> {
        if let Some(why) = &self.failed {
            return Err(Refused::Failed(why.clone()));
        }
        if seq != self.tx_next[stream] {
            return Err(Refused::OutOfOrder { stream, expected: self.tx_next[stream], got: seq });
        }
        if payload_len > self.cfg.slot_bytes {
            return Err(Refused::TooLong { len: payload_len, slot_bytes: self.cfg.slot_bytes });
        }
        if seq >= self.tx_acked[stream] + self.cfg.slots {
            return Err(Refused::NoCredit { stream, seq, acked: self.tx_acked[stream] });
        }
        if self.data_outstanding >= self.cfg.data_budget() {
            return Err(Refused::SendQueueFull);
        }
        let wr_id = self.wr(Work::Data { stream, seq });
        self.data_outstanding += 1;
        self.tx_next[stream] = seq + 1;
        self.stats.writes += 1;
        let off = self.cfg.slot_offset(stream, seq);
        Ok(Post {
            wr_id,
            work: Work::Data { stream, seq },
            imm: Imm::data(stream as u8, seq).encode(),
            local_offset: off,
            remote_offset: off,
            len: (HEADER as u64 + payload_len) as u32,
        })
    }

    fn post_ack(&mut self, stream: usize) -> Post {
        let acked = self.rx_acked[stream];
        let wr_id = self.wr(Work::Ack { stream, acked });
        self.ack_inflight[stream] = true;
        self.ack_posted[stream] = acked;
        self.stats.acks_posted += 1;
        Post { wr_id, work: Work::Ack { stream, acked }, imm: Imm::ack(stream as u8, acked).encode(), local_offset: 0, remote_offset: 0, len: 0 }
    }

    /// The engine consumed the peer's chunks `..acked` of `stream`: returns the credit-return
    /// write to post now, or `None` if one is in flight (this value goes out when it completes).
    pub fn ack(&mut self, stream: usize, acked: u64) -> Result<Option<Post>, Refused> {
        if let Some(why) = &self.failed {
            return Err(Refused::Failed(why.clone()));
        }
        if acked <= self.rx_acked[stream] {
            return Ok(None);
        }
        self.rx_acked[stream] = acked;
        if self.ack_inflight[stream] {
            self.stats.acks_coalesced += 1;
            return Ok(None);
        }
        Ok(Some(self.post_ack(stream)))
    }

    /// Tells the peer we abort (best effort; at most once per connection).
    pub fn abort(&mut self, code: u32) -> Option<Post> {
        if self.failed.is_some() || self.abort_sent {
            return None;
        }
        self.abort_sent = true;
        let wr_id = self.wr(Work::Abort { code });
        Some(Post { wr_id, work: Work::Abort { code }, imm: Imm::Abort { code }.encode(), local_offset: 0, remote_offset: 0, len: 0 })
    }

    fn post_control(&mut self, id: usize) -> Post {
        let value = self.ctl_value[id];
        let wr_id = self.wr(Work::Control { id, value });
        self.ctl_inflight[id] = true;
        self.ctl_posted[id] = value;
        Post { wr_id, work: Work::Control { id, value }, imm: Imm::control(id as u8, value).encode(), local_offset: 0, remote_offset: 0, len: 0 }
    }

    /// Raise control counter `id` we keep in the peer's block to `value` (monotonic; coalesces
    /// while an earlier update is in flight).
    pub fn control(&mut self, id: usize, value: u64) -> Result<Option<Post>, Refused> {
        if let Some(why) = &self.failed {
            return Err(Refused::Failed(why.clone()));
        }
        if id >= CONTROLS || value <= self.ctl_value[id] {
            return Ok(None);
        }
        self.ctl_value[id] = value;
        if self.ctl_inflight[id] {
            return Ok(None);
        }
        Ok(Some(self.post_control(id)))
    }

    /// A completion from the send CQ.
    pub fn on_send(&mut self, c: Completion) -> Output {
        let mut out = Output::default();
        let Some(work) = self.outstanding.remove(&c.wr_id) else {
            out.events.extend(self.fail(format!("send completion for unknown work request {}", c.wr_id)));
            return out;
        };
        if matches!(work, Work::Data { .. }) {
            self.data_outstanding -= 1;
        }
        if c.status != 0 {
            if self.failed.is_some() {
                self.stats.flushed += 1;
            } else {
                let what = match work {
                    Work::Data { stream, seq } => format!("writing chunk {seq} of stream {stream}"),
                    Work::Ack { stream, acked } => format!("returning credit {acked} of stream {stream}"),
                    Work::Abort { .. } => "sending an abort".into(),
                    Work::Control { id, value } => format!("raising control {id} to {value}"),
                };
                out.events.extend(self.fail(format!("{what}: {} (status {})", wc_status_name(c.status), c.status)));
            }
            return out;
        }
        if let Work::Ack { stream, .. } = work {
            self.ack_inflight[stream] = false;
            if self.failed.is_none() && self.rx_acked[stream] > self.ack_posted[stream] {
                out.posts.push(self.post_ack(stream));
            }
        }
        if let Work::Control { id, .. } = work {
            self.ctl_inflight[id] = false;
            if self.failed.is_none() && self.ctl_value[id] > self.ctl_posted[id] {
                out.posts.push(self.post_control(id));
            }
        }
        out
    }

    /// A completion from the receive CQ.
    pub fn on_recv(&mut self, c: Completion) -> Output {
        let mut out = Output::default();
        self.recv_posted = self.recv_posted.saturating_sub(1);
        self.stats.recv_completions += 1;
        if c.status != 0 {
            if self.failed.is_some() {
                self.stats.flushed += 1;
            } else {
                out.events.extend(self.fail(format!("receive: {} (status {})", wc_status_name(c.status), c.status)));
            }
            return out;
        }
        if self.failed.is_some() {
            return out;
        }
        // Re-post on every completion, so the receive queue stays full.
        out.reposts = 1;
        self.recv_posted += 1;
        if c.opcode != OPCODE_RECV_RDMA_WITH_IMM {
            out.events.extend(self.fail(format!("unexpected receive opcode {}", c.opcode)));
            return out;
        }
        let imm = match Imm::decode(c.imm) {
            Ok(i) => i,
            Err(e) => {
                out.events.extend(self.fail(e.to_string()));
                return out;
            }
        };
        let stream_ok = |s: u8, n: usize| (s as usize) < n;
        match imm {
            Imm::Data { stream, seq_low } if stream_ok(stream, self.cfg.streams) => {
                let s = stream as usize;
                let seq = widen(self.rx_delivered[s], seq_low);
                let len = c.byte_len as u64;
                if len < HEADER as u64 || len > HEADER as u64 + self.cfg.slot_bytes {
                    out.events.extend(self.fail(format!("chunk {seq} of stream {s} has {len} bytes, outside [{HEADER}, {}]", HEADER as u64 + self.cfg.slot_bytes)));
                } else if seq < self.rx_delivered[s] || self.rx_arrived[s].contains(&seq) {
                    out.events.extend(self.fail(format!("chunk {seq} of stream {s} arrived twice")));
                } else if seq >= self.rx_acked[s] + self.cfg.slots {
                    out.events.extend(self.fail(format!(
                        "chunk {seq} of stream {s} arrived without credit (consumed {}, {} slots)",
                        self.rx_acked[s], self.cfg.slots
                    )));
                } else {
                    self.rx_arrived[s].insert(seq);
                    let before = self.rx_delivered[s];
                    while self.rx_arrived[s].remove(&self.rx_delivered[s]) {
                        self.rx_delivered[s] += 1;
                    }
                    if self.rx_delivered[s] > before {
                        out.events.push(Event::Delivered { stream: s, data_seq: self.rx_delivered[s] });
                    }
                }
            }
            Imm::Ack { stream, acked_low } if stream_ok(stream, self.cfg.streams) => {
                let s = stream as usize;
                let acked = widen(self.tx_acked[s], acked_low);
                if c.byte_len != 0 {
                    out.events.extend(self.fail(format!("credit return with {} payload bytes", c.byte_len)));
                } else if acked > self.tx_next[s] {
                    out.events.extend(self.fail(format!("peer returned credit {acked} for stream {s} but only {} chunks were sent", self.tx_next[s])));
                } else if acked > self.tx_acked[s] {
                    self.tx_acked[s] = acked;
                    out.events.push(Event::Credit { stream: s, acked });
                }
                // An older (reordered) credit return is harmless: credits are cumulative.
            }
            Imm::Abort { code } => out.events.push(Event::Abort { code }),
            Imm::Control { id, value_low } => {
                let id = id as usize;
                if c.byte_len != 0 || id >= CONTROLS {
                    out.events.extend(self.fail(format!("malformed control update (id {id}, {} bytes)", c.byte_len)));
                } else {
                    let value = widen_forward(self.rx_control[id], value_low, CONTROL_BITS);
                    if value > self.rx_control[id] {
                        self.rx_control[id] = value;
                        out.events.push(Event::Control { id, value });
                    }
                }
            }
            Imm::Data { stream, .. } | Imm::Ack { stream, .. } => {
                out.events.extend(self.fail(format!("immediate names stream {stream}")));
            }
        }
        out
    }
}

static QP_CREATED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Queue pairs this process created, over all peers and groups.
pub fn qp_created_total() -> u64 {
    QP_CREATED_TOTAL.load(Ordering::SeqCst)
}

pub(crate) fn note_qp_created() {
    QP_CREATED_TOTAL.fetch_add(1, Ordering::SeqCst);
}

/// Per-peer connection slots with creation counters: a rejoin recreates one peer's entry and
/// leaves every other one (and its counter) untouched (docs/design.md invariant 8). Used by the
/// simulated tests with [`Endpoint`]s and by [`super::RdmaLink`] through the same counters.
#[derive(Debug)]
pub struct QpTable<T> {
    entries: Vec<Option<T>>,
    created: Vec<u64>,
}

impl<T> QpTable<T> {
    pub fn new(peers: usize) -> QpTable<T> {
        QpTable { entries: (0..peers).map(|_| None).collect(), created: vec![0; peers] }
    }

    /// Installs a freshly created connection for `peer` (replacing any old one).
    pub fn install(&mut self, peer: usize, t: T) -> Option<T> {
        self.created[peer] += 1;
        note_qp_created();
        self.entries[peer].replace(t)
    }

    /// Recreates only `peer`'s connection: `make` receives the old one (for its counters).
    pub fn recreate(&mut self, peer: usize, make: impl FnOnce(Option<T>) -> T) {
        let old = self.entries[peer].take();
        let new = make(old);
        self.install(peer, new);
    }

    pub fn get(&self, peer: usize) -> Option<&T> {
        self.entries.get(peer).and_then(|e| e.as_ref())
    }

    pub fn get_mut(&mut self, peer: usize) -> Option<&mut T> {
        self.entries.get_mut(peer).and_then(|e| e.as_mut())
    }

    /// Queue pairs created towards `peer` so far.
    pub fn qp_created(&self, peer: usize) -> u64 {
        self.created[peer]
    }
}
