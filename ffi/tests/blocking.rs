//! The blocking form of the C ABI (`work == NULL`), driven the way a C caller would with two ranks
//! on two threads: every collective gives what its asynchronous form gives (sizes 0, 1, odd and
//! larger than a chunk), a blocking call runs after the asynchronous ones issued before it, error
//! paths return their status and message, and `chorus_last_op_*` report the last blocking call.
mod common;

use chorus_bootstrap::MemStore;
use chorus_ffi::error::*;
use chorus_ffi::*;
use common::{callbacks, last_error};
use std::ffi::{c_void, CString};
use std::ptr::null_mut;
use std::sync::Arc;

const I32: i32 = 7;
const I64: i32 = 8;
const F32: i32 = 0;
const SUM: i32 = 0;
const PROD: i32 = 1;
const BAND: i32 = 5;
const CPU: i32 = CHORUS_DEVICE_CPU;

/// Runs one operation in the chosen form: `start` gets the `work` argument (NULL for the blocking
/// form); the asynchronous form's handle is waited for and freed at once.
fn call(blocking: bool, start: impl FnOnce(*mut *mut chorus_work) -> i32) -> i32 {
    if blocking {
        return start(null_mut());
    }
    let mut w: *mut chorus_work = null_mut();
    let rc = start(&mut w);
    if rc != CHORUS_OK {
        assert!(w.is_null(), "a refused call hands out no handle");
        return rc;
    }
    // SAFETY: a live handle, freed once.
    unsafe {
        let rc = chorus_work_wait(w, 60_000);
        chorus_work_free(w);
        rc
    }
}

fn ptr<T>(v: &mut [T]) -> *mut c_void {
    v.as_mut_ptr().cast()
}

