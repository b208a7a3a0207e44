//! RDMA hardware tests: real queue pairs on a real (or Soft-RoCE) device. They run only when
//! `CHORUS_RDMA_TEST_DEVICE` names the device (e.g. `rxe0`, `mlx5_0`); otherwise each prints
//! "not run: CHORUS_RDMA_TEST_DEVICE unset" and returns (they claim nothing then). See
//! docs/rdma.md for setting up Soft-RoCE. Every rank is a thread of this process; the ranks
//! claim different host ids so the pairs use RDMA (loopback through the one device).
use chorus_backend::engine::signals::Stream;
use chorus_backend::transport::rdma::{self, RdmaLink, Resume};
use chorus_backend::transport::{shm, Link, PeerInfo, SlotMeta};
use chorus_bootstrap::{MemStore, Store};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn device() -> Option<String> {
    match std::env::var("CHORUS_RDMA_TEST_DEVICE") {
        Ok(d) if !d.is_empty() => {
            std::env::set_var("CHORUS_IB_HCA", format!("={d}"));
            Some(d)
        }
        _ => {
            println!("not run: CHORUS_RDMA_TEST_DEVICE unset");
            None
        }
    }
}

fn peer(rank: usize) -> PeerInfo {
    PeerInfo { rank, host_id: format!("hw-host-{rank}"), pid: std::process::id(), tcp_addr: String::new(), shm_signals: String::new(), shm_data: String::new(), shm_signals_fd: -1, shm_data_fd: -1 }
}

/// Runs `f(rank, links, signals)` on `n` rank threads after RDMA setup between all of them. The
/// links live until every rank is done (as in a group): a rank that finished first must not tear
/// down a queue pair its peer still waits on (its last credit return may still be in flight).
fn with_ranks<F>(n: usize, uid: &str, f: F)
where
    F: Fn(usize, &HashMap<usize, RdmaLink>, chorus_backend::engine::signals::SignalBlock, Arc<dyn Store>) + Send + Sync + 'static,
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
                let local = shm::create_local(&sig, &data, n, r).expect("segments");
                chorus_backend::sys::shm::Segment::unlink(&sig);
                chorus_backend::sys::shm::Segment::unlink(&data);
                let links = rdma::setup(&*store, &uid, &peers[r], &peers, &local.signals, |_| false, Instant::now() + Duration::from_secs(30)).expect("rdma setup");
                assert_eq!(links.len(), n - 1, "every pair connected over rdma");
                f(r, &links, local.signals.clone(), store);
                done.wait();
            })
        })
        .collect();
    for h in hs {
        h.join().expect("rank thread");
    }
}

fn wait(mut cond: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn exchange(me: usize, to: &RdmaLink, from: &RdmaLink, signals: &chorus_backend::engine::signals::SignalBlock, chunks: u64, base: u64) {
    let slots = to.geometry().slots as u64;
    let (mut sent, mut got) = (base, base);
    while sent < base + chunks || got < base + chunks {
        if sent < base + chunks && signals.ack_seq(to.peer(), Stream::Collective).load(Ordering::Acquire) + slots > sent {
            let meta = SlotMeta { op_seq: sent, len: 4096, ..Default::default() };
            to.put(Stream::Collective, sent, &meta, &mut |b| b.fill((sent as u8) ^ me as u8)).expect("put");
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

#[test]
#[ignore = "needs an RDMA device: set CHORUS_RDMA_TEST_DEVICE and run with --ignored (docs/rdma.md)"]
fn rdma_hw_chunks_and_credits_flow_between_two_ranks() {
    let Some(dev) = device() else { return };
    println!("running on {dev}: {:?}", rdma::probe());
    with_ranks(2, "hw-flow", |r, links, signals, _| {
        let other = 1 - r;
        let l = &links[&other];
        exchange(r, l, l, &signals, 200, 0);
        assert_eq!(l.qp_created(), 1);
    });
}

#[test]
#[ignore = "needs an RDMA device: set CHORUS_RDMA_TEST_DEVICE and run with --ignored (docs/rdma.md)"]
fn rdma_hw_reconnect_recreates_only_the_rejoiners_qp() {
    let Some(_) = device() else { return };
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
        // Ranks 0 and 1 recreate their QP (rank 1 "rejoined"); rank 2 touches nothing.
        if r < 2 {
            let l = &links[&(1 - r)];
            let resume = Resume { tx_next: vec![20, 0], tx_acked: vec![20, 0], rx_delivered: vec![20, 0], rx_acked: vec![20, 0], rx_control: vec![] };
            l.reconnect(&*store, "hw-rejoin", 1, resume, Instant::now() + Duration::from_secs(30)).expect("reconnect");
            assert_eq!(l.qp_created(), 2);
            exchange(r, l, l, &signals, 20, 20);
        }
        barrier.wait();
        for (&p, l) in links {
            let expect = if r < 2 && p < 2 { 2 } else { 1 };
            assert_eq!(l.qp_created(), expect, "rank {r} -> {p}");
        }
        assert!(rdma::qp_created_total() >= total);
    });
}
