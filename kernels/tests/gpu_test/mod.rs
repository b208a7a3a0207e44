//! Shared by the GPU tests that hand memory to another process: open the GPU (or report the test as
//! not run), and run a test of the calling binary as a peer process (what a second rank would be).
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
            println!("{test}: not run: no CUDA device ({reason})");
            None
        }
        Err(e) => panic!("{test}: CUDA present but the device could not be opened: {e}"),
    }
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
