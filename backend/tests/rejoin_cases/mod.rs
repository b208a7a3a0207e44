//! Group-level rejoin scenarios with every rank a thread of this process, shared by
//! `in_process` (shared memory, TCP) and `rdma_softverbs` (RDMA on the softverbs provider).
#![allow(dead_code)]
use chorus_backend::{ChorusError, Options, ProcessGroup, ReduceOp};
use chorus_bootstrap::{MemStore, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What each rank saw at the end: `(transports, link connections per peer)`.
pub type LinkReport = (Vec<&'static str>, Vec<u64>);

/// Three ranks run all_reduces; rank 0 excludes rank 2, which comes back in place as a
/// replacement; then rank 0 excludes rank 1, whose replacement must link to rank 2 — itself a
/// replacement (so the second joiner must use rank 2's new records, not its predecessor's).
/// Every result is checked against its contributors; returns each rank's final link report.
pub fn successive_replacements(name: &str, host_of: fn(usize) -> String) -> Vec<LinkReport> {
    std::env::set_var("CHORUS_HEARTBEAT_TIMEOUT_MS", "30000");
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    // Monotonic phase: 0 before any rejoin, 1 after rank 2's, 2 after rank 1's.
    let phase = Arc::new(AtomicU64::new(0));
    let name = name.to_string();
    let hs: Vec<_> = (0..3)
        .map(|r| {
            let (store, phase) = (store.clone(), phase.clone());
            let o = Options::default().with_timeout(Duration::from_secs(30)).with_name(&name).with_host_id(host_of(r));
            std::thread::spawn(move || -> chorus_backend::Result<LinkReport> {
                let mut pg = ProcessGroup::new(store.clone(), r, 3, o.clone())?;
                if r == 0 {
                    pg.deactivate_ranks(&[2])?;
                }
                let mut full_ops = [0u32; 3];
                loop {
                    let mut v = vec![1i64 + r as i64; 1000];
                    match pg.all_reduce(&mut v, ReduceOp::Sum) {
                        Ok(_) => {
                            let info = pg.last_op_info();
                            let want: i64 = info.contributors.iter().map(|&c| 1 + c as i64).sum();
                            assert!(v.iter().all(|&x| x == want), "rank {r}: {:?} over {:?}", &v[..4], info.contributors);
                            let p = phase.load(Ordering::SeqCst) as usize;
                            if info.contributors.len() == 3 && p > 0 {
                                full_ops[p] += 1;
                                if p == 1 && full_ops[1] == 20 && r == 0 {
                                    pg.deactivate_ranks(&[1])?;
                                }
                                if p == 2 && full_ops[2] == 30 {
                                    let n = pg.size();
                                    return Ok((pg.transports(), (0..n).map(|q| pg.link_connections(q)).collect()));
                                }
                            }
                        }
                        Err(ChorusError::Excluded { .. }) if r != 0 => {
                            // Alive but excluded: leave and come back in place as a replacement.
                            drop(pg);
                            pg = ProcessGroup::join(store.clone(), r, 3, o.clone())?;
                            phase.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => return Err(e),
                    }
                }
            })
        })
        .collect();
    let results: Vec<_> = hs.into_iter().map(|h| h.join().expect("rank thread")).collect();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    results.into_iter().map(|r| r.unwrap()).collect()
}

/// Rank 0 excludes rank 2 right after creating the group, so another rank may read the new view
/// from the store at its start and run the first collective under it before the recovery round
/// that decides it, then re-run it under the same epoch. Chunks carry the attempt (recovery
/// rounds applied), so the first attempt's chunk is never taken for the second's (it surfaced as
/// a mismatch in the next collective). Repeated, since the start-up race is narrow.
pub fn early_view_change(name: &str, host_of: fn(usize) -> String, repeats: usize) {
    std::env::set_var("CHORUS_HEARTBEAT_TIMEOUT_MS", "30000");
    for round in 0..repeats {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        // Counts rank 2's exit: ranks 0 and 1 keep their groups (and membership replicas) until
        // then, since an excluded rank learns of its exclusion through a majority of replicas and
        // finds none once every member destroyed its group (NoQuorum on a loaded CI run).
        let excluded_done = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..3)
            .map(|r| {
                let (store, excluded_done) = (store.clone(), excluded_done.clone());
                let o = Options::default().with_timeout(Duration::from_secs(30)).with_name(format!("{name}-{round}")).with_host_id(host_of(r));
                std::thread::spawn(move || -> chorus_backend::Result<()> {
                    let pg = ProcessGroup::new(store, r, 3, o)?;
                    if r == 0 {
                        pg.deactivate_ranks(&[2])?;
                    }
                    let mut result = Ok(());
                    for i in 0..6i64 {
                        let mut v = vec![i + r as i64; 257];
                        match pg.all_reduce(&mut v, ReduceOp::Sum) {
                            Ok(info) => {
                                let want: i64 = info.contributors.iter().map(|&c| i + c as i64).sum();
                                assert!(v.iter().all(|&x| x == want), "rank {r} op {i}: {} over {:?}", v[0], info.contributors);
                            }
                            Err(ChorusError::Excluded { .. }) if r == 2 => break,
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    if r == 2 {
                        excluded_done.fetch_add(1, Ordering::SeqCst);
                    } else {
                        let deadline = std::time::Instant::now() + Duration::from_secs(60);
                        while excluded_done.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    result
                })
            })
            .collect();
        let results: Vec<_> = hs.into_iter().map(|h| h.join().expect("rank thread")).collect();
        assert!(results.iter().all(|r| r.is_ok()), "round {round}: {results:?}");
    }
}
