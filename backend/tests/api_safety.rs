//! Inputs and call sequences that once panicked or stalled inside the backend: each now returns an
//! error (or completes) on the calling rank. Ranks are threads of this process.
use chorus_backend::{ChorusError, DType, Options, ProcessGroup, ReduceOp};
use chorus_bootstrap::{MemStore, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::run;

fn invalid(r: chorus_backend::Result<impl std::fmt::Debug>, what: &str) -> String {
    match r {
        Err(ChorusError::InvalidArgument(m)) => m,
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

/// A rank whose block to itself differs in length from its block from itself hit an assert in
/// the all-to-all plan builder; the argument check refuses it now, blocking and queued.
#[test]
fn all_to_all_v_with_unequal_self_blocks_is_an_error() {
    let results = run(2, "a2a-self", |pg| {
        let me = pg.rank();
        let (mut send, mut recv) = (vec![1usize, 1], vec![1usize, 1]);
        send[me] = 2;
        recv[me] = 3;
        let input = vec![0f32; 3];
        let mut output = vec![0f32; 4];
        let m = invalid(pg.all_to_all_v(&input, &send, &mut output, &recv), "blocking");
        assert!(m.contains("to itself"), "{m}");
        let w = pg.all_to_all_v_async_raw(vec![0u8; 12], send.clone(), vec![0u8; 16], recv.clone(), DType::F32);
        invalid(w.wait(), "queued");
        // The group is still usable.
        let mut v = [1i32];
        pg.all_reduce(&mut v, ReduceOp::Sum)?;
        assert_eq!(v[0], 2);
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

/// Counts whose sum or byte size overflows `usize` were summed and multiplied unchecked.
#[test]
fn all_to_all_v_counts_that_overflow_are_an_error() {
    let results = run(2, "a2a-overflow", |pg| {
        let me = pg.rank();
        let input = vec![0f32; 4];
        let mut output = vec![0f32; 4];
        let mut huge = vec![1usize, 1];
        huge[1 - me] = usize::MAX;
        invalid(pg.all_to_all_v(&input, &huge, &mut output, &[1, 1]), "sum overflows");
        let mut bytes = vec![1usize, 1];
        bytes[1 - me] = usize::MAX / 2;
        invalid(pg.all_to_all_v(&input, &bytes, &mut output, &[1, 1]), "bytes overflow");
        invalid(pg.all_to_all_v(&input, &[1, 1], &mut output, &bytes), "recv bytes overflow");
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

/// Panics seen by the hook of `count_panics` (caught ones included: the queue catches a job's).
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default(info);
    }));
}

/// Dropping the last handle of a group while its asynchronous operation runs: the operation
/// completes, and the group shuts down from the thread that ran it without waiting for itself
/// (the worker joined its own thread: a 5 s stall, then a caught panic).
#[test]
fn dropping_the_group_while_an_async_op_runs_neither_stalls_nor_panics() {
    count_panics();
    let results = run(2, "drop-async", |pg| {
        let me = pg.rank() as i64;
        if me == 1 {
            // Rank 0's operation is running (waiting for this rank) when rank 0 drops its group.
            std::thread::sleep(Duration::from_millis(500));
            let mut v = vec![1 + me; 1 << 16];
            pg.all_reduce(&mut v, ReduceOp::Sum)?;
            assert!(v.iter().all(|&x| x == 3));
            return Ok(());
        }
        let work = pg.all_reduce_async_raw(vec![1 + me; 1 << 16], DType::I64, ReduceOp::Sum);
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        drop(pg);
        assert!(started.elapsed() < Duration::from_secs(1), "drop took {:?}", started.elapsed());
        let got = work.wait()?;
        assert!(got.iter().all(|&x| x == 3));
        // The group's threads shut down after the operation; give them the time the stall took.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(PANICS.load(std::sync::atomic::Ordering::SeqCst), 0, "a panic happened while the group shut down");
}

/// Issue 23: a send to oneself said "rank 0 is out of range for a group of 2 ranks"; an error
/// that prints its cause does not also return it as `source()` (anyhow's `{:#}` printed it twice).
#[test]
fn errors_say_what_is_wrong_once() {
    let results = run(2, "err-texts", |pg| {
        let me = pg.rank();
        let m = invalid(pg.send(&[1u8], me, 0), "send to itself");
        assert!(m.contains("itself") && !m.contains("out of range"), "{m}");
        let mut b = [0u8];
        let m = invalid(pg.recv(&mut b, me, 0), "receive from itself");
        assert!(m.contains("itself"), "{m}");
        match pg.send(&[1u8], 2, 0) {
            Err(ChorusError::InvalidRank { rank: 2, size: 2 }) => {}
            other => panic!("send to rank 2 of 2: {other:?}"),
        }
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let store = ChorusError::from(chorus_bootstrap::BootstrapError::WaitTimeout { missing: vec!["k".into()], timeout: Duration::from_millis(5) });
    let io = ChorusError::Io { peer: 1, error: std::io::Error::other("connection reset") };
    for e in [store, io] {
        assert!(std::error::Error::source(&e).is_none(), "{e} also returns its cause as source()");
    }
}

/// A minimal executor: polls `f` on this thread, sleeping until its waker is called.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < deadline, "the future was never woken");
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

/// Issue 23: `Work` is a future whose output gives the buffers back with the operation's report,
/// and gives them back on failure too (a refused operation, and one that failed while running).
#[test]
fn work_is_a_future_that_returns_the_buffers() {
    let results = run(2, "work-future", |pg| {
        let n = pg.size();
        let (buf, info) = block_on(pg.all_reduce_async(vec![1.5f32; 8], ReduceOp::Sum)).map_err(|e| e.error)?;
        assert_eq!(buf, vec![1.5 * n as f32; 8]);
        assert_eq!(info.contributors, (0..n).collect::<Vec<_>>());
        // Refused (7 bytes of f32): the error, and the buffer back.
        let e = block_on(pg.all_reduce_async_raw(vec![7u8; 7], DType::F32, ReduceOp::Sum)).expect_err("7 bytes of f32");
        assert!(matches!(e.error, ChorusError::InvalidArgument(_)), "{e}");
        assert_eq!(e.buffers, Some(vec![7u8; 7]), "the refused operation's buffer");
        // The same through the blocking form of the outcome.
        let e = pg.all_gather_async(vec![1u8; 3], vec![0u8; 5]).outcome().expect_err("output too small");
        assert_eq!(e.buffers, Some((vec![1u8; 3], vec![0u8; 5])));
        let (bufs, _) = pg.all_gather_async(vec![pg.rank() as u8; 3], vec![0u8; 3 * n]).outcome().map_err(|e| e.error)?;
        assert_eq!(bufs.1, (0..n).flat_map(|r| [r as u8; 3]).collect::<Vec<_>>());
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

/// A queued operation that fails while running gives its buffer back too: the group is destroyed
/// before the worker gets to it.
#[test]
fn a_failed_queued_operation_gives_its_buffer_back() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let pg = ProcessGroup::new(store, 0, 1, Options::default().with_name("failed-queued")).expect("a group of one");
    let work = pg.all_reduce_async_raw(vec![3i64; 4], DType::I64, ReduceOp::Sum);
    pg.destroy();
    match work.outcome() {
        Ok((buf, _)) => assert_eq!(buf, vec![3i64; 4], "it ran before the destroy"),
        Err(e) => assert_eq!(e.buffers, Some(vec![3i64; 4]), "{e}: the buffer was lost"),
    }
    let e = block_on(pg.all_reduce_async_raw(vec![5i64; 2], DType::I64, ReduceOp::Sum)).expect_err("a destroyed group");
    assert!(matches!(e.error, ChorusError::Destroyed), "{e}");
    assert_eq!(e.buffers, Some(vec![5i64; 2]));
}

/// Issue 23: `all_reduce_async(vec![1.5f32; 8], DType::I64, Sum)` returned `[inf; 8]`: the dtype
/// was not checked against the elements. It is refused now, with the buffer back; bytes
/// (`Vec<u8>`) may still be read as any dtype.
#[test]
fn a_dtype_that_is_not_the_elements_is_refused() {
    let results = run(2, "dtype-check", |pg| {
        let e = pg.all_reduce_async_raw(vec![1.5f32; 8], DType::I64, ReduceOp::Sum).outcome().expect_err("f32 elements as i64");
        assert!(matches!(&e.error, ChorusError::InvalidArgument(m) if m.contains(DType::F32.name()) && m.contains(DType::I64.name())), "{e}");
        assert_eq!(e.buffers, Some(vec![1.5f32; 8]));
        let e = pg.reduce_scatter_async_raw(vec![1i32; 4], vec![0f32; 2], DType::F32, ReduceOp::Sum).outcome().expect_err("i32 input as f32");
        assert!(matches!(e.error, ChorusError::InvalidArgument(_)), "{e}");
        let bytes: Vec<u8> = 2.0f32.to_ne_bytes().repeat(4);
        let (sum, _) = pg.all_reduce_async_raw(bytes, DType::F32, ReduceOp::Sum).outcome().map_err(|e| e.error)?;
        assert_eq!(f32::from_ne_bytes(sum[..4].try_into().unwrap()), 2.0 * pg.size() as f32);
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

/// Issue 23: the async forms are typed (`Vec<T>`, the dtype from `T`; the `DType` forms are
/// `*_async_raw`), and blocking calls return their own report instead of a group-wide "last".
#[test]
fn typed_async_forms_and_blocking_reports() {
    let results = run(2, "typed-async", |pg| {
        let (n, me) = (pg.size(), pg.rank());
        let (max, _) = pg.reduce_async(vec![me as i32 + 1; 3], 0, ReduceOp::Max).outcome().map_err(|e| e.error)?;
        if me == 0 {
            assert_eq!(max, vec![n as i32; 3]);
        }
        let ((_, mine), _) = pg.reduce_scatter_async(vec![1.0f64; 2 * n], vec![0.0f64; 2], ReduceOp::Sum).outcome().map_err(|e| e.error)?;
        assert_eq!(mine, vec![n as f64; 2]);
        let ((_, got), _) = pg.all_to_all_v_async(vec![me as u16; n], vec![1; n], vec![9u16; n], vec![1; n]).outcome().map_err(|e| e.error)?;
        assert_eq!(got, (0..n as u16).collect::<Vec<_>>());
        let mut v = [1i64; 4];
        let info = pg.all_reduce(&mut v, ReduceOp::Sum)?;
        assert_eq!(info.contributors, (0..n).collect::<Vec<_>>());
        assert!(info.failed.is_empty());
        assert_eq!(pg.barrier()?.contributors.len(), n);
        Ok(())
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

