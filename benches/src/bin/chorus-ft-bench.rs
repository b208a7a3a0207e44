//! Fault-tolerance benchmark: how long a `kill -9` of one rank interrupts the survivors, and how
//! long a replacement takes to rejoin. Runs the `chorus-ft-worker` program (built beside this
//! binary) with its wall-clock marks, kills one rank mid-loop, starts a replacement, and reports:
//!
//! * detection: kill → the first survivor log line that saw the failure (from `CHORUS_LOG`);
//! * crash-to-completion: kill → the collective that reports the failure returned on every
//!   survivor (the outage an application sees);
//! * rejoin: replacement process start → admitted by a new view, and → its first collective.
//!
//! `--grow 4,5,8` measures growth instead: a group of 8 slots created by 4 ranks, joined by one
//! process and then by three at once; each step's time is from the joiners' start to the first
//! collective of the last of them.
//!
//! `--no-replicas` runs the ranks without membership replicas (`CHORUS_MEMBERSHIP_REPLICAS=0`:
//! the store alone agrees); `--kill-store-host` (with replicas) lets rank 0 host the store (`MASTER_ADDR`/
//! `MASTER_PORT`, as under `env://`) and kills rank 0: the store dies with it, and the replacement
//! finds the group through the survivors' replicas (`CHORUS_JOIN_VIA`).
//!
//! The failure-free cost of fault tolerance is measured by `benches/ft_overhead.sh` (the bench
//! with `CHORUS_FT=1` and `CHORUS_FT=0` side by side).
use chorus_bootstrap::StoreServer;
use clap::Parser;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "Detection, crash-to-completion and rejoin times of chorus fault tolerance")]
struct Args {
    /// Ranks.
    #[arg(short = 'n', long, default_value_t = 4)]
    nprocs: usize,
    /// Elements (i64) per all_reduce.
    #[arg(long, default_value_t = 1000)]
    elems: usize,
    /// Trials.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Put every rank on its own "host" (TCP between all pairs) instead of shared memory.
    #[arg(long)]
    tcp: bool,
    /// No membership replicas (CHORUS_MEMBERSHIP_REPLICAS=0): the store alone agrees.
    #[arg(long)]
    no_replicas: bool,
    /// Rank 0 hosts the store and is the one killed (with replicas; its replacement joins through them).
    #[arg(long)]
    kill_store_host: bool,
    /// Growth instead of failures, e.g. `4,5,8`: a group of 8 slots created by ranks 0-3
    /// (`CHORUS_INITIAL_MEMBERS`), then rank 4 joins, then ranks 5-7 at once; reports each
    /// joiner's time from its process start to its first collective. Replaces `-n`.
    #[arg(long, value_delimiter = ',')]
    grow: Vec<usize>,
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

struct Rank {
    child: Child,
    marks: mpsc::Receiver<String>,
    /// The rank's membership replica address (its `replica <addr>` line), once printed.
    replica: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// Where the ranks find the store: one the bench hosts, or rank 0's (on a free port).
enum StoreAt {
    Bench(StoreServer),
    RankZero(u16),
}

impl StoreAt {
    fn new(a: &Args) -> StoreAt {
        if a.kill_store_host {
            let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
            StoreAt::RankZero(port)
        } else {
            StoreAt::Bench(StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("store"))
        }
    }
}

fn spawn(worker: &std::path::Path, store: &StoreAt, rank: usize, a: &Args, join: Option<&[String]>) -> Rank {
    let mut c = Command::new(worker);
    if let (Some(first), Some(_)) = (a.grow.first(), a.grow.last()) {
        c.env("CHORUS_INITIAL_MEMBERS", format!("0-{}", first - 1));
    }
    match store {
        StoreAt::Bench(s) => c.env("MASTER_PORT", s.local_addr().port().to_string()).env("CHORUS_STORE_ADDR", s.local_addr().to_string()),
        StoreAt::RankZero(port) => c.env("MASTER_PORT", port.to_string()).env_remove("CHORUS_STORE_ADDR"),
    };
    c.env("CHORUS_MEMBERSHIP_REPLICAS", if a.no_replicas && !a.kill_store_host { "0" } else { "1" });
    // Growing, the members run until every slot is filled; else until a replacement is back.
    let until = match a.grow.is_empty() {
        true => "rejoin".to_string(),
        false => format!("members:{}", (0..a.world()).map(|r| r.to_string()).collect::<Vec<_>>().join(",")),
    };
    c.args(["all_reduce", "100000000", &a.elems.to_string(), "200", &until])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", a.world().to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", a.world().to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("CHORUS_FT_TIMES", "1")
        .env("CHORUS_LOG", "chorus_backend::api::ft=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(via) = join {
        c.env("CHORUS_JOIN", "1").env("CHORUS_JOIN_VIA", via.join(","));
    }
    if a.tcp {
        c.env("CHORUS_HOST_ID", format!("bench-host-{rank}"));
    }
    let mut child = c.spawn().expect("spawn chorus-ft-worker");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    let replica = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = replica.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("replica ") {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_string());
            }
            let _ = tx.send(line);
        }
    });
    Rank { child, marks: rx, replica }
}

