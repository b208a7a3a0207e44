//! `chorus-run`: a `torchrun --standalone`-style launcher that hosts the store itself. The program
//! (its argument parsing) is in the `chorus-tools` package; its work is here.
//!
//! The store lives with the launcher, not in rank 0, so a crashing worker never takes the job's
//! store down (see the failure contract in docs/design.md). The binary runs it in a child process
//! of its own ([`LaunchOptions::store_process`]): should that process die, the ranks go on through
//! their membership replicas and the launcher keeps supervising them. Each child's stdout/stderr
//! is forwarded line by line with a `[rank K] ` prefix (`[rank K, restart R] ` for a replacement).
//!
//! With [`LaunchOptions::restarts`] (`--restart-failed`) a rank that fails is started again as a
//! replacement (`CHORUS_JOIN=1`) that rejoins the running group in place; the launcher gives every
//! rank a replica directory (`CHORUS_REPLICA_DIR`) where the ranks leave their replica addresses,
//! so a replacement finds the group even after the store died.
//!
//! The launcher makes a random job secret (unless it was given one in `CHORUS_SECRET` or
//! `CHORUS_SECRET_FILE`): its store serves only clients that prove it, and each rank gets it in
//! `CHORUS_SECRET`.
//!
//! Each rank runs in its own process group so that terminating a rank also stops whatever it spawned
//! (a shell's children, data-loader workers). Because ranks are then outside the terminal's
//! foreground group, the binary calls [`forward_termination_signals`] so Ctrl-C / SIGTERM to the
//! launcher still reach every rank.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::server::ServerLimits;
use crate::{JobSecret, StoreServer};

/// How often the launcher polls its children.
const POLL: Duration = Duration::from_millis(20);
/// After SIGTERM, how long ranks get before SIGKILL.
const TERM_TO_KILL: Duration = Duration::from_secs(3);
/// How long to wait for output forwarding to drain once every rank exited (a grandchild holding the
/// pipe open must not hang the launcher).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`run`] launches, and how (the `chorus-run` command line).
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Number of ranks to spawn.
    pub nproc: usize,
    /// Store port; `None` picks a free one.
    pub master_port: Option<u16>,
    /// When a rank fails, terminate the others after `grace` (default). Fault-tolerance jobs whose
    /// survivors keep going set this to false and wait for everyone.
    pub kill_on_failure: bool,
    /// How long the remaining ranks get, once a rank failed, before they are terminated.
    pub grace: Duration,
    /// The program every rank runs.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Host the store in a child process of its own rather than in the launcher (the binary
    /// does): the ranks survive its death as they survive a rank's. That child is this same
    /// program started again with the same arguments and [`STORE_CHILD_VAR`] set, so a program
    /// that sets this calls [`serve_store_if_asked`] first thing.
    pub store_process: bool,
    /// How many failed ranks, in all, to start again as replacements (`CHORUS_JOIN=1`, same rank)
    /// that rejoin the running group; 0: none.
    pub restarts: u32,
}

impl LaunchOptions {
    /// `nproc` ranks of `program` with `args`; a free store port, the store in the launcher, kill on
    /// failure after 5 s, no restarts.
    pub fn new(nproc: usize, program: impl Into<String>, args: Vec<String>) -> Self {
        Self {
            nproc,
            master_port: None,
            kill_on_failure: true,
            grace: Duration::from_secs(5),
            program: program.into(),
            args,
            store_process: false,
            restarts: 0,
        }
    }
}

/// How one rank ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Code(i32),
    Signal(i32),
    /// `try_wait` itself failed; we no longer know anything about the child.
    Lost,
}

impl Outcome {
    fn from_status(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(sig) = status.signal() {
                return Outcome::Signal(sig);
            }
        }
        status.code().map(Outcome::Code).unwrap_or(Outcome::Lost)
    }

    /// How the process ended, for a report ("exited with status 3"); `None` when it was lost
    /// (already reported where that was found).
    fn how(self) -> Option<String> {
        match self {
            Outcome::Code(c) => Some(format!("exited with status {c}")),
            Outcome::Signal(s) => Some(format!("was killed by signal {s}{}", signal_name(s))),
            Outcome::Lost => None,
        }
    }

    fn exit_code(self) -> i32 {
        match self {
            Outcome::Code(c) => c,
            Outcome::Signal(_) | Outcome::Lost => 1,
        }
    }
}

