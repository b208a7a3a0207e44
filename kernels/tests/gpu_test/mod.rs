//! Shared by the GPU tests: open the GPU (or report the test as not run, a failure under
//! `CHORUS_REQUIRE_GPU=1`), and run a test of the calling binary as a peer process (what a second rank would be).
use chorus_kernels::cuda::cudarc::driver::CudaContext;
use chorus_kernels::cuda::open_device;
use chorus_kernels::KernelError;
use std::io::Read;
use std::sync::Arc;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Device 0, or `None` (printing "not run") where there is no usable CUDA device.
pub fn gpu(test: &str) -> Option<Arc<CudaContext>> {
    match open_device(0) {
        Ok(ctx) => {
            println!("{test}: running on device 0 = {}", ctx.name().unwrap_or_else(|_| "unknown".into()));
            Some(ctx)
        }
        Err(KernelError::CudaUnavailable(reason)) => {
            not_run(test, &reason);
            None
        }
        Err(e) => panic!("{test}: CUDA present but the device could not be opened: {e}"),
    }
}

/// Reports a GPU test that found no usable CUDA device. With `CHORUS_REQUIRE_GPU=1` (set by
/// `scripts/gpu-tests`) that is a failure, so a GPU machine with a broken driver does not report
/// its GPU tests as passed; otherwise a "not run" line (the GPU tests are `#[ignore]`d, so a plain
/// run already reports them as not run; this is an explicit `--ignored` run on a machine without one).
pub fn not_run(test: &str, reason: &str) {
    if std::env::var("CHORUS_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("{test}: CHORUS_REQUIRE_GPU is set but there is no usable CUDA device: {reason}");
    }
    println!("{test}: not run: no CUDA device ({reason})");
}

/// Runs `--exact test --ignored` of this test binary with `env`, kills it after `limit`, and returns its
/// exit status and stdout (stdout and stderr lines are echoed as `[peer] ...`).
pub fn run_peer(test: &str, env: &[(&str, String)], limit: Duration) -> (ExitStatus, String) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--ignored", "--nocapture", "--test-threads", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the peer process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (t_out.join().unwrap(), t_err.join().unwrap());
    for l in out.lines().chain(err.lines()) {
        println!("  [peer] {l}");
    }
    (status, out)
}
