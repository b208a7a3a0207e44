//! Group creation at scale (issue 26, item 4): N ranks, each on a simulated host of its own
//! (`CHORUS_HOST_ID`, so every pair goes over TCP), create a group and run one barrier. Reports,
//! per N: the time from starting the processes to every rank past the barrier, the slowest rank's
//! own creation and barrier times, and the threads and file descriptors a rank holds once the
//! group is up (from `/proc/self`).
//!
//! `cargo build --release --bins && target/release/chorus-scale-bench --ranks 8,16,32,64`
use chorus_backend::{Options, ProcessGroup};
use chorus_bootstrap::StoreServer;
use clap::Parser;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Group creation and a barrier for N ranks on simulated hosts (TCP between all pairs)")]
struct Args {
    /// Group sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
    ranks: Vec<usize>,
    /// Runs per size (the best is reported).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

/// Entries of a `/proc/self` directory (threads in `task`, descriptors in `fd`).
fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// This process's threads by name, digits and the group's name dropped (`chorus-tcp-x` for
/// `chorus-tcp-3`...), as `name=count,...`.
fn thread_kinds() -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let kind: String = name.trim().split(['-', '.']).take(2).collect::<Vec<_>>().join("-").chars().filter(|c| !c.is_ascii_digit()).collect();
        *kinds.entry(kind).or_default() += 1;
    }
    kinds.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(",")
}

/// One rank: create, barrier, report, wait for everyone to have reported (a second barrier), exit.
fn rank() -> ! {
    let t0 = Instant::now();
    let pg = ProcessGroup::from_env(Options::default()).unwrap_or_else(|e| {
        eprintln!("group creation failed: {e}");
        std::process::exit(2)
    });
    let created = t0.elapsed();
    pg.barrier().unwrap_or_else(|e| {
        eprintln!("barrier failed: {e}");
        std::process::exit(3)
    });
    let barrier = t0.elapsed() - created;
    println!("ready create_ms {:.1} barrier_ms {:.1} threads {} fds {} kinds {}", created.as_secs_f64() * 1e3, barrier.as_secs_f64() * 1e3, count("/proc/self/task"), count("/proc/self/fd"), thread_kinds());
    let _ = pg.barrier();
    pg.destroy();
    std::process::exit(0)
}

struct Run {
    wall: Duration,
    create_ms: f64,
    barrier_ms: f64,
    threads: usize,
    fds: usize,
}

fn field(line: &str, name: &str) -> f64 {
    line.split_whitespace().skip_while(|w| *w != name).nth(1).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn run(n: usize, timeout: Duration) -> Result<Run, String> {
    let store = StoreServer::bind("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut kids = Vec::new();
    for r in 0..n {
        let child = Command::new(&exe)
            .env("CHORUS_SCALE_RANK", "1")
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", "0")
            .env("LOCAL_WORLD_SIZE", "1")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", store.local_addr().port().to_string())
            .env("CHORUS_STORE_ADDR", store.local_addr().to_string())
            .env("CHORUS_HOST_ID", format!("scale-host-{r}"))
            .env("CHORUS_TIMEOUT_MS", (timeout.as_millis() as u64).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning rank {r}: {e}"))?;
        kids.push(child);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for k in &mut kids {
        let out = k.stdout.take().expect("stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if l.starts_with("ready ") {
                    let _ = tx.send(l);
                }
            }
        });
    }
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = timeout.checked_sub(start.elapsed()).ok_or_else(|| format!("{n} ranks: {} of them ready after {timeout:?}", lines.len()))?;
        lines.push(rx.recv_timeout(left).map_err(|_| format!("{n} ranks: {} of them ready after {timeout:?}", lines.len()))?);
    }
    let wall = start.elapsed();
    for mut k in kids {
        let _ = k.wait();
    }
    let max = |name: &str| lines.iter().map(|l| field(l, name)).fold(0f64, f64::max);
    eprintln!("{n} ranks, rank threads by kind: {}", lines[0].split(" kinds ").nth(1).unwrap_or(""));
    Ok(Run { wall, create_ms: max("create_ms"), barrier_ms: max("barrier_ms"), threads: max("threads") as usize, fds: max("fds") as usize })
}

fn main() {
    if std::env::var("CHORUS_SCALE_RANK").is_ok() {
        rank();
    }
    let a = Args::parse();
    println!("# chorus group creation + barrier, every rank its own simulated host (TCP between all pairs), best of {} per size", a.rounds);
    println!("| ranks | start to all past the barrier (s) | slowest creation (s) | slowest barrier (ms) | threads per rank | fds per rank |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in &a.ranks {
        let mut best: Option<Run> = None;
        for _ in 0..a.rounds {
            match run(n, Duration::from_secs(a.timeout_s)) {
                Ok(r) if best.as_ref().is_none_or(|b| r.wall < b.wall) => best = Some(r),
                Ok(_) => {}
                Err(e) => eprintln!("{e}"),
            }
        }
        match best {
            Some(r) => println!("| {n} | {:.2} | {:.2} | {:.1} | {} | {} |", r.wall.as_secs_f64(), r.create_ms / 1e3, r.barrier_ms, r.threads, r.fds),
            None => println!("| {n} | failed | | | | |"),
        }
    }
}