/// Every collective once, with inputs made from (rank, count), in one form; the outputs in order.
fn every_collective(g: *mut chorus_group, rank: usize, n: usize, count: usize, blocking: bool) -> Vec<Vec<i32>> {
    let c = count as u64;
    let r = rank as i32;
    let mut outs = Vec::new();
    let ok = |what: &str, rc: i32| assert_eq!(rc, CHORUS_OK, "{what} (count {count}, blocking {blocking}): {}", last_error());
    // SAFETY (every call): `g` is live; each buffer holds what the call's counts say and outlives
    // the call (the asynchronous form is waited for inside `call`).
    unsafe {
        let mut v: Vec<i32> = (0..count as i32).map(|i| i * (r + 1) + r).collect();
        ok("all_reduce", call(blocking, |w| chorus_all_reduce(g, ptr(&mut v), c, I32, SUM, CPU, null_mut(), w)));
        outs.push(v);

        let mut v: Vec<i32> = (0..count as i32).map(|i| i + 1000 * r).collect();
        ok("broadcast", call(blocking, |w| chorus_broadcast(g, ptr(&mut v), c, I32, 1, CPU, null_mut(), w)));
        outs.push(v);

        let mut v: Vec<i32> = (0..count as i32).map(|i| i - r).collect();
        ok("reduce", call(blocking, |w| chorus_reduce(g, ptr(&mut v), c, I32, SUM, 0, CPU, null_mut(), w)));
        outs.push(v);

        let mut s: Vec<i32> = (0..count as i32).map(|i| i * 3 + r).collect();
        let mut o = vec![-1i32; count * n];
        ok("all_gather", call(blocking, |w| chorus_all_gather(g, ptr(&mut s), ptr(&mut o), c, I32, CPU, null_mut(), w)));
        outs.push(o);

        let mut s: Vec<i32> = (0..(count * n) as i32).map(|i| i + r).collect();
        let mut o = vec![-1i32; count];
        ok("reduce_scatter", call(blocking, |w| chorus_reduce_scatter(g, ptr(&mut s), ptr(&mut o), c, I32, SUM, CPU, null_mut(), w)));
        outs.push(o);

        let mut s: Vec<i32> = (0..(count * n) as i32).map(|i| i * 7 + r).collect();
        let mut o = vec![-1i32; count * n];
        ok("all_to_all", call(blocking, |w| chorus_all_to_all(g, ptr(&mut s), ptr(&mut o), c, I32, CPU, null_mut(), w)));
        outs.push(o);

        // Rank p sends count + p elements to every rank.
        let send_counts = vec![c + rank as u64; n];
        let recv_counts: Vec<u64> = (0..n as u64).map(|p| c + p).collect();
        let mut s: Vec<i32> = (0..(n * (count + rank)) as i32).map(|i| i * 5 - r).collect();
        let mut o = vec![-1i32; recv_counts.iter().sum::<u64>() as usize];
        ok(
            "all_to_all_v",
            call(blocking, |w| chorus_all_to_all_v(g, ptr(&mut s), send_counts.as_ptr(), ptr(&mut o), recv_counts.as_ptr(), I32, CPU, null_mut(), w)),
        );
        outs.push(o);

        let mut s: Vec<i32> = (0..count as i32).map(|i| i + 10 * r).collect();
        let mut o = vec![-1i32; if rank == 1 { count * n } else { 0 }];
        ok("gather", call(blocking, |w| chorus_gather(g, ptr(&mut s), ptr(&mut o), c, I32, 1, CPU, null_mut(), w)));
        outs.push(o);

        let mut s: Vec<i32> = if rank == 0 { (0..(count * n) as i32).map(|i| i * 2 + 1).collect() } else { Vec::new() };
        let mut o = vec![-1i32; count];
        ok("scatter", call(blocking, |w| chorus_scatter(g, ptr(&mut s), ptr(&mut o), c, I32, 0, CPU, null_mut(), w)));
        outs.push(o);

        ok("barrier", call(blocking, |w| chorus_barrier(g, w)));

        // Rank 0 sends to rank 1.
        let mut v: Vec<i32> = if rank == 0 { (0..count as i32).map(|i| i ^ 0x55).collect() } else { vec![-1; count] };
        if rank == 0 {
            ok("send", call(blocking, |w| chorus_send(g, ptr(&mut v), c, I32, 1, 3, CPU, null_mut(), w)));
        } else {
            ok("recv", call(blocking, |w| chorus_recv(g, ptr(&mut v), c, I32, 0, 3, CPU, null_mut(), w)));
        }
        outs.push(v);
    }
    outs
}

/// What `every_collective` must give on `rank` of a 2-rank group.
fn expected(rank: usize, count: usize) -> Vec<Vec<i32>> {
    let n = 2usize;
    let cnt = count as i32;
    let range = |k: usize| 0..k as i32;
    let mut e = Vec::new();
    e.push(range(count).map(|i| (0..n as i32).map(|r| i * (r + 1) + r).sum()).collect());
    e.push(range(count).map(|i| i + 1000).collect());
    e.push(if rank == 0 { range(count).map(|i| 2 * i - 1).collect() } else { range(count).map(|i| i - 1).collect() });
    e.push((0..n as i32).flat_map(|r| range(count).map(move |i| i * 3 + r)).collect());
    e.push(range(count).map(|i| (0..n as i32).map(|r| rank as i32 * cnt + i + r).sum()).collect());
    e.push((0..n as i32).flat_map(|p| range(count).map(move |i| (rank as i32 * cnt + i) * 7 + p)).collect());
    // From rank p: its elements for `rank`, which start at rank * (count + p).
    e.push((0..n as i32).flat_map(|p| range(count + p as usize).map(move |i| (rank as i32 * (cnt + p) + i) * 5 - p)).collect());
    e.push(if rank == 1 { (0..n as i32).flat_map(|r| range(count).map(move |i| i + 10 * r)).collect() } else { Vec::new() });
    e.push(range(count).map(|i| (rank as i32 * cnt + i) * 2 + 1).collect());
    e.push(range(count).map(|i| i ^ 0x55).collect());
    e
}

