//! Harness of the multi-process integration tests: hosts a store in the test process, starts one
//! worker process per rank (a copy of the test binary running `chorus_test_worker`) with torchrun-style environment, enforces a wall-clock
//! limit, and fails with every rank's output when any rank fails.
#![allow(dead_code)]

#[path = "../../backend/tests/softverbs/mod.rs"]
pub mod softverbs;

use chorus::bootstrap::StoreServer;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-operation deadline inside the workers: a bug fails an operation instead of hanging.
pub const WORKER_TIMEOUT_MS: &str = "30000";
/// Wall-clock limit of one multi-process run.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Multi-process runs of one test binary run one at a time: ranks spin while they wait, and
/// the CI machine has 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the lock that serialises multi-process runs (for tests that start processes themselves).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for `child` (its stdout/stderr piped), killing it after `limit`: first SIGTERM (a
/// launcher forwards it to its ranks), then SIGKILL.
pub fn wait_with_limit(child: &mut Child, limit: Duration) -> Output {
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let mut termed = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            if !termed {
                eprintln!("wall-clock limit of {limit:?} reached: terminating pid {}", child.id());
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                termed = true;
            } else if Instant::now() > deadline + Duration::from_secs(10) {
                let _ = child.kill();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: ro.join().unwrap_or_default(), stderr: re.join().unwrap_or_default() }
}

/// Set in a copy of a test binary that runs one rank of the test worker (`chorus_test_worker`);
/// holds the worker's arguments, one per line.
pub const WORKER_ARGS: &str = "CHORUS_TEST_WORKER_ARGS";

/// The program that runs a rank: a copy of this test binary, told by [`worker_args`] to run only
/// [`worker_entry`]. Built with the test itself, so no other package's binary has to exist.
pub fn worker_exe() -> PathBuf {
    std::env::current_exe().expect("the test binary's path")
}

/// The arguments of [`worker_exe`] that make it a worker (quiet, so the harness prints nothing on
/// the worker's lines), and the environment variable that carries the worker's own arguments.
pub fn worker_args(args: &[&str]) -> (Vec<&'static str>, (&'static str, String)) {
    (vec!["--ignored", "--exact", "common::worker_entry", "--quiet", "--nocapture", "--test-threads", "1"], (WORKER_ARGS, args.join("\n")))
}

/// Not a test of its own: the body of a worker process (see [`worker_exe`]), selected by
/// `CHORUS_TEST_WORKER_ARGS`. Without that variable (a plain `--ignored` run) it has nothing to do.
#[test]
#[ignore = "entry point of the worker processes the multi-process tests start"]
fn worker_entry() {
    let Ok(args) = std::env::var(WORKER_ARGS) else { return };
    let args: Vec<String> = args.split('\n').filter(|a| !a.is_empty()).map(String::from).collect();
    std::process::exit(chorus_test_worker::run(&args));
}

/// Which transports connect the ranks (through `CHORUS_HOST_ID`, and `CHORUS_TEST_HOSTS` telling
/// the worker what `transports()` must report).
#[derive(Clone, Copy, Debug)]
pub enum Hosts {
    /// One host: every pair uses shared memory.
    Shm,
    /// One host per rank: every pair uses TCP.
    Tcp,
    /// Two ranks per host: pairs (0,1), (2,3), ... share memory, the others use TCP.
    Mixed,
    /// `k` consecutive ranks per host (shared memory within, TCP across).
    PerHost(usize),
    /// One host per rank, every pair over RDMA on the softverbs test provider.
    Rdma,
}

impl Hosts {
    pub fn label(self, rank: usize) -> String {
        match self {
            Hosts::Shm => "h0".into(),
            Hosts::Tcp | Hosts::Rdma => format!("h{rank}"),
            Hosts::Mixed => format!("h{}", rank / 2),
            Hosts::PerHost(k) => format!("h{}", rank / k),
        }
    }

    /// Environment for `rank` of an `n`-rank job.
    pub fn env(self, n: usize, rank: usize) -> Vec<(String, String)> {
        let labels: Vec<String> = (0..n).map(|r| self.label(r)).collect();
        let mut v = vec![("CHORUS_TEST_HOSTS".to_string(), labels.join(","))];
        if !matches!(self, Hosts::Shm) {
            // Shm runs keep the default (derived) host id.
            v.push(("CHORUS_HOST_ID".into(), format!("chorus-test-{}", labels[rank])));
        }
        if matches!(self, Hosts::Rdma) {
            v.extend(softverbs::env());
            v.push(("CHORUS_TEST_REMOTE".into(), "rdma".into()));
        }
        v
    }
}

/// How to start the ranks.
pub struct Launch<'a> {
    pub n: usize,
    pub scenario: &'a str,
    pub args: &'a [&'a str],
    /// Extra environment per rank.
    pub env: &'a dyn Fn(usize) -> Vec<(String, String)>,
    /// Program and arguments that run before the worker (e.g. `ip netns exec NS`), per rank.
    pub wrap: &'a dyn Fn(usize) -> Vec<String>,
    /// Host the store in the test process and pass `CHORUS_STORE_ADDR` (otherwise the env must
    /// provide MASTER_ADDR/MASTER_PORT and rank 0 hosts it).
    pub host_store: bool,
    pub limit: Duration,
}