/// Parses the RFC 3339 timestamp tracing puts first on a line into unix nanoseconds.
fn log_time_ns(line: &str) -> Option<u128> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + hh * 3600 + mm * 60 + ss;
    let frac_ns: i64 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?;
    Some(secs as u128 * 1_000_000_000 + frac_ns as u128)
}

fn wait_for(r: &Rank, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        match r.marks.recv_timeout(left) {
            Ok(l) if pred(&l) => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

impl Args {
    /// The group's size: its slots when it grows.
    fn world(&self) -> usize {
        self.grow.last().copied().unwrap_or(self.nprocs)
    }
}

/// `--grow`: per trial, each step's joiners (started at once) from process start to first
/// collective.
fn grow(a: &Args, worker: &std::path::Path) {
    let steps: Vec<(usize, usize)> = a.grow.windows(2).map(|w| (w[0], w[1])).collect();
    assert!(!steps.is_empty() && steps.iter().all(|(f, t)| f < t), "--grow needs increasing sizes, e.g. 4,5,8");
    println!("# chorus growth {:?}, {} transport, all_reduce of {} x i64 in a loop on the members, {} slots", a.grow, if a.tcp { "tcp" } else { "shm" }, a.elems, a.world());
    println!("# trial  {}", steps.iter().map(|(f, t)| format!("{f}->{t}_first_op_ms(max over joiners)")).collect::<Vec<_>>().join("  "));
    let mut sums = vec![0f64; steps.len()];
    for trial in 0..a.trials {
        let store = StoreAt::new(a);
        let mut ranks: Vec<Rank> = (0..a.grow[0]).map(|r| spawn(worker, &store, r, a, None)).collect();
        for r in &ranks {
            wait_for(r, |l| l.starts_with("mark iter 50 "), Duration::from_secs(60)).expect("ranks running");
        }
        let mut row = Vec::new();
        for (i, &(from, to)) in steps.iter().enumerate() {
            let start = now_ns();
            let joiners: Vec<Rank> = (from..to).map(|r| spawn(worker, &store, r, a, Some(&[]))).collect();
            let mut worst = 0u128;
            for j in &joiners {
                let first = wait_for(j, |l| l.starts_with("mark iter "), Duration::from_secs(60)).expect("joiner ran");
                let t: u128 = first.split_whitespace().nth(3).and_then(|x| x.parse().ok()).unwrap_or(0);
                worst = worst.max(t.saturating_sub(start));
            }
            row.push(ms(worst));
            sums[i] += ms(worst);
            ranks.extend(joiners);
        }
        println!("{trial:7}  {}", row.iter().map(|v| format!("{v:12.2}")).collect::<Vec<_>>().join("  "));
        for mut r in ranks {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
    let t = a.trials as f64;
    println!("# mean   {}", sums.iter().map(|v| format!("{:12.2}", v / t)).collect::<Vec<_>>().join("  "));
}

fn main() {
    let a = Args::parse();
    let worker = std::env::current_exe().expect("exe").with_file_name("chorus-ft-worker");
    if !worker.exists() {
        eprintln!("{} not found: build it with `cargo build --release --bins`", worker.display());
        std::process::exit(2);
    }
    if !a.grow.is_empty() {
        return grow(&a, &worker);
    }
    let membership = match (a.kill_store_host, a.no_replicas) {
        (true, _) => "membership replicas, rank 0 hosts the store and is killed, its replacement joins through the replicas",
        (false, false) => "membership replicas, store outside the ranks",
        (false, true) => "no replicas, store outside the ranks",
    };
    println!("# chorus fault tolerance, {} ranks, {} transport, all_reduce of {} x i64, {membership}", a.nprocs, if a.tcp { "tcp" } else { "shm" }, a.elems);
    println!("# trial  detect_ms  crash_to_completion_ms  rejoin_admitted_ms  rejoin_first_op_ms");
    let mut sums = [0f64; 4];
    for trial in 0..a.trials {
        let store = StoreAt::new(&a);
        let mut ranks: Vec<Rank> = (0..a.nprocs).map(|r| spawn(&worker, &store, r, &a, None)).collect();
        for r in &ranks {
            wait_for(r, |l| l.starts_with("mark iter 50 "), Duration::from_secs(60)).expect("ranks running");
        }
        let victim = if a.kill_store_host { 0 } else { 1 + trial % (a.nprocs - 1) };
        let kill_ns = now_ns();
        ranks[victim].child.kill().expect("kill");
        let _ = ranks[victim].child.wait();
        let mut detect = u128::MAX;
        let mut complete = 0u128;
        for (r, rk) in ranks.iter().enumerate() {
            if r == victim {
                continue;
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                let Ok(l) = rk.marks.recv_timeout(left) else { break };
                if l.contains("failure during") {
                    if let Some(t) = log_time_ns(&l) {
                        detect = detect.min(t.saturating_sub(kill_ns));
                    }
                } else if l.starts_with("mark iter ") && l.contains(&format!("failed [{victim}]")) {
                    let t: u128 = l.split_whitespace().nth(3).and_then(|x| x.parse().ok()).unwrap_or(0);
                    complete = complete.max(t.saturating_sub(kill_ns));
                    break;
                }
            }
        }
        let detect_ms = if detect == u128::MAX { f64::NAN } else { ms(detect) };
        // Without the store (it died with rank 0) the replacement finds the group through the
        // survivors' replicas; with it, through the store.
        let via: Vec<String> = ranks.iter().enumerate().filter(|(r, _)| *r != victim).filter_map(|(_, rk)| rk.replica.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect();
        let join_start = now_ns();
        let joiner = spawn(&worker, &store, victim, &a, Some(if a.kill_store_host { &via } else { &[] }));
        let ready = wait_for(&joiner, |l| l.starts_with("mark ready "), Duration::from_secs(60)).expect("replacement admitted");
        let first = wait_for(&joiner, |l| l.starts_with("mark iter "), Duration::from_secs(60)).expect("replacement ran");
        let t_ready: u128 = ready.split_whitespace().nth(2).and_then(|x| x.parse().ok()).unwrap_or(0);
        let t_first: u128 = first.split_whitespace().nth(3).and_then(|x| x.parse().ok()).unwrap_or(0);
        let (rj, rf) = (t_ready.saturating_sub(join_start), t_first.saturating_sub(join_start));
        println!("{trial:7}  {detect_ms:9.2}  {:22.2}  {:18.2}  {:18.2}", ms(complete), ms(rj), ms(rf));
        sums[0] += detect_ms;
        sums[1] += ms(complete);
        sums[2] += ms(rj);
        sums[3] += ms(rf);
        ranks[victim] = joiner;
        for mut r in ranks {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
    let t = a.trials as f64;
    println!("# mean   {:9.2}  {:22.2}  {:18.2}  {:18.2}", sums[0] / t, sums[1] / t, sums[2] / t, sums[3] / t);
}
