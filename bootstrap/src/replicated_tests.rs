//! The replicated store over in-memory acceptors that can die (every call fails, as a dead host's
//! store does), stall (every call waits, as an unreachable host's does), or be replaced by an
//! empty one.
use super::*;
use crate::MemStore;
use std::sync::atomic::AtomicU8;
use std::thread;

const ALIVE: u8 = 0;
const DEAD: u8 = 1;
const STALLED: u8 = 2;

/// An acceptor whose health the test sets (a state, not a reusable flag: tests only move it
/// forward).
struct Acceptor {
    inner: MemStore,
    health: AtomicU8,
}

impl Acceptor {
    fn new() -> Arc<Acceptor> {
        Arc::new(Acceptor { inner: MemStore::new(), health: AtomicU8::new(ALIVE) })
    }
    fn set_health(&self, h: u8) {
        self.health.store(h, Ordering::SeqCst);
    }
    fn check(&self, op: &'static str) -> Result<()> {
        match self.health.load(Ordering::SeqCst) {
            DEAD => Err(BootstrapError::Io { op, addr: "test acceptor".into(), source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused) }),
            STALLED => {
                thread::sleep(Duration::from_secs(2));
                Err(BootstrapError::RequestTimeout { op, addr: "test acceptor".into(), timeout: Duration::from_secs(2) })
            }
            _ => Ok(()),
        }
    }
}

impl Store for Acceptor {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.check("set")?;
        self.inner.set(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.check("get")?;
        self.inner.get(key)
    }
    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        self.check("wait")?;
        self.inner.wait(keys, timeout)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.check("add")?;
        self.inner.add(key, delta)
    }
    fn compare_set(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(bool, Vec<u8>)> {
        self.check("compare_set")?;
        self.inner.compare_set(key, expected, new)
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.check("delete")?;
        self.inner.delete(key)
    }
    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        self.check("list_prefix")?;
        self.inner.list_prefix(prefix)
    }
}

fn acceptors(n: usize) -> Vec<Arc<Acceptor>> {
    (0..n).map(|_| Acceptor::new()).collect()
}

/// A proposer over `accs` (as each rank of a group has its own).
fn proposer(accs: &[Arc<Acceptor>], timeout: Duration) -> ReplicatedStore {
    let list = accs.iter().enumerate().map(|(i, a)| (format!("acceptor {i}"), a.clone() as Arc<dyn Store>, None)).collect();
    ReplicatedStore::new(list, timeout).expect("a proposer")
}

