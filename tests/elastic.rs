//! Growing with real processes (issue 20): a group of 6 slots created by 4 ranks
//! (`CHORUS_INITIAL_MEMBERS=0-3`) grows into the empty slots while it runs collectives, and is
//! hit during growth: the first process for slot 4 is SIGKILLed while it joins, and member 1 is
//! SIGKILLed while slot 5's process joins. A second process then fills slot 4. Every process must
//! finish without hanging and print identical results, contributors and failed ranks for every
//! collective they both ran; the group ends with ranks 0, 2, 3, 4 and 5.
use chorus::bootstrap::StoreServer;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_chorus-ft-worker");
const SLOTS: usize = 6;
/// Collectives every process runs once the group is ranks 0, 2, 3, 4 and 5 (all see that at the
/// same collective).
const AFTER: usize = 2000;

struct Proc {
    name: String,
    child: Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn spawn(store: &StoreServer, rank: usize, join: bool, host: Option<String>) -> Proc {
    let mut c = Command::new(WORKER);
    c.args(["all_reduce", "10000000", "1000", &AFTER.to_string(), "members:0,2,3,4,5"])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", SLOTS.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", SLOTS.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", store.local_addr().port().to_string())
        .env("CHORUS_STORE_ADDR", store.local_addr().to_string())
        .env("CHORUS_INITIAL_MEMBERS", "0-3")
        .env("CHORUS_TIMEOUT_MS", "30000")
        .env_remove("CHORUS_HOST_ID")
        .env_remove("CHORUS_JOIN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(h) = host {
        c.env("CHORUS_HOST_ID", h);
    }
    if join {
        c.env("CHORUS_JOIN", "1");
    }
    let mut child = c.spawn().expect("spawn worker");
    let (out, err) = (drain(child.stdout.take().unwrap()), drain(child.stderr.take().unwrap()));
    Proc { name: format!("rank {rank}{}", if join { " (joined)" } else { "" }), child, out: Some(out), err: Some(err) }
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for a clean exit; returns stdout.
    fn finish(&mut self, deadline: Instant) -> String {
        loop {
            match self.child.try_wait().expect("wait") {
                Some(status) => {
                    let out = self.out.take().unwrap().join().unwrap();
                    let err = self.err.take().unwrap().join().unwrap();
                    // CHORUS_TEST_DUMP=<dir>: every process's output there, for a failure's story.
                    if let Ok(dir) = std::env::var("CHORUS_TEST_DUMP") {
                        let _ = std::fs::write(format!("{dir}/{}.log", self.name), format!("{err}\n{out}"));
                    }
                    assert!(status.success(), "{} failed ({status}):\n{err}\n{}", self.name, tail(&out));
                    return out;
                }
                None if Instant::now() > deadline => {
                    self.kill();
                    let err = self.err.take().unwrap().join().unwrap();
                    panic!("{} hung:\n{err}", self.name);
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Iteration number -> line, for the collective lines of one process's output.
fn by_iter(out: &str) -> BTreeMap<u64, &str> {
    out.lines().filter_map(|l| Some((l.strip_prefix("iter ")?.split(' ').next()?.parse().ok()?, l))).collect()
}

/// A pseudo-random delay in `0..max_ms` (the kill lands at a different point of the join each run).
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    Duration::from_millis(u64::from(nanos) % max_ms)
}

fn grow_with_kills(host_of: fn(usize) -> Option<String>) {
    let store = StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("store");
    let mut members: Vec<Proc> = (0..4).map(|r| spawn(&store, r, false, host_of(r))).collect();
    std::thread::sleep(Duration::from_millis(300));
    // Slot 4's first process dies while it joins (before, during or after its admission).
    let mut doomed = spawn(&store, 4, true, host_of(4));
    std::thread::sleep(Duration::from_millis(100) + jitter(400));
    doomed.kill();
    // Member 1 dies while slot 5's process joins.
    let mut five = spawn(&store, 5, true, host_of(5));
    std::thread::sleep(Duration::from_millis(50) + jitter(300));
    members[1].kill();
    // Slot 4 again: a new process fills it.
    let mut four = spawn(&store, 4, true, host_of(4));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut outputs = Vec::new();
    for p in members.iter_mut().enumerate().filter(|(r, _)| *r != 1).map(|(_, p)| p).chain([&mut five, &mut four]) {
        outputs.push((p.name.clone(), p.finish(deadline)));
    }
    // Every pair of processes printed the same line for every collective both ran.
    let lines: Vec<(String, BTreeMap<u64, &str>)> = outputs.iter().map(|(n, o)| (n.clone(), by_iter(o))).collect();
    for (i, (na, a)) in lines.iter().enumerate() {
        for (nb, b) in &lines[i + 1..] {
            let common = a.keys().filter(|k| b.contains_key(k)).count();
            assert!(common >= AFTER, "{na} and {nb} ran only {common} collectives together");
            for (k, la) in a {
                if let Some(lb) = b.get(k) {
                    assert_eq!(la, lb, "{na} and {nb} disagree at iteration {k}");
                }
            }
        }
    }
    // The member killed during growth is reported once, by one collective, on every process
    // that ran it.
    let first = &lines[0].1;
    assert_eq!(first.values().filter(|l| l.contains("failed [1]")).count(), 1, "rank 0:\n{}", tail(&outputs[0].1));
    for (name, out) in &outputs {
        let done = out.lines().last().unwrap_or_default();
        assert!(done.contains("active [0, 2, 3, 4, 5]"), "{name} ends with {done}");
        // The last collective ran over the five.
        let last = by_iter(out).into_values().last().unwrap_or_default();
        assert!(last.contains("contributors [0, 2, 3, 4, 5]"), "{name}: {last}");
    }
}

#[test]
fn a_group_grows_into_empty_slots_through_kills_over_shm() {
    grow_with_kills(|_| None);
}

#[test]
fn a_group_grows_into_empty_slots_through_kills_over_tcp() {
    grow_with_kills(|r| Some(format!("elastic-host-{r}")));
}