impl<'a> Launch<'a> {
    pub fn new(n: usize, scenario: &'a str, args: &'a [&'a str], env: &'a dyn Fn(usize) -> Vec<(String, String)>) -> Self {
        Launch { n, scenario, args, env, wrap: &|_| Vec::new(), host_store: true, limit: RUN_LIMIT }
    }
}

/// Starts `n` ranks of `scenario`, waits (at most [`RUN_LIMIT`]), and asserts that every rank
/// exited with status 0.
pub fn run_ranks(n: usize, scenario: &str, args: &[&str], per_rank_env: impl Fn(usize) -> Vec<(String, String)>) -> Vec<Output> {
    run(&Launch::new(n, scenario, args, &per_rank_env))
}

/// [`run_ranks`] over the given transports.
pub fn run_hosts(n: usize, hosts: Hosts, scenario: &str, args: &[&str], extra: &[(&str, &str)]) -> Vec<Output> {
    run_ranks(n, scenario, args, |r| {
        let mut v = hosts.env(n, r);
        v.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        v
    })
}

pub fn run(l: &Launch) -> Vec<Output> {
    let t0 = Instant::now();
    let outs = run_unchecked(l);
    eprintln!("[chorus-test] {} ranks `{} {}`: {} ms", l.n, l.scenario, l.args.join(" "), t0.elapsed().as_millis());
    // A rank that exits 0 without the worker's success line did not run the scenario (the copy of
    // the test binary ran no worker): that is a failure, not a pass.
    let done = format!(": {} ok in ", l.scenario);
    let ok = outs.iter().all(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&done));
    if !ok || std::env::var_os("CHORUS_TEST_SHOW").is_some() {
        let report = describe(l, &outs);
        if !ok {
            panic!("{report}");
        }
        eprintln!("{report}");
    }
    outs
}

/// Every rank's status and output, for failure messages.
pub fn describe(l: &Launch, outs: &[Output]) -> String {
    let mut s = format!("{} ranks of `chorus-test-worker {} {}`:\n", l.n, l.scenario, l.args.join(" "));
    for (r, o) in outs.iter().enumerate() {
        s += &format!(
            "---- rank {r}: {}\n{}{}",
            status_text(&o.status),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    s
}

fn status_text(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(9)) => "KILLED (wall-clock limit or signal 9)".into(),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// Like [`run`] but returns the outputs without asserting success.
pub fn run_unchecked(l: &Launch) -> Vec<Output> {
    let _serial = serial();
    let server = if l.host_store { Some(StoreServer::bind("127.0.0.1:0".parse().unwrap()).expect("binding the test store")) } else { None };
    let port = server.as_ref().map(|s| s.local_addr().port());
    let exe = worker_exe();
    let worker: Vec<&str> = std::iter::once(l.scenario).chain(l.args.iter().copied()).collect();
    let (harness, (var, value)) = worker_args(&worker);
    let mut children: Vec<Child> = Vec::new();
    for rank in 0..l.n {
        let wrap = (l.wrap)(rank);
        let mut cmd = match wrap.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(&harness)
            .env(var, &value)
            .env_remove("CHORUS_STORE_ADDR")
            .env_remove("CHORUS_HOST_ID")
            .env_remove("CHORUS_TEST_HOSTS")
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", l.n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", l.n.to_string())
            .env("CHORUS_TIMEOUT_MS", WORKER_TIMEOUT_MS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(port) = port {
            cmd.env("CHORUS_STORE_ADDR", format!("127.0.0.1:{port}")).env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", port.to_string());
        }
        for (k, v) in (l.env)(rank) {
            cmd.env(k, v);
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                panic!("starting rank {rank} ({cmd:?}): {e}");
            }
        }
    }
    // Drain pipes on threads so no rank blocks on a full pipe.
    let readers: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let mut so = c.stdout.take().unwrap();
            let mut se = c.stderr.take().unwrap();
            std::thread::spawn(move || {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let t = std::thread::spawn(move || {
                    let _ = se.read_to_end(&mut b);
                    b
                });
                let _ = so.read_to_end(&mut a);
                (a, t.join().unwrap_or_default())
            })
        })
        .collect();
    let deadline = Instant::now() + l.limit;
    let mut status: Vec<Option<ExitStatus>> = vec![None; l.n];
    let mut killed = false;
    while status.iter().any(|s| s.is_none()) {
        for (c, s) in children.iter_mut().zip(status.iter_mut()) {
            if s.is_none() {
                *s = c.try_wait().expect("try_wait");
            }
        }
        if Instant::now() > deadline && !killed {
            eprintln!("wall-clock limit of {:?} reached: killing the remaining ranks", l.limit);
            for (c, s) in children.iter_mut().zip(&status) {
                if s.is_none() {
                    let _ = c.kill();
                }
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    status
        .into_iter()
        .zip(readers)
        .map(|(s, r)| {
            let (stdout, stderr) = r.join().unwrap_or_default();
            Output { status: s.unwrap(), stdout, stderr }
        })
        .collect()
}
