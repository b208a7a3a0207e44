//! The `chorus-run` launcher (package chorus-tools) launches the test worker on 3 ranks: it
//! hosts the store, sets torchrun's environment plus CHORUS_STORE_ADDR, and the short `smoke`
//! scenario passes on every rank. The launcher runs as a copy of this test binary calling the
//! launcher's code, so the test never depends on another package's binary being built.
mod common;
#[path = "../tools/tests/support/mod.rs"]
mod support;
use chorus_bootstrap::launch::{self, LaunchOptions};
use std::process::{Command, Stdio};

/// Set in the copy of this test binary that plays `chorus-run`.
const LAUNCHER_CHILD: &str = "CHORUS_TEST_LAUNCHER_CHILD";

#[test]
fn chorus_run_launches_three_ranks() {
    let worker = common::worker_exe();
    if std::env::var_os(LAUNCHER_CHILD).is_some() {
        // The launcher: chorus-run's own code (`launch::run`, what the binary calls after parsing
        // its arguments), so the test needs no binary of another package. The binary's argument
        // parsing is tested in chorus-tools's tests/launch.rs.
        let (harness, _) = common::worker_args(&["smoke"]);
        let mut opts = LaunchOptions::new(3, worker.display().to_string(), harness.iter().map(|a| a.to_string()).collect());
        opts.grace = std::time::Duration::from_secs(2);
        std::process::exit(launch::run(&opts));
    }
    let _serial = common::serial();
    let (_, (var, value)) = common::worker_args(&["smoke"]);
    let me = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(me)
        .args(["--exact", "chorus_run_launches_three_ranks", "--nocapture", "--test-threads", "1"])
        .env(LAUNCHER_CHILD, "1")
        // The ranks the launcher starts inherit the worker's arguments.
        .env(var, value)
        .env("CHORUS_TIMEOUT_MS", common::WORKER_TIMEOUT_MS)
        .env_remove("CHORUS_HOST_ID")
        .env_remove("CHORUS_TEST_HOSTS")
        .env_remove("CHORUS_STORE_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the launcher");
    let out = common::wait_with_limit(&mut child, common::RUN_LIMIT);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "chorus-run -n 3 failed ({:?}):\n{text}", out.status);
    for r in 0..3 {
        assert!(text.contains(&format!("[rank {r}] rank {r}: smoke ok")), "rank {r} did not report success:\n{text}");
    }
}

/// Set in the copy of this test binary that plays `chorus-run --restart-failed=1` over the
/// fault-tolerance worker.
const FT_LAUNCHER_CHILD: &str = "CHORUS_TEST_FT_LAUNCHER_CHILD";

/// Ranks of `children` (pids) with `RANK=<rank>` in their environment, other than the store process.
fn rank_process(children: &[u32], rank: usize) -> Option<u32> {
    let want = format!("RANK={rank}");
    children.iter().copied().find(|p| {
        let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        vars.contains(&want.as_bytes()) && !support::has_env(*p, launch::STORE_CHILD_VAR)
    })
}

/// The lines of `stdout` forwarded with `prefix`, prefix removed (the launcher's first line
/// follows libtest's "test NAME ... " on the same line).
fn lines_of<'a>(stdout: &'a str, prefix: &str) -> Vec<&'a str> {
    stdout.lines().filter_map(|l| l.split_once(prefix).map(|(_, rest)| rest)).collect()
}

