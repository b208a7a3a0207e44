//! Ranks that die while their group is being created (issue 25): the others fail at once naming
//! the dead rank (not at the deadline), and no shared-memory segment of the group stays behind.
//! Each test starts the ranks one by one, so the victim dies at a known point: after publishing its
//! record, before any link is up. The victim is killed with SIGKILL and not reaped until the end,
//! so to the survivors it is a zombie, which still passes `kill(pid, 0)`.
mod common;

use chorus::bootstrap::{Store, StoreClient, StoreServer};
use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workers' deadline: a survivor that waited for it would fail the test's 10 s bound.
const TIMEOUT_MS: &str = "60000";

/// Starts rank `rank` of an `n`-rank job of `create-dead-peer NAME DEAD`, all on one host.
fn spawn(port: u16, n: usize, rank: usize, name: &str, dead: &str) -> Child {
    spawn_on(port, n, rank, name, dead, None)
}

/// [`spawn`] with the host identity `host` (`CHORUS_HOST_ID`; `None`: the real one).
fn spawn_on(port: u16, n: usize, rank: usize, name: &str, dead: &str, host: Option<&str>) -> Child {
    let (harness, (var, value)) = common::worker_args(&["create-dead-peer", name, dead]);
    let mut command = Command::new(common::worker_exe());
    command.env_remove("CHORUS_HOST_ID");
    if let Some(h) = host {
        command.env("CHORUS_HOST_ID", h);
    }
    command
        .args(&harness)
        .env(var, value)
        .env_remove("CHORUS_TEST_HOSTS")
        .env("CHORUS_STORE_ADDR", format!("127.0.0.1:{port}"))
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", n.to_string())
        .env("CHORUS_TIMEOUT_MS", TIMEOUT_MS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a worker")
}

/// Waits for `child` (killing it past `limit`) and collects its output.
fn finish(mut child: Child, limit: Duration) -> Output {
    // A pipe the caller took is the caller's to read.
    let so = child.stdout.take();
    let se = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut so) = so {
            let _ = so.read_to_end(&mut v);
        }
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut se) = se {
            let _ = se.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Names of group `uid`'s segments in /dev/shm (the library names them `chorus-<uid>-...`, with
/// characters other than letters, digits, `.` and `_` made `_`).
/// No segment of the first group named `name` is left in /dev/shm (any found are removed, so a
/// failure does not leak them).
fn assert_no_segments_left(name: &str) {
    let left = segments_of(&format!("{name}.1"));
    left.iter().for_each(|n| drop(std::fs::remove_file(format!("/dev/shm/{n}"))));
    assert!(left.is_empty(), "segments left in /dev/shm after the survivors exited: {left:?}");
}

fn segments_of(uid: &str) -> Vec<String> {
    let safe: String = uid.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '_' }).collect();
    let prefix = format!("chorus-{safe}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(&prefix)).collect())
        .unwrap_or_default()
}

/// Starts the victim (rank `dead`) and kills it once its record is in the store; it is left
/// unreaped (a zombie) for the caller to reap.
fn start_and_kill_victim(port: u16, n: usize, dead: usize, name: &str) -> Child {
    kill_victim(spawn(port, n, dead, name, &dead.to_string()), port, dead, name)
}

/// Kills `victim` (rank `dead` of group `name`) once its record is in the store.
fn kill_victim(mut victim: Child, port: u16, dead: usize, name: &str) -> Child {
    let client = StoreClient::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).expect("the test's store");
    // A group's uid is its name and the rank's count of groups of that name made on the store.
    let record = format!("chorus/{name}.1/peer/{dead}");
    if let Err(e) = client.wait(&[record.as_str()], Duration::from_secs(60)) {
        let _ = victim.kill();
        panic!("rank {dead} never published its record: {e}\n{}", describe(&[finish(victim, Duration::from_secs(5))]));
    }
    victim.kill().expect("SIGKILL to the victim");
    victim
}