#[test]
fn operations_behave_like_one_store() {
    let accs = acceptors(3);
    let s = proposer(&accs, Duration::from_secs(5));
    assert_eq!(s.get("k").unwrap(), None);
    s.set("k", b"v1").unwrap();
    assert_eq!(s.get("k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(s.add("n", 3).unwrap(), 3);
    assert_eq!(s.add("n", -1).unwrap(), 2);
    assert!(matches!(s.add("k", 1), Err(BootstrapError::NotACounter { .. })));
    assert_eq!(s.compare_set("c", None, b"a").unwrap(), (true, b"a".to_vec()));
    assert_eq!(s.compare_set("c", None, b"b").unwrap(), (false, b"a".to_vec()));
    assert_eq!(s.compare_set("c", Some(b"a"), b"b").unwrap(), (true, b"b".to_vec()));
    assert_eq!(s.compare_set("absent", Some(b"x"), b"y").unwrap(), (false, Vec::new()));
    assert!(s.delete("c").unwrap());
    assert!(!s.delete("c").unwrap());
    assert_eq!(s.get("c").unwrap(), None);
    assert_eq!(s.wait(&["k", "n"], Duration::from_secs(1)).unwrap(), vec![b"v1".to_vec(), b"2".to_vec()]);
    assert!(matches!(s.wait(&["k", "never"], Duration::from_millis(50)), Err(BootstrapError::WaitTimeout { .. })));
    // Every key written (a compare-and-set that failed included; reads of a settled key write
    // nothing).
    assert_eq!(s.list_prefix("").unwrap(), vec!["absent".to_string(), "c".into(), "k".into(), "n".into()]);
    // Another proposer over the same acceptors sees the same values.
    let t = proposer(&accs, Duration::from_secs(5));
    assert_eq!(t.get("k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(t.add("n", 1).unwrap(), 3);
}

/// Every increment is applied exactly once under contention: a retry after an accept phase that
/// fell short must find its earlier write when another proposer re-proposed it or built on it.
#[test]
fn concurrent_proposers_never_lose_an_increment() {
    let accs = acceptors(5);
    let per = 40;
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let s = proposer(&accs, Duration::from_secs(30));
            thread::spawn(move || (0..per).map(|_| s.add("count", 1).unwrap()).collect::<Vec<i64>>())
        })
        .collect();
    let mut seen: Vec<i64> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    seen.sort_unstable();
    // Every increment returned a distinct value, and none was lost.
    assert_eq!(seen, (1..=4 * per as i64).collect::<Vec<_>>());
    assert_eq!(proposer(&accs, Duration::from_secs(5)).get("count").unwrap().as_deref(), Some(format!("{}", 4 * per).as_bytes()));
}

/// The recovery decision's pattern: every member proposes its own decision with
/// compare-and-set from absent; exactly one wins and every member gets the winner's.
#[test]
fn one_compare_and_set_from_absent_wins_and_all_see_it() {
    for trial in 0..20 {
        let accs = acceptors(5);
        if trial % 2 == 1 {
            // A minority is gone: the host of the job's store and one rank.
            accs[0].set_health(DEAD);
            accs[3].set_health(DEAD);
        }
        let hs: Vec<_> = (0..4u8)
            .map(|p| {
                let s = proposer(&accs, Duration::from_secs(30));
                thread::spawn(move || s.compare_set("round/1/decision", None, &[p]).unwrap())
            })
            .collect();
        let results: Vec<(bool, Vec<u8>)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.0).count(), 1, "trial {trial}: {results:?}");
        assert!(results.iter().all(|r| r.1 == results[0].1), "trial {trial}: {results:?}");
    }
}

#[test]
fn a_minority_dead_or_stalled_changes_nothing_and_a_majority_is_a_clear_error() {
    let accs = acceptors(5);
    let s = proposer(&accs, Duration::from_secs(10));
    s.set("k", b"before").unwrap();
    accs[0].set_health(DEAD);
    accs[1].set_health(STALLED);
    let t0 = Instant::now();
    assert_eq!(s.get("k").unwrap().as_deref(), Some(&b"before"[..]));
    s.set("k", b"after").unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "a stalled acceptor held up the majority: {:?}", t0.elapsed());
    assert_eq!(proposer(&accs, Duration::from_secs(10)).get("k").unwrap().as_deref(), Some(&b"after"[..]));
    accs[2].set_health(DEAD);
    let s = proposer(&accs, Duration::from_millis(1500));
    match s.get("k") {
        Err(e @ BootstrapError::NoQuorum { .. }) => {
            let text = e.to_string();
            assert!(text.contains("2 of the group's 5") && text.contains("needs 3") && text.contains("acceptor 0"), "{text}");
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }
}

/// A value chosen by one majority survives the death of any minority, read through the other
/// members, with proposers that come and go.
#[test]
fn chosen_values_survive_any_minority() {
    for dead in [[0, 1], [1, 3], [2, 4], [0, 4]] {
        let accs = acceptors(5);
        proposer(&accs, Duration::from_secs(5)).set("round/2/decision", b"d").unwrap();
        for &d in &dead {
            accs[d].set_health(DEAD);
        }
        let later = proposer(&accs, Duration::from_secs(5));
        assert_eq!(later.compare_set("round/2/decision", None, b"other").unwrap(), (false, b"d".to_vec()), "dead {dead:?}");
    }
}

