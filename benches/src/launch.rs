//! `--nprocs N`: spawn N local ranks of this binary around a store hosted here.
use chorus_bootstrap::StoreServer;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Marks a spawned rank, so it never spawns ranks itself.
pub const CHILD_ENV: &str = "CHORUS_BENCH_CHILD";

/// After the first failing rank, how long the others get before they are killed.
const GRACE: Duration = Duration::from_secs(5);

/// Whether this process runs as one rank of a job (spawned by us, chorus-run, torchrun or SLURM).
pub fn in_job_env() -> bool {
    let set = |k: &str| std::env::var(k).map(|v| !v.trim().is_empty()).unwrap_or(false);
    set(CHILD_ENV) || (set("RANK") && set("WORLD_SIZE")) || set("SLURM_PROCID")
}

/// The command line minus `--nprocs N` / `--nprocs=N`.
fn child_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--nprocs" {
            it.next();
        } else if !a.starts_with("--nprocs=") {
            out.push(a);
        }
    }
    out
}

/// Runs `n` ranks and returns the exit code: 0 only if every rank exited 0.
pub fn run(n: usize) -> i32 {
    if n == 0 {
        eprintln!("chorus-bench: --nprocs must be at least 1");
        return 2;
    }
    let server = match StoreServer::bind(SocketAddr::from(([127, 0, 0, 1], 0))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chorus-bench: cannot start the store: {e}");
            return 1;
        }
    };
    let port = server.local_addr().port();
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("chorus-bench: cannot find my own executable: {e}");
            return 1;
        }
    };
    let args = child_args();
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for rank in 0..n {
        let spawned = Command::new(&exe)
            .args(&args)
            .env(CHILD_ENV, "1")
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("CHORUS_STORE_ADDR", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(if rank == 0 { Stdio::inherit() } else { Stdio::null() })
            .stderr(Stdio::inherit())
            .spawn();
        match spawned {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("chorus-bench: cannot start rank {rank}: {e}");
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return 1;
            }
        }
    }
    let mut codes: Vec<Option<i32>> = vec![None; n];
    let mut first_failure: Option<i32> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        for (rank, c) in children.iter_mut().enumerate() {
            if codes[rank].is_some() {
                continue;
            }
            let code = match c.try_wait() {
                Ok(Some(st)) => st.code().unwrap_or(1),
                Ok(None) => continue,
                Err(_) => 1,
            };
            codes[rank] = Some(code);
            if code != 0 {
                eprintln!("chorus-bench: rank {rank} exited with status {code}");
                if first_failure.is_none() {
                    first_failure = Some(code);
                    kill_at = Some(Instant::now() + GRACE);
                }
            }
        }
        if codes.iter().all(Option::is_some) {
            break;
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for (rank, c) in children.iter_mut().enumerate() {
                if codes[rank].is_none() {
                    eprintln!("chorus-bench: killing rank {rank} after another rank failed");
                    let _ = c.kill();
                }
            }
            kill_at = None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(server);
    first_failure.unwrap_or(0)
}
