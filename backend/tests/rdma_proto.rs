//! The rdma protocol state machine, driven in memory: two endpoints joined by a simulated RC
//! connection (every WRITE WITH IMM consumes a posted receive at the target and completes at
//! both ends), with reordered completions, error completions, dead peers and a rejoin.
use chorus_backend::transport::rdma::proto::{self, Completion, Config, Endpoint, Event, Output, Post, QpTable, Refused, Resume, Work};
use chorus_backend::transport::rdma::qp_created_total;
use std::collections::VecDeque;

const RETRY_EXC: u32 = 12;
const FLUSH: u32 = 5;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One rank's view of one connection: the endpoint plus the counters the link would publish
/// into its signal block, and the engine's own per-stream counters.
struct Side {
    ep: Endpoint,
    data_seq: [u64; 2],
    ack_seq: [u64; 2],
    sent: [u64; 2],
    consumed: [u64; 2],
    control: [u64; 3],
    aborts: Vec<u32>,
    failed: Vec<String>,
    send_cq: Vec<Completion>,
    recv_cq: Vec<Completion>,
}

impl Side {
    fn new(cfg: Config) -> Side {
        let mut ep = Endpoint::new(cfg);
        ep.initial_receives();
        Side { ep, data_seq: [0; 2], ack_seq: [0; 2], sent: [0; 2], consumed: [0; 2], control: [0; 3], aborts: vec![], failed: vec![], send_cq: vec![], recv_cq: vec![] }
    }

    fn apply(&mut self, out: Output, wire: &mut VecDeque<Post>) {
        wire.extend(out.posts);
        for e in out.events {
            match e {
                Event::Delivered { stream, data_seq } => {
                    assert!(data_seq > self.data_seq[stream], "data_seq only grows");
                    self.data_seq[stream] = data_seq;
                }
                Event::Credit { stream, acked } => self.ack_seq[stream] = self.ack_seq[stream].max(acked),
                Event::Abort { code } => self.aborts.push(code),
                Event::Control { id, value } => self.control[id] = self.control[id].max(value),
                Event::Failed { why } => self.failed.push(why),
            }
        }
    }
}

struct Sim {
    cfg: Config,
    sides: [Side; 2],
    /// In flight from side i to the other.
    wires: [VecDeque<Post>; 2],
    rng: Rng,
    reorder_cq: bool,
    rnr: u64,
    max_send_outstanding: usize,
}

impl Sim {
    fn new(seed: u64, reorder_cq: bool) -> Sim {
        let cfg = Config::for_geometry(4, 1024, 2);
        Sim { cfg, sides: [Side::new(cfg), Side::new(cfg)], wires: [VecDeque::new(), VecDeque::new()], rng: Rng(seed), reorder_cq, rnr: 0, max_send_outstanding: 0 }
    }

    /// The engine on side `i`: writes the next chunk of `stream` if it holds the credit.
    fn engine_send(&mut self, i: usize, stream: usize, limit: u64) {
        let s = &mut self.sides[i];
        let seq = s.sent[stream];
        if seq >= limit || seq >= s.ack_seq[stream] + self.cfg.slots {
            return;
        }
        match s.ep.write(stream, seq, (seq % 1000) + 1) {
            Ok(p) => {
                assert_eq!(p.remote_offset, self.cfg.slot_offset(stream, seq));
                s.sent[stream] += 1;
                self.wires[i].push_back(p);
            }
            Err(Refused::SendQueueFull) => {}
            Err(e) => panic!("engine held the credit but the write was refused: {e:?}"),
        }
        self.max_send_outstanding = self.max_send_outstanding.max(self.sides[i].ep.send_outstanding());
        assert!(self.sides[i].ep.send_outstanding() <= self.cfg.send_depth as usize, "send queue overflow");
    }

    /// The engine on side `i` consumes one arrived chunk of `stream` and returns the credit.
    fn engine_consume(&mut self, i: usize, stream: usize) {
        let s = &mut self.sides[i];
        if s.data_seq[stream] > s.consumed[stream] {
            s.consumed[stream] += 1;
            if let Ok(Some(p)) = s.ep.ack(stream, s.consumed[stream]) {
                self.wires[i].push_back(p);
            }
        }
    }