fn ranks_of(f: impl Fn(*mut i32, usize, *mut usize) -> i32) -> (i32, Vec<i32>) {
    let mut v = vec![-1i32; 8];
    let mut n = 0usize;
    let rc = f(v.as_mut_ptr(), v.len(), &mut n);
    v.truncate(if rc == CHORUS_OK { n } else { 0 });
    (rc, v)
}

fn last_failed() -> (i32, Vec<i32>) {
    // SAFETY: an 8-entry array and a writable count.
    ranks_of(|o, c, n| unsafe { chorus_last_op_failed_ranks(o, c, n) })
}

fn last_contributors() -> (i32, Vec<i32>) {
    // SAFETY: as above.
    ranks_of(|o, c, n| unsafe { chorus_last_op_contributors(o, c, n) })
}

fn last_epoch() -> (i32, u64) {
    let mut e = u64::MAX;
    // SAFETY: a writable u64.
    let rc = unsafe { chorus_last_op_epoch(&mut e) };
    (rc, e)
}

fn rank_main(store: Arc<MemStore>, rank: i32) {
    let cb = callbacks(&store);
    let name = CString::new("blocking").unwrap();
    let mut g: *mut chorus_group = null_mut();
    // SAFETY (whole block): handles come from chorus; buffers outlive their calls.
    unsafe {
        assert_eq!(chorus_group_create(&cb, rank, 2, name.as_ptr(), 60_000, &mut g), CHORUS_OK, "{}", last_error());
        let me = rank as usize;

        // No blocking call yet: no report.
        assert_eq!(last_epoch().0, CHORUS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("reported nothing"), "{}", last_error());

        // Sizes 0, 1, odd, and larger than a shared-memory chunk (256 KiB) per rank block.
        for count in [0usize, 1, 1031, 70_001] {
            let queued = every_collective(g, me, 2, count, false);
            let blocking = every_collective(g, me, 2, count, true);
            let want = expected(me, count);
            for (i, ((q, b), e)) in queued.iter().zip(&blocking).zip(&want).enumerate() {
                assert!(q == e, "rank {me} count {count}: collective #{i} (async) differs from the expected result");
                assert!(b == e, "rank {me} count {count}: collective #{i} (blocking) differs from the expected result");
            }
            assert_eq!(queued.len(), want.len());
            assert_eq!(blocking.len(), want.len());
        }

        // The last blocking collective reports like a work handle would.
        let mut v = vec![rank as i64 + 1; 4];
        assert_eq!(chorus_all_reduce(g, ptr(&mut v), 4, I64, SUM, CPU, null_mut(), null_mut()), CHORUS_OK, "{}", last_error());
        assert_eq!(v, vec![3; 4]);
        assert_eq!(last_failed(), (CHORUS_OK, vec![]));
        assert_eq!(last_contributors(), (CHORUS_OK, vec![0, 1]));
        assert_eq!(last_epoch(), (CHORUS_OK, 0));
        let mut one = [0i32; 1];
        let mut n = 0usize;
        assert_eq!(chorus_last_op_contributors(one.as_mut_ptr(), 1, &mut n), CHORUS_ERR_INVALID_ARGUMENT, "a short array");
        assert_eq!(n, 2);
        assert_eq!(chorus_last_op_epoch(null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_last_op_failed_ranks(null_mut(), 0, null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
        // The report is the calling thread's: another thread has none.
        std::thread::spawn(|| assert_eq!(last_epoch().0, CHORUS_ERR_INVALID_ARGUMENT)).join().unwrap();

        // A blocking call after several asynchronous ones on the same buffer runs after them,
        // in issue order: SUM, PROD, SUM, PROD, SUM, then the blocking PROD. From (1, 2):
        // 3, 9, 18, 324, 648, 419904 (any other order gives another value).
        let mut x = [rank as i64 + 1];
        let mut works = Vec::new();
        for k in 0..5 {
            let mut w: *mut chorus_work = null_mut();
            let op = if k % 2 == 0 { SUM } else { PROD };
            assert_eq!(chorus_all_reduce(g, ptr(&mut x), 1, I64, op, CPU, null_mut(), &mut w), CHORUS_OK, "{}", last_error());
            works.push(w);
        }
        assert_eq!(chorus_all_reduce(g, ptr(&mut x), 1, I64, PROD, CPU, null_mut(), null_mut()), CHORUS_OK, "{}", last_error());
        assert_eq!(x[0], 419_904);
        for w in works {
            assert_eq!(chorus_work_is_completed(w), 1, "an earlier asynchronous operation was still pending");
            assert_eq!(chorus_work_wait(w, 0), CHORUS_OK);
            chorus_work_free(w);
        }
        assert_eq!(last_contributors(), (CHORUS_OK, vec![0, 1]));

        // Error paths of the blocking form: a status, a message, and no report.
        let mut buf = vec![0f32; 8];
        assert_eq!(chorus_all_reduce(g, ptr(&mut buf), 4, 99, SUM, CPU, null_mut(), null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("dtype"), "{}", last_error());
        assert_eq!(last_epoch().0, CHORUS_ERR_INVALID_ARGUMENT, "a refused call leaves no report");
        assert_eq!(chorus_broadcast(g, ptr(&mut buf), 4, F32, 2, CPU, null_mut(), null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("rank 2"), "{}", last_error());
        assert_eq!(chorus_reduce(g, ptr(&mut buf), 4, F32, SUM, -1, CPU, null_mut(), null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("root -1"), "{}", last_error());
        assert_eq!(chorus_gather(g, ptr(&mut buf), ptr(&mut buf), 1, F32, 5, CPU, null_mut(), null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_all_reduce(g, ptr(&mut buf), 4, F32, BAND, CPU, null_mut(), null_mut()), CHORUS_ERR_UNSUPPORTED, "BAND on f32");
        assert_eq!(chorus_all_reduce(g, null_mut(), 4, F32, SUM, CPU, null_mut(), null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("null pointer"), "{}", last_error());
        assert_eq!(chorus_send(g, ptr(&mut buf), 1, F32, rank, 0, CPU, null_mut(), null_mut()), CHORUS_ERR_INVALID_ARGUMENT, "a send to itself");
        assert_eq!(chorus_all_reduce(g, ptr(&mut buf), 4, F32, SUM, -7, null_mut(), null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("invalid device"), "{}", last_error());
        assert_eq!(chorus_barrier(null_mut(), null_mut()), CHORUS_ERR_INVALID_ARGUMENT);

        // Still in step after the refusals (none of them reached the other rank).
        assert_eq!(chorus_barrier(g, null_mut()), CHORUS_OK, "{}", last_error());
        assert_eq!(last_epoch(), (CHORUS_OK, 0));
        assert_eq!(chorus_group_destroy(g), CHORUS_OK);
    }
}

#[test]
fn blocking_form_of_every_collective_with_two_ranks() {
    let store = Arc::new(MemStore::new());
    let hs: Vec<_> = (0..2)
        .map(|r| {
            let s = store.clone();
            std::thread::spawn(move || rank_main(s, r))
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn blocking_calls_on_a_one_rank_group() {
    let store = Arc::new(MemStore::new());
    let cb = callbacks(&store);
    let mut g: *mut chorus_group = null_mut();
    // SAFETY: valid callbacks and buffers; the group is destroyed at the end.
    unsafe {
        assert_eq!(chorus_group_create(&cb, 0, 1, null_mut(), 10_000, &mut g), CHORUS_OK, "{}", last_error());
        let mut v = vec![2i64; 3];
        for _ in 0..1000 {
            assert_eq!(chorus_all_reduce(g, ptr(&mut v), 3, I64, SUM, CPU, null_mut(), null_mut()), CHORUS_OK);
        }
        assert_eq!(v, vec![2; 3]);
        assert_eq!(last_contributors(), (CHORUS_OK, vec![0]));
        assert_eq!(chorus_group_destroy(g), CHORUS_OK);
    }
}
