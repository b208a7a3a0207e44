//! `chorus-run` (package chorus-bootstrap) launches the test worker on 3 ranks: it hosts the
//! store, sets torchrun's environment plus CHORUS_STORE_ADDR, and the short `smoke` scenario
//! passes on every rank.
mod common;
use std::process::{Command, Stdio};

#[test]
fn chorus_run_launches_three_ranks() {
    let worker = common::worker_exe();
    let launcher = worker.parent().unwrap().join("chorus-run");
    if !launcher.exists() {
        // Cargo builds the binaries of the package under test only; chorus-run belongs to
        // chorus-bootstrap and exists once the workspace (or that package) was built.
        eprintln!("SKIPPED: {} is not built (run `cargo build --workspace` first)", launcher.display());
        return;
    }
    let _serial = common::serial();
    let mut child = Command::new(&launcher)
        .args(["-n", "3", "--grace-secs", "2", "--"])
        .arg(&worker)
        .arg("smoke")
        .env("CHORUS_TIMEOUT_MS", common::WORKER_TIMEOUT_MS)
        .env_remove("CHORUS_HOST_ID")
        .env_remove("CHORUS_TEST_HOSTS")
        .env_remove("CHORUS_STORE_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chorus-run");
    let out = common::wait_with_limit(&mut child, common::RUN_LIMIT);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "chorus-run -n 3 failed ({:?}):\n{text}", out.status);
    for r in 0..3 {
        assert!(text.contains(&format!("[rank {r}] rank {r}: smoke ok")), "rank {r} did not report success:\n{text}");
    }
}