/// Last termination signal received by the launcher (0 = none).
static RECEIVED_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn record_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Makes SIGINT/SIGTERM/SIGHUP to this process terminate every rank (SIGTERM, then SIGKILL) instead
/// of killing the launcher and orphaning the ranks. Process-wide: call it from the launcher binary,
/// not from a library user's process.
pub fn forward_termination_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only performs an atomic store (async-signal-safe); the
        // function pointer has the `extern "C" fn(c_int)` signature signal(2) expects.
        unsafe {
            libc::signal(
                sig,
                record_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// Runs the job and returns the launcher's exit code: 0 only if every rank exited 0, else the first
/// observed non-zero exit code (1 for a rank killed by a signal), or 128+signal when the launcher
/// itself was told to stop (see [`forward_termination_signals`]).
pub fn run(opts: &LaunchOptions) -> i32 {
    if opts.nproc == 0 {
        eprintln!("chorus-run: -n must be at least 1");
        return 2;
    }
    let bind = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        opts.master_port.unwrap_or(0),
    );
    // The job secret: the one the launcher was given (CHORUS_SECRET / CHORUS_SECRET_FILE), else a
    // fresh one; the store demands it and every rank gets it in CHORUS_SECRET.
    let secret = match crate::auth::secret_from_env().and_then(|given| match given {
        Some(s) => Ok(s),
        None => JobSecret::generate(),
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chorus-run: {e}");
            return 1;
        }
    };
    let mut store = match StoreHost::start(opts, bind, &secret) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chorus-run: {e}");
            return 1;
        }
    };
    let port = store.port;
    tracing::info!(port, nproc = opts.nproc, "chorus-run store listening");
    // Where the ranks leave their replica addresses for replacements (unless the caller chose).
    let replica_dir = ReplicaDir::make();

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let ctx = RankContext { opts, port, secret: &secret, replica_dir: replica_dir.path(), done: done_tx };
    let mut children: Vec<Child> = Vec::with_capacity(opts.nproc);
    for rank in 0..opts.nproc {
        match ctx.spawn(rank, 0) {
            Ok(child) => children.push(child),
            Err(e) => {
                eprintln!(
                    "chorus-run: failed to start rank {rank} ({:?}): {e}; is the program on PATH?",
                    opts.program
                );
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return 1;
            }
        }
    }

    let code = supervise(opts, &mut children, &mut store, &mut |rank, restart| ctx.spawn(rank, restart));

    // Every forwarder holds a clone of the sender; once the last ends, the channel disconnects.
    drop(ctx);
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while let Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(drain_deadline.saturating_duration_since(Instant::now())) {
        if Instant::now() >= drain_deadline {
            break;
        }
    }
    store.stop();
    code
}

/// Set in the environment of the store child ([`LaunchOptions::store_process`]): the port it is to
/// listen on (0: any).
pub const STORE_CHILD_VAR: &str = "CHORUS_RUN_STORE_PORT";
/// The line the store child prints on stdout once it listens, followed by its port.
const STORE_READY: &str = "chorus-run-store-port";
/// How long the launcher waits for its store child to listen.
const STORE_START: Duration = Duration::from_secs(30);

/// In the store child of a launcher with [`LaunchOptions::store_process`] (this program started
/// again with [`STORE_CHILD_VAR`] set): serves the job's store until the launcher closes the
/// child's stdin or dies, and returns the exit code; elsewhere `None` at once.
pub fn serve_store_if_asked() -> Option<i32> {
    let port = std::env::var(STORE_CHILD_VAR).ok()?;
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("chorus-run store: {STORE_CHILD_VAR}={port:?} is not a port");
        return Some(2);
    };
    let secret = match crate::auth::secret_from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chorus-run store: {e}");
            return Some(1);
        }
    };
    let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let server = match StoreServer::bind_with(bind, ServerLimits::default(), secret) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chorus-run store: {e}");
            return Some(1);
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{STORE_READY} {}", server.local_addr().port()).and_then(|()| out.flush()).is_err() {
        return Some(1);
    }
    drop(out);
    // Serves until the launcher closes the pipe (its exit closes it too; PDEATHSIG covers the rest).
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while let Ok(1..) = stdin.read(&mut sink) {}
    drop(server);
    Some(0)
}

