//! Real network namespaces: ranks 0,1 in namespace A and ranks 2,3 in namespace B, joined by a
//! veth pair (10.77.0.1/24 in A, 10.77.0.2/24 in B). No host-id override: the default host id
//! includes the network namespace, so pairs inside a namespace must use shared memory and pairs
//! across must use TCP (the worker asserts it). Rank 0 hosts the store itself
//! (MASTER_ADDR=10.77.0.1, no CHORUS_STORE_ADDR), as under torchrun.
//!
//! Needs root and iproute2: built as an ignored test (reported as not run) where the build ran
//! without them (see build.rs).
mod common;
use common::Launch;
use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

const PREFIX: &str = "chorus-test-";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Deletes namespaces left behind by earlier runs whose process is gone (names carry the pid).
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.rsplit('-').next().unwrap_or("").split('x').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Two namespaces joined by a veth pair; deleted on drop (deleting a namespace removes its
/// end of the veth, which removes the pair).
struct Namespaces {
    a: String,
    b: String,
    /// The veth end inside namespace `a` (set down to partition the namespaces).
    veth_a: String,
}

impl Namespaces {
    fn create() -> Result<Namespaces, String> {
        // Unique per test in this process (tests run in parallel threads).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = format!("{}x{k}", std::process::id());
        let (va, vb) = (format!("cva{pid}"), format!("cvb{pid}"));
        let ns = Namespaces { a: format!("{PREFIX}a-{pid}"), b: format!("{PREFIX}b-{pid}"), veth_a: va.clone() };
        // In case this pid's names survived an earlier crash.
        let _ = ip(&["netns", "del", &ns.a]);
        let _ = ip(&["netns", "del", &ns.b]);
        ip(&["netns", "add", &ns.a])?;
        ip(&["netns", "add", &ns.b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &ns.a])?;
        ip(&["link", "set", &vb, "netns", &ns.b])?;
        ip(&["-n", &ns.a, "addr", "add", "10.77.0.1/24", "dev", &va])?;
        ip(&["-n", &ns.b, "addr", "add", "10.77.0.2/24", "dev", &vb])?;
        for (n, v) in [(&ns.a, &va), (&ns.b, &vb)] {
            ip(&["-n", n, "link", "set", v, "up"])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// The two namespaces; the test is only built un-ignored where the build ran as root with `ip`
/// (build.rs), so failing to create them here is a failure.
fn namespaces() -> Namespaces {
    remove_leftovers();
    match Namespaces::create() {
        Ok(ns) => ns,
        Err(e) if !is_root() => panic!("creating network namespaces failed ({e}): this test needs root and iproute2 (`ip`)"),
        Err(e) => panic!("creating network namespaces failed as root: {e}"),
    }
}

#[test]
#[cfg_attr(not(chorus_netns), ignore = "needs root and iproute2 (`ip`) to create network namespaces; the tests were built without them")]
fn four_ranks_across_two_network_namespaces() {
    let ns = namespaces();
    let env = |_r: usize| {
        vec![
            ("MASTER_ADDR".to_string(), "10.77.0.1".to_string()),
            ("MASTER_PORT".to_string(), "29517".to_string()),
            ("CHORUS_TEST_HOSTS".to_string(), "a,a,b,b".to_string()),
        ]
    };
    let wrap = |r: usize| vec!["ip".to_string(), "netns".into(), "exec".into(), if r < 2 { ns.a.clone() } else { ns.b.clone() }];
    let launch = Launch { wrap: &wrap, host_store: false, ..Launch::new(4, "smoke", &[], &env) };
    let outs = common::run(&launch);
    for (r, o) in outs.iter().enumerate() {
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("smoke ok"), "rank {r} did not report success: {s}");
    }
    drop(ns);
}

/// A network partition between the namespaces (the veth link set down) while ranks loop
/// all_reduce over TCP: the side that can still reach the store (rank 0 hosts it in namespace A)
/// detects the silent ranks through heartbeats, removes them and goes on with identical results;
/// the cut-off side cannot decide anything without the store and never reports a result over a
/// view of its own.
#[test]
#[cfg_attr(not(chorus_netns), ignore = "needs root and iproute2 (`ip`) to create network namespaces; the tests were built without them")]
fn partition_between_namespaces_keeps_the_store_side_going() {
    let ns = namespaces();
    let worker = env!("CARGO_BIN_EXE_chorus-ft-worker");
    let spawn = |r: usize| {
        let n = if r < 2 { &ns.a } else { &ns.b };
        Command::new("ip")
            .args(["netns", "exec", n, worker, "all_reduce", "1000000", "500", "100"])
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", "4")
            .env("LOCAL_RANK", (r % 2).to_string())
            .env("LOCAL_WORLD_SIZE", "2")
            .env("MASTER_ADDR", "10.77.0.1")
            .env("MASTER_PORT", "29531")
            .env("CHORUS_TIMEOUT_MS", "20000")
            .env_remove("CHORUS_STORE_ADDR")
            .env_remove("CHORUS_HOST_ID")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn worker")
    };
    let mut kids: Vec<std::process::Child> = (0..4).map(spawn).collect();
    let drain = |r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let mut r = r;
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    use std::io::Read;
    let pipes: Vec<_> = kids
        .iter_mut()
        .map(|k| (drain(Box::new(k.stdout.take().unwrap())), drain(Box::new(k.stderr.take().unwrap()))))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    ip(&["-n", &ns.a, "link", "set", &ns.veth_a, "down"]).expect("cut the link");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut status = Vec::new();
    for r in 0..2 {
        loop {
            match kids[r].try_wait().unwrap() {
                Some(s) => {
                    status.push(s);
                    break;
                }
                None if std::time::Instant::now() > deadline => {
                    for k in kids.iter_mut() {
                        let _ = k.kill();
                    }
                    panic!("rank {r} (store side) hung after the partition");
                }
                None => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    // The cut-off side has no store: it may still be waiting; it must not have produced results.
    for k in kids.iter_mut().skip(2) {
        let _ = k.kill();
        let _ = k.wait();
    }
    let outs: Vec<(String, String)> = pipes.into_iter().map(|(o, e)| (o.join().unwrap(), e.join().unwrap())).collect();
    for r in 0..2 {
        assert!(status[r].success(), "rank {r}: {}\n{}", status[r], outs[r].1);
    }
    let body = |o: &str| o.lines().filter(|l| !l.starts_with("done")).map(String::from).collect::<Vec<_>>();
    assert!(body(&outs[0].0) == body(&outs[1].0), "the store side disagrees");
    let a = body(&outs[0].0);
    assert_eq!(a.iter().filter(|l| l.contains("failed [2, 3]")).count(), 1, "expected one collective to report ranks 2 and 3 failed");
    assert!(a.last().unwrap().contains("contributors [0, 1]"), "{}", a.last().unwrap());
    for (r, out) in outs.iter().enumerate().skip(2) {
        assert!(!out.0.lines().any(|l| l.contains("contributors [2, 3]")), "rank {r} formed a view of its own:\n{}", out.0);
    }
    drop(ns);
}

/// Issue 24: the store's host is torn down. Rank 0 hosts the store (`env://`) alone in namespace
/// A; ranks 1-3 are in namespace B. Namespace A's link goes down and rank 0 is killed, so the
/// store and rank 0's replica vanish without a word: ranks 1-3 hold 3 of the 5 membership
/// replicas, find rank 0 silent, agree on removing it at the same collective and go on.
#[test]
#[cfg_attr(not(chorus_netns), ignore = "needs root and iproute2 (`ip`) to create network namespaces; the tests were built without them")]
fn tearing_down_the_store_hosts_namespace_leaves_the_other_host_going() {
    let ns = namespaces();
    let worker = env!("CARGO_BIN_EXE_chorus-ft-worker");
    let spawn = |r: usize| {
        let n = if r == 0 { &ns.a } else { &ns.b };
        Command::new("ip")
            .args(["netns", "exec", n, worker, "all_reduce", "1000000", "500", "100"])
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", "4")
            .env("LOCAL_RANK", if r == 0 { "0".to_string() } else { (r - 1).to_string() })
            .env("LOCAL_WORLD_SIZE", if r == 0 { "1" } else { "3" })
            .env("MASTER_ADDR", "10.77.0.1")
            .env("MASTER_PORT", "29533")
            .env("CHORUS_TIMEOUT_MS", "20000")
            .env("CHORUS_MEMBERSHIP_REPLICAS", "1")
            .env_remove("CHORUS_STORE_ADDR")
            .env_remove("CHORUS_HOST_ID")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn worker")
    };
    let mut kids: Vec<std::process::Child> = (0..4).map(spawn).collect();
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let pipes: Vec<_> = kids
        .iter_mut()
        .map(|k| (drain(Box::new(k.stdout.take().unwrap())), drain(Box::new(k.stderr.take().unwrap()))))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The host goes away: no FIN or RST reaches the other side, then its processes are gone.
    ip(&["-n", &ns.a, "link", "set", &ns.veth_a, "down"]).expect("cut the link");
    let _ = kids[0].kill();
    let _ = kids[0].wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut status = Vec::new();
    for r in 1..4 {
        loop {
            match kids[r].try_wait().unwrap() {
                Some(s) => {
                    status.push(s);
                    break;
                }
                None if std::time::Instant::now() > deadline => {
                    for k in kids.iter_mut() {
                        let _ = k.kill();
                    }
                    panic!("rank {r} hung after the store's host went away");
                }
                None => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    let outs: Vec<(String, String)> = pipes.into_iter().map(|(o, e)| (o.join().unwrap(), e.join().unwrap())).collect();
    for (i, s) in status.iter().enumerate() {
        assert!(s.success(), "rank {}: {s}\n{}", i + 1, outs[i + 1].1);
    }
    let body = |o: &str| o.lines().filter(|l| !l.starts_with("done")).map(String::from).collect::<Vec<_>>();
    let first = body(&outs[1].0);
    for r in 2..4 {
        assert!(body(&outs[r].0) == first, "ranks 1 and {r} disagree");
    }
    assert_eq!(first.iter().filter(|l| l.contains("failed [0]")).count(), 1, "expected one collective to report rank 0 failed");
    assert!(first.last().unwrap().contains("contributors [1, 2, 3]"), "{}", first.last().unwrap());
    drop(ns);
}