    /// The NIC delivers the oldest write from side `i` (RC: in order per QP).
    fn deliver(&mut self, i: usize) {
        let j = 1 - i;
        let Some(p) = self.wires[i].front().copied() else { return };
        if self.sides[j].ep.recv_posted() == 0 {
            self.rnr += 1; // receiver not ready: the NIC retries later
            return;
        }
        self.wires[i].pop_front();
        // The target consumed a receive WR; both ends get a completion.
        self.sides[j].recv_cq.push(Completion { wr_id: 0, status: 0, opcode: proto::OPCODE_RECV_RDMA_WITH_IMM, byte_len: p.len, imm: p.imm });
        self.sides[i].send_cq.push(Completion { wr_id: p.wr_id, status: 0, opcode: proto::OPCODE_RDMA_WRITE, byte_len: p.len, imm: 0 });
    }

    /// The poller of side `i` drains its completion queues (optionally in shuffled order).
    fn poll(&mut self, i: usize) {
        let s = &mut self.sides[i];
        let mut recv: Vec<_> = std::mem::take(&mut s.recv_cq);
        let mut send: Vec<_> = std::mem::take(&mut s.send_cq);
        if self.reorder_cq {
            for v in [&mut recv, &mut send] {
                for k in (1..v.len()).rev() {
                    v.swap(k, self.rng.below(k + 1));
                }
            }
        }
        let mut wire = VecDeque::new();
        // Interleave the two queues in random order.
        while !recv.is_empty() || !send.is_empty() {
            let take_recv = !recv.is_empty() && (send.is_empty() || self.rng.below(2) == 0);
            let out = if take_recv { s.ep.on_recv(recv.remove(0)) } else { s.ep.on_send(send.remove(0)) };
            s.apply(out, &mut wire);
        }
        self.wires[i].extend(wire);
    }

    fn run(&mut self, chunks: u64, steps: usize) {
        for _ in 0..steps {
            let i = self.rng.below(2);
            let stream = self.rng.below(2);
            match self.rng.below(5) {
                0 => self.engine_send(i, stream, chunks),
                1 => self.engine_consume(i, stream),
                2 | 3 => self.deliver(i),
                _ => self.poll(i),
            }
            if self.done(chunks) {
                break;
            }
        }
    }

    fn done(&self, chunks: u64) -> bool {
        self.sides.iter().all(|s| s.ack_seq == [chunks; 2] && s.consumed == [chunks; 2]) && self.wires.iter().all(|w| w.is_empty())
    }
}

fn run_traffic(seed: u64, reorder_cq: bool) -> Sim {
    let mut sim = Sim::new(seed, reorder_cq);
    let chunks = 500;
    sim.run(chunks, 400_000);
    assert!(sim.done(chunks), "traffic did not finish: {:?} {:?}", sim.sides[0].ack_seq, sim.sides[1].ack_seq);
    for s in &sim.sides {
        assert!(s.failed.is_empty(), "{:?}", s.failed);
        assert_eq!(s.data_seq, [chunks; 2]);
        assert_eq!(s.ep.recv_posted(), sim.cfg.recv_depth, "every consumed receive was re-posted");
    }
    sim
}

#[test]
fn two_endpoints_move_chunks_both_ways_within_their_queues() {
    for seed in 1..6 {
        let sim = run_traffic(seed * 7919, false);
        assert_eq!(sim.rnr, 0, "receive queue ran dry");
        assert!(sim.max_send_outstanding <= sim.cfg.send_depth as usize);
    }
}

#[test]
fn reordered_completions_still_deliver_in_order() {
    for seed in 1..6 {
        let sim = run_traffic(seed * 104_729, true);
        assert_eq!(sim.rnr, 0);
    }
}

fn recv(imm: u32, len: u32) -> Completion {
    Completion { wr_id: 0, status: 0, opcode: proto::OPCODE_RECV_RDMA_WITH_IMM, byte_len: len, imm }
}

#[test]
fn out_of_order_arrivals_publish_only_contiguous_data() {
    let cfg = Config::for_geometry(4, 1024, 2);
    let mut b = Endpoint::new(cfg);
    b.initial_receives();
    let imm = |seq| chorus_backend::transport::rdma::wire::Imm::data(1, seq).encode();
    let out = b.on_recv(recv(imm(1), 100));
    assert!(out.events.is_empty(), "chunk 1 before chunk 0 must not raise data_seq: {:?}", out.events);
    assert_eq!(out.reposts, 1);
    let out = b.on_recv(recv(imm(0), 100));
    assert_eq!(out.events, vec![Event::Delivered { stream: 1, data_seq: 2 }]);
    // A duplicate is a protocol violation.
    let out = b.on_recv(recv(imm(1), 100));
    assert!(matches!(&out.events[..], [Event::Failed { why }] if why.contains("twice")));
}