/// Where the job's store runs: in the launcher, or in a child process of its own.
struct StoreHost {
    port: u16,
    server: Option<StoreServer>,
    child: Option<StoreChild>,
}

struct StoreChild {
    process: Child,
    /// Its stdin: closing it tells the child to stop.
    stdin: Option<std::process::ChildStdin>,
    /// How it ended, once the launcher noticed.
    ended: Option<Outcome>,
}

impl StoreHost {
    fn start(opts: &LaunchOptions, bind: SocketAddr, secret: &JobSecret) -> Result<StoreHost, String> {
        if !opts.store_process {
            let server = StoreServer::bind_with(bind, ServerLimits::default(), Some(secret.clone())).map_err(|e| e.to_string())?;
            return Ok(StoreHost { port: server.local_addr().port(), server: Some(server), child: None });
        }
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program to start the store process: {e}"))?;
        let mut command = Command::new(exe);
        command
            .args(std::env::args_os().skip(1))
            .env(STORE_CHILD_VAR, bind.port().to_string())
            .env(crate::auth::SECRET_VAR, secret.expose())
            // Its own process group: Ctrl-C reaches the launcher, which stops the ranks first.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_launcher(&mut command);
        let mut process = command.spawn().map_err(|e| format!("cannot start the store process: {e}"))?;
        let stdin = process.stdin.take();
        let stdout = process.stdout.take().ok_or("the store process has no stdout")?;
        // Its stdout up to the ready line, then drained. A test harness may print before it, on
        // the same line too (libtest's "test NAME ... ").
        let (tx, rx) = mpsc::channel();
        let read = std::thread::Builder::new().name("chorus-run-store-out".into()).spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let (false, Some((_, port))) = (sent, line.split_once(STORE_READY)) {
                    sent = tx.send(port.trim().parse::<u16>().ok()).is_ok();
                }
            }
        });
        let mut child = StoreChild { process, stdin, ended: None };
        let port = match read.map_err(|e| e.to_string()).and_then(|_| rx.recv_timeout(STORE_START).map_err(|_| "no port in time".to_string())) {
            Ok(Some(port)) => port,
            Ok(None) | Err(_) => {
                child.stop();
                return Err(format!("the store process did not start listening within {STORE_START:?} (is port {} free?)", bind.port()));
            }
        };
        tracing::info!(pid = child.process.id(), port, "chorus-run store process listening");
        Ok(StoreHost { port, server: None, child: Some(child) })
    }

    /// Tells, once, that the store process ended while the ranks run.
    fn check(&mut self) {
        let Some(child) = self.child.as_mut().filter(|c| c.ended.is_none()) else { return };
        let outcome = match child.process.try_wait() {
            Ok(Some(status)) => Outcome::from_status(status),
            Ok(None) => return,
            Err(_) => Outcome::Lost,
        };
        child.ended = Some(outcome);
        let how = outcome.how().unwrap_or_else(|| "was lost".into());
        eprintln!(
            "chorus-run: the store process (pid {}) {how}; fault-tolerant ranks go on through their membership replicas, and replacements find the group in CHORUS_REPLICA_DIR, but groups created from now on cannot meet",
            child.process.id()
        );
    }

    fn stop(&mut self) {
        self.server.take();
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }
}

