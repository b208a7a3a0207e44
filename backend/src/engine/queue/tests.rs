//! The queue's contract: jobs run one at a time in submission order, whichever thread runs them;
//! a waiter runs queued jobs itself; a panic completes its work with an error and harms nobody
//! else; every wait ends at its deadline.
use super::*;
use crate::engine::work::{self, Work};
use crate::engine::worker::Worker;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Weak};

const LONG: Duration = Duration::from_secs(60);

fn far() -> Instant {
    Instant::now() + LONG
}

/// A job with a deadline any test wait covers.
fn job(f: impl FnOnce() + Send + 'static) -> (Job, Instant) {
    (Box::new(f), far())
}

/// A job that records its index (and checks that no other job runs at the same time), and the
/// `Work` a waiter can help with.
fn recording(q: &Arc<OpQueue>, log: &Arc<Mutex<Vec<usize>>>, busy: &Arc<AtomicUsize>, i: usize) -> Work<usize> {
    let (w, done) = work::pair("test");
    let (log, busy) = (log.clone(), busy.clone());
    let seq = q
        .submit(|| {
            job(move || {
                assert_eq!(busy.fetch_add(1, Ordering::SeqCst), 0, "two jobs of one queue ran at once");
                log.lock().unwrap().push(i);
                std::hint::black_box((0..50).sum::<u64>());
                busy.fetch_sub(1, Ordering::SeqCst);
                done.complete(Ok(i));
            })
        })
        .unwrap();
    let weak: Weak<dyn Drain> = Arc::downgrade(q) as Weak<OpQueue>;
    w.queued_on(weak, seq)
}

#[test]
fn a_waiter_runs_its_queued_job_on_its_own_thread() {
    // No worker thread: only the waiter can run it.
    let q = Arc::new(OpQueue::new());
    let (w, done) = work::pair("inline");
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    let seq = q
        .submit(|| {
            job(move || {
                *r.lock().unwrap() = Some(std::thread::current().id());
                done.complete(Ok(7u32));
            })
        })
        .unwrap();
    let w = w.queued_on(Arc::downgrade(&q) as Weak<OpQueue>, seq);
    assert!(!w.is_completed());
    assert!(!w.wait_for(Duration::ZERO), "a zero wait only looks");
    assert_eq!(w.wait().unwrap(), 7);
    assert_eq!(*ran_on.lock().unwrap(), Some(std::thread::current().id()));
    assert!(q.quiesce(Duration::ZERO).is_ok(), "nothing left");
}

