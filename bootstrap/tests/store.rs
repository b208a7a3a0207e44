//! Store semantics over real sockets (and the same checks against the in-process MemStore).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use chorus_bootstrap::{BootstrapError, MemStore, PrefixStore, Store, StoreClient, StoreServer};

const T: Duration = Duration::from_secs(10);

fn server() -> StoreServer {
    StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap()
}

fn client(s: &StoreServer) -> StoreClient {
    StoreClient::connect(&s.local_addr().to_string(), T).unwrap()
}

fn exercise(store: &dyn Store) {
    assert_eq!(store.get("a").unwrap(), None);
    store.set("a", b"1").unwrap();
    assert_eq!(store.get("a").unwrap(), Some(b"1".to_vec()));
    store.set("a", b"").unwrap();
    assert_eq!(
        store.get("a").unwrap(),
        Some(vec![]),
        "empty value is present, not absent"
    );

    store.set("b", &[0, 255, 7]).unwrap();
    assert_eq!(
        store.wait(&["b", "a"], T).unwrap(),
        vec![vec![0, 255, 7], vec![]]
    );

    assert_eq!(store.add("ctr", 5).unwrap(), 5);
    assert_eq!(store.add("ctr", -7).unwrap(), -2);
    assert_eq!(store.get("ctr").unwrap(), Some(b"-2".to_vec()));
    assert!(matches!(
        store.add("b", 1),
        Err(BootstrapError::NotACounter { .. }) | Err(BootstrapError::Remote { .. })
    ));

    assert_eq!(
        store.compare_set("cas", Some(b"x"), b"y").unwrap(),
        (false, vec![])
    );
    assert_eq!(
        store.get("cas").unwrap(),
        None,
        "failed swap must not create the key"
    );
    assert_eq!(
        store.compare_set("cas", None, b"v1").unwrap(),
        (true, b"v1".to_vec())
    );
    assert_eq!(
        store.compare_set("cas", None, b"v2").unwrap(),
        (false, b"v1".to_vec())
    );
    assert_eq!(
        store.compare_set("cas", Some(b"v0"), b"v2").unwrap(),
        (false, b"v1".to_vec())
    );
    assert_eq!(
        store.compare_set("cas", Some(b"v1"), b"v2").unwrap(),
        (true, b"v2".to_vec())
    );

    store.set("pfx/x", b"").unwrap();
    store.set("pfx/y", b"").unwrap();
    store.set("pfz", b"").unwrap();
    assert_eq!(
        store.list_prefix("pfx/").unwrap(),
        vec!["pfx/x".to_string(), "pfx/y".to_string()]
    );
    assert_eq!(store.list_prefix("nothing").unwrap(), Vec::<String>::new());

    assert!(store.delete("pfx/x").unwrap());
    assert!(!store.delete("pfx/x").unwrap());
    assert_eq!(store.get("pfx/x").unwrap(), None);
}

#[test]
fn basic_ops_over_tcp() {
    let s = server();
    exercise(&client(&s));
}

#[test]
fn basic_ops_in_memory() {
    exercise(&MemStore::new());
}

#[test]
fn large_value_roundtrip() {
    let s = server();
    let c = client(&s);
    let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    c.set("big", &big).unwrap();
    assert_eq!(c.get("big").unwrap().unwrap(), big);
}

