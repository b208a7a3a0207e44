//! Engine tests with every rank as a thread of this process (same transports, no launcher):
//! credit wrap-around, multi-chunk pipelines, mismatches, point-to-point in both directions,
//! destroy, and that the chunk loop never reconnects (docs/design.md invariant 7).
use chorus_backend::{ChorusError, DType, Options, ProcessGroup, ReduceOp};
use chorus_bootstrap::{MemStore, Store};
use std::sync::Arc;
use std::time::Duration;

fn run<F>(n: usize, name: &str, host_of: fn(usize) -> String, f: F) -> Vec<chorus_backend::Result<()>>
where
    F: Fn(ProcessGroup) -> chorus_backend::Result<()> + Send + Sync + 'static,
{
    quiet_heartbeats();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let store = store.clone();
            let f = f.clone();
            let opts = Options::default().with_timeout(Duration::from_secs(60)).with_name(name).with_host_id(host_of(r));
            std::thread::spawn(move || {
                let pg = ProcessGroup::new(store, r, n, opts)?;
                f(pg)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
}

/// Every rank here is a thread of one process on a 2-core machine running other tests at the
/// same time: give heartbeats a long timeout so a starved heartbeat thread is not taken for a
/// hung rank (the heartbeat path has its own multi-process tests).
fn quiet_heartbeats() {
    std::env::set_var("CHORUS_HEARTBEAT_TIMEOUT_MS", "30000");
}

fn same_host(_: usize) -> String {
    "host".into()
}
fn own_host(r: usize) -> String {
    format!("host{r}")
}
fn two_per_host(r: usize) -> String {
    format!("host{}", r / 2)
}
fn three_per_host(r: usize) -> String {
    format!("host{}", r / 3)
}
/// Ranks dealt round-robin over three hosts: a host's ranks are not consecutive.
fn dealt_over_three(r: usize) -> String {
    format!("host{}", r % 3)
}

#[test]
fn many_chunks_wrap_the_slot_ring_over_shm_and_tcp() {
    for (name, host) in [("wrap-shm", same_host as fn(usize) -> String), ("wrap-tcp", own_host)] {
        let results = run(3, name, host, |pg| {
            // 5 MB > 4 slots x chunk: sequence numbers pass the ring size many times.
            let n = pg.size() as i64;
            for round in 0..3i64 {
                let mut v: Vec<i64> = (0..655_360).map(|i| i + pg.rank() as i64 + round).collect();
                pg.all_reduce(&mut v, ReduceOp::Sum)?;
                for (i, x) in v.iter().enumerate() {
                    let want = n * (i as i64 + round) + n * (n - 1) / 2;
                    assert_eq!(*x, want, "element {i} round {round}");
                }
            }
            Ok(())
        });
        assert!(results.iter().all(|r| r.is_ok()), "{name}: {results:?}");
    }
}

#[test]
fn chunk_loop_never_reconnects() {
    let results = run(2, "bracket", same_host, |pg| {
        let before = pg.connection_count();
        let mut v = vec![1.0f32; 3 << 20];
        for _ in 0..4 {
            pg.all_reduce(&mut v, ReduceOp::Sum)?;
            pg.broadcast(&mut v, 1)?;
        }
        assert_eq!(pg.connection_count(), before, "a multi-chunk collective opened connections");
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

/// Every rank fails the collective; one told by a peer names that peer (issue 23: rank 1 was told
/// "see rank 1's error"), over shared memory and TCP.
#[test]
fn mismatched_counts_fail_on_every_rank() {
    for (name, host) in [("mismatch-shm", same_host as fn(usize) -> String), ("mismatch-tcp", own_host)] {
        let results = run(3, name, host, |pg| {
            for round in 0..5 {
                let len = if pg.rank() == round % 3 { 10 } else { 12 };
                let mut v = vec![1.0f32; len];
                match pg.all_reduce(&mut v, ReduceOp::Sum) {
                    Err(ChorusError::Mismatch { rank, peer, .. }) => assert!(rank == pg.rank() && peer != rank, "rank {}: {rank} vs {peer}", pg.rank()),
                    Err(ChorusError::PeerReportedMismatch { peer, .. }) => assert_ne!(peer, pg.rank(), "told by itself"),
                    other => panic!("rank {} expected a mismatch error, got {other:?}", pg.rank()),
                }
                // The group stays usable.
                let mut ok = vec![1i32; 3];
                pg.all_reduce(&mut ok, ReduceOp::Sum)?;
                assert_eq!(ok, vec![3; 3]);
            }
            Ok(())
        });
        assert!(results.iter().all(|r| r.is_ok()), "{name}: {results:?}");
    }
}

#[test]
fn mismatched_broadcast_fails_at_the_root_too() {
    let results = run(2, "mismatch-bcast", same_host, |pg| {
        let mut v = vec![0u8; if pg.rank() == 0 { 100 } else { 101 }];
        assert!(pg.broadcast(&mut v, 0).is_err(), "rank {} accepted a mismatched broadcast", pg.rank());
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

/// Issue 20, first part: a receive from a rank that left fails alone, naming the peer and saying
/// the group goes on; point-to-point traffic with the other peers in the same batch completes.
#[test]
fn a_receive_from_a_departed_rank_fails_alone() {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Rank 0's epoch once its failed receive completed (0: not yet).
    static AGREED_EPOCH: AtomicU64 = AtomicU64::new(0);
    // Rank 1 checked its view (monotonic 0 -> 1): rank 0 keeps its group (and its membership
    // replica, one of the majority rank 1 reads the decision through) until then.
    static RANK1_CHECKED: AtomicU64 = AtomicU64::new(0);
    // Over TCP, where the departed rank's closed sockets say so at once (threads of one process share
    // a pid, so over shared memory only its silence would, after the heartbeat timeout).
    for (name, host) in [("p2p-gone-tcp", own_host as fn(usize) -> String)] {
        let results = run(3, name, host, |pg| {
            pg.barrier()?;
            match pg.rank() {
                2 => drop(pg),
                0 => {
                    let from_gone = pg.recv_async(vec![0u8; 64], 2, 1);
                    let to_one = pg.send_async(vec![7u8; 64], 1, 2);
                    let from_one = pg.recv_async(vec![0u8; 64], 1, 3);
                    to_one.wait()?;
                    assert_eq!(from_one.wait()?, vec![9u8; 64]);
                    // The error names the peer, the report says who failed, the buffer comes back.
                    match from_gone.outcome() {
                        Err(chorus_backend::OpError { error: e @ ChorusError::PeerFailed { peer: 2, .. }, info, buffers }) => {
                            assert!(e.to_string().contains("goes on"), "{e}");
                            assert_eq!(info.failed, vec![2]);
                            assert_eq!(buffers, Some(vec![0u8; 64]));
                        }
                        other => panic!("a receive from the departed rank 2 gave {other:?}"),
                    }
                    // The view dropped rank 2 by the time the failure completed, with no
                    // collective run: the same agreement (a failure round) as for collectives.
                    assert_eq!(pg.active_ranks(), vec![0, 1]);
                    AGREED_EPOCH.store(pg.current_epoch(), Ordering::SeqCst);
                    let deadline = std::time::Instant::now() + Duration::from_secs(60);
                    while RANK1_CHECKED.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                _ => {
                    assert_eq!(pg.recv_async(vec![0u8; 64], 0, 2).wait()?, vec![7u8; 64]);
                    pg.send_async(vec![9u8; 64], 0, 3).wait()?;
                    // Rank 1, between collectives all along, has the same view at the same epoch.
                    let deadline = std::time::Instant::now() + Duration::from_secs(30);
                    while AGREED_EPOCH.load(Ordering::SeqCst) == 0 || pg.current_epoch() < AGREED_EPOCH.load(Ordering::SeqCst) {
                        assert!(std::time::Instant::now() < deadline, "rank 1 never saw rank 2 leave: {:?}", pg.active_ranks());
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    assert_eq!((pg.active_ranks(), pg.current_epoch()), (vec![0, 1], AGREED_EPOCH.load(Ordering::SeqCst)));
                    RANK1_CHECKED.store(1, Ordering::SeqCst);
                }
            }
            Ok(())
        });
        assert!(results.iter().all(|r| r.is_ok()), "{name}: {results:?}");
    }
}

#[test]
fn sends_in_both_directions_at_once_do_not_deadlock() {
    for (name, host) in [("p2p-shm", same_host as fn(usize) -> String), ("p2p-tcp", own_host)] {
        let results = run(2, name, host, |pg| {
            let peer = 1 - pg.rank();
            // Larger than every slot ring, posted before either side receives.
            let out: Vec<u32> = (0..1_000_000).map(|i| i * 2 + pg.rank() as u32).collect();
            let s1 = pg.send_async(out.clone(), peer, 7);
            let s2 = pg.send_async(vec![pg.rank() as u32; 3], peer, 9);
            let r2 = pg.recv_async(vec![0u32; 3], peer, 9);
            let r1 = pg.recv_async(vec![0u32; 1_000_000], peer, 7);
            s1.wait()?;
            s2.wait()?;
            assert_eq!(r2.wait()?, vec![peer as u32; 3]);
            let got = r1.wait()?;
            assert!(got.iter().enumerate().all(|(i, &x)| x == i as u32 * 2 + peer as u32));
            Ok(())
        });
        assert!(results.iter().all(|r| r.is_ok()), "{name}: {results:?}");
    }
}

/// Many asynchronous collectives in flight, issued by one thread and waited for by two others
/// (latest first, so each waiter runs queued ones itself), with blocking calls issued among them:
/// every rank runs them in the same order (a different order would mismatch sizes or sums) and
/// every result is right.
#[test]
fn async_ops_waited_from_two_threads_stay_ordered() {
    let results = run(2, "helpers", same_host, |pg| {
        let (n, me) = (pg.size() as i64, pg.rank() as i64);
        let (tx, rx): (Vec<_>, Vec<_>) = (0..2).map(|_| std::sync::mpsc::channel::<Vec<(i64, chorus_backend::Work<Vec<i64>>)>>()).unzip();
        let waiters: Vec<_> = rx
            .into_iter()
            .map(|rx| {
                std::thread::spawn(move || {
                    for mut batch in rx {
                        while let Some((k, w)) = batch.pop() {
                            let got = w.wait().expect("async all_reduce");
                            let want = n * k * 10 + n * (n - 1) / 2;
                            assert_eq!(got.len() as i64, 1 + k % 7, "op {k}");
                            assert!(got.iter().all(|&x| x == want), "op {k}: {got:?} (want {want})");
                        }
                    }
                })
            })
            .collect();
        let mut k = 0i64;
        for round in 0..30 {
            let mut batches = [Vec::new(), Vec::new()];
            for _ in 0..10 {
                let buf = vec![k * 10 + me; 1 + (k % 7) as usize];
                batches[(k % 2) as usize].push((k, pg.all_reduce_async_raw(buf, DType::I64, ReduceOp::Sum)));
                k += 1;
            }
            for (t, b) in tx.iter().zip(batches) {
                t.send(b).unwrap();
            }
            // A blocking call among them runs after every one issued before it.
            let mut v = [round + me];
            pg.all_reduce(&mut v, ReduceOp::Max)?;
            assert_eq!(v[0], round + n - 1);
        }
        drop(tx);
        for w in waiters {
            w.join().expect("waiter thread");
        }
        assert_eq!(pg.ops_completed(), 30 * 11);
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

#[test]
fn destroyed_group_refuses_work() {
    let results = run(2, "destroy", same_host, |pg| {
        pg.barrier()?;
        pg.destroy();
        let mut v = [1i32; 4];
        assert!(matches!(pg.all_reduce(&mut v, ReduceOp::Sum), Err(ChorusError::Destroyed)));
        assert!(matches!(pg.all_reduce_async_raw(vec![1i32], DType::I32, ReduceOp::Sum).wait(), Err(ChorusError::Destroyed)));
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

#[test]
fn float_sums_are_bitwise_identical_on_every_rank() {
    for (name, n, host) in [("bitwise", 3, same_host as fn(usize) -> String), ("bitwise-2x2", 4, two_per_host)] {
        float_sums_are_bitwise_identical(name, n, host);
    }
}

fn float_sums_are_bitwise_identical(name: &str, n: usize, host: fn(usize) -> String) {
    let results = run(n, name, host, |pg| {
        let mut v: Vec<f32> = (0..1000).map(|i| 0.1f32 * (i as f32 + 1.0) / (pg.rank() as f32 + 3.0)).collect();
        pg.all_reduce(&mut v, ReduceOp::Sum)?;
        let mut all = vec![0f32; 1000 * pg.size()];
        pg.all_gather(&v, &mut all)?;
        for r in 1..pg.size() {
            assert!(all[..1000].iter().zip(&all[r * 1000..(r + 1) * 1000]).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

#[test]
fn a_live_excluded_rank_rejoins_in_place() {
    use std::sync::atomic::{AtomicBool, Ordering};
    quiet_heartbeats();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let rejoined = Arc::new(AtomicBool::new(false));
    let opts = |r: usize| Options::default().with_timeout(Duration::from_secs(20)).with_name("excluded").with_host_id(same_host(r));
    let hs: Vec<_> = (0..3)
        .map(|r| {
            let (store, rejoined, o) = (store.clone(), rejoined.clone(), opts(r));
            std::thread::spawn(move || -> chorus_backend::Result<()> {
                let mut pg = ProcessGroup::new(store.clone(), r, 3, o.clone())?;
                if r == 0 {
                    // A partition-like exclusion of a rank that is alive.
                    pg.deactivate_ranks(&[2])?;
                }
                let mut after_rejoin = 0;
                loop {
                    let mut v = vec![1i64 + r as i64; 64];
                    match pg.all_reduce(&mut v, ReduceOp::Sum) {
                        Ok(info) => {
                            let want: i64 = info.contributors.iter().map(|&c| 1 + c as i64).sum();
                            assert!(v.iter().all(|&x| x == want), "rank {r}: {v:?} over {:?}", info.contributors);
                            if info.contributors.len() == 3 && rejoined.load(Ordering::SeqCst) {
                                after_rejoin += 1;
                                if after_rejoin == 50 {
                                    return Ok(());
                                }
                            }
                        }
                        Err(ChorusError::Excluded { .. }) if r == 2 => {
                            // Still alive: leave and come back in place as a replacement.
                            drop(pg);
                            pg = ProcessGroup::join(store.clone(), 2, 3, o.clone())?;
                            rejoined.store(true, Ordering::SeqCst);
                        }
                        Err(e) => return Err(e),
                    }
                }
            })
        })
        .collect();
    let results: Vec<_> = hs.into_iter().map(|h| h.join().expect("rank thread")).collect();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

/// Issue 23: a replacement learns where the survivors are in their loop from the marks they
/// publish (`mark`, `resume_point`), not from collective counts. Steps of three collectives
/// (all_reduce, all_gather, all_reduce), every rank contributing the label `step * 10 + index`:
/// a replacement that resumed at the wrong place would contribute another label and every
/// result check below would fail. Rank 2 is excluded in the middle of step 5, rejoins, and
/// resumes wherever the survivors admit it, mid-step or not.
#[test]
fn a_replacement_resumes_at_the_survivors_mark() {
    const PER_STEP: u64 = 3;
    quiet_heartbeats();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let opts = |r: usize| Options::default().with_timeout(Duration::from_secs(30)).with_name("marks").with_host_id(same_host(r));
    let hs: Vec<_> = (0..3)
        .map(|r| {
            let (store, o) = (store.clone(), opts(r));
            std::thread::spawn(move || -> chorus_backend::Result<Option<chorus_backend::ResumePoint>> {
                let mut pg = ProcessGroup::new(store.clone(), r, 3, o.clone())?;
                let (mut step, mut index, mut resumed) = (0u64, 0u64, None);
                // Steps from 6 on in which the last collective had every rank: the same count on
                // every rank (the replacement's included), so all stop together.
                let mut full_steps = 0;
                while full_steps < 4 {
                    if index == 0 {
                        pg.mark(step);
                    }
                    if (step, index, r) == (5, 1, 0) {
                        pg.deactivate_ranks(&[2])?;
                    }
                    let label = (step * 10 + index) as i64;
                    let outcome = if index == 1 {
                        let mut out = vec![-1i64; 3 * 4];
                        pg.all_gather(&[label; 4], &mut out).map(|info| {
                            for q in 0..3 {
                                let want = if info.contributors.contains(&q) { label } else { 0 };
                                assert!(out[q * 4..(q + 1) * 4].iter().all(|&x| x == want), "rank {r} step {step}.{index}: block {q} {out:?}");
                            }
                            info
                        })
                    } else {
                        let mut v = vec![label; 9];
                        pg.all_reduce(&mut v, ReduceOp::Sum).map(|info| {
                            let want = label * info.contributors.len() as i64;
                            assert!(v.iter().all(|&x| x == want), "rank {r} step {step}.{index}: {v:?} over {:?}", info.contributors);
                            info
                        })
                    };
                    match outcome {
                        Ok(info) => {
                            if index == PER_STEP - 1 && step >= 6 && info.contributors.len() == 3 {
                                full_steps += 1;
                            }
                        }
                        Err(ChorusError::Excluded { .. }) if r == 2 && resumed.is_none() => {
                            drop(pg);
                            pg = ProcessGroup::join(store.clone(), 2, 3, o.clone())?;
                            let at = pg.resume_point().expect("the survivors marked their steps");
                            resumed = Some(at);
                            // The survivors' last collective was the done-th of step `marker`.
                            (step, index) = (at.marker, at.done);
                            if index < PER_STEP {
                                continue;
                            }
                            (step, index) = (step + 1, 0);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    index += 1;
                    if index == PER_STEP {
                        (step, index) = (step + 1, 0);
                    }
                }
                Ok(resumed)
            })
        })
        .collect();
    let results: Vec<_> = hs.into_iter().map(|h| h.join().expect("rank thread")).collect();
    let at = match &results[..] {
        [Ok(None), Ok(None), Ok(Some(at))] => *at,
        other => panic!("{other:?}"),
    };
    eprintln!("replacement resumed at {at:?}");
    assert!(at.marker >= 5 && (1..=PER_STEP).contains(&at.done), "{at:?}");
}

/// The host path's layout for a view without rank 2: all_gather and gather leave zeros in its block
/// (whatever the output held), the members' blocks at their group ranks. (The GPU kernel path,
/// `DeviceGroup`, does the same; `python/tests/_ft_worker.py` checks it on a GPU.)
#[test]
fn gathers_in_a_shrunk_view_zero_the_inactive_ranks_blocks() {
    quiet_heartbeats();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let opts = |r: usize| Options::default().with_timeout(Duration::from_secs(20)).with_name("shrunk-gather").with_host_id(same_host(r));
    let hs: Vec<_> = (0..3)
        .map(|r| {
            let (store, o) = (store.clone(), opts(r));
            std::thread::spawn(move || -> chorus_backend::Result<()> {
                let pg = ProcessGroup::new(store.clone(), r, 3, o)?;
                let result = check_shrunk_gathers(&pg, r);
                // The members stay until rank 2 has seen its exclusion: a rank whose peers all
                // destroyed the group meanwhile would find their membership replicas gone.
                store.set(&format!("test/finished/{r}"), b"1")?;
                let _ = store.wait(&["test/finished/0", "test/finished/1", "test/finished/2"], Duration::from_secs(30));
                result
            })
        })
        .collect();
    let results: Vec<_> = hs.into_iter().map(|h| h.join().expect("rank thread")).collect();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

fn check_shrunk_gathers(pg: &ProcessGroup, r: usize) -> chorus_backend::Result<()> {
    if r == 0 {
        pg.deactivate_ranks(&[2])?;
    }
    loop {
        let mut v = [1i64];
        match pg.all_reduce(&mut v, ReduceOp::Sum) {
            Ok(info) if info.contributors == [0, 1] => break,
            Ok(_) => {}
            Err(ChorusError::Excluded { .. }) if r == 2 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let mine: Vec<i64> = (0..5).map(|i| 100 * r as i64 + i).collect();
    let want: Vec<i64> = (0..3).flat_map(|q| (0..5).map(move |i| if q == 2 { 0 } else { 100 * q as i64 + i })).collect();
    let mut all = vec![-1i64; 15];
    pg.all_gather(&mine, &mut all)?;
    assert_eq!(all, want, "all_gather on rank {r}");
    let mut at_root = vec![-1i64; if r == 1 { 15 } else { 0 }];
    pg.gather(&mine, &mut at_root, 1)?;
    if r == 1 {
        assert_eq!(at_root, want, "gather on the root");
    }
    Ok(())
}

/// Every collective that has a two-level schedule (`algo::hier`), on fake hosts (`with_host_id`:
/// shared memory within a host, TCP across), at 0, 1 and 7 elements and at more than a chunk
/// (the multi-host chunk is 256 KiB), against values every rank computes for itself.
#[test]
fn two_level_collectives_on_fake_hosts() {
    for (name, n, host) in [("hier-2x2", 4, two_per_host as fn(usize) -> String), ("hier-2x3", 6, three_per_host), ("hier-3x2-dealt", 6, dealt_over_three)] {
        let results = run(n, name, host, move |pg| check_collectives(&pg, &(0..n).collect::<Vec<_>>()));
        assert!(results.iter().all(|r| r.is_ok()), "{name}: {results:?}");
    }
}

/// Ranks excluded from 3 hosts x 2: one (the hosts then hold 2, 1 and 2 active ranks, still
/// two-level) or one per host (one rank per host: the flat algorithms again).
#[test]
fn two_level_collectives_over_uneven_hosts_after_an_exclusion() {
    for (name, excluded) in [("hier-uneven", &[3][..]), ("hier-one-per-host", &[1, 2, 5])] {
        quiet_heartbeats();
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let members: Vec<usize> = (0..6).filter(|r| !excluded.contains(r)).collect();
        let hs: Vec<_> = (0..6)
            .map(|r| {
                let (store, members, excluded) = (store.clone(), members.clone(), excluded.to_vec());
                let opts = Options::default().with_timeout(Duration::from_secs(60)).with_name(name).with_host_id(two_per_host(r));
                std::thread::spawn(move || -> chorus_backend::Result<()> {
                    let pg = ProcessGroup::new(store.clone(), r, 6, opts)?;
                    if r == 0 {
                        pg.deactivate_ranks(&excluded)?;
                    }
                    let result = loop {
                        let mut v = [1i64];
                        match pg.all_reduce(&mut v, ReduceOp::Sum) {
                            Ok(info) if info.contributors == members => break check_collectives(&pg, &members),
                            Ok(_) => {}
                            Err(ChorusError::Excluded { .. }) if excluded.contains(&r) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    };
                    // Members stay until every rank is done (see gathers_in_a_shrunk_view...).
                    store.set(&format!("test/finished/{r}"), b"1")?;
                    let keys: Vec<String> = (0..6).map(|q| format!("test/finished/{q}")).collect();
                    let _ = store.wait(&keys.iter().map(String::as_str).collect::<Vec<_>>(), Duration::from_secs(60));
                    result
                })
            })
            .collect();
        let results: Vec<_> = hs.into_iter().map(|h| h.join().expect("rank thread")).collect();
        assert!(results.iter().all(|r| r.is_ok()), "{name}: {results:?}");
    }
}

/// all_reduce, broadcast (two roots), reduce, all_gather and reduce_scatter among the active
/// `members`, checked element by element.
fn check_collectives(pg: &ProcessGroup, members: &[usize]) -> chorus_backend::Result<()> {
    let (n, r) = (pg.size(), pg.rank());
    let value = |q: usize, i: usize| (i as i64 * 7 + q as i64 * 1001) % 9973 - 4000;
    let sum = |i: usize| members.iter().map(|&q| value(q, i)).sum::<i64>();
    let last = *members.last().expect("members");
    for count in [0usize, 1, 7, 70_001] {
        let mine: Vec<i64> = (0..count).map(|i| value(r, i)).collect();
        let mut v = mine.clone();
        pg.all_reduce(&mut v, ReduceOp::Sum)?;
        assert!(v.iter().enumerate().all(|(i, &x)| x == sum(i)), "all_reduce of {count} on rank {r}");
        for root in [members[1], last] {
            let mut b = if r == root { mine.clone() } else { vec![0; count] };
            pg.broadcast(&mut b, root)?;
            assert!(b.iter().enumerate().all(|(i, &x)| x == value(root, i)), "broadcast of {count} from {root} on rank {r}");
        }
        let mut red = mine.clone();
        pg.reduce(&mut red, last, ReduceOp::Sum)?;
        assert!(r != last || red.iter().enumerate().all(|(i, &x)| x == sum(i)), "reduce of {count} to {last}");
        assert!(r == last || red == mine, "reduce of {count} changed rank {r}'s input");
        let mut all = vec![-1i64; n * count];
        pg.all_gather(&mine, &mut all)?;
        for q in 0..n {
            let block = &all[q * count..(q + 1) * count];
            let active = members.contains(&q);
            assert!(block.iter().enumerate().all(|(i, &x)| x == if active { value(q, i) } else { 0 }), "all_gather of {count}: block {q} on rank {r}");
        }
        let input: Vec<i64> = (0..n * count).map(|i| value(r, i)).collect();
        let mut out = vec![-1i64; count];
        pg.reduce_scatter(&input, &mut out, ReduceOp::Sum)?;
        assert!(out.iter().enumerate().all(|(i, &x)| x == sum(r * count + i)), "reduce_scatter of {count} on rank {r}");
    }
    Ok(())
}

mod rejoin_cases;

#[test]
fn successive_replacements_link_to_each_other_over_shm() {
    let reports = rejoin_cases::successive_replacements("succ-shm", same_host);
    assert!(reports.iter().all(|(t, _)| t.iter().all(|t| *t == "shm" || *t == "self")), "{reports:?}");
}

#[test]
fn successive_replacements_link_to_each_other_over_tcp() {
    let reports = rejoin_cases::successive_replacements("succ-tcp", own_host);
    assert!(reports.iter().all(|(t, _)| t.iter().all(|t| *t == "tcp" || *t == "self")), "{reports:?}");
}

/// docs/design.md invariant 3 on the GPU path: a group's GPU communicator keeps its host control block (abort
/// word, error mirror) in page-locked host memory, and the group registers it as `Location::Host`. A
/// one-rank group needs no peer process, so this runs in-process on one GPU.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the GPU machine"]
fn gpu_control_block_is_registered_as_host_memory() {
    if let Err(e) = chorus_kernels::cuda::open_device(0) {
        // scripts/gpu-tests sets CHORUS_REQUIRE_GPU=1: there, no usable device is a failure.
        if std::env::var("CHORUS_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("gpu_control_block_is_registered_as_host_memory: CHORUS_REQUIRE_GPU is set but there is no usable CUDA device: {e}");
        }
        println!("gpu_control_block_is_registered_as_host_memory: not run: {e}");
        return;
    }
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let pg = ProcessGroup::new(store, 0, 1, Options::default().with_name("gpu-ctl")).unwrap();
    let comm = pg.device_comm(0).unwrap();
    let (ctl, len) = comm.control_region();
    assert_eq!(len, chorus_kernels::cuda::CONTROL_BYTES);
    assert_eq!(pg.registered_location(ctl), Some(chorus_backend::memory::Location::Host));
    assert_eq!(pg.registered_location(ctl + len - 1), Some(chorus_backend::memory::Location::Host));
    // The same communicator is reused while the view stays; its status is healthy until aborted.
    assert!(Arc::ptr_eq(&comm, &pg.device_comm(0).unwrap()));
    pg.device_status(0).unwrap();
    comm.abort(7);
    let e = pg.device_status(0).unwrap_err();
    assert!(e.to_string().contains("aborted by the host"), "{e}");
    assert!(pg.device_comm(0).is_err(), "an aborted communicator of the current view must be refused");
}

/// Issue 22: four ranks over sockets (a dropped group closes its sockets, which its peers see as
/// a death), in-place inputs of 4 KiB above a 1 KiB save limit. Each rank runs `f` with its group.
fn issue22<F>(name: &str, f: F) -> Vec<chorus_backend::Result<Vec<String>>>
where
    F: Fn(&ProcessGroup) -> chorus_backend::Result<Vec<String>> + Send + Sync + 'static,
{
    quiet_heartbeats();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let f = Arc::new(f);
    let hs: Vec<_> = (0..4)
        .map(|r| {
            let (store, f) = (store.clone(), f.clone());
            let o = Options::default()
                .with_timeout(Duration::from_secs(30))
                .with_name(name)
                .with_host_id(own_host(r))
                .with_ft_save_limit(1024);
            std::thread::spawn(move || {
                let pg = ProcessGroup::new(store.clone(), r, 4, o.clone())?;
                let lines = f(&pg);
                if r == 1 {
                    // Rank 1 dies: its sockets close.
                    drop(pg);
                } else {
                    leave_together(&store, &o.name, r, &[0, 2, 3]);
                }
                lines
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

/// Waits until every rank of `ranks` got here (through the store) before this one drops its group:
/// a socket closed with unread data is reset, which can discard the last commit signals a slower
/// peer still has to read.
fn leave_together(store: &Arc<dyn Store>, name: &str, rank: usize, ranks: &[usize]) {
    if !ranks.contains(&rank) {
        return;
    }
    store.set(&format!("{name}/left/{rank}"), b"1").expect("store");
    let keys: Vec<String> = ranks.iter().map(|r| format!("{name}/left/{r}")).collect();
    let refs: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    store.wait(&refs, Duration::from_secs(60)).expect("every rank finished");
}

/// An unsaved in-place all_reduce of 4 KiB, checked against its contributors: `(digest line)`.
fn checked_all_reduce(pg: &ProcessGroup, iter: i64) -> chorus_backend::Result<String> {
    let mut v: Vec<i64> = (0..512).map(|i| i + 1000 * (pg.rank() as i64 + 1) + iter).collect();
    pg.all_reduce(&mut v, ReduceOp::Sum)?;
    let info = pg.last_op_info();
    for (i, x) in v.iter().enumerate() {
        let want: i64 = info.contributors.iter().map(|&c| i as i64 + 1000 * (c as i64 + 1) + iter).sum();
        assert_eq!(*x, want, "rank {} element {i} over {:?}", pg.rank(), info.contributors);
    }
    Ok(format!("all_reduce {} over {:?} failed {:?}", v[0], info.contributors, info.failed))
}

/// A 16-byte all_gather, checked: `(line)`.
fn checked_all_gather(pg: &ProcessGroup, iter: i64) -> chorus_backend::Result<String> {
    let mine = [pg.rank() as i64 + iter, 7];
    let mut all = vec![-1i64; 2 * pg.size()];
    pg.all_gather(&mine, &mut all)?;
    let info = pg.last_op_info();
    for q in 0..pg.size() {
        let want = if info.contributors.contains(&q) { [q as i64 + iter, 7] } else { [0, 0] };
        assert_eq!(all[2 * q..2 * q + 2], want, "rank {} block {q} over {:?}", pg.rank(), info.contributors);
    }
    Ok(format!("all_gather over {:?} failed {:?}", info.contributors, info.failed))
}

/// Issue 22, first case: every rank finished an unsaved in-place all_reduce; rank 3 computes
/// (between collectives, its heartbeat thread answers for it) while rank 1 dies and ranks 0 and 2
/// wait in a small all_gather (rank 2 waits for rank 1 first, so they find it dead before rank 3
/// comes). The all_gather is re-run over the survivors — rank 3 runs it when it gets there — with
/// the same result everywhere: the previous collective's unsaved input has nothing to do with it.
/// (It used to fail on ranks 0 and 2 with `NotRecoverable`, and rank 3 then ran it alone: a
/// desync.)
#[test]
fn a_failure_while_a_rank_computes_between_collectives_does_not_desync() {
    let results = issue22("i22-between", |pg| {
        let mut lines = vec![checked_all_reduce(pg, 0)?];
        match pg.rank() {
            1 => return Ok(Vec::new()),
            3 => std::thread::sleep(Duration::from_millis(600)),
            _ => {}
        }
        lines.push(checked_all_gather(pg, 1)?);
        lines.push(checked_all_reduce(pg, 2)?);
        Ok(lines)
    });
    let lines = survivors_lines(results, 1);
    assert_eq!(lines[1], lines[0]);
    assert_eq!(lines[2], lines[0]);
    assert_eq!(lines[0][1], "all_gather over [0, 2, 3] failed [1]", "{lines:?}");
}

/// Each rank's lines but the dead rank's, panicking on a survivor's error.
fn survivors_lines(results: Vec<chorus_backend::Result<Vec<String>>>, dead: usize) -> Vec<Vec<String>> {
    results.into_iter().enumerate().filter(|(r, _)| *r != dead).map(|(r, l)| l.unwrap_or_else(|e| panic!("rank {r}: {e}"))).collect()
}

/// The other outcome of that case: ranks 0 and 2 are inside an unsaved in-place all_reduce when
/// rank 1 dies, rank 3 is still computing. The all_reduce cannot be re-run, so it fails with the
/// same `NotRecoverable` error on every survivor — on rank 3 too, when it issues it — and the
/// group goes on in step.
#[test]
fn an_unrecoverable_collective_fails_alike_on_a_rank_that_had_not_started_it() {
    let results = issue22("i22-unsaved", |pg| {
        let mut lines = vec![checked_all_gather(pg, 0)?];
        match pg.rank() {
            1 => return Ok(Vec::new()),
            3 => std::thread::sleep(Duration::from_millis(600)),
            _ => {}
        }
        match checked_all_reduce(pg, 1) {
            Err(ChorusError::NotRecoverable { failed, epoch, .. }) => lines.push(format!("not recoverable failed {failed:?} epoch {epoch}")),
            other => lines.push(format!("{other:?}")),
        }
        lines.push(checked_all_gather(pg, 2)?);
        lines.push(checked_all_reduce(pg, 3)?);
        Ok(lines)
    });
    let lines = survivors_lines(results, 1);
    assert_eq!(lines[1], lines[0]);
    assert_eq!(lines[2], lines[0]);
    assert_eq!(lines[0][1], "not recoverable failed [1] epoch 1", "{lines:?}");
    assert_eq!(lines[0][2], "all_gather over [0, 2, 3] failed []", "{lines:?}");
}

/// Issue 22, second case: a replacement (here rank 2, excluded while alive, rejoining in place)
/// asks to be admitted while rank 0 waits inside an unsaved in-place all_reduce for rank 1, which
/// computes between collectives. Nothing fails: the survivors admit it between two collectives,
/// and its first collective is the survivors' next one. (The join used to interrupt the
/// all_reduce: `NotRecoverable` with nobody failed, and a replacement one collective behind.)
#[test]
fn a_replacement_joining_during_an_unsaved_all_reduce_fails_nothing() {
    for (name, host) in [("i22-join-shm", same_host as fn(usize) -> String), ("i22-join-tcp", own_host)] {
        quiet_heartbeats();
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let hs: Vec<_> = (0..3)
            .map(|r| {
                let store = store.clone();
                let o = Options::default().with_timeout(Duration::from_secs(30)).with_name(name).with_host_id(host(r)).with_ft_save_limit(1024);
                std::thread::spawn(move || -> chorus_backend::Result<Vec<String>> {
                    // The group lives until every rank is done (`leave_together`), errors included.
                    let mut pg = Some(ProcessGroup::new(store.clone(), r, 3, o.clone())?);
                    let mut run = || -> chorus_backend::Result<Vec<String>> {
                        if r == 0 {
                            pg.as_ref().unwrap().deactivate_ranks(&[2])?;
                        }
                        // Small all_gathers until the view excludes rank 2 (the exclusion interrupts
                        // what is in flight: those re-run); rank 2 comes back in place.
                        loop {
                            let g = pg.as_ref().unwrap();
                            match checked_all_gather(g, g.ops_completed() as i64) {
                                Ok(_) if g.last_op_info().contributors == [0, 1] => break,
                                Ok(_) => {}
                                Err(ChorusError::Excluded { .. }) if r == 2 => {
                                    // Still alive: leave and come back in place as a replacement.
                                    pg = None;
                                    pg = Some(ProcessGroup::join(store.clone(), 2, 3, o.clone())?);
                                    break;
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        // Unsaved all_reduces; rank 1 computes before each, so rank 0 mostly waits
                        // inside one when the replacement asks to be admitted.
                        let (mut lines, mut full) = (Vec::new(), 0);
                        while full < 10 {
                            let g = pg.as_ref().unwrap();
                            let iter = g.ops_completed() as i64;
                            if r == 1 {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            match checked_all_reduce(g, iter) {
                                Ok(l) => {
                                    // Full collectives since the replacement came in.
                                    full = if g.last_op_info().contributors.len() == 3 { full + 1 } else { 0 };
                                    lines.push(format!("{iter} {l}"));
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        Ok(lines)
                    };
                    let lines = run();
                    leave_together(&store, &o.name, r, &[0, 1, 2]);
                    lines
                })
            })
            .collect();
        let lines: Vec<Vec<String>> = hs
            .into_iter()
            .enumerate()
            .map(|(r, h)| h.join().expect("rank thread").unwrap_or_else(|e| panic!("{name}: rank {r}: {e}")))
            .collect();
        assert_eq!(lines[1], lines[0], "{name}");
        // The replacement's collectives are the survivors' last ones, over all three ranks.
        assert_eq!(lines[2].len(), 10, "{name}: {:?}", lines[2]);
        assert_eq!(lines[0][lines[0].len() - 10..], lines[2][..], "{name}");
    }
}

/// The host path of the Rust API's device-pointer collectives (issue 21): with
/// `DevicePath::Host`, `device_ops` copies GPU buffers to the host on the caller's stream, runs the
/// host collective and copies the results back. Two ranks as threads sharing GPU 0.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the GPU machine"]
fn gpu_device_ops_on_the_host_path() {
    use chorus_backend::{DeviceOps, DevicePath, DeviceRoute, HostReason};
    use chorus_kernels::cuda::cudarc::driver::DevicePtr;
    use chorus_kernels::cuda::RawStream;
    if let Err(e) = chorus_kernels::cuda::open_device(0) {
        if std::env::var("CHORUS_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("gpu_device_ops_on_the_host_path: CHORUS_REQUIRE_GPU is set but there is no usable CUDA device: {e}");
        }
        println!("gpu_device_ops_on_the_host_path: not run: {e}");
        return;
    }
    quiet_heartbeats();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let ranks: Vec<_> = (0..2usize)
        .map(|r| {
            let store = store.clone();
            std::thread::spawn(move || {
                let opts = Options::default().with_name("gpu-host-path").with_host_id("host").with_device_path(DevicePath::Host);
                let pg = ProcessGroup::new(store, r, 2, opts).unwrap();
                assert_eq!(pg.device_route(), DeviceRoute::Host(HostReason::Requested));
                let ops = pg.device_ops(0).unwrap();
                assert!(matches!(ops, DeviceOps::Host(_)));
                let ctx = chorus_kernels::cuda::open_device(0).unwrap();
                let stream = ctx.new_stream().unwrap();
                let raw = RawStream(stream.cu_stream() as usize);
                let mine: Vec<f32> = (0..1000).map(|i| (i + 1000 * r) as f32).collect();
                let bytes: Vec<u8> = mine.iter().flat_map(|x| x.to_ne_bytes()).collect();
                let buf = stream.clone_htod(&bytes).unwrap();
                let gathered = stream.alloc_zeros::<u8>(2 * bytes.len()).unwrap();
                let (p, _sync) = buf.device_ptr(&stream);
                let (g, _sync_g) = gathered.device_ptr(&stream);
                // SAFETY: `buf` holds 1000 f32 and `gathered` 2 x 1000 on device 0, alive until the
                // calls return (they copy back on `stream` before returning).
                unsafe {
                    ops.all_gather(raw, p, g, bytes.len()).unwrap();
                    ops.all_reduce(raw, DType::F32, ReduceOp::Sum, p, p, 1000).unwrap();
                }
                drop((_sync, _sync_g));
                let sum = stream.clone_dtoh(&buf).unwrap();
                let all = stream.clone_dtoh(&gathered).unwrap();
                let f = |b: &[u8], i: usize| f32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
                for i in [0usize, 1, 999] {
                    assert_eq!(f(&sum, i), (2 * i + 1000) as f32, "all_reduce element {i}");
                    assert_eq!(f(&all, i), i as f32, "all_gather rank 0 element {i}");
                    assert_eq!(f(&all, 1000 + i), (i + 1000) as f32, "all_gather rank 1 element {i}");
                }
            })
        })
        .collect();
    for h in ranks {
        h.join().expect("rank thread");
    }
}
