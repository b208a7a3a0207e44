//! Losing the process that hosts the store (issue 24): with `MASTER_ADDR`/`MASTER_PORT` and no
//! `CHORUS_STORE_ADDR`, rank 0 hosts the store, and `kill -9` of rank 0 inside an all_reduce loop
//! takes the store with it.
//! * With membership replicas (`CHORUS_MEMBERSHIP_REPLICAS=1`), the survivors agree without it:
//!   every one reports rank 0 failed at the same collective, with identical results, and goes on.
//! * Without, every survivor fails alike, with an error that names the lost store's host and
//!   what to do, instead of a hang or a hint at the configuration.
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_chorus-ft-worker");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn spawn(rank: usize, n: usize, port: u16, replicas: bool) -> Child {
    Command::new(WORKER)
        .args(["all_reduce", "100000000", "20000", "100", "failure"])
        .env("CHORUS_MEMBERSHIP_REPLICAS", if replicas { "1" } else { "0" })
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", n.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", n.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("CHORUS_TIMEOUT_MS", "30000")
        .env_remove("CHORUS_STORE_ADDR")
        .env_remove("CHORUS_HOST_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Starts `n` ranks (rank 0 hosting the store), kills rank 0 after `kill_after`, and returns each
/// survivor's (exit status, stdout, stderr).
fn kill_the_store_host(n: usize, replicas: bool, kill_after: Duration) -> Vec<(std::process::ExitStatus, String, String)> {
    let port = free_port();
    let mut kids: Vec<Child> = (0..n).map(|r| spawn(r, n, port, replicas)).collect();
    let pipes: Vec<_> = kids.iter_mut().map(|k| (drain(k.stdout.take().expect("stdout")), drain(k.stderr.take().expect("stderr")))).collect();
    std::thread::sleep(kill_after);
    let _ = kids[0].kill();
    let _ = kids[0].wait();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut statuses = Vec::new();
    for (r, k) in kids.iter_mut().enumerate().skip(1) {
        loop {
            if let Some(s) = k.try_wait().expect("wait") {
                statuses.push(s);
                break;
            }
            if Instant::now() > deadline {
                kids.iter_mut().for_each(|k| drop(k.kill()));
                panic!("survivor {r} still runs 90 s after the store host died");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let outs: Vec<(String, String)> = pipes.into_iter().map(|(o, e)| (o.join().expect("stdout reader"), e.join().expect("stderr reader"))).collect();
    statuses.into_iter().zip(outs.into_iter().skip(1)).map(|(s, (o, e))| (s, o, e)).collect()
}

#[test]
fn with_replicas_the_survivors_go_on_after_the_store_host_dies() {
    let n = 4;
    let survivors = kill_the_store_host(n, true, Duration::from_millis(1500));
    let mut first: Option<Vec<String>> = None;
    for (i, (status, out, err)) in survivors.iter().enumerate() {
        let r = i + 1;
        assert!(status.success(), "survivor {r} failed ({status}):\n{err}\n{}", out.lines().rev().take(5).collect::<Vec<_>>().join("\n"));
        // Identical per-collective lines (results, contributors, failed ranks); the final line names
        // each rank's own connections.
        let lines: Vec<String> = out.lines().filter(|l| !l.starts_with("done")).map(String::from).collect();
        let reports = lines.iter().filter(|l| l.contains("failed [0]")).count();
        assert_eq!(reports, 1, "survivor {r}: rank 0's failure reported {reports} times");
        let after = lines.iter().skip_while(|l| !l.contains("failed [0]")).count();
        assert_eq!(after, 101, "survivor {r}: 100 collectives after the failure");
        let done = out.lines().last().unwrap_or_default();
        assert!(done.contains("active [1, 2, 3]"), "survivor {r}: {done}");
        match &first {
            None => first = Some(lines),
            Some(f) => assert_eq!(f, &lines, "survivors 1 and {r} disagree"),
        }
    }
}

#[test]
fn without_replicas_losing_the_store_host_is_named_on_every_survivor() {
    for (i, (status, _, err)) in kill_the_store_host(4, false, Duration::from_millis(1500)).iter().enumerate() {
        let r = i + 1;
        assert_eq!(status.code(), Some(3), "survivor {r} should fail its collective ({status}):\n{err}");
        assert!(err.contains("hosted in rank 0's process") && err.contains("stopped answering"), "survivor {r} does not name the lost store host:\n{err}");
        assert!(!err.contains("check that every rank uses the same MASTER_ADDR"), "survivor {r} blames the configuration:\n{err}");
    }
}
