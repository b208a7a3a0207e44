//! Fault tolerance with real processes: `kill -9` a rank at a random moment inside collective
//! loops; every survivor must finish (no hang), report the same failed ranks, and print identical
//! results over the same contributors for every iteration. The store lives in this test process
//! (like a launcher's), so killing rank 0 is survivable too.
use chorus::bootstrap::StoreServer;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_chorus-ft-worker");

struct Trial {
    n: usize,
    op: &'static str,
    iters: usize,
    elems: usize,
    victim: usize,
    kill_after: Duration,
    /// Per-rank CHORUS_HOST_ID (None: all on one host, shared memory).
    hosts: fn(usize) -> Option<String>,
}

fn spawn(t: &Trial, store: &StoreServer, rank: usize) -> Child {
    let mut c = Command::new(WORKER);
    c.args([t.op, &t.iters.to_string(), &t.elems.to_string(), "100"])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", t.n.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", t.n.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", store.local_addr().port().to_string())
        .env("CHORUS_STORE_ADDR", store.local_addr().to_string())
        .env("CHORUS_TIMEOUT_MS", "30000")
        .env_remove("CHORUS_HOST_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(h) = (t.hosts)(rank) {
        c.env("CHORUS_HOST_ID", h);
    }
    c.spawn().expect("spawn worker")
}

/// Drains a child's pipe on a thread (a full pipe would block the worker).
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn run_trial(t: &Trial) {
    let store = StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("store");
    let mut kids: Vec<Child> = (0..t.n).map(|r| spawn(t, &store, r)).collect();
    let mut pipes: Vec<Option<(std::thread::JoinHandle<String>, std::thread::JoinHandle<String>)>> =
        kids.iter_mut().map(|k| Some((drain(k.stdout.take().unwrap()), drain(k.stderr.take().unwrap())))).collect();
    std::thread::sleep(t.kill_after);
    // SIGKILL: no chance to clean up or say goodbye.
    let _ = kids[t.victim].kill();
    let _ = kids[t.victim].wait();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut outputs: BTreeMap<usize, String> = BTreeMap::new();
    for (r, k) in kids.iter_mut().enumerate() {
        if r == t.victim {
            continue;
        }
        loop {
            match k.try_wait().expect("wait") {
                Some(status) => {
                    let (o, e) = pipes[r].take().unwrap();
                    let (out, err) = (o.join().unwrap(), e.join().unwrap());
                    assert!(status.success(), "survivor {r} failed ({status}) in {} trial killing {}:\n{err}\n{out}", t.op, t.victim);
                    outputs.insert(r, out);
                    break;
                }
                None if Instant::now() > deadline => {
                    for k in kids.iter_mut() {
                        let _ = k.kill();
                    }
                    panic!("survivor {r} hung in {} trial killing {}", t.op, t.victim);
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    // Identical lines per iteration on every survivor (results, contributors, failed ranks).
    let lines: Vec<(usize, Vec<&str>)> = outputs.iter().map(|(r, o)| (*r, o.lines().collect())).collect();
    let (r0, first) = &lines[0];
    for (r, l) in &lines[1..] {
        assert_eq!(l.len(), first.len(), "rank {r} and {r0} ran different numbers of collectives");
        for (a, b) in first.iter().zip(l) {
            assert_eq!(a, b, "ranks {r0} and {r} disagree ({} trial, victim {})", t.op, t.victim);
        }
    }
    // The kill landed inside the loop (the loop is far longer than the delay): exactly one
    // collective reports the victim, then 100 more ran over the survivors.
    let reports: Vec<&&str> = first.iter().filter(|l| l.contains(&format!("failed [{}]", t.victim))).collect();
    assert_eq!(reports.len(), 1, "rank {r0}: expected one collective to report rank {} failed:\n{}", t.victim, outputs[r0]);
    let done = first.last().unwrap();
    let active: Vec<usize> = done
        .split("active [")
        .nth(1)
        .map(|a| a.trim_end_matches(']').split(", ").filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    let mut want: Vec<usize> = (0..t.n).filter(|&r| r != t.victim).collect();
    want.sort_unstable();
    assert_eq!(active, want, "unexpected end: {done}");
    let victim_line = format!("failed [{}]", t.victim);
    let after = first.iter().skip_while(|l| !l.contains(&victim_line)).count();
    assert_eq!(after, 101 + 1, "rank {r0}: 100 collectives after the failure plus the final line");
}

/// A small deterministic generator (no dependencies): trials differ but are reproducible.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, m: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % m
    }
}

fn shm(_: usize) -> Option<String> {
    None
}
fn tcp(r: usize) -> Option<String> {
    Some(format!("ft-host-{r}"))
}
fn mixed(r: usize) -> Option<String> {
    Some(format!("ft-host-{}", r / 2))
}

fn trials(seed: u64, count: usize, n: usize, hosts: fn(usize) -> Option<String>, victims: &[usize]) {
    let mut rng = Lcg(seed);
    let ops = ["all_reduce", "all_gather", "all_to_all", "broadcast", "mixed"];
    for i in 0..count {
        let op = ops[i % ops.len()];
        let victim = victims[rng.next(victims.len() as u64) as usize];
        let kill_after = Duration::from_millis(150 + rng.next(400));
        let elems = [1usize, 100, 5000, 70_000][rng.next(4) as usize];
        let t = Trial { n, op, iters: 1_000_000, elems, victim, kill_after, hosts };
        eprintln!("trial {i}: n={n} op={op} victim={victim} after={kill_after:?} elems={elems}");
        run_trial(&t);
    }
}

#[test]
fn kill_random_rank_of_4_over_shm() {
    trials(1, 10, 4, shm, &[1, 2, 3]);
}

#[test]
fn kill_rank_zero() {
    trials(2, 5, 4, shm, &[0]);
}

#[test]
fn kill_random_rank_of_4_over_tcp() {
    trials(3, 10, 4, tcp, &[0, 1, 2, 3]);
}

#[test]
fn kill_random_rank_of_4_mixed() {
    trials(4, 10, 4, mixed, &[0, 1, 2, 3]);
}

#[test]
fn kill_random_rank_of_8() {
    trials(5, 8, 8, shm, &[1, 3, 5, 7]);
}

#[test]
fn kill_random_rank_of_8_mixed() {
    trials(6, 7, 8, mixed, &[0, 2, 4, 6]);
}