/// Issue 24 under `chorus-run`: the store lives in the launcher's store process, which is killed
/// during a loop of all_reduces over 4 ranks, and rank 2 right after it. The survivors agree on the
/// failure and go on through their membership replicas; the launcher (`--restart-failed`) starts
/// rank 2 again, and the replacement finds the group through the replica addresses the ranks left
/// in the launcher's `CHORUS_REPLICA_DIR` and rejoins in place. Every rank ends with the same
/// results and the whole group active, and the launcher exits 0.
#[test]
fn chorus_run_survives_its_store_process_and_restarts_a_killed_rank() {
    const ME: &str = "chorus_run_survives_its_store_process_and_restarts_a_killed_rank";
    if std::env::var_os(FT_LAUNCHER_CHILD).is_some() {
        // The store process: the launcher starts this program again with STORE_CHILD_VAR set.
        if let Some(code) = launch::serve_store_if_asked() {
            std::process::exit(code);
        }
        let args = ["all_reduce", "1000000", "1000", "100", "epoch:2"].map(String::from).to_vec();
        let mut opts = LaunchOptions::new(4, env!("CARGO_BIN_EXE_chorus-ft-worker"), args);
        opts.store_process = true;
        opts.restarts = 1;
        opts.kill_on_failure = false;
        std::process::exit(launch::run(&opts));
    }
    let _serial = common::serial();
    let me = std::env::current_exe().expect("the test binary's path");
    let mut launcher = Command::new(me)
        .args(["--exact", ME, "--nocapture", "--test-threads", "1"])
        .env(FT_LAUNCHER_CHILD, "1")
        .env("CHORUS_TIMEOUT_MS", common::WORKER_TIMEOUT_MS)
        .env_remove("CHORUS_HOST_ID")
        .env_remove("CHORUS_TEST_HOSTS")
        .env_remove("CHORUS_STORE_ADDR")
        .env_remove("CHORUS_REPLICA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the launcher");
    // Once every rank runs the loop (the replacement's lines aside, each prints one per collective).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (store, victim) = loop {
        let kids = support::children_of(launcher.id());
        let store = kids.iter().copied().find(|&p| support::has_env(p, launch::STORE_CHILD_VAR));
        if let (Some(s), true) = (store, (0..4).all(|r| rank_process(&kids, r).is_some())) {
            break (s, rank_process(&kids, 2).unwrap());
        }
        assert!(std::time::Instant::now() < deadline, "the launcher did not start its store and 4 ranks");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::thread::sleep(std::time::Duration::from_millis(800));
    for pid in [store, victim] {
        // SAFETY: plain kill(2) on a pid read from our child launcher's children, not yet reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = common::wait_with_limit(&mut launcher, common::RUN_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let whole = || format!("stderr:\n{stderr}\nstdout (last 4000 bytes):\n{}", &stdout[stdout.len().saturating_sub(4000)..]);
    assert!(out.status.success(), "chorus-run failed ({:?}):\n{}", out.status, whole());
    assert!(stderr.contains(&format!("the store process (pid {store}) was killed by signal 9")), "{}", whole());
    assert!(stderr.contains("started rank 2 again as a replacement"), "{}", whole());
    // The survivors agree line for line (the last line is each one's own summary).
    let survivors: Vec<Vec<&str>> = [0, 1, 3].iter().map(|r| lines_of(&stdout, &format!("[rank {r}] "))).collect();
    let reference = &survivors[0][..survivors[0].len() - 1];
    for (s, r) in survivors.iter().zip([0, 1, 3]) {
        let s = &s[..s.len() - 1];
        let first = (0..s.len().max(reference.len())).find(|&i| s.get(i) != reference.get(i));
        assert!(first.is_none(), "survivors 0 and {r} disagree from line {first:?}: {:?} vs {:?}\n{}", first.and_then(|i| reference.get(i)), first.and_then(|i| s.get(i)), whole());
    }
    assert!(reference.iter().any(|l| l.contains("failed [2]")), "no collective reported rank 2's failure\n{}", whole());
    // The replacement's collectives are the survivors' last ones, and it contributes from its first.
    let replacement = lines_of(&stdout, "[rank 2, restart 1] ");
    assert!(replacement.len() > 100, "the replacement ran only {} collectives\n{}", replacement.len(), whole());
    let body = &replacement[..replacement.len() - 1];
    let tail = &reference[reference.len().saturating_sub(body.len())..];
    let first = (0..body.len()).find(|&i| tail.get(i) != body.get(i));
    assert!(first.is_none(), "the replacement's results differ from the survivors' from its line {first:?}: {:?} vs {:?}\n{}", first.and_then(|i| tail.get(i)), first.and_then(|i| body.get(i)), whole());
    assert!(body[0].contains("contributors [0, 1, 2, 3]"), "the replacement is not a contributor: {}", body[0]);
    for last in survivors.iter().map(|s| s[s.len() - 1]).chain([replacement[replacement.len() - 1]]) {
        assert!(last.contains("active [0, 1, 2, 3]"), "a rank ended without the replacement: {last}");
    }
}
