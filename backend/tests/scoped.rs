//! `ProcessGroup::scope`: collectives on borrowed sub-slices, queued and run concurrently, and a
//! scope that returns (or unwinds) only once every one of them completed. Ranks are threads.
use chorus_backend::{ChorusError, ReduceOp};

mod support;
use support::run;

/// `scope` lends sub-slices of one flat buffer to concurrent queued collectives (sizes 0, 1, odd
/// and larger than a chunk) and returns only when all completed; waited and unwaited ones alike.
#[test]
fn scoped_collectives_reduce_sub_slices_of_one_buffer() {
    let results = run(3, "scoped", |pg| {
        let (me, n) = (pg.rank() as f32, pg.size() as f32);
        let sizes = [0usize, 1, 17, 300_001, 4096];
        let mut flat = vec![me + 1.0; sizes.iter().sum()];
        let mut shard = vec![0f32; 5];
        let mut gathered = vec![0f32; 15];
        let mut own = vec![me; 5];
        let mut root_data = vec![me * 10.0; 7];
        pg.scope(|s| {
            let mut rest = &mut flat[..];
            let mut first = None;
            for &len in &sizes {
                let (bucket, tail) = rest.split_at_mut(len);
                rest = tail;
                let w = s.all_reduce(bucket, ReduceOp::Sum);
                // The first is waited for here; the scope waits for the others.
                match first {
                    None => first = Some(w.wait()),
                    Some(_) => drop(w),
                }
            }
            let _ = s.broadcast(&mut root_data, 2);
            let _ = s.all_gather(&mut own, &mut gathered);
            assert!(first.unwrap().is_ok());
        })?;
        let want = n * (n + 1.0) / 2.0;
        assert!(flat.iter().all(|&x| x == want), "rank {me}: a bucket was not reduced");
        assert_eq!(root_data, vec![20.0; 7]);
        assert_eq!(gathered, (0..15).map(|i| (i / 5) as f32).collect::<Vec<_>>());
        let mut input: Vec<f32> = (0..15).map(|i| i as f32).collect();
        pg.scope(|s| s.reduce_scatter(&mut input, &mut shard, ReduceOp::Sum).wait())??;
        let base = pg.rank() as f32 * 5.0;
        assert_eq!(shard, (0..5).map(|i| n * (base + i as f32)).collect::<Vec<_>>());
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

/// An operation the scope waited for reports its error from `scope`; a panic inside the scope
/// still waits for the operations before it unwinds (the lent memory holds their results).
#[test]
fn a_scope_reports_unwaited_errors_and_waits_through_a_panic() {
    let results = run(2, "scoped-errors", |pg| {
        let mut good = vec![1i64; 9];
        let mut bad = vec![0i64; 3];
        let r = pg.scope(|s| {
            let _ = s.all_reduce(&mut good, ReduceOp::Sum);
            let _ = s.reduce(&mut bad, 7, ReduceOp::Sum);
        });
        assert!(matches!(r, Err(ChorusError::InvalidRank { rank: 7, size: 2 })), "{r:?}");
        assert_eq!(good, vec![2; 9]);
        let mut v = vec![pg.rank() as i32 + 1; 1000];
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = pg.scope(|s| {
                let _ = s.all_reduce(&mut v, ReduceOp::Max);
                panic!("the caller's code failed");
            });
        }));
        assert!(panicked.is_err());
        assert_eq!(v, vec![2; 1000], "the scope unwound before its operation completed");
        // The loans are back and the group goes on.
        pg.all_reduce(&mut v, ReduceOp::Sum)?;
        assert_eq!(v[0], 4);
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}