#[test]
fn prefix_store_namespaces_keys() {
    let s = server();
    let raw: Arc<dyn Store> = Arc::new(client(&s));
    let a = PrefixStore::new(raw.clone(), "group0");
    let b = PrefixStore::new(raw.clone(), "group1");
    a.set("k", b"A").unwrap();
    b.set("k", b"B").unwrap();
    assert_eq!(a.get("k").unwrap(), Some(b"A".to_vec()));
    assert_eq!(raw.get("group1/k").unwrap(), Some(b"B".to_vec()));
    assert_eq!(a.add("n", 2).unwrap(), 2);
    assert_eq!(
        a.compare_set("k", Some(b"A"), b"A2").unwrap(),
        (true, b"A2".to_vec())
    );
    assert_eq!(
        a.wait(&["k", "n"], T).unwrap(),
        vec![b"A2".to_vec(), b"2".to_vec()]
    );
    assert_eq!(
        a.list_prefix("").unwrap(),
        vec!["k".to_string(), "n".to_string()]
    );
    // Nested namespaces compose.
    let nested = PrefixStore::new(Arc::new(a.clone()), "sub");
    nested.set("z", b"").unwrap();
    assert!(raw.get("group0/sub/z").unwrap().is_some());
    assert_eq!(nested.list_prefix("").unwrap(), vec!["z".to_string()]);
    assert!(a.delete("k").unwrap());
    assert_eq!(b.get("k").unwrap(), Some(b"B".to_vec()));
    match a.wait(&["never"], Duration::from_millis(50)) {
        Err(BootstrapError::WaitTimeout { missing, .. }) => {
            assert_eq!(missing, vec!["group0/never".to_string()])
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
}

#[test]
fn wait_times_out_naming_missing_keys() {
    let s = server();
    let c = client(&s);
    c.set("present", b"1").unwrap();
    let err = c
        .wait(
            &["present", "absent1", "absent2"],
            Duration::from_millis(200),
        )
        .unwrap_err();
    match &err {
        BootstrapError::WaitTimeout { missing, .. } => {
            assert_eq!(missing, &vec!["absent1".to_string(), "absent2".to_string()])
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    assert!(err.to_string().contains("absent1"));
    // Zero timeout checks once.
    assert!(matches!(
        c.wait(&["absent1"], Duration::ZERO),
        Err(BootstrapError::WaitTimeout { .. })
    ));
    // The connection is still usable afterwards.
    assert_eq!(c.get("present").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn wait_is_released_by_set_from_another_client() {
    let s = server();
    let addr = s.local_addr().to_string();
    let waiter = {
        let addr = addr.clone();
        thread::spawn(move || {
            let c = StoreClient::connect(&addr, T).unwrap();
            c.wait(&["go", "go2"], Duration::from_secs(30))
        })
    };
    thread::sleep(Duration::from_millis(100));
    let c = client(&s);
    c.set("go", b"1").unwrap();
    c.set("go2", b"2").unwrap();
    assert_eq!(
        waiter.join().unwrap().unwrap(),
        vec![b"1".to_vec(), b"2".to_vec()]
    );
}

#[test]
fn shared_client_is_not_blocked_by_a_pending_wait() {
    let s = server();
    let c = Arc::new(client(&s));
    let waiter = {
        let c = c.clone();
        thread::spawn(move || c.wait(&["later"], Duration::from_secs(30)))
    };
    thread::sleep(Duration::from_millis(100));
    // Same client, other thread: must not queue behind the wait.
    c.set("later", b"x").unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), vec![b"x".to_vec()]);
}

#[test]
fn concurrent_add_is_exact() {
    let s = server();
    let addr = s.local_addr().to_string();
    let shared = Arc::new(client(&s));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let addr = addr.clone();
            let shared = shared.clone();
            thread::spawn(move || {
                // Half the threads use their own connection, half share one client.
                let own;
                let store: &dyn Store = if i % 2 == 0 {
                    own = StoreClient::connect(&addr, T).unwrap();
                    &own
                } else {
                    &*shared
                };
                for _ in 0..100 {
                    store.add("total", 3).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(shared.add("total", 0).unwrap(), 8 * 100 * 3);
}

#[test]
fn compare_set_has_one_winner() {
    let s = server();
    let addr = s.local_addr().to_string();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let addr = addr.clone();
            thread::spawn(move || {
                let c = StoreClient::connect(&addr, T).unwrap();
                c.compare_set("view", None, format!("{i}").as_bytes())
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|(won, _)| *won).count(), 1);
    let winner = &results.iter().find(|(won, _)| *won).unwrap().1;
    assert!(
        results.iter().all(|(_, v)| v == winner),
        "everyone sees the winning value"
    );
}

#[test]
fn client_retries_until_server_appears() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let connecting = thread::spawn(move || {
        let c = StoreClient::connect(&addr.to_string(), Duration::from_secs(20))?;
        c.wait(&["hello"], T)
    });
    thread::sleep(Duration::from_millis(300));
    let s = StoreServer::bind(addr).unwrap();
    assert_eq!(s.local_addr(), addr);
    client(&s).set("hello", b"world").unwrap();
    assert_eq!(connecting.join().unwrap().unwrap(), vec![b"world".to_vec()]);
}

#[test]
fn connect_times_out_with_a_helpful_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err =
        StoreClient::connect(&format!("127.0.0.1:{port}"), Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, BootstrapError::Connect { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&port.to_string()) && msg.contains("MASTER_ADDR"),
        "{msg}"
    );
}

#[test]
fn server_bind_conflict_is_an_error() {
    let s = server();
    let err = StoreServer::bind(s.local_addr()).unwrap_err();
    assert!(matches!(err, BootstrapError::ServerBind { .. }), "{err}");
}

#[test]
fn shutdown_closes_clients_and_is_idempotent() {
    let s = server();
    let c = client(&s);
    c.set("k", b"v").unwrap();
    s.shutdown();
    s.shutdown();
    assert!(
        c.get("k").is_err(),
        "requests after shutdown fail instead of hanging"
    );
    drop(s);
}