fn describe(outs: &[Output]) -> String {
    outs.iter()
        .map(|o| format!("---- {:?}\n{}{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        .collect()
}

/// Runs `survivors` to the end and checks each failed its creation, naming rank `dead`, in time.
fn expect_survivors_fail(survivors: Vec<Child>, dead: usize) {
    let outs: Vec<Output> = survivors.into_iter().map(|c| finish(c, Duration::from_secs(90))).collect();
    let ok = outs.iter().all(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("create-dead-peer ok in"));
    assert!(ok, "every survivor must fail its creation naming rank {dead} within 10 s:\n{}", describe(&outs));
    // What each survivor reported (shown with --nocapture).
    outs.iter().flat_map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("creation failed after")).map(str::to_string).collect::<Vec<_>>()).for_each(|l| eprintln!("{l}"));
}

/// A 4-rank group: ranks 0 and 1 wait for the others' records, rank 2 publishes its record and is
/// killed, rank 3 never comes. Ranks 0 and 1 must not wait for rank 3 until the deadline.
#[test]
fn a_rank_killed_while_the_others_wait_for_records_fails_them_at_once() {
    let _serial = common::serial();
    let server = StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("binding the test store");
    let port = server.local_addr().port();
    let name = format!("dead-while-waiting-{}", std::process::id());
    let survivors: Vec<Child> = (0..2).map(|r| spawn(port, 4, r, &name, "2")).collect();
    let mut victim = start_and_kill_victim(port, 4, 2, &name);
    expect_survivors_fail(survivors, 2);
    let _ = victim.wait();
    assert_no_segments_left(&name);
}

/// Two hosts of two ranks each (host identities; sockets between them): rank 2 is killed while the
/// others wait for the records. Rank 3 sees its process gone; ranks 0 and 1, on the other host,
/// cannot, and learn it from the group's failure record that rank 3 writes.
#[test]
fn ranks_on_another_host_learn_of_the_death_from_the_store() {
    let _serial = common::serial();
    let server = StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("binding the test store");
    let port = server.local_addr().port();
    let name = format!("dead-other-host-{}", std::process::id());
    let host = |r: usize| format!("chorus-test-h{}", r / 2);
    let survivors: Vec<Child> = [0, 1, 3].into_iter().map(|r| spawn_on(port, 4, r, &name, "2", Some(&host(r)))).collect();
    let victim = spawn_on(port, 4, 2, &name, "2", Some(&host(2)));
    let mut victim = kill_victim(victim, port, 2, &name);
    expect_survivors_fail(survivors, 2);
    let _ = victim.wait();
    assert_no_segments_left(&name);
}

/// A 3-rank group: rank 2 publishes its record and is killed before the others start; they find
/// every record, map its segments and wait for it to map theirs. They must fail at once, and
/// remove the segments it left.
#[test]
fn a_rank_killed_before_the_links_are_up_fails_the_others_at_once() {
    let _serial = common::serial();
    let server = StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("binding the test store");
    let port = server.local_addr().port();
    let name = format!("dead-before-links-{}", std::process::id());
    let mut victim = start_and_kill_victim(port, 3, 2, &name);
    let survivors: Vec<Child> = (0..2).map(|r| spawn(port, 3, r, &name, "2")).collect();
    expect_survivors_fail(survivors, 2);
    let _ = victim.wait();
    assert_no_segments_left(&name);
}

