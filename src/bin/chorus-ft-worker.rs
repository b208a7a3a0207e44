//! Fault-tolerance trial worker: loops collectives and prints, per iteration, a digest of its
//! result with the contributors and failed ranks it was told about, so the test can check that
//! every survivor returned identical results over the same contributors. The test kills ranks.
//!
//! Usage: chorus-ft-worker OP MAX_ITERS ELEMS [AFTER]
//! (OP: all_reduce | all_gather | all_to_all | broadcast | mixed | train). With AFTER, the loop stops AFTER
//! collectives after the first one that reported a failed rank (all survivors see it at the same
//! collective, so they stop together).
//!
//! `train` is a data-parallel training step as an application writes it: two gradient buckets
//! all-reduced in place (ELEMS i64, and a quarter more: at and above `CHORUS_FT_SAVE_LIMIT` when
//! ELEMS * 8 is the limit), each followed by a 16-byte all_gather of metrics, and compute (a
//! sleep) before every collective; in each step one rank computes longer (`CHORUS_FT_SLOW_US`,
//! default 2000 us) and the next one 3/4 as long (others 100-400 us), so the others often wait
//! for them inside the next collective while they are between collectives.
use chorus::{Options, ProcessGroup, ReduceOp};
use std::io::Write;

fn value(rank: usize, iter: usize, i: usize) -> i64 {
    ((rank as i64 + 1) * 1_000_003 + iter as i64 * 7919 + i as i64) % 1_000_000_007
}

