//! The `chorus-run` launcher (package chorus-bootstrap) launches the test worker on 3 ranks: it
//! hosts the store, sets torchrun's environment plus CHORUS_STORE_ADDR, and the short `smoke`
//! scenario passes on every rank. The launcher runs as a copy of this test binary calling the
//! launcher's code, so the test never depends on another package's binary being built.
mod common;
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
        // parsing is tested in chorus-bootstrap's tests/launch.rs.
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
