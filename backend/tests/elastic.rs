//! Issue 20, growing: a group created with empty slots (`Options::initial_members`), filled later
//! by processes that join them (`ProcessGroup::join`), shrunk and grown again. Every rank is a
//! thread of this process; the multi-process version, with kills, is in the root `tests/`.
use chorus_backend::{ChorusError, Options, ProcessGroup, ReduceOp};
use chorus_bootstrap::{MemStore, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SLOTS: usize = 4;
/// Collectives every rank runs over all four slots before the subgroup, and again after the
/// last rank rejoined.
const FULL_OPS: usize = 20;

fn same_host(_: usize) -> String {
    "host".into()
}
fn own_host(r: usize) -> String {
    format!("host{r}")
}

/// One all_reduce of `1 + rank` over whoever is active: checks the sum against the contributors
/// it reports and returns them.
fn step(pg: &ProcessGroup) -> chorus_backend::Result<Vec<usize>> {
    let r = pg.rank();
    let mut v = vec![1i64 + r as i64; 333];
    let info = pg.all_reduce(&mut v, ReduceOp::Sum)?;
    let want: i64 = info.contributors.iter().map(|&c| 1 + c as i64).sum();
    assert!(v.iter().all(|&x| x == want), "rank {r}: {:?} over {:?}", &v[..3], info.contributors);
    Ok(info.contributors)
}

/// What each rank saw: the contributor count of every collective it ran, in order.
type Seen = Vec<usize>;

fn grow_shrink_grow(name: &str, host_of: fn(usize) -> String) -> Vec<chorus_backend::Result<Seen>> {
    std::env::set_var("CHORUS_HEARTBEAT_TIMEOUT_MS", "30000");
    chorus_backend::logging::install_stderr_logger();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    // Monotonic: how many joiners have become members (rank 3 starts after rank 2).
    let joined = Arc::new(AtomicU64::new(0));
    // Monotonic: members that created the group (joiners find it after that).
    let created = Arc::new(AtomicU64::new(0));
    let name = name.to_string();
    let hs: Vec<_> = (0..SLOTS)
        .map(|r| {
            let (store, joined, created) = (store.clone(), joined.clone(), created.clone());
            let o = Options::default().with_timeout(Duration::from_secs(60)).with_name(&name).with_host_id(host_of(r)).with_initial_members(&[0, 1]);
            std::thread::spawn(move || -> chorus_backend::Result<Seen> {
                let mut seen = Vec::new();
                let mut pg = match r {
                    0 | 1 => {
                        let pg = ProcessGroup::new(store.clone(), r, SLOTS, o.clone())?;
                        created.fetch_add(1, Ordering::SeqCst);
                        pg
                    }
                    _ => {
                        // A slot nobody created cannot be created now: it can only be joined.
                        let refused = ProcessGroup::new(store.clone(), r, SLOTS, o.clone().with_name("other")).err().expect("an empty slot is not created");
                        assert!(refused.to_string().contains("empty slot"), "{refused}");
                        while created.load(Ordering::SeqCst) < 2 || joined.load(Ordering::SeqCst) < (r - 2) as u64 {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        let pg = ProcessGroup::join(store.clone(), r, SLOTS, o.clone())?;
                        joined.fetch_add(1, Ordering::SeqCst);
                        pg
                    }
                };
                assert_eq!(pg.size(), SLOTS, "the world is the slots");
                if r < 2 {
                    assert_eq!(pg.active_ranks(), vec![0, 1], "rank {r} starts with the members present");
                }
                // Grow to four: members keep running collectives, and joiners are admitted
                // between two of them, the same two on every member.
                let mut full = 0;
                // Not a timing check: a bound on the wait for the joiners, so a failure cannot hang.
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while full < FULL_OPS {
                    assert!(std::time::Instant::now() < deadline, "rank {r}: the joiners never came: {:?}", pg.active_ranks());
                    let c = step(&pg)?;
                    full += (c.len() == SLOTS) as usize;
                    seen.push(c.len());
                }
                // (Not `active_ranks()`: rank 0's deactivation below may already have reached
                // this rank's view, which changes between collectives when a round is decided.)
                assert_eq!(seen.last(), Some(&SLOTS), "rank {r} ended the growth over all four");
                // A subgroup made now includes the ranks that joined.
                let sub = pg.new_group(&[1, 2, 3])?;
                if let Some(sub) = &sub {
                    let mut v = vec![pg.rank() as i64; 9];
                    sub.all_reduce(&mut v, ReduceOp::Sum)?;
                    assert!(v.iter().all(|&x| x == 6), "subgroup of ranks 1-3: {v:?}");
                }
                // Shrink (rank 3 deactivated through the API) and grow again (it rejoins in place).
                if r == 0 {
                    pg.deactivate_ranks(&[3])?;
                }
                let mut full = 0;
                // Rank 3: excluded and back; the others: ran a collective without it.
                let mut shrunk = false;
                while full < FULL_OPS {
                    match step(&pg) {
                        Ok(c) => {
                            shrunk |= c.len() < SLOTS;
                            full += (shrunk && c.len() == SLOTS) as usize;
                            seen.push(c.len());
                        }
                        Err(ChorusError::Excluded { .. }) if r == 3 && !shrunk => {
                            drop(pg);
                            pg = ProcessGroup::join(store.clone(), 3, SLOTS, o.clone())?;
                            shrunk = true;
                        }
                        Err(e) => return Err(e),
                    }
                }
                drop(sub);
                Ok(seen)
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

fn check(results: &[chorus_backend::Result<Seen>]) {
    let seen: Vec<&Seen> = results.iter().map(|r| r.as_ref().expect("every rank finishes")).collect();
    // Members present from the start saw 2, then 3, then 4 contributors, never fewer after more
    // while growing; every rank saw the shrink to 3 and the growth back.
    for s in &seen[..2] {
        assert_eq!(s[0], 2, "{s:?}");
        assert!(s.contains(&3), "rank 2 joined alone first: {s:?}");
    }
    for (r, s) in seen.iter().enumerate() {
        assert!(s.iter().all(|&n| (2..=SLOTS).contains(&n)), "rank {r}: {s:?}");
    }
    // The same collectives, the same contributor counts: ranks 0 and 1 ran every one together,
    // rank 2 the ones from its admission on, and every rank the last FULL_OPS over four.
    assert_eq!(seen[0], seen[1]);
    assert_eq!(&seen[0][seen[0].len() - seen[2].len()..], &seen[2][..], "rank 2 disagrees with rank 0");
    for (r, s) in seen.iter().enumerate() {
        assert!(s[s.len() - FULL_OPS..].iter().all(|&n| n == SLOTS), "rank {r} ends over {SLOTS}: {s:?}");
    }
}

#[test]
fn a_group_grows_into_its_empty_slots_shrinks_and_grows_again_over_shm() {
    check(&grow_shrink_grow("grow-shm", same_host));
}

#[test]
fn a_group_grows_into_its_empty_slots_shrinks_and_grows_again_over_tcp() {
    check(&grow_shrink_grow("grow-tcp", own_host));
}

/// A group with empty slots leaves no store keys once every slot that was ever filled destroyed
/// it: 3 slots, ranks 0 and 1 present; once with slot 2 never filled, once with slot 2 joined.
#[test]
fn a_group_with_empty_slots_leaves_no_store_keys() {
    std::env::set_var("CHORUS_HEARTBEAT_TIMEOUT_MS", "30000");
    chorus_backend::logging::install_stderr_logger();
    for (name, fill) in [("slots-unfilled", false), ("slots-filled", true)] {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        // Monotonic: members that created the group.
        let created = Arc::new(AtomicU64::new(0));
        let ranks = if fill { 3 } else { 2 };
        let hs: Vec<_> = (0..ranks)
            .map(|r| {
                let (store, created) = (store.clone(), created.clone());
                let o = Options::default().with_timeout(Duration::from_secs(60)).with_name(name).with_host_id(same_host(r)).with_initial_members(&[0, 1]);
                std::thread::spawn(move || -> chorus_backend::Result<String> {
                    let pg = match r {
                        2 => {
                            while created.load(Ordering::SeqCst) < 2 {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            ProcessGroup::join(store, 2, 3, o)?
                        }
                        _ => {
                            let pg = ProcessGroup::new(store, r, 3, o)?;
                            created.fetch_add(1, Ordering::SeqCst);
                            pg
                        }
                    };
                    // Everyone runs collectives until 5 held every rank started (the same 5 on
                    // every rank: the joiner's first is the first over all of them).
                    let mut full = 0;
                    while full < 5 {
                        full += (step(&pg)?.len() == ranks) as usize;
                    }
                    let uid = pg.uid().to_string();
                    pg.destroy();
                    Ok(uid)
                })
            })
            .collect();
        let uids: Vec<String> = hs.into_iter().map(|h| h.join().expect("rank thread").expect("rank")).collect();
        let left = store.list_prefix(&format!("chorus/{}/", uids[0])).unwrap();
        assert!(left.is_empty(), "{name}: keys left after every filled slot destroyed the group: {left:?}");
    }
}