fn digest(v: &[i64]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for x in v {
        h ^= *x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn main() {
    // CHORUS_LOG: this program has no subscriber of its own.
    chorus::logging::install_stderr_logger();
    // CHORUS_FT_TIMES=1: wall-clock marks on stderr for the fault-tolerance benchmark.
    let times = std::env::var("CHORUS_FT_TIMES").is_ok_and(|v| v == "1");
    if times {
        eprintln!("mark start {}", unix_ns());
    }
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).cloned().unwrap_or_else(|| "all_reduce".into());
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let elems: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let after: Option<usize> = args.get(4).and_then(|s| s.parse().ok());
    // "failure": stop AFTER collectives after any membership change; "rejoin": only after the
    // group grew again (survivors keep running until a replacement is in); "epoch:E": after the
    // first collective computed under membership epoch E or later (several changes in a row).
    let until = args.get(5).cloned().unwrap_or_else(|| "failure".into());
    let until_epoch: Option<u64> = until.strip_prefix("epoch:").and_then(|e| e.parse().ok());
    // "members:0,2,3": after the first collective whose contributors are exactly these (a group
    // that grows and shrinks through several changes, ending there).
    let until_members: Option<Vec<usize>> = until.strip_prefix("members:").map(|m| m.split(',').filter_map(|r| r.trim().parse().ok()).collect());
    let mut stop_at = iters;
    let mut prev_contributors: Option<Vec<usize>> = None;
    let pg = ProcessGroup::from_env(Options::default()).unwrap_or_else(|e| {
        eprintln!("group creation failed: {e}");
        std::process::exit(2)
    });
    let me = pg.rank();
    let n = pg.size();
    // Where a replacement can find the group if the store's host dies (CHORUS_JOIN_VIA; with
    // CHORUS_REPLICA_DIR the library also leaves it there).
    if let Some(addr) = pg.replica_address() {
        eprintln!("replica {addr}");
    }
    // Members as every survivor knows them at the same collective: from the reports of completed
    // collectives (identical on every survivor), not from this rank's current view, which can
    // lag or lead by a collective between two ranks.
    // (A replacement starts from the survivors' side: itself is not a member until a collective says so.)
    let mut members: Vec<usize> = pg.active_ranks().into_iter().filter(|&m| pg.ops_completed() == 0 || m != me).collect();

    if times {
        eprintln!("mark ready {}", unix_ns());
    }
    let out = std::io::stdout();
    // Each iteration issues one collective, marked with the iteration's number: a replacement
    // (CHORUS_JOIN=1) resumes after the survivors' last one.
    let mut iter = match pg.resume_point() {
        Some(p) => {
            assert_eq!(p.done, 1, "rank {me}: an iteration issues one collective, the resume point says {p:?}");
            p.marker as usize + 1
        }
        None => 0,
    };
    assert_eq!(iter as u64, pg.ops_completed(), "rank {me}: the survivors' mark and their collective count disagree");
    let slow_us: u64 = std::env::var("CHORUS_FT_SLOW_US").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    while iter < stop_at {
        pg.mark(iter as u64);
        let (which, elems) = match op.as_str() {
            "mixed" => (["all_reduce", "all_gather", "all_to_all", "broadcast"][iter % 4], elems),
            "train" => {
                // Backward (or the optimizer) between collectives. Each step one rank is slow and
                // the next one nearly as slow (they rotate), so when the others find a slow rank
                // dead, another is often still between collectives.
                let slow = (iter / 4) % n;
                let us = if me == slow {
                    slow_us
                } else if me == (slow + 1) % n {
                    slow_us * 3 / 4
                } else {
                    100 + (value(me, iter, 0) % 300) as u64
                };
                std::thread::sleep(std::time::Duration::from_micros(us));
                [("all_reduce", elems), ("all_gather", 2), ("all_reduce", elems + elems / 4), ("all_gather", 2)][iter % 4]
            }
            o => (o, elems),
        };
        let result: Vec<i64>;
        let info;
        match which {
            "all_reduce" => {
                let mut v: Vec<i64> = (0..elems).map(|i| value(me, iter, i)).collect();
                match pg.all_reduce(&mut v, ReduceOp::Sum) {
                    Ok(report) => info = report,
                    Err(chorus::ChorusError::NotRecoverable { failed, epoch, .. }) => {
                        // Input too large to save (CHORUS_FT_SAVE_LIMIT) and not every survivor
                        // had the result: every survivor gets this same error.
                        println!("iter {iter} op all_reduce not recoverable failed {failed:?}");
                        // A removal (never a growth): it ends the loop as the other reports do.
                        let stop = match until_epoch {
                            Some(e) => epoch >= e,
                            None => until != "rejoin" && until_members.is_none(),
                        };
                        if let (Some(a), true) = (after, stop) {
                            if stop_at == iters || until_epoch.is_none() {
                                stop_at = iter + 1 + a;
                            }
                        }
                        members.retain(|m| !failed.contains(m));
                        prev_contributors = Some(members.clone());
                        iter += 1;
                        continue;
                    }
                    Err(e) => {
                        eprintln!("rank {me} iter {iter}: all_reduce failed: {e}");
                        std::process::exit(3);
                    }
                }
                for (i, x) in v.iter().enumerate() {
                    let want: i64 = info.contributors.iter().map(|&r| value(r, iter, i)).sum();
                    assert_eq!(*x, want, "rank {me} iter {iter} element {i}: not the sum over contributors {:?}", info.contributors);
                }
                result = v;
            }
            "all_gather" => {
                let input: Vec<i64> = (0..elems).map(|i| value(me, iter, i)).collect();
                let mut v = vec![-1i64; elems * n];
                // The blocking call returns its own report (who contributed, who failed).
                info = pg.all_gather(&input, &mut v).unwrap_or_else(|e| {
                    eprintln!("rank {me} iter {iter}: all_gather failed: {e}");
                    std::process::exit(3)
                });
                for r in 0..n {
                    for i in 0..elems {
                        let want = if info.contributors.contains(&r) { value(r, iter, i) } else { 0 };
                        assert_eq!(v[r * elems + i], want, "rank {me} iter {iter} block {r}");
                    }
                }
                result = v;
            }
            "all_to_all" => {
                let input: Vec<i64> = (0..elems * n).map(|i| value(me, iter, i)).collect();
                let mut v = vec![-1i64; elems * n];
                // The blocking call returns its own report (who contributed, who failed).
                info = pg.all_to_all(&input, &mut v).unwrap_or_else(|e| {
                    eprintln!("rank {me} iter {iter}: all_to_all failed: {e}");
                    std::process::exit(3)
                });
                for r in &info.contributors {
                    for i in 0..elems {
                        assert_eq!(v[r * elems + i], value(*r, iter, me * elems + i), "rank {me} iter {iter} block from {r}");
                    }
                }
                // Blocks of non-contributors are not part of the result.
                result = info.contributors.iter().flat_map(|r| v[r * elems..(r + 1) * elems].to_vec()).collect();
            }
            "broadcast" => {
                let root = members.first().copied().unwrap_or(0);
                let mut v: Vec<i64> = if me == root { (0..elems).map(|i| value(root, iter, i)).collect() } else { vec![0; elems] };
                match pg.broadcast(&mut v, root) {
                    Ok(report) => info = report,
                    Err(chorus::ChorusError::RootInactive { root, .. }) => {
                        // The root died mid-broadcast before every survivor had its data: every
                        // survivor gets this same error.
                        println!("iter {iter} op broadcast root {root} failed");
                        members.retain(|&m| m != root);
                        iter += 1;
                        continue;
                    }
                    Err(e) => {
                        eprintln!("rank {me} iter {iter}: broadcast failed: {e}");
                        std::process::exit(3);
                    }
                }
                assert!(v.iter().enumerate().all(|(i, x)| *x == value(root, iter, i)), "rank {me} iter {iter}: broadcast from {root} wrong");
                result = v;
            }
            other => panic!("unknown op {other}"),
        }
        let line = if which == "all_to_all" {
            // all_to_all results differ per rank by design: report only the contributor set.
            format!("iter {iter} op {which} contributors {:?} failed {:?}\n", info.contributors, info.failed)
        } else {
            format!("iter {iter} op {which} digest {:016x} contributors {:?} failed {:?}\n", digest(&result), info.contributors, info.failed)
        };
        let mut o = out.lock();
        let _ = o.write_all(line.as_bytes());
        let _ = o.flush();
        if times {
            eprintln!("mark iter {iter} {} failed {:?} contributors {}", unix_ns(), info.failed, info.contributors.len());
        }
        // Stop AFTER collectives after the last membership change (a failure or a rejoin):
        // every member sees each change at the same collective.
        if let (Some(a), Some(m)) = (after, &until_members) {
            if info.contributors == *m && stop_at == iters {
                stop_at = iter + 1 + a;
            }
        } else if let (Some(a), Some(e)) = (after, until_epoch) {
            if info.epoch >= e && stop_at == iters {
                stop_at = iter + 1 + a;
            }
        } else if let Some(a) = after {
            let grew = prev_contributors.as_ref().is_some_and(|p| p.len() < info.contributors.len()) || (prev_contributors.is_none() && iter > 0);
            let changed = prev_contributors.as_ref().is_some_and(|p| *p != info.contributors) || grew;
            if (until == "rejoin" && grew) || (until != "rejoin" && (!info.failed.is_empty() || changed)) {
                stop_at = iter + 1 + a;
            }
        }
        prev_contributors = Some(info.contributors.clone());
        members = info.contributors.iter().copied().filter(|c| !info.failed.contains(c)).collect();
        iter += 1;
    }
    let connections: Vec<u64> = (0..n).map(|p| pg.connections_to(p)).collect();
    let link_connections: Vec<u64> = (0..n).map(|p| pg.link_connections(p)).collect();
    println!("done epoch {} active {:?} connections {:?} transports {:?} link_connections {:?}", pg.current_epoch(), pg.active_ranks(), connections, pg.transports(), link_connections);
}
