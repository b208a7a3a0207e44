//! The fault-tolerance entry points of the C ABI, driven the way a C caller would: membership view,
//! per-work reports, rank deactivation, joining with no group to join, NULL/short-array errors, and
//! a rank killed (SIGKILL, real processes) while the others are inside blocking calls.
mod common;

use chorus_bootstrap::{MemStore, Store};
use chorus_ffi::error::*;
use chorus_ffi::*;
use common::{key, last_error, store_of};
use std::ffi::{c_char, c_void, CString};
use std::ptr::null_mut;
use std::sync::Arc;

/// c10d semantics (see chorus.h) on top of MemStore's compare-and-set.
unsafe extern "C" fn compare_set(ctx: *mut c_void, k: *const c_char, e: *const u8, elen: usize, d: *const u8, dlen: usize, out: *mut chorus_buf, _err: *mut chorus_buf) -> i32 {
    // SAFETY: chorus passes `elen` and `dlen` readable bytes (pointers may dangle when 0).
    let exp = if elen == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(e, elen) } };
    let des = if dlen == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(d, dlen) } };
    let s = store_of(ctx);
    let (swapped, cur) = s.compare_set(key(k), if exp.is_empty() { None } else { Some(exp) }, des).unwrap();
    let after: Vec<u8> = if swapped { des.to_vec() } else if cur.is_empty() && s.get(key(k)).unwrap().is_none() { exp.to_vec() } else { cur };
    // SAFETY: `out` is the buffer chorus handed to this callback.
    unsafe { chorus_buf_write(out, after.as_ptr(), after.len()) }
}

fn callbacks(store: &Arc<MemStore>) -> chorus_store_callbacks {
    chorus_store_callbacks { compare_set: Some(compare_set), ..common::callbacks(store) }
}

fn ranks_of(f: impl Fn(*mut i32, usize, *mut usize) -> i32) -> Vec<i32> {
    let mut n = 0usize;
    // Ask for the count first (NULL array, cap 0), then fetch.
    let rc = f(null_mut(), 0, &mut n);
    assert!(rc == CHORUS_OK || rc == CHORUS_ERR_INVALID_ARGUMENT, "rc {rc}: {}", last_error());
    let mut v = vec![-1i32; n];
    assert_eq!(f(v.as_mut_ptr(), n, &mut n), CHORUS_OK, "{}", last_error());
    assert_eq!(v.len(), n);
    v
}

struct Group(*mut chorus_group);
// SAFETY: a group handle may be used from several threads (chorus.h).
unsafe impl Send for Group {}

/// Starts an all_reduce and waits for it: the start's status when it failed (the work handle is then
/// NULL), else the wait's.
fn all_reduce(g: *mut chorus_group, v: &mut [i64]) -> (i32, *mut chorus_work) {
    let mut w: *mut chorus_work = null_mut();
    // SAFETY: live group; `v` outlives the wait below.
    let rc = unsafe { chorus_all_reduce(g, v.as_mut_ptr() as *mut c_void, v.len() as u64, CHORUS_DTYPE_INT64, CHORUS_OP_SUM, CHORUS_DEVICE_CPU, null_mut(), &mut w) };
    if rc != CHORUS_OK {
        return (rc, null_mut());
    }
    // SAFETY: live work handle.
    (unsafe { chorus_work_wait(w, 30_000) }, w)
}

const CHORUS_DTYPE_INT64: i32 = 8;
const CHORUS_OP_SUM: i32 = 0;

