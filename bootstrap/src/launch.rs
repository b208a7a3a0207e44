//! `chorus-run`: a `torchrun --standalone`-style launcher that hosts the store itself.
//!
//! The store lives in the launcher, not in rank 0, so a crashing worker never takes the job's store
//! down (see the failure contract in docs/design.md). Each child's stdout/stderr is forwarded line by line
//! with a `[rank K] ` prefix.
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

#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Number of ranks to spawn.
    pub nproc: usize,
    /// Store port; `None` picks a free one.
    pub master_port: Option<u16>,
    /// When a rank fails, terminate the others after `grace` (default). Fault-tolerance jobs whose
    /// survivors keep going set this to false and wait for everyone.
    pub kill_on_failure: bool,
    pub grace: Duration,
    pub program: String,
    pub args: Vec<String>,
}

impl LaunchOptions {
    pub fn new(nproc: usize, program: impl Into<String>, args: Vec<String>) -> Self {
        Self {
            nproc,
            master_port: None,
            kill_on_failure: true,
            grace: Duration::from_secs(5),
            program: program.into(),
            args,
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
    let server = match StoreServer::bind_with(bind, ServerLimits::default(), Some(secret.clone())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chorus-run: {e}");
            return 1;
        }
    };
    let port = server.local_addr().port();
    tracing::info!(port, nproc = opts.nproc, "chorus-run store listening");

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut children: Vec<Child> = Vec::with_capacity(opts.nproc);
    for rank in 0..opts.nproc {
        match spawn_rank(opts, rank, port, &secret, &done_tx) {
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
    drop(done_tx);
    let n_forwarders = 2 * children.len();

    let code = supervise(opts, &mut children);

    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    for _ in 0..n_forwarders {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    drop(server);
    code
}

fn spawn_rank(
    opts: &LaunchOptions,
    rank: usize,
    port: u16,
    secret: &JobSecret,
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
    die_with_launcher(&mut command);
    let mut child = command.spawn()?;
    if let Some(out) = child.stdout.take() {
        forward(out, rank, false, done.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, rank, true, done.clone());
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

/// Copies `src` to our stdout/stderr line by line with a `[rank K] ` prefix. Each line is written
/// with one locked `write_all`, so lines from different ranks never interleave mid-line.
fn forward(src: impl Read + Send + 'static, rank: usize, to_stderr: bool, done: mpsc::Sender<()>) {
    let spawned = std::thread::Builder::new()
        .name(format!("chorus-run-fwd-{rank}"))
        .spawn(move || {
            let mut reader = BufReader::new(src);
            let prefix = format!("[rank {rank}] ");
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
        eprintln!("chorus-run: cannot forward output of rank {rank}: {e}");
    }
}

/// Polls the children until all have exited; returns the launcher's exit code.
fn supervise(opts: &LaunchOptions, children: &mut [Child]) -> i32 {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; children.len()];
    let mut first_failure: Option<Outcome> = None;
    let mut terminate_at: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        for (rank, child) in children.iter_mut().enumerate() {
            if outcomes[rank].is_some() {
                continue;
            }
            let outcome = match child.try_wait() {
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
    first_failure.map_or(0, Outcome::exit_code)
}

fn report(rank: usize, outcome: Outcome, after_terminate: bool) {
    let why = if after_terminate {
        " (terminated by chorus-run)"
    } else {
        ""
    };
    match outcome {
        Outcome::Code(c) => eprintln!("chorus-run: rank {rank} exited with status {c}{why}"),
        Outcome::Signal(s) => eprintln!(
            "chorus-run: rank {rank} was killed by signal {s}{}{why}",
            signal_name(s)
        ),
        Outcome::Lost => {}
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