/// An empty acceptor put in a dead one's slot does not vote on keys its predecessor may have
/// voted on: with two of five original acceptors dead and one slot refilled, an old key has no
/// majority (three answers would otherwise include an empty one and could choose another value),
/// while a key the fresh acceptor may vote on (a later round's) does.
#[test]
fn a_refilled_slot_votes_only_on_new_keys() {
    let accs = acceptors(5);
    let s = proposer(&accs, Duration::from_millis(1500));
    s.set("joins", b"1").unwrap();
    accs[0].set_health(DEAD);
    accs[1].set_health(DEAD);
    accs[2].set_health(DEAD);
    let fresh = Acceptor::new();
    s.replace(2, "acceptor 2 (replacement)".into(), fresh.clone(), Refill { votes_on: Box::new(|k: &str| k.starts_with("round/")), guarded: Vec::new() });
    assert!(matches!(s.get("joins"), Err(BootstrapError::NoQuorum { .. })));
    // With its vote on a later round's key, three of five answer.
    s.set("round/9/decision", b"x").unwrap();
    assert_eq!(s.get("round/9/decision").unwrap().as_deref(), Some(&b"x"[..]));
    assert!(fresh.inner.get("px/round/9/decision").unwrap().is_some(), "the fresh acceptor took part");
    assert!(fresh.inner.get("px/joins").unwrap().is_none(), "the fresh acceptor was asked about an old key");
}

/// Proposers race on one register while acceptors die one by one (never a majority): every
/// compare-and-set increment that reported success is in the final count, and no other.
#[test]
fn racing_proposers_with_acceptors_dying_agree_on_every_step() {
    let accs = acceptors(5);
    let stop = Arc::new(AtomicU8::new(0));
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let s = proposer(&accs, Duration::from_secs(30));
            thread::spawn(move || {
                let mut won = 0u64;
                for _ in 0..30 {
                    let cur = s.get("reg").unwrap();
                    let n: u64 = cur.as_deref().map(|b| String::from_utf8_lossy(b).parse().unwrap()).unwrap_or(0);
                    if s.compare_set("reg", cur.as_deref(), (n + 1).to_string().as_bytes()).unwrap().0 {
                        won += 1;
                    }
                }
                won
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    accs[4].set_health(DEAD);
    thread::sleep(Duration::from_millis(20));
    accs[1].set_health(DEAD);
    stop.store(1, Ordering::SeqCst);
    let won: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    let last = proposer(&accs, Duration::from_secs(5)).get("reg").unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&last).parse::<u64>().unwrap(), won);
}

/// Over real replica servers: one process's own replica in process, the others over TCP; a
/// server that shuts down (its process died) is one silent acceptor.
#[test]
fn replica_servers_serve_as_acceptors_and_one_may_go() {
    let servers: Vec<crate::StoreServer> = (0..3).map(|_| crate::StoreServer::bind_with("127.0.0.1:0".parse().unwrap(), Default::default(), None).unwrap()).collect();
    let make = |me: usize| {
        let list = servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let store: Arc<dyn Store> = if i == me { s.local_store() } else { Arc::new(RemoteReplica::new(s.local_addr().to_string(), Duration::from_secs(2), None)) };
                (format!("replica {i}"), store, None)
            })
            .collect();
        ReplicatedStore::new(list, Duration::from_secs(3)).unwrap()
    };
    let (a, b) = (make(0), make(1));
    a.set("k", b"1").unwrap();
    assert_eq!(b.add("n", 2).unwrap(), 2);
    servers[2].shutdown();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(a.add("n", 1).unwrap(), 3);
    servers[0].shutdown();
    assert!(matches!(b.get("k"), Err(BootstrapError::NoQuorum { .. })));
}