impl StoreChild {
    fn stop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + TERM_TO_KILL;
        while Instant::now() < deadline {
            if !matches!(self.process.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The directory the ranks leave their replica addresses in (`CHORUS_REPLICA_DIR`), made and
/// removed by the launcher; none when the launcher's own environment names one (the ranks
/// inherit it) or none could be made.
struct ReplicaDir(Option<std::path::PathBuf>);

impl ReplicaDir {
    fn make() -> ReplicaDir {
        if std::env::var_os(REPLICA_DIR_VAR).is_some_and(|d| !d.is_empty()) {
            return ReplicaDir(None);
        }
        let dir = std::env::temp_dir().join(format!("chorus-run-{}-{}", std::process::id(), crate::auth::JobSecret::generate().map(|s| s.expose()[..8].to_string()).unwrap_or_default()));
        match std::fs::create_dir(&dir) {
            Ok(()) => ReplicaDir(Some(dir)),
            Err(e) => {
                eprintln!("chorus-run: cannot make a replica directory in {}: {e}; a replacement then needs the store", std::env::temp_dir().display());
                ReplicaDir(None)
            }
        }
    }

    fn path(&self) -> Option<&std::path::Path> {
        self.0.as_deref()
    }
}

impl Drop for ReplicaDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `Options::replica_dir` of the ranks.
const REPLICA_DIR_VAR: &str = "CHORUS_REPLICA_DIR";

/// What every rank's process is started with.
struct RankContext<'a> {
    opts: &'a LaunchOptions,
    port: u16,
    secret: &'a JobSecret,
    replica_dir: Option<&'a std::path::Path>,
    done: mpsc::Sender<()>,
}

impl RankContext<'_> {
    /// Starts rank `rank`'s process; `restart` > 0 makes it a replacement (`CHORUS_JOIN=1`).
    fn spawn(&self, rank: usize, restart: u32) -> std::io::Result<Child> {
        spawn_rank(self.opts, rank, restart, self.port, self.secret, self.replica_dir, &self.done)
    }
}

fn spawn_rank(
    opts: &LaunchOptions,
    rank: usize,
    restart: u32,
    port: u16,
    secret: &JobSecret,
    replica_dir: Option<&std::path::Path>,
    done: &mpsc::Sender<()>,
) -> std::io::Result<Child> {
    let n = opts.nproc.to_string();
    let mut command = Command::new(&opts.program);
    command
        .args(&opts.args)
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("CHORUS_STORE_ADDR", format!("127.0.0.1:{port}"))
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", &n)
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", &n)
        .env("GROUP_RANK", "0")
        .env("GROUP_WORLD_SIZE", "1")
        .env(crate::auth::SECRET_VAR, secret.expose())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = replica_dir {
        command.env(REPLICA_DIR_VAR, dir);
    }
    if restart > 0 {
        command.env("CHORUS_JOIN", "1");
    }
    die_with_launcher(&mut command);
    let mut child = command.spawn()?;
    let label = match restart {
        0 => format!("[rank {rank}] "),
        r => format!("[rank {rank}, restart {r}] "),
    };
    if let Some(out) = child.stdout.take() {
        forward(out, label.clone(), false, done.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, label, true, done.clone());
    }
    Ok(child)
}

/// Makes the rank get SIGKILL when the launcher dies (`PR_SET_PDEATHSIG`), so a launcher killed
/// with SIGKILL (which it cannot forward) does not leave its ranks running (issue 25). The signal
/// follows the death of the thread that spawned the rank: `run` spawns every rank from the thread
/// that supervises them until they have all exited.
fn die_with_launcher(command: &mut Command) {
    let launcher = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe calls
    // are allowed: prctl and getppid are, and it allocates nothing (the error is built from a raw
    // errno).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died between the fork and the prctl: no signal will come, so stop here.
            if libc::getppid() != launcher {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Copies `src` to our stdout/stderr line by line with `prefix` (`[rank K] `). Each line is
/// written with one locked `write_all`, so lines from different ranks never interleave mid-line.
fn forward(src: impl Read + Send + 'static, prefix: String, to_stderr: bool, done: mpsc::Sender<()>) {
    let spawned = std::thread::Builder::new()
        .name("chorus-run-fwd".into())
        .spawn(move || {
            let mut reader = BufReader::new(src);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let mut buf = Vec::with_capacity(prefix.len() + line.len() + 1);
                buf.extend_from_slice(prefix.as_bytes());
                buf.extend_from_slice(&line);
                if !line.ends_with(b"\n") {
                    buf.push(b'\n');
                }
                let _ = if to_stderr {
                    std::io::stderr().lock().write_all(&buf)
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&buf).and_then(|()| out.flush())
                };
            }
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        eprintln!("chorus-run: cannot forward a rank's output: {e}");
    }
}

/// Polls the children until all have exited, starting failed ones again while
/// [`LaunchOptions::restarts`] allow (`respawn(rank, restart)`); returns the launcher's exit code:
/// 0 when every rank's last process exited 0.
fn supervise(
    opts: &LaunchOptions,
    children: &mut [Child],
    store: &mut StoreHost,
    respawn: &mut dyn FnMut(usize, u32) -> std::io::Result<Child>,
) -> i32 {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; children.len()];
    let mut restarts_of: Vec<u32> = vec![0; children.len()];
    let mut restarts_used = 0u32;
    let mut first_failure: Option<Outcome> = None;
    let mut terminate_at: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        store.check();
        for rank in 0..children.len() {
            if outcomes[rank].is_some() {
                continue;
            }
            let outcome = match children[rank].try_wait() {
                Ok(Some(status)) => Outcome::from_status(status),
                Ok(None) => continue,
                Err(e) => {
                    eprintln!("chorus-run: lost track of rank {rank}: {e}");
                    Outcome::Lost
                }
            };
            outcomes[rank] = Some(outcome);
            if outcome == Outcome::Code(0) {
                continue;
            }
            report(rank, outcome, terminate_at.is_some());
            let stopping = terminate_at.is_some() || RECEIVED_SIGNAL.load(Ordering::SeqCst) != 0;
            if restarts_used < opts.restarts && !stopping {
                let restart = restarts_of[rank] + 1;
                match respawn(rank, restart) {
                    Ok(child) => {
                        restarts_used += 1;
                        restarts_of[rank] = restart;
                        eprintln!(
                            "chorus-run: started rank {rank} again as a replacement that rejoins the group (restart {restarts_used} of {})",
                            opts.restarts
                        );
                        children[rank] = child;
                        outcomes[rank] = None;
                        continue;
                    }
                    Err(e) => eprintln!("chorus-run: could not start rank {rank} again: {e}"),
                }
            }
            if first_failure.is_none() {
                first_failure = Some(outcome);
                if opts.kill_on_failure && outcomes.iter().any(Option::is_none) {
                    eprintln!(
                        "chorus-run: rank {rank} failed; terminating the remaining ranks in {:?} (use --no-kill-on-failure to let them finish)",
                        opts.grace
                    );
                    terminate_at = Some(Instant::now() + opts.grace);
                }
            }
        }
        if outcomes.iter().all(Option::is_some) {
            break;
        }
        let now = Instant::now();
        let sig = RECEIVED_SIGNAL.load(Ordering::SeqCst);
        if sig != 0 && first_failure.is_none() {
            eprintln!("chorus-run: received signal {sig}; terminating all ranks");
            first_failure = Some(Outcome::Code(128 + sig));
            terminate_at = Some(now);
        }
        if terminate_at.is_some_and(|t| now >= t) && kill_at.is_none() {
            signal_alive(children, &outcomes, false);
            kill_at = Some(now + TERM_TO_KILL);
        }
        if kill_at.is_some_and(|t| now >= t) {
            signal_alive(children, &outcomes, true);
            kill_at = Some(now + TERM_TO_KILL);
        }
        std::thread::sleep(POLL);
    }
    let failed: Vec<usize> = (0..outcomes.len()).filter(|&r| outcomes[r] != Some(Outcome::Code(0))).collect();
    if failed.is_empty() {
        if restarts_used > 0 {
            eprintln!("chorus-run: the job finished: every rank's last process exited 0 ({restarts_used} restarted)");
        }
        return 0;
    }
    if failed.len() < outcomes.len() {
        eprintln!("chorus-run: ranks {failed:?} did not finish (their last process failed); the others did");
    }
    first_failure.map_or(1, Outcome::exit_code)
}