#[test]
fn membership_reports_and_deactivation() {
    let store = Arc::new(MemStore::new());
    let threads: Vec<_> = (0..2)
        .map(|rank| {
            let store = store.clone();
            std::thread::spawn(move || {
                let cb = callbacks(&store);
                let mut g: *mut chorus_group = null_mut();
                let name = CString::new("ft").unwrap();
                // SAFETY: valid callbacks (the store outlives the group), writable out.
                let rc = unsafe { chorus_group_create(&cb, rank, 2, name.as_ptr(), 30_000, &mut g) };
                assert_eq!(rc, CHORUS_OK, "{}", last_error());
                let g = Group(g);
                let g = g.0;
                // SAFETY (all calls below): `g` is live until chorus_group_destroy at the end.
                assert_eq!(ranks_of(|o, c, n| unsafe { chorus_group_active_ranks(g, o, c, n) }), vec![0, 1]);
                let mut one = [0i32; 1];
                let mut n = 0usize;
                assert_eq!(unsafe { chorus_group_active_ranks(g, one.as_mut_ptr(), 1, &mut n) }, CHORUS_ERR_INVALID_ARGUMENT);
                assert_eq!(n, 2, "a short array reports the count needed");
                let mut epoch = 99u64;
                assert_eq!(unsafe { chorus_group_epoch(g, &mut epoch) }, CHORUS_OK);
                assert_eq!(epoch, 0);

                let mut v = vec![rank as i64 + 1; 16];
                let (rc, w) = all_reduce(g, &mut v);
                assert_eq!(rc, CHORUS_OK, "{}", last_error());
                assert!(v.iter().all(|&x| x == 3));
                assert_eq!(ranks_of(|o, c, n| unsafe { chorus_work_failed_ranks(w, o, c, n) }), Vec::<i32>::new());
                assert_eq!(ranks_of(|o, c, n| unsafe { chorus_work_contributors(w, o, c, n) }), vec![0, 1]);
                assert_eq!(unsafe { chorus_work_epoch(w, &mut epoch) }, CHORUS_OK);
                assert_eq!(epoch, 0);
                unsafe { chorus_work_free(w) };
                let mut ops = 0u64;
                assert_eq!(unsafe { chorus_group_ops_completed(g, &mut ops) }, CHORUS_OK);
                assert_eq!(ops, 1);
                // Marks cost nothing here; a rank that did not join has no resume point.
                assert_eq!(unsafe { chorus_group_mark(g, 7) }, CHORUS_OK);
                let (mut marker, mut done) = (9u64, 9u64);
                assert_eq!(unsafe { chorus_group_resume_point(g, &mut marker, &mut done) }, CHORUS_OK);
                assert_eq!((marker, done), (0, 0));
                assert_eq!(unsafe { chorus_group_resume_point(g, &mut marker, std::ptr::null_mut()) }, CHORUS_ERR_INVALID_ARGUMENT);

                // Invalid ranks are refused on the calling rank.
                let bad = [5i32];
                assert_eq!(unsafe { chorus_group_deactivate_ranks(g, bad.as_ptr(), 1) }, CHORUS_ERR_INVALID_ARGUMENT);
                let neg = [-1i32];
                assert_eq!(unsafe { chorus_group_activate_ranks(g, neg.as_ptr(), 1) }, CHORUS_ERR_INVALID_ARGUMENT);

                // Rank 0 removes rank 1: both adopt it at the next collective.
                if rank == 0 {
                    let r1 = [1i32];
                    assert_eq!(unsafe { chorus_group_deactivate_ranks(g, r1.as_ptr(), 1) }, CHORUS_OK, "{}", last_error());
                }
                let mut v = vec![rank as i64 + 1; 16];
                let (rc, w) = all_reduce(g, &mut v);
                if rank == 0 {
                    assert_eq!(rc, CHORUS_OK, "{}", last_error());
                    assert!(v.iter().all(|&x| x == 1), "{v:?}");
                    assert_eq!(ranks_of(|o, c, n| unsafe { chorus_work_contributors(w, o, c, n) }), vec![0]);
                    assert_eq!(unsafe { chorus_work_epoch(w, &mut epoch) }, CHORUS_OK);
                    assert!(epoch >= 1);
                } else {
                    // Refused at the start when rank 0's new view is already in the store, else by
                    // the wait: either way with the reason.
                    assert_ne!(rc, CHORUS_OK, "the deactivated rank's collective must fail");
                    assert!(last_error().contains("removed from the group"), "{}", last_error());
                }
                assert_eq!(ranks_of(|o, c, n| unsafe { chorus_group_active_ranks(g, o, c, n) }), vec![0]);
                unsafe { chorus_work_free(w) };
                g as usize
            })
        })
        .collect();
    let gs: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for g in gs {
        // SAFETY: live handles, destroyed once, after both ranks are done.
        unsafe { chorus_group_destroy(g as *mut chorus_group) };
    }
}