/// A recovery round's pattern: members poll another member's report in a tight loop while it
/// writes it. Polls must not outbid the writer (they once did, until its operation timed out).
#[test]
fn tight_polling_does_not_starve_a_writer() {
    let accs = acceptors(5);
    accs[1].set_health(DEAD);
    let done = Arc::new(AtomicU8::new(0));
    let pollers: Vec<_> = (0..3)
        .map(|_| {
            let (s, done) = (proposer(&accs, Duration::from_secs(10)), done.clone());
            thread::spawn(move || {
                let mut seen = None;
                while done.load(Ordering::SeqCst) == 0 {
                    seen = s.get("round/1/post/0").unwrap().or(seen);
                }
                // A poller the scheduler left out while the writer ran still reads the write.
                seen.or(s.get("round/1/post/0").unwrap())
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    let writer = proposer(&accs, Duration::from_secs(10));
    for i in 0..20u8 {
        writer.set(&format!("round/1/post/{}", i % 4), &[i]).unwrap();
    }
    done.store(1, Ordering::SeqCst);
    for p in pollers {
        assert!(p.join().unwrap().is_some(), "a poller never saw the report");
    }
}

/// A refilled slot caught up on an old key votes on it: after the catch-up, two more original
/// acceptors may die and the key still has a majority, holding its value.
#[test]
fn a_caught_up_slot_votes_on_old_keys() {
    let accs = acceptors(5);
    let s = proposer(&accs, Duration::from_millis(1500));
    s.set("view_requests", b"r1").unwrap();
    accs[2].set_health(DEAD);
    let fresh = Acceptor::new();
    s.replace(2, "acceptor 2 (replacement)".into(), fresh.clone(), Refill { votes_on: Box::new(|k: &str| k.starts_with("round/")), guarded: vec!["view_requests".to_string()] });
    // Not caught up yet: it abstains on the guarded key (two of five dead would be too many
    // with its vote missing).
    s.catch_up(2, &["view_requests".to_string()]).unwrap();
    assert!(fresh.inner.get("px/view_requests").unwrap().is_some(), "the settled register was installed");
    accs[0].set_health(DEAD);
    accs[1].set_health(DEAD);
    assert_eq!(s.get("view_requests").unwrap().as_deref(), Some(&b"r1"[..]));
    assert_eq!(s.compare_set("view_requests", Some(b"r1"), b"r1,r2").unwrap(), (true, b"r1,r2".to_vec()));
    // A key it was not caught up on still lacks a majority.
    assert!(matches!(s.get("joins"), Err(BootstrapError::NoQuorum { .. })));
    // Another proposer, which never caught it up itself, counts its vote on the guarded key, and
    // a fresh refill abstains there until caught up.
    let other = ReplicatedStore::new(
        accs.iter().enumerate().map(|(i, a)| {
            let (store, refill): (Arc<dyn Store>, Option<Refill>) = if i == 2 { (fresh.clone(), Some(Refill { votes_on: Box::new(|_: &str| false), guarded: vec!["view_requests".to_string()] })) } else { (a.clone(), None) };
            (format!("acceptor {i}"), store, refill)
        }).collect(),
        Duration::from_millis(1500),
    )
    .unwrap();
    assert_eq!(other.get("view_requests").unwrap().as_deref(), Some(&b"r1,r2"[..]));
    let empty = Acceptor::new();
    other.replace(2, "acceptor 2 (again)".into(), empty, Refill { votes_on: Box::new(|_: &str| false), guarded: vec!["view_requests".to_string()] });
    assert!(matches!(other.get("view_requests"), Err(BootstrapError::NoQuorum { .. })));
}

/// An acceptor store that restarted empty at the same place (its sentinel gone) is left out: it
/// must not vote as if it remembered its promises.
#[test]
fn an_acceptor_that_restarted_empty_is_left_out() {
    let accs = acceptors(3);
    accs[0].set("group/sentinel", b"1").unwrap();
    let list = accs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let store: Arc<dyn Store> = if i == 0 { Arc::new(Sentinel::new(a.clone(), "group/sentinel".into())) } else { a.clone() };
            (format!("acceptor {i}"), store, None)
        })
        .collect();
    let s = ReplicatedStore::new(list, Duration::from_millis(1500)).unwrap();
    s.set("k", b"v").unwrap();
    // Intact: acceptor 0 still votes, so one other acceptor may go.
    accs[2].set_health(DEAD);
    assert_eq!(s.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    s.set("k", b"w").unwrap();
    // Wiped (a store host restarted empty): its empty answers are not votes.
    for k in accs[0].list_prefix("").unwrap() {
        accs[0].delete(&k).unwrap();
    }
    assert!(matches!(s.set("k", b"x"), Err(BootstrapError::NoQuorum { .. })));
    // The other two still hold the last value chosen (a new proposer: the old one's acceptor 2
    // rests after its failures).
    accs[2].set_health(ALIVE);
    assert_eq!(proposer(&accs[1..], Duration::from_secs(5)).get("k").unwrap().as_deref(), Some(&b"w"[..]));
    let forgot = Sentinel::new(accs[0].clone(), "group/sentinel".into());
    assert!(matches!(forgot.get("anything"), Err(BootstrapError::AcceptorForgot { .. })));
}
