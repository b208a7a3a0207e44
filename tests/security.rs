//! Issue 17 end to end: a job with a secret (store and rank links authenticated), and a join for
//! a live rank refused.

mod common;

use common::{Hosts, Launch};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Rank 0 hosts the store with the job secret; every store connection and every TCP link of the
/// 3 ranks (one host each) proves it, and the collectives run as without one.
#[test]
fn a_job_with_a_secret_runs_over_authenticated_store_and_links() {
    let port = free_port().to_string();
    let env = |r: usize| {
        let mut v = Hosts::Tcp.env(3, r);
        v.push(("MASTER_ADDR".into(), "127.0.0.1".into()));
        v.push(("MASTER_PORT".into(), port.clone()));
        v.push(("CHORUS_SECRET".into(), "a-test-secret".into()));
        v
    };
    let mut l = Launch::new(3, "matrix", &["--dtypes", "f32", "--sizes", "7,4097"], &env);
    l.host_store = false;
    common::run(&l);
}

/// A process without the secret is refused by the job's store at once, with an error that says so.
#[test]
fn a_client_without_the_secret_is_refused_by_a_job_store() {
    let server = chorus::bootstrap::StoreServer::bind_with(
        "127.0.0.1:0".parse().unwrap(),
        chorus::bootstrap::server::ServerLimits::default(),
        chorus::bootstrap::JobSecret::new("job"),
    )
    .unwrap();
    let err = chorus::bootstrap::StoreClient::connect_with(&server.local_addr().to_string(), Duration::from_secs(120), None).unwrap_err();
    assert!(matches!(err, chorus::bootstrap::BootstrapError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("CHORUS_SECRET"), "{err}");
}

/// A process with store access alone writes a join record for rank 1 of a live 3-rank job (a copy
/// of rank 1's own rendezvous record, the four keys a replacement writes). The survivors must
/// refuse it: rank 1 is active and alive. Every rank runs to the end with all three members and
/// the same results, and nobody reports a failure.
#[test]
fn a_join_for_a_live_rank_is_refused_and_the_group_goes_on() {
    use chorus::bootstrap::{Store, StoreClient, StoreServer};
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    let _serial = common::serial();
    let store = StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("store");
    let addr = store.local_addr();
    let mut ranks: Vec<_> = (0..3)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_chorus-ft-worker"))
                .args(["train", "300", "100"])
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "3")
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", "3")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", addr.port().to_string())
                .env("CHORUS_STORE_ADDR", addr.to_string())
                .env("CHORUS_TIMEOUT_MS", "30000")
                .env("CHORUS_FT_SLOW_US", "5000")
                .env_remove("CHORUS_SECRET")
                .env_remove("CHORUS_SECRET_FILE")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn chorus-ft-worker")
        })
        .collect();

    // Every rank's output, line by line; the attack waits until rank 0 finished a collective, so
    // the join is not one announced before the group existed (those are skipped by design).
    let (first_line_tx, first_line) = std::sync::mpsc::channel::<()>();
    let readers: Vec<_> = ranks
        .iter_mut()
        .map(|child| {
            let stdout = child.stdout.take().unwrap();
            let mut stderr = child.stderr.take().unwrap();
            let tx = first_line_tx.clone();
            std::thread::spawn(move || {
                let err = std::thread::spawn(move || {
                    let mut e = String::new();
                    let _ = stderr.read_to_string(&mut e);
                    e
                });
                let mut out = String::new();
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.starts_with("iter") {
                        let _ = tx.send(());
                    }
                    out += &line;
                    out.push('\n');
                }
                (out, err.join().unwrap_or_default())
            })
        })
        .collect();
    drop(first_line_tx);
    first_line.recv_timeout(Duration::from_secs(60)).expect("no rank finished a collective");

    // The attacker: a store client that copies rank 1's record into a "replacement" announcement.
    let attacker = StoreClient::connect(&addr.to_string(), Duration::from_secs(30)).unwrap();
    let peer_key = attacker.list_prefix("chorus/").unwrap().into_iter().find(|k| k.ends_with("/peer/1")).expect("rank 1's record");
    let uid_prefix = peer_key.trim_end_matches("peer/1").to_string();
    let record = attacker.get(&peer_key).unwrap().unwrap();
    let generation = attacker.add(&format!("{uid_prefix}join_gen/1"), 1).unwrap();
    attacker.set(&format!("{uid_prefix}join/1/{generation}/peer"), &record).unwrap();
    let seq = attacker.add(&format!("{uid_prefix}joins"), 1).unwrap();
    attacker.set(&format!("{uid_prefix}join_req/{seq}"), format!("1:{generation}").as_bytes()).unwrap();

    let deadline = std::time::Instant::now() + common::RUN_LIMIT;
    let mut outputs = Vec::new();
    for ((r, child), reader) in ranks.iter_mut().enumerate().zip(readers) {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (out, err) = reader.join().unwrap();
        assert!(status.success(), "rank {r} failed ({status}):\n{err}\n{out}");
        outputs.push(out);
    }
    for (r, out) in outputs.iter().enumerate() {
        assert!(!out.contains("failed [1"), "rank {r} saw rank 1 fail:\n{out}");
        let done = out.lines().last().unwrap_or_default();
        assert!(done.starts_with("done") && done.contains("active [0, 1, 2]"), "rank {r}: {done}");
    }
    // Identical results on every rank, iteration by iteration (the final line names each rank's
    // own connection counts).
    let lines = |o: &str| o.lines().filter(|l| !l.starts_with("done")).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(lines(&outputs[0]).len(), 300);
    assert_eq!(lines(&outputs[0]), lines(&outputs[1]));
    assert_eq!(lines(&outputs[0]), lines(&outputs[2]));
}