#[test]
fn waiters_on_different_works_keep_submission_order() {
    for with_worker in [false, true] {
        let worker = with_worker.then(|| Worker::start("test-order".into()));
        let own = Arc::new(OpQueue::new());
        let q = worker.as_ref().map_or(own, |w| w.queue().clone());
        let (log, busy) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let n = 400;
        let works: Vec<Work<usize>> = (0..n).map(|i| recording(&q, &log, &busy, i)).collect();
        // Four threads wait on interleaved works, latest first, so they help from all over.
        let mut per_thread: Vec<Vec<Work<usize>>> = (0..4).map(|_| Vec::new()).collect();
        for (i, w) in works.into_iter().enumerate() {
            per_thread[i % 4].push(w);
        }
        let threads: Vec<_> = per_thread
            .into_iter()
            .map(|mut ws| {
                std::thread::spawn(move || {
                    while let Some(w) = ws.pop() {
                        let want = w.wait().unwrap();
                        assert!(want < n);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*log.lock().unwrap(), (0..n).collect::<Vec<_>>(), "with_worker {with_worker}");
    }
}

#[test]
fn worker_and_waiters_race() {
    let worker = Worker::start("test-race".into());
    let q = worker.queue().clone();
    let (log, busy) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
    let mut next = 0;
    for round in 0..2000 {
        // One to three jobs per round, waited on at once (the worker may take any of them first),
        // or not at all (the worker runs them; a later quiesce or wait covers them).
        let k = 1 + round % 3;
        let ws: Vec<Work<usize>> = (0..k).map(|j| recording(&q, &log, &busy, next + j)).collect();
        next += k;
        match round % 4 {
            0 => {
                for w in ws.into_iter().rev() {
                    w.wait().unwrap();
                }
            }
            1 => q.quiesce(LONG).unwrap(),
            2 => {
                let last = ws.into_iter().last().unwrap();
                let t = std::thread::spawn(move || last.wait().unwrap());
                q.quiesce(LONG).unwrap();
                t.join().unwrap();
            }
            _ => drop(ws),
        }
    }
    q.quiesce(LONG).unwrap();
    assert_eq!(*log.lock().unwrap(), (0..next).collect::<Vec<_>>());
    worker.stop();
}

#[test]
fn a_panicking_job_fails_its_work_and_nothing_else() {
    for with_worker in [false, true] {
        let worker = with_worker.then(|| Worker::start("test-panic".into()));
        let own = Arc::new(OpQueue::new());
        let q = worker.as_ref().map_or(own, |w| w.queue().clone());
        let (w1, done1) = work::pair::<u32>("boom");
        let s1 = q
            .submit(|| {
                job(move || {
                    let _keep = done1; // dropped while unwinding
                    panic!("test panic inside a job");
                })
            })
            .unwrap();
        let w1 = w1.queued_on(Arc::downgrade(&q) as Weak<OpQueue>, s1);
        let (log, busy) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let w2 = recording(&q, &log, &busy, 2);
        // Waiting on the later job runs the panicking one first, on this thread; it survives.
        assert_eq!(w2.wait().unwrap(), 2);
        let e = w1.wait().unwrap_err();
        assert!(e.to_string().contains("abandoned"), "{e}");
        // The queue (and the worker) still run jobs.
        let w3 = recording(&q, &log, &busy, 3);
        assert_eq!(w3.wait().unwrap(), 3);
    }
}

#[test]
fn every_wait_ends_at_its_deadline() {
    let worker = Worker::start("test-deadline".into());
    let q = worker.queue().clone();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (w1, done1) = work::pair::<()>("stuck");
    let s1 = q
        .submit(|| {
            job(move || {
                started_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(LONG);
                done1.complete(Ok(()));
            })
        })
        .unwrap();
    let w1 = w1.queued_on(Arc::downgrade(&q) as Weak<OpQueue>, s1);
    started_rx.recv_timeout(LONG).unwrap(); // the worker runs it
    let (log, busy) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
    let w2 = recording(&q, &log, &busy, 1);
    assert!(!w1.wait_for(Duration::from_millis(20)));
    assert!(!w2.wait_for(Duration::from_millis(20)), "queued behind a running job");
    assert!(!q.run_through(s1 + 1, Instant::now() + Duration::from_millis(20)));
    assert!(q.quiesce(Duration::from_millis(20)).is_err());
    release_tx.send(()).unwrap();
    assert!(w2.wait_for(LONG));
    assert!(w1.wait_for(Duration::ZERO));
    assert_eq!(*log.lock().unwrap(), vec![1]);
}

#[test]
fn inside_a_job_the_queue_is_not_waited_for() {
    let q = Arc::new(OpQueue::new());
    let q2 = q.clone();
    let (w, done) = work::pair::<bool>("nested");
    let seq = q
        .submit(|| {
            job(move || {
                // A job cannot wait for its own queue: refused at once, not after the deadline.
                let refused = q2.quiesce(LONG).is_err() && !q2.run_through(u64::MAX, far());
                done.complete(Ok(refused));
            })
        })
        .unwrap();
    let w = w.queued_on(Arc::downgrade(&q) as Weak<OpQueue>, seq);
    assert!(w.wait().unwrap());
}

#[test]
fn stop_drains_then_refuses() {
    let worker = Worker::start("test-stop".into());
    let q = worker.queue().clone();
    let (log, busy) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
    let ws: Vec<Work<usize>> = (0..50).map(|i| recording(&q, &log, &busy, i)).collect();
    worker.stop();
    assert_eq!(log.lock().unwrap().len(), 50, "queued jobs finish before the worker exits");
    for (i, w) in ws.into_iter().enumerate() {
        assert_eq!(w.wait_timeout(Duration::ZERO).unwrap(), i);
    }
    assert!(matches!(q.submit(|| job(|| ())), Err(ChorusError::Destroyed)));
    assert!(q.quiesce(Duration::ZERO).is_ok());
}

#[test]
fn waits_outlive_a_dropped_queue() {
    // A work whose queue is gone falls back to its own handle: its job was dropped unrun, which
    // completes it with an error.
    let q = Arc::new(OpQueue::new());
    let (log, busy) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
    let w = recording(&q, &log, &busy, 0);
    drop(q);
    assert!(w.wait_for(Duration::from_secs(5)));
    assert!(w.error().is_some());
}

#[test]
fn jobs_nobody_waits_for_still_run() {
    // After jobs that their waiters ran (the worker naps and is not woken for each submission),
    // and after a quiet spell (the worker sleeps and is woken), a job nobody waits for runs on
    // the worker.
    let worker = Worker::start("test-unwaited".into());
    let q = worker.queue().clone();
    let (log, busy) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
    let mut i = 0;
    for quiet in [Duration::ZERO, NAP * 4 * NAPS] {
        for _ in 0..100 {
            recording(&q, &log, &busy, i).wait().unwrap();
            i += 1;
        }
        std::thread::sleep(quiet);
        let w = recording(&q, &log, &busy, i);
        i += 1;
        let deadline = Instant::now() + LONG;
        // `is_completed` and zero waits never run the job themselves.
        while !w.is_completed() && !w.wait_for(Duration::ZERO) {
            assert!(Instant::now() < deadline, "a job nobody waited for never ran");
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    assert_eq!(*log.lock().unwrap(), (0..i).collect::<Vec<_>>());
}

#[test]
fn a_short_wait_leaves_the_job_to_the_worker() {
    // The job's deadline lies past the wait's: the waiter must not take it (it could not return in
    // time); the worker runs it.
    let worker = Worker::start("test-short".into());
    let q = worker.queue().clone();
    let (w, done) = work::pair::<std::thread::ThreadId>("short");
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let seq = q
        .submit(|| {
            let f: Job = Box::new(move || {
                let _ = release_rx.recv_timeout(LONG);
                done.complete(Ok(std::thread::current().id()));
            });
            (f, Instant::now() + 2 * LONG)
        })
        .unwrap();
    let w = w.queued_on(Arc::downgrade(&q) as Weak<OpQueue>, seq);
    assert!(!w.wait_for(Duration::from_millis(30)), "the job waits for its release");
    release_tx.send(()).unwrap();
    assert!(w.wait_for(LONG));
    assert_ne!(w.wait_timeout(Duration::ZERO).unwrap(), std::thread::current().id(), "a short wait ran the job itself");
}