/// A rank killed at rendezvous with nobody there to see it leaves its segments; the next start of
/// the same group (same name on a fresh store: the same uid) removes them before creating its own.
#[test]
fn the_next_start_of_a_group_removes_what_a_killed_rank_left() {
    let _serial = common::serial();
    let name = format!("dead-alone-{}", std::process::id());
    let uid = format!("{name}.1");
    {
        let server = StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("binding the test store");
        let mut victim = start_and_kill_victim(server.local_addr().port(), 2, 1, &name);
        let _ = victim.wait();
    }
    let left = segments_of(&uid);
    assert_eq!(left.len(), 2, "the killed rank's signal and data segments are expected in /dev/shm: {left:?}");
    let server = StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("binding the test store");
    let port = server.local_addr().port();
    let ranks: Vec<Child> = (0..2).map(|r| spawn(port, 2, r, &name, "none")).collect();
    let outs: Vec<Output> = ranks.into_iter().map(|c| finish(c, Duration::from_secs(90))).collect();
    assert!(outs.iter().all(|o| o.status.success()), "the group's next start failed:\n{}", describe(&outs));
    let still: Vec<String> = segments_of(&uid);
    still.iter().for_each(|n| drop(std::fs::remove_file(format!("/dev/shm/{n}"))));
    assert!(still.is_empty(), "the next start left the dead rank's segments (or its own): {still:?}");
}

/// Issue 25: the same group destroyed and created again in the same processes (same store, same
/// name) 20 times, 4 ranks, an all_reduce in each incarnation. The heartbeat interval of 5 s makes
/// a destroy that waits for the membership threads' next turn fail the worker's 2 s bound.
#[test]
fn a_group_destroyed_and_created_again_20_times() {
    common::run_ranks(4, "recreate", &["20"], |_| {
        vec![("CHORUS_HEARTBEAT_MS".to_string(), "5000".to_string()), ("CHORUS_HEARTBEAT_TIMEOUT_MS".to_string(), "60000".to_string())]
    });
}

/// Issue 25: a rank killed inside a loop of collectives and not reaped (a zombie, which
/// `kill(pid, 0)` still finds) is seen dead at once by the survivors on its host, not only by the
/// heartbeat: with a heartbeat timeout and a deadline of a minute, they must finish the loop (the
/// failure reported, 20 collectives over the survivors) long before either.
#[test]
fn an_unreaped_dead_rank_is_seen_dead_without_the_heartbeat() {
    use std::io::{BufRead, BufReader};
    let _serial = common::serial();
    let server = StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("binding the test store");
    let addr = server.local_addr();
    let spawn_ft = |rank: usize| {
        Command::new(env!("CARGO_BIN_EXE_chorus-ft-worker"))
            .args(["all_reduce", "1000000", "1000", "20", "failure"])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "3")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", addr.port().to_string())
            .env("CHORUS_STORE_ADDR", addr.to_string())
            .env("CHORUS_TIMEOUT_MS", TIMEOUT_MS)
            .env("CHORUS_HEARTBEAT_TIMEOUT_MS", TIMEOUT_MS)
            .env_remove("CHORUS_HOST_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chorus-ft-worker")
    };
    let mut ranks: Vec<Child> = (0..3).map(spawn_ft).collect();
    // Rank 0's first result line: the group is up and the loop runs.
    let mut first = BufReader::new(ranks[0].stdout.take().expect("piped"));
    let mut line = String::new();
    first.read_line(&mut line).expect("rank 0's output");
    assert!(!line.is_empty(), "rank 0 printed nothing:\n{}", describe(&[finish(ranks.remove(0), Duration::from_secs(5))]));
    let rest = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = first.read_to_end(&mut v);
        v
    });
    let mut victim = ranks.pop().expect("rank 2");
    victim.kill().expect("SIGKILL to rank 2");
    let killed = Instant::now();
    let outs: Vec<Output> = ranks.into_iter().map(|c| finish(c, Duration::from_secs(90))).collect();
    let took = killed.elapsed();
    let _ = victim.wait();
    let _ = rest.join();
    assert!(outs.iter().all(|o| o.status.success()), "the survivors failed:\n{}", describe(&outs));
    assert!(took < Duration::from_secs(20), "the survivors needed {took:?} to finish after rank 2 died (heartbeat timeout {TIMEOUT_MS} ms)");
}