#[test]
fn a_write_without_credit_is_detected_by_the_receiver() {
    let cfg = Config::for_geometry(4, 1024, 2);
    let mut b = Endpoint::new(cfg);
    b.initial_receives();
    let imm = chorus_backend::transport::rdma::wire::Imm::data(0, 4).encode();
    let out = b.on_recv(recv(imm, 64));
    assert!(matches!(&out.events[..], [Event::Failed { why }] if why.contains("without credit")), "{:?}", out.events);
}

#[test]
fn the_sender_refuses_writes_without_credit_or_out_of_order() {
    let cfg = Config::for_geometry(4, 1024, 2);
    let mut a = Endpoint::new(cfg);
    for seq in 0..4 {
        a.write(0, seq, 10).unwrap();
    }
    assert!(matches!(a.write(0, 4, 10), Err(Refused::NoCredit { seq: 4, acked: 0, .. })));
    assert!(matches!(a.write(1, 3, 10), Err(Refused::OutOfOrder { expected: 0, got: 3, .. })));
    assert!(matches!(a.write(1, 0, 4096), Err(Refused::TooLong { .. })));
}

#[test]
fn credit_returns_and_controls_are_never_stuck_behind_data() {
    // A send queue just big enough for the data budget plus the reserve.
    let cfg = Config { slots: 64, slot_bytes: 64, streams: 2, send_depth: 10, recv_depth: 16 };
    let mut a = Endpoint::new(cfg);
    let mut n = 0;
    while a.write(0, n, 8).is_ok() {
        n += 1;
    }
    assert_eq!(a.write(0, n, 8), Err(Refused::SendQueueFull));
    assert_eq!(n as usize, 10 - (2 + 3 + 1));
    // Both streams' credit returns, every control and an abort still fit.
    let mut b = Endpoint::new(cfg);
    b.initial_receives();
    let _ = b; // (receiver side unused)
    assert!(a.ack(0, 1).unwrap().is_some());
    assert!(a.ack(1, 1).unwrap().is_some());
    for id in 0..3 {
        assert!(a.control(id, 5).unwrap().is_some());
    }
    assert!(a.abort(3).is_some());
}

#[test]
fn credit_returns_coalesce_while_one_is_in_flight() {
    let cfg = Config::for_geometry(4, 1024, 2);
    let mut a = Endpoint::new(cfg);
    let first = a.ack(0, 1).unwrap().expect("posted");
    assert_eq!(first.work, Work::Ack { stream: 0, acked: 1 });
    assert!(a.ack(0, 2).unwrap().is_none());
    assert!(a.ack(0, 3).unwrap().is_none());
    assert_eq!(a.stats.acks_coalesced, 2);
    let out = a.on_send(Completion { wr_id: first.wr_id, status: 0, opcode: proto::OPCODE_RDMA_WRITE, byte_len: 0, imm: 0 });
    assert_eq!(out.posts.len(), 1);
    assert_eq!(out.posts[0].work, Work::Ack { stream: 0, acked: 3 }, "the newest credit goes next");
    assert_eq!(out.posts[0].len, 0, "credit return is a zero-length write");
}

#[test]
fn an_error_completion_fails_the_link_once_and_flushes_quietly() {
    let mut sim = Sim::new(42, false);
    for _ in 0..3 {
        sim.engine_send(0, 0, 10);
    }
    // The first write is lost: the NIC reports retry-exceeded; the rest flush.
    let posts: Vec<Post> = sim.wires[0].drain(..).collect();
    let a = &mut sim.sides[0];
    let out = a.ep.on_send(Completion { wr_id: posts[0].wr_id, status: RETRY_EXC, opcode: 0, byte_len: 0, imm: 0 });
    assert!(matches!(&out.events[..], [Event::Failed { why }] if why.contains("retry")), "{:?}", out.events);
    for p in &posts[1..] {
        let out = a.ep.on_send(Completion { wr_id: p.wr_id, status: FLUSH, opcode: 0, byte_len: 0, imm: 0 });
        assert!(out.events.is_empty() && out.posts.is_empty());
    }
    let out = a.ep.on_recv(Completion { wr_id: 0, status: FLUSH, opcode: 0, byte_len: 0, imm: 0 });
    assert!(out.events.is_empty() && out.reposts == 0, "no re-post on a dead QP");
    assert_eq!(a.ep.stats.flushed, 3);
    assert!(matches!(a.ep.write(0, 3, 1), Err(Refused::Failed(_))));
    assert!(matches!(a.ep.ack(0, 1), Err(Refused::Failed(_))));
    assert!(a.ep.abort(1).is_none());
}