#[test]
fn fault_tolerance_entry_points_reject_bad_arguments() {
    let mut n = 0usize;
    let mut e = 0u64;
    // SAFETY: NULL handles are documented errors, not crashes.
    unsafe {
        assert_eq!(chorus_group_active_ranks(std::ptr::null(), null_mut(), 0, &mut n), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_group_epoch(std::ptr::null(), &mut e), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_group_ops_completed(std::ptr::null(), &mut e), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_group_deactivate_ranks(null_mut(), std::ptr::null(), 0), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_group_activate_ranks(null_mut(), std::ptr::null(), 0), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_work_failed_ranks(std::ptr::null(), null_mut(), 0, &mut n), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_work_contributors(std::ptr::null(), null_mut(), 0, &mut n), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_work_epoch(std::ptr::null(), &mut e), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_group_join(std::ptr::null(), 0, 2, std::ptr::null(), 1000, null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_group_join_tcp(std::ptr::null(), 0, 2, std::ptr::null(), 1000, null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
    }
    // Joining a group that never existed on this store: a clear error (a `get` of an absent key
    // through the callbacks answers "absent").
    let store = Arc::new(MemStore::new());
    let cb = callbacks(&store);
    let mut g: *mut chorus_group = null_mut();
    // SAFETY: valid callbacks; writable out.
    let rc = unsafe { chorus_group_join(&cb, 1, 2, std::ptr::null(), 2000, &mut g) };
    assert_eq!(rc, CHORUS_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("no group named default ever had a rank 1"), "{}", last_error());
    assert!(g.is_null());
}

/// Child processes of `blocking_call_survives_a_killed_rank` re-run this test binary with this
/// variable set to their rank.
const CHILD_RANK: &str = "CHORUS_FFI_KILL_TEST_RANK";
const CHILD_STORE: &str = "CHORUS_FFI_KILL_TEST_STORE";
const KILL_TEST: &str = "blocking_call_survives_a_killed_rank";
const RANKS: usize = 3;
const VICTIM: usize = 2;

/// One rank of the kill test: blocking all-reduces in a loop until one reports a failed rank (the
/// victim is killed in the meantime), then one more; prints what the reports said.
fn kill_test_child(rank: usize) -> ! {
    let addr = CString::new(std::env::var(CHILD_STORE).unwrap()).unwrap();
    let name = CString::new("kill").unwrap();
    let mut g: *mut chorus_group = null_mut();
    // SAFETY: valid strings and out-pointer; the group lives until the process exits.
    let rc = unsafe { chorus_group_create_tcp(addr.as_ptr(), 0, rank as i32, RANKS as i32, name.as_ptr(), 30_000, &mut g) };
    assert_eq!(rc, CHORUS_OK, "{}", last_error());
    let last = |f: unsafe extern "C" fn(*mut i32, usize, *mut usize) -> i32| {
        // SAFETY: the chorus_last_op_* array functions, with a NULL/0 query first.
        ranks_of(|o, c, n| unsafe { f(o, c, n) })
    };
    let mut seen_failure = false;
    for i in 0..1_000_000u64 {
        let mut v = vec![rank as i64 + 1; 64];
        // SAFETY: live group; `v` outlives the blocking call.
        let rc = unsafe { chorus_all_reduce(g, v.as_mut_ptr() as *mut c_void, 64, CHORUS_DTYPE_INT64, CHORUS_OP_SUM, CHORUS_DEVICE_CPU, null_mut(), null_mut()) };
        let msg = last_error();
        if rank == VICTIM {
            if i == 20 {
                println!("VICTIM READY");
            }
            assert_eq!(rc, CHORUS_OK, "{msg}");
            continue;
        }
        let failed = last(chorus_last_op_failed_ranks);
        let mut epoch = 0u64;
        // SAFETY: a writable u64.
        assert_eq!(unsafe { chorus_last_op_epoch(&mut epoch) }, CHORUS_OK, "{}", last_error());
        if rc == CHORUS_OK {
            // Every result is the sum over the ranks it says it contains.
            let contributors = last(chorus_last_op_contributors);
            let want: i64 = contributors.iter().map(|&r| r as i64 + 1).sum();
            assert!(v.iter().all(|&x| x == want), "iteration {i}: {v:?} over {contributors:?}");
            if failed.is_empty() && !seen_failure {
                continue;
            }
            println!("REPORT rc {rc} failed {failed:?} contributors {contributors:?} epoch {epoch}");
        } else {
            // Only the abort policy fails the collective; it still names who failed.
            println!("REPORT rc {rc} failed {failed:?} epoch {epoch} ({msg})");
        }
        if seen_failure {
            break;
        }
        seen_failure = true;
    }
    assert!(seen_failure, "rank {rank}: no blocking call reported the failure");
    // Skip the group's teardown: the other survivor may still be inside its last call.
    std::process::exit(0);
}

#[test]
fn blocking_call_survives_a_killed_rank() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    if let Ok(r) = std::env::var(CHILD_RANK) {
        kill_test_child(r.parse().unwrap());
    }
    for policy in ["shrink", "abort"] {
        let server = chorus_bootstrap::StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut kids: Vec<_> = (0..RANKS)
            .map(|r| {
                Command::new(std::env::current_exe().unwrap())
                    .args([KILL_TEST, "--exact", "--nocapture", "--test-threads=1"])
                    .env(CHILD_RANK, r.to_string())
                    .env(CHILD_STORE, server.local_addr().to_string())
                    .env("CHORUS_FAILURE_POLICY", policy)
                    .env_remove("CHORUS_HOST_ID")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let limit = Instant::now() + Duration::from_secs(120);
        // Kill the victim once it is well into its loop (the others are inside blocking calls).
        let victim_out = BufReader::new(kids[VICTIM].stdout.take().unwrap());
        let ready = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for l in victim_out.lines().map_while(Result::ok) {
                // The test harness's "test ... " may precede it on the line.
                if l.ends_with("VICTIM READY") {
                    return (true, seen);
                }
                seen.push(l);
            }
            (false, seen)
        });
        let (ok, seen) = ready.join().unwrap();
        if !ok {
            eprintln!("victim stdout: {seen:?}");
            for k in kids.iter_mut() {
                let _ = k.kill();
            }
            let mut err = String::new();
            let _ = kids[VICTIM].stderr.take().unwrap().read_to_string(&mut err);
            panic!("{policy}: the victim did not get going:\n{err}");
        }
        kids[VICTIM].kill().unwrap();
        let _ = kids[VICTIM].wait();
        let mut reports = Vec::new();
        for (r, k) in kids.iter_mut().enumerate().filter(|(r, _)| *r != VICTIM) {
            let status = loop {
                if let Some(s) = k.try_wait().unwrap() {
                    break s;
                }
                if Instant::now() > limit {
                    let _ = k.kill();
                    panic!("{policy}: survivor {r} hung after the kill");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let (mut out, mut err) = (String::new(), String::new());
            k.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            k.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(status.success(), "{policy}: survivor {r} failed ({status}):\n{out}\n{err}");
            let lines: Vec<String> = out.lines().filter_map(|l| l.find("REPORT").map(|at| l[at..].to_string())).collect();
            assert_eq!(lines.len(), 2, "{policy}: survivor {r}:\n{out}");
            reports.push(lines);
        }
        // Both survivors saw the same thing: first the failure, naming the victim, then a clean
        // collective over the two of them.
        assert_eq!(reports[0], reports[1], "{policy}: the survivors disagree");
        let (first, next) = (&reports[0][0], &reports[0][1]);
        assert!(first.contains(&format!("failed [{VICTIM}]")), "{policy}: {first}");
        assert!(!first.contains("epoch 0"), "{policy}: the failure comes with a new epoch: {first}");
        if policy == "shrink" || first.contains("rc 0 ") {
            assert!(first.contains("rc 0 failed [2] contributors [0, 1]"), "{policy}: {first}");
        } else {
            assert!(first.contains(&format!("rc {CHORUS_ERR_PEER_FAILED} failed [2]")), "{policy}: {first}");
        }
        assert!(next.starts_with("REPORT rc 0 failed [] contributors [0, 1]"), "{policy}: {next}");
    }
}
