//! Losing the process that hosts the store (issue 24, until the group can do without it): with
//! `MASTER_ADDR`/`MASTER_PORT` and no `CHORUS_STORE_ADDR`, rank 0 hosts the store; `kill -9` of
//! rank 0 inside an all_reduce loop must end every survivor alike, with an error that names the
//! lost store's host and what to do, instead of a hang or a hint at the configuration.
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_chorus-ft-worker");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn spawn(rank: usize, n: usize, port: u16) -> Child {
    Command::new(WORKER)
        .args(["all_reduce", "1000000", "64"])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", n.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", n.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("CHORUS_TIMEOUT_MS", "30000")
        .env_remove("CHORUS_STORE_ADDR")
        .env_remove("CHORUS_HOST_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

#[test]
fn killing_the_store_host_names_it_on_every_survivor() {
    let n = 4;
    let port = free_port();
    let mut kids: Vec<Child> = (0..n).map(|r| spawn(r, n, port)).collect();
    let errs: Vec<_> = kids
        .iter_mut()
        .map(|k| {
            let mut e = k.stderr.take().expect("stderr");
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = kids[0].kill();
    let _ = kids[0].wait();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut statuses = Vec::new();
    for (r, k) in kids.iter_mut().enumerate().skip(1) {
        loop {
            if let Some(s) = k.try_wait().expect("wait") {
                statuses.push((r, s));
                break;
            }
            if Instant::now() > deadline {
                kids.iter_mut().for_each(|k| drop(k.kill()));
                panic!("survivor {r} still runs 60 s after the store host died");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let errs: Vec<String> = errs.into_iter().map(|h| h.join().expect("stderr reader")).collect();
    for (r, status) in statuses {
        let err = &errs[r];
        assert_eq!(status.code(), Some(3), "survivor {r} should fail its collective ({status}):\n{err}");
        assert!(err.contains("hosted in rank 0's process") && err.contains("stopped answering"), "survivor {r} does not name the lost store host:\n{err}");
        assert!(!err.contains("check that every rank uses the same MASTER_ADDR"), "survivor {r} blames the configuration:\n{err}");
    }
}
