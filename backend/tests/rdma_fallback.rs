//! Without libibverbs or an RDMA device (this machine, CI), the rdma transport must not fail:
//! `probe()` names the reason, one line is logged per process, `can_connect` is false, group
//! setup for RDMA publishes "none" and returns no links (so every pair falls back to shm/tcp),
//! and a group across "hosts" still works over TCP. One test function: the probe result and its
//! log line are per process, so the order of the checks matters.
use chorus_backend::transport::rdma::{self, NotAvailable};
use chorus_backend::transport::{shm, PeerInfo, RingGeometry};
use chorus_backend::{Options, ProcessGroup, ReduceOp};
use chorus_bootstrap::{MemStore, Store};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn peer(rank: usize) -> PeerInfo {
    PeerInfo {
        rank,
        host_id: format!("host-{rank}"),
        pid: std::process::id(),
        tcp_addr: "127.0.0.1:1".into(),
        shm_signals: String::new(),
        shm_data: String::new(),
        shm_signals_fd: -1,
        shm_data_fd: -1,
        settings: Options::default().agreed(),
    }
}

#[test]
fn rdma_falls_back_cleanly_without_a_device() {
    if std::env::var_os("CHORUS_RDMA_TEST_DEVICE").is_some() {
        println!("not run: CHORUS_RDMA_TEST_DEVICE is set (this test checks the no-device fallback)");
        return;
    }
    let cap = Capture::default();
    let sink = cap.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).with_max_level(tracing::Level::INFO).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // 1. probe() names why, in words a user can act on.
    // The settings every group made with the default options uses (CHORUS_IB_* unset here).
    let settings = Options::default().rdma;
    let err = rdma::probe(&settings).expect_err("this machine has no RDMA device");
    let msg = err.to_string();
    println!("probe: {msg}");
    match &err {
        NotAvailable::NoLibrary(_) => assert!(msg.starts_with("rdma: libibverbs.so.1 not found; using shm/tcp"), "{msg}"),
        NotAvailable::NoDevice(_) => assert!(msg.starts_with("rdma: no RDMA device"), "{msg}"),
        NotAvailable::Disabled => assert!(msg.contains("CHORUS_IB_DISABLE")),
        NotAvailable::BadConfig(_) => panic!("unexpected configuration error: {msg}"),
    }
    assert!(msg.contains("using shm/tcp"));

    // 2. Asking again (and asking can_connect) logs nothing more: one line per process.
    for _ in 0..3 {
        assert_eq!(rdma::probe(&settings).unwrap_err(), err);
    }
    assert!(!rdma::can_connect(&peer(0), &peer(1), &settings));
    let log = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("rdma:")).collect();
    assert_eq!(lines.len(), 1, "expected exactly one rdma log line, got {lines:?}");
    assert!(lines[0].contains("using shm/tcp"), "{}", lines[0]);
    drop(_guard);

    // 3. RDMA group setup between two "hosts" publishes "none" and returns no links, so the
    // pair falls through to TCP; it does not wait for the peer's endpoint.
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let peers: Vec<PeerInfo> = (0..2).map(peer).collect();
    let handles: Vec<_> = (0..2)
        .map(|r| {
            let store = store.clone();
            let peers = peers.clone();
            std::thread::spawn(move || {
                let sig = format!("chorus-rdmafb-{}-r{r}-sig", std::process::id());
                let data = format!("chorus-rdmafb-{}-r{r}-data", std::process::id());
                let settings = &peers[r].settings;
                let local = shm::create_local(&sig, &data, 2, r, RingGeometry { slots: 4, slot_bytes: settings.shm_chunk }).expect("shm segments");
                chorus_backend::sys::shm::Segment::unlink(&sig);
                chorus_backend::sys::shm::Segment::unlink(&data);
                let t = Instant::now();
                let links = rdma::setup(&*store, "fallback", &peers[r], &peers, &local.signals, RingGeometry { slots: 4, slot_bytes: settings.rdma_chunk }, |p| shm::can_connect(&peers[r], p), t + Duration::from_secs(10), &Options::default().rdma)
                    .expect("rdma setup never fails for lack of a device");
                (links.len(), t.elapsed())
            })
        })
        .collect();
    for h in handles {
        let (n, took) = h.join().unwrap();
        assert_eq!(n, 0, "no rdma links without a device");
        assert!(took < Duration::from_secs(5), "setup waited {took:?}");
    }
    let cap = rdma::CapRecord::decode(&store.get("chorus/fallback/rdma/cap/1").unwrap().expect("published")).unwrap();
    assert_eq!(cap.port, None);

    // 4. A group across two "hosts" works over the fallback transport.
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let results: Vec<_> = (0..2)
        .map(|r| {
            let store = store.clone();
            std::thread::spawn(move || {
                let opts = Options::default().with_timeout(Duration::from_secs(20)).with_name("rdma-fallback").with_host_id(format!("host-{r}"));
                let pg = ProcessGroup::new(store, r, 2, opts)?;
                let mut v = vec![r as f32 + 1.0; 4096];
                pg.all_reduce(&mut v, ReduceOp::Sum)?;
                assert!(v.iter().all(|x| *x == 3.0));
                Ok::<(), chorus_backend::ChorusError>(())
            })
        })
        .collect();
    for h in results {
        h.join().unwrap().expect("group over tcp");
    }
}