fn report(rank: usize, outcome: Outcome, after_terminate: bool) {
    let why = if after_terminate {
        " (terminated by chorus-run)"
    } else {
        ""
    };
    if let Some(how) = outcome.how() {
        eprintln!("chorus-run: rank {rank} {how}{why}");
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGFPE => " (SIGFPE)",
        libc::SIGILL => " (SIGILL)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

/// SIGTERM (or SIGKILL when `force`) the process group of every rank that has not been reaped yet.
fn signal_alive(children: &mut [Child], outcomes: &[Option<Outcome>], force: bool) {
    let sig = if force { libc::SIGKILL } else { libc::SIGTERM };
    for (child, outcome) in children.iter_mut().zip(outcomes) {
        if outcome.is_some() {
            continue;
        }
        match libc::pid_t::try_from(child.id()) {
            Ok(pgid) if pgid > 0 => {
                // SAFETY: kill(2) takes plain integers and touches no memory of ours. The rank leads
                // its own process group (process_group(0)) and has not been reaped, so the group id
                // cannot have been reused by an unrelated process.
                let rc = unsafe { libc::kill(-pgid, sig) };
                if rc != 0 && force {
                    let _ = child.kill();
                }
            }
            _ => {
                let _ = child.kill();
            }
        }
    }
}
