//! `chorus-run` end to end, with `sh` as the program.

mod support;
use std::process::{Command, Output};

fn chorus_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chorus-run"))
        .args(args)
        .output()
        .expect("run chorus-run")
}

#[test]
fn every_rank_runs_with_prefixed_output() {
    let out = chorus_run(&[
        "-n",
        "3",
        "--",
        "sh",
        "-c",
        "echo hello $RANK; echo err $LOCAL_RANK/$WORLD_SIZE >&2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for k in 0..3 {
        assert!(
            stdout.lines().any(|l| l == format!("[rank {k}] hello {k}")),
            "rank {k} missing in:\n{stdout}"
        );
        assert!(
            stderr.lines().any(|l| l == format!("[rank {k}] err {k}/3")),
            "rank {k} missing in:\n{stderr}"
        );
    }
}

#[test]
fn children_get_the_store_environment() {
    let script = r#"echo "$MASTER_ADDR $MASTER_PORT $CHORUS_STORE_ADDR $GROUP_RANK $LOCAL_WORLD_SIZE"; printf 'no newline'"#;
    let out = chorus_run(&["-n", "1", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap();
    let f: Vec<&str> = line.trim_start_matches("[rank 0] ").split(' ').collect();
    assert_eq!(f[0], "127.0.0.1");
    assert_eq!(f[2], format!("127.0.0.1:{}", f[1]));
    assert_eq!((f[3], f[4]), ("0", "1"));
    assert!(
        stdout.lines().any(|l| l == "[rank 0] no newline"),
        "{stdout}"
    );
}

#[test]
fn failing_rank_sets_exit_code() {
    let out = chorus_run(&[
        "-n",
        "3",
        "--",
        "sh",
        "-c",
        r#"if [ "$RANK" = 1 ]; then exit 3; fi"#,
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rank 1 exited with status 3"));
}

#[test]
fn failure_terminates_hung_ranks_after_grace() {
    // Rank 0 would sleep far longer than the test; chorus-run must stop it after the grace period.
    let out = chorus_run(&[
        "-n",
        "2",
        "--grace-secs",
        "0.2",
        "sh",
        "-c",
        r#"if [ "$RANK" = 1 ]; then exit 4; fi; sleep 120"#,
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_kill_on_failure_lets_survivors_finish() {
    let out = chorus_run(&[
        "-n",
        "2",
        "--grace-secs",
        "0",
        "--no-kill-on-failure",
        "sh",
        "-c",
        r#"if [ "$RANK" = 1 ]; then exit 5; fi; sleep 0.5; echo survivor done"#,
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[rank 0] survivor done"));
}

#[test]
fn signal_death_is_reported() {
    let out = chorus_run(&[
        "-n",
        "2",
        "sh",
        "-c",
        r#"if [ "$RANK" = 0 ]; then kill -9 $$; fi"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rank 0 was killed by signal 9"), "{stderr}");
}

#[test]
fn missing_program_fails_cleanly() {
    let out = chorus_run(&["-n", "2", "/nonexistent/chorus-test-program"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed to start rank 0"));
}

#[test]
fn sigterm_to_launcher_stops_every_rank() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chorus-run"))
        .args(["-n", "2", "sh", "-c", "echo ready; sleep 120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ready = 0;
    while ready < 2 {
        let line = lines
            .next()
            .expect("chorus-run closed stdout early")
            .unwrap();
        ready += usize::from(line.ends_with("ready"));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Returns long before the ranks' 120 s sleep would end.
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    // Every rank's output pipe closed, i.e. the ranks and their `sleep`s are gone.
    assert!(lines.all(|l| l.is_ok()));
}

#[test]
fn ranks_get_a_fresh_job_secret() {
    let script = r#"echo "secret $CHORUS_SECRET""#;
    let first = chorus_run(&["-n", "2", "--", "sh", "-c", script]);
    assert!(first.status.success());
    let secrets = |out: &Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split("secret ").nth(1).map(str::to_string))
            .collect()
    };
    let a = secrets(&first);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0], a[1], "every rank of a job has the same secret");
    assert_eq!(a[0].len(), 64);
    let b = secrets(&chorus_run(&["-n", "1", "--", "sh", "-c", script]));
    assert_ne!(a[0], b[0], "each job gets its own secret");
}

/// Whether process `pid` is gone: no `/proc` entry, or one that only waits to be reaped (an orphan
/// is reaped by init or a subreaper, in its own time).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Issue 25: after `kill -9` of chorus-run (which it cannot forward) its ranks ran on. They get
/// SIGKILL when the launcher dies.
#[test]
fn ranks_die_with_a_killed_launcher() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    // Each rank is the looping shell, so `$$` is the rank's pid.
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_chorus-run"))
        .args(["-n", "3", "sh", "-c", "echo pid $$; while :; do sleep 0.05; done"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(launcher.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    while pids.len() < 3 {
        let line = lines.next().expect("chorus-run closed stdout early").unwrap();
        if let Some(pid) = line.split("pid ").nth(1) {
            pids.push(pid.trim().parse::<u32>().unwrap());
        }
    }
    assert!(pids.iter().all(|&p| !gone(p)), "every rank runs before the launcher is killed");
    launcher.kill().unwrap(); // SIGKILL: no chance to forward anything
    launcher.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pids.iter().all(|&p| gone(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let running: Vec<u32> = pids.iter().copied().filter(|&p| !gone(p)).collect();
    for &p in &running {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    assert!(running.is_empty(), "ranks {running:?} outlived their killed launcher");
}

/// The launcher's store process: its child started with `CHORUS_RUN_STORE_PORT`.
fn store_process_of(launcher: u32) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let found = support::children_of(launcher).into_iter().find(|&p| support::has_env(p, "CHORUS_RUN_STORE_PORT"));
        match found {
            Some(p) => return p,
            None if std::time::Instant::now() > deadline => panic!("chorus-run (pid {launcher}) has no store process"),
            None => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Issue 24: the store runs in a process of its own; when it dies the ranks run on (a
/// fault-tolerant group goes on through its replicas), the launcher says so and still reports the
/// ranks' outcome; when the job ends, the store process ends with it.
#[test]
fn the_ranks_outlive_the_store_process() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_chorus-run"))
        .args(["-n", "2", "sh", "-c", "echo up $RANK; sleep 1; echo still $RANK; test -d \"$CHORUS_REPLICA_DIR\" && echo replica dir $RANK"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(launcher.stdout.take().unwrap()).lines();
    let mut up = 0;
    while up < 2 {
        let line = lines.next().expect("chorus-run closed stdout early").unwrap();
        up += line.contains("] up ") as usize;
    }
    let store = store_process_of(launcher.id());
    assert!(Command::new("kill").args(["-9", &store.to_string()]).status().unwrap().success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{rest:?}\nstderr:\n{stderr}");
    for r in 0..2 {
        assert!(rest.contains(&format!("[rank {r}] still {r}")), "rank {r} did not outlive the store: {rest:?}\n{stderr}");
        assert!(rest.contains(&format!("[rank {r}] replica dir {r}")), "rank {r} had no CHORUS_REPLICA_DIR: {rest:?}");
    }
    assert!(stderr.contains(&format!("the store process (pid {store}) was killed by signal 9")), "{stderr}");
}

#[test]
fn the_store_process_ends_with_the_job() {
    use std::process::Stdio;
    let launcher = Command::new(env!("CARGO_BIN_EXE_chorus-run"))
        .args(["-n", "1", "sh", "-c", "sleep 0.5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let store = store_process_of(launcher.id());
    let out = launcher.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gone(store) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gone(store), "the store process {store} outlived the job");
}

/// Issue 23: `--restart-failed` starts a failed rank again as a replacement (`CHORUS_JOIN=1`, same
/// rank, its output marked as the restart); the job then finishes with status 0.
#[test]
fn a_failed_rank_is_started_again_as_a_replacement() {
    let script = r#"if [ "$CHORUS_JOIN" = 1 ]; then echo replacement $RANK; exit 0; fi; if [ $RANK = 1 ]; then exit 7; fi; sleep 0.5; echo done $RANK; echo dir $CHORUS_REPLICA_DIR"#;
    let out = chorus_run(&["-n", "2", "--restart-failed", "--", "sh", "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.lines().any(|l| l == "[rank 1, restart 1] replacement 1"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "[rank 0] done 0"), "{stdout}");
    assert!(!stdout.contains("replacement 0"), "{stdout}");
    assert!(stderr.contains("rank 1 exited with status 7") && stderr.contains("restart 1 of 3"), "{stderr}");
    // The replica directory the launcher made for the ranks is gone with the job.
    let dir = stdout.lines().find_map(|l| l.strip_prefix("[rank 0] dir ")).expect("rank 0 names its replica directory");
    assert!(!dir.is_empty() && !std::path::Path::new(dir).exists(), "the replica directory {dir:?} outlived the job");
}

/// Restarts are counted over the job: once spent, a failure ends the job as without them.
#[test]
fn restarts_run_out() {
    let out = chorus_run(&["-n", "2", "--restart-failed=2", "--", "sh", "-c", "if [ $RANK = 1 ]; then exit 7; fi; sleep 1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stderr.matches("rank 1 exited with status 7").count(), 3, "{stderr}");
    assert!(stderr.contains("ranks [1] did not finish"), "{stderr}");
}
