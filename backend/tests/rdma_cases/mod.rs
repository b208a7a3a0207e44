//! RDMA link cases shared by `rdma_hw` (a real or Soft-RoCE device) and `rdma_softverbs` (the
//! softverbs test provider). Every rank is a thread of this process; the ranks claim different
//! host ids so the pairs use RDMA (loopback through the one device).
#![allow(dead_code)]
use chorus_backend::transport::signals::{SignalBlock, Stream};
use chorus_backend::transport::rdma::{self, RdmaLink, Resume};
use chorus_backend::transport::{shm, Link, Payload, PeerInfo, RingGeometry, SlotMeta};
use chorus_backend::Options;
use chorus_bootstrap::{MemStore, Store};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

pub fn peer(rank: usize) -> PeerInfo {
    PeerInfo { rank, host_id: format!("hw-host-{rank}"), pid: std::process::id(), tcp_addr: String::new(), shm_signals: String::new(), shm_data: String::new(), shm_signals_fd: -1, shm_data_fd: -1, settings: Options::default().agreed() }
}

/// Runs `f(rank, links, signals)` on `n` rank threads after RDMA setup between all of them. The
/// links live until every rank is done (as in a group): a rank that finished first must not tear
/// down a queue pair its peer still waits on (its last credit return may still be in flight).
pub fn with_ranks<F>(n: usize, uid: &str, f: F)
where
    F: Fn(usize, &mut HashMap<usize, RdmaLink>, SignalBlock, Arc<dyn Store>) + Send + Sync + 'static,
{
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let f = Arc::new(f);
    let done = Arc::new(Barrier::new(n));
    let uid = uid.to_string();
    let hs: Vec<_> = (0..n)
        .map(|r| {
            let (store, f, uid, done) = (store.clone(), f.clone(), uid.clone(), done.clone());
            std::thread::spawn(move || {
                let peers: Vec<PeerInfo> = (0..n).map(peer).collect();
                let sig = format!("chorus-rdmahw-{}-{uid}-r{r}-sig", std::process::id());
                let data = format!("chorus-rdmahw-{}-{uid}-r{r}-data", std::process::id());
                let geo = RingGeometry { slots: 4, slot_bytes: peers[r].settings.rdma_chunk };
                let local = shm::create_local(&sig, &data, n, r, RingGeometry { slots: 4, slot_bytes: peers[r].settings.shm_chunk }).expect("segments");
                chorus_backend::sys::shm::Segment::unlink(&sig);
                chorus_backend::sys::shm::Segment::unlink(&data);
                let mut links = rdma::setup(&*store, &uid, &peers[r], &peers, &local.signals, geo, |_| false, Instant::now() + Duration::from_secs(30), &chorus_backend::Options::default().rdma).expect("rdma setup");
                assert_eq!(links.len(), n - 1, "every pair connected over rdma");
                f(r, &mut links, local.signals.clone(), store);
                done.wait();
            })
        })
        .collect();
    for h in hs {
        h.join().expect("rank thread");
    }
}

pub fn wait(mut cond: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

pub fn exchange(me: usize, to: &RdmaLink, from: &RdmaLink, signals: &SignalBlock, chunks: u64, base: u64) {
    let slots = to.geometry().slots as u64;
    let (mut sent, mut got) = (base, base);
    while sent < base + chunks || got < base + chunks {
        if sent < base + chunks && signals.ack_seq(to.peer(), Stream::Collective).load(Ordering::Acquire) + slots > sent {
            let meta = SlotMeta { op_seq: sent, len: 4096, ..Default::default() };
            to.put(Stream::Collective, sent, &meta, Payload::Fill(&mut |b| b.fill((sent as u8) ^ me as u8))).expect("put");
            sent += 1;
        }
        if got < base + chunks && signals.data_seq(from.peer(), Stream::Collective).load(Ordering::Acquire) > got {
            let m = from.inbound(Stream::Collective).meta(got);
            assert_eq!((m.op_seq, m.len), (got, 4096));
            let p = from.inbound(Stream::Collective).payload(got, 4096);
            assert!(p.iter().all(|b| *b == (got as u8) ^ from.peer() as u8), "payload of chunk {got}");
            from.ack(Stream::Collective, got + 1).expect("ack");
            got += 1;
        }
        from.check_alive().expect("alive");
    }
    wait(|| signals.ack_seq(to.peer(), Stream::Collective).load(Ordering::Acquire) >= base + chunks, "final credits");
}


/// 200 chunks each way between two ranks, credits returned, one QP per pair.
pub fn chunks_and_credits_flow_between_two_ranks() {
    println!("running on {:?}", rdma::probe(&chorus_backend::Options::default().rdma));
    with_ranks(2, "hw-flow", |r, links, signals, _| {
        let other = 1 - r;
        let l = &links[&other];
        exchange(r, l, l, &signals, 200, 0);
        assert_eq!(l.qp_created(), 1);
    });
}

/// Ranks 0 and 1 recreate their QP (as if 1 had rejoined) and continue the counters; every other
/// pair keeps its QP.
pub fn reconnect_recreates_only_the_rejoiners_qp() {
    let barrier = Arc::new(Barrier::new(3));
    with_ranks(3, "hw-rejoin", move |r, links, signals, store| {
        // Pairs in ascending peer order on every rank: no cycle of ranks waiting on each other.
        let mut order: Vec<usize> = links.keys().copied().collect();
        order.sort();
        for p in order {
            let l = &links[&p];
            exchange(r, l, l, &signals, 20, 0);
        }
        barrier.wait();
        let total = rdma::qp_created_total();
        if r < 2 {
            let l = &links[&(1 - r)];
            let resume = Resume { tx_next: vec![20, 0], tx_acked: vec![20, 0], rx_delivered: vec![20, 0], rx_acked: vec![20, 0], rx_control: vec![] };
            l.reconnect(&*store, "hw-rejoin", 1, resume, Instant::now() + Duration::from_secs(30)).expect("reconnect");
            assert_eq!(l.qp_created(), 2);
            exchange(r, l, l, &signals, 20, 20);
        }
        barrier.wait();
        for (&p, l) in links.iter() {
            let expect = if r < 2 && p < 2 { 2 } else { 1 };
            assert_eq!(l.qp_created(), expect, "rank {r} -> {p}");
        }
        assert!(rdma::qp_created_total() >= total);
    });
}

/// Rank 1 destroys its side of the pair (as a dead process's QPs vanish): rank 0's next write
/// fails, and the link reports the peer failed with the verbs status in words.
pub fn writes_to_a_vanished_peer_fail_the_link() {
    let barrier = Arc::new(Barrier::new(2));
    with_ranks(2, "hw-death", move |r, links, signals, _| {
        let other = 1 - r;
        {
            let l = &links[&other];
            exchange(r, l, l, &signals, 10, 0);
        }
        barrier.wait();
        if r == 1 {
            drop(links.remove(&0));
        }
        barrier.wait();
        if r == 0 {
            let l = &links[&1];
            let meta = SlotMeta { op_seq: 10, len: 64, ..Default::default() };
            // The put itself may succeed (the error arrives as a completion) or fail at once.
            let _ = l.put(Stream::Collective, 10, &meta, Payload::Fill(&mut |b| b.fill(1)));
            wait(|| l.check_alive().is_err(), "the link to notice the vanished peer");
            let e = l.check_alive().unwrap_err().to_string();
            assert!(e.contains("retry") || e.contains("flushed"), "unexpected failure text: {e}");
            assert!(l.put(Stream::Collective, 11, &meta, Payload::Fill(&mut |b| b.fill(1))).is_err(), "a failed link refuses writes");
        }
    });
}