/// The store keys of a group all of whose ranks destroyed it are deleted (its subgroups' keys stay
/// theirs until they are destroyed), so a job that makes many groups does not grow the store.
#[test]
fn a_destroyed_group_leaves_no_store_keys() {
    use chorus::bootstrap::{MemStore, Store};
    use chorus::{Options, ProcessGroup, ReduceOp};
    use std::sync::Arc;

    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            let store = store.clone();
            std::thread::spawn(move || -> chorus::Result<String> {
                let opts = Options::default().with_timeout(Duration::from_secs(60)).with_name("cleanup");
                let pg = ProcessGroup::new(store, r, 2, opts)?;
                let mut v = vec![1.0f32; 16];
                pg.all_reduce(&mut v, ReduceOp::Sum)?;
                assert_eq!(v, vec![2.0; 16]);
                let uid = pg.uid().to_string();
                pg.destroy();
                Ok(uid)
            })
        })
        .collect();
    let uids: Vec<String> = ranks.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    assert_eq!(uids[0], uids[1]);
    let left = store.list_prefix(&format!("chorus/{}/", uids[0])).unwrap();
    assert!(left.is_empty(), "keys left after every rank destroyed the group: {left:?}");
    // The generation counters that keep later groups of the same name apart stay.
    assert_eq!(store.get("chorus/cleanup/generation/0").unwrap(), Some(b"1".to_vec()));
}

/// With the store address pointing at something that accepts connections but never answers,
/// group creation fails within the group's timeout (CHORUS_TIMEOUT_MS), naming the address and
/// what was expected (it took a fixed ~62 s and said "os error 11").
#[test]
fn group_creation_against_a_silent_store_fails_within_the_group_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let env = |_: usize| {
        vec![
            ("CHORUS_STORE_ADDR".to_string(), addr.clone()),
            ("MASTER_ADDR".to_string(), "127.0.0.1".to_string()),
            ("MASTER_PORT".to_string(), addr.rsplit(':').next().unwrap().to_string()),
            ("CHORUS_TIMEOUT_MS".to_string(), "500".to_string()),
        ]
    };
    let mut l = Launch::new(1, "smoke", &[], &env);
    l.host_store = false;
    // The run limit is far below the old fixed 60 s wait: a rank still waiting then is killed.
    l.limit = Duration::from_secs(30);
    let outs = common::run_unchecked(&l);
    let err = String::from_utf8_lossy(&outs[0].stderr);
    assert_eq!(outs[0].status.code(), Some(1), "{}", common::describe(&l, &outs));
    assert!(err.contains(&addr) && err.contains("handshake"), "{err}");
}