#[test]
fn peer_death_is_reported_as_failure_on_both_queues() {
    // The peer dies mid-stream: our outstanding write exhausts its retries (send CQ) and the QP
    // goes to error (the async event, then flushed receives).
    let mut sim = Sim::new(7, false);
    sim.run(50, 3_000);
    sim.engine_send(0, 1, 1_000);
    let dead = sim.wires[0].pop_back();
    let a = &mut sim.sides[0];
    if let Some(p) = dead {
        let out = a.ep.on_send(Completion { wr_id: p.wr_id, status: RETRY_EXC, opcode: 0, byte_len: 0, imm: 0 });
        a.apply(out, &mut VecDeque::new());
    }
    let ev = a.ep.fail("QP async event: IBV_EVENT_QP_FATAL");
    if let Some(Event::Failed { why }) = ev {
        a.failed.push(why);
    }
    assert_eq!(a.failed.len(), 1, "failure reported exactly once: {:?}", a.failed);
    assert!(a.ep.is_failed().is_some());
}

#[test]
fn aborts_and_controls_reach_the_peer() {
    let mut sim = Sim::new(99, false);
    let p = sim.sides[0].ep.control(1, 7).unwrap().unwrap();
    sim.wires[0].push_back(p);
    let p = sim.sides[0].ep.abort(3).unwrap();
    sim.wires[0].push_back(p);
    sim.deliver(0);
    sim.deliver(0);
    sim.poll(1);
    sim.poll(0);
    assert_eq!(sim.sides[1].control[1], 7);
    assert_eq!(sim.sides[1].aborts, vec![3]);
    assert!(sim.sides[0].ep.abort(3).is_none(), "one abort per connection");
}

#[test]
fn rejoin_recreates_only_the_rejoiners_queue_pair() {
    let cfg = Config::for_geometry(4, 1024, 2);
    let before = qp_created_total();
    // Rank 0's connections to ranks 1 and 2.
    let mut table: QpTable<Endpoint> = QpTable::new(3);
    table.install(1, Endpoint::new(cfg));
    table.install(2, Endpoint::new(cfg));
    for seq in 0..3 {
        table.get_mut(1).unwrap().write(0, seq, 8).unwrap();
        table.get_mut(2).unwrap().write(0, seq, 8).unwrap();
    }
    let healthy_writes = table.get(2).unwrap().stats.writes;
    // Rank 1 dies: its QP errors out.
    assert!(table.get_mut(1).unwrap().fail("retry exceeded").is_some());
    // Rank 1 rejoins: only its QP is recreated, continuing from the agreed counters.
    table.recreate(1, |old| {
        let old = old.expect("had one");
        Endpoint::resume(cfg, Resume { tx_next: vec![3, 0], tx_acked: vec![3, 0], rx_delivered: vec![0, 0], rx_acked: vec![0, 0], rx_control: vec![] })
            .tap(|e| assert!(old.is_failed().is_some() && e.is_failed().is_none()))
    });
    assert_eq!(table.qp_created(1), 2);
    assert_eq!(table.qp_created(2), 1, "the healthy peer's QP was not touched");
    assert_eq!(table.get(2).unwrap().stats.writes, healthy_writes);
    assert!(table.get(2).unwrap().is_failed().is_none());
    assert!(qp_created_total() >= before + 3);
    // The new QP carries on with sequence 3 (counters never reset).
    let p = table.get_mut(1).unwrap().write(0, 3, 8).unwrap();
    assert_eq!(p.remote_offset, cfg.slot_offset(0, 3));
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&Self)) -> Self {
        f(&self);
        self
    }
}
impl Tap for Endpoint {}
