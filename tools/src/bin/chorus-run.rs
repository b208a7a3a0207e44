//! `chorus-run -n N [--master-port P] [--grace-secs S] [--no-kill-on-failure] [--restart-failed[=R]] [--] PROGRAM ARGS...`
//!
//! Like `torchrun --standalone`: hosts the store (in a process of its own), spawns N ranks with
//! torchrun's environment plus `CHORUS_STORE_ADDR` and `CHORUS_REPLICA_DIR`, prefixes their output
//! with `[rank K] `, and exits 0 when every rank's last process exited 0, else with the first
//! failure's status. With `--restart-failed` a failed rank is started again as a replacement that
//! rejoins the running group (`CHORUS_JOIN=1`), up to R times in all.

use std::time::Duration;

use chorus_bootstrap::launch::{self, LaunchOptions};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "chorus-run",
    version,
    about = "Launch N local ranks of a chorus job"
)]
struct Args {
    /// Number of ranks (processes) to start.
    #[arg(short = 'n', long = "nproc-per-node", alias = "nproc")]
    nproc: usize,
    /// Port for the launcher-hosted store (default: any free port).
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds to let the other ranks run after one fails, before terminating them.
    #[arg(long, default_value_t = 5.0)]
    grace_secs: f64,
    /// When a rank fails, wait for all others instead of terminating them (fault-tolerant jobs,
    /// whose survivors go on).
    #[arg(long)]
    no_kill_on_failure: bool,
    /// Start a failed rank again as a replacement that rejoins the running fault-tolerant group
    /// in place (`CHORUS_JOIN=1`), up to this many restarts in all (3 when no number is given).
    /// The other ranks keep running meanwhile.
    #[arg(long, num_args = 0..=1, default_missing_value = "3", value_name = "RESTARTS")]
    restart_failed: Option<u32>,
    /// Program to run, followed by its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() {
    // This program started again to host the job's store (`LaunchOptions::store_process`).
    if let Some(code) = launch::serve_store_if_asked() {
        std::process::exit(code);
    }
    tracing_subscriber::fmt()
        // CHORUS_LOG, as every chorus program reads it; RUST_LOG where that is not set.
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::from_default_env()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    launch::forward_termination_signals();
    let mut command = args.command.into_iter();
    let program = command.next().unwrap_or_default();
    let mut opts = LaunchOptions::new(args.nproc, program, command.collect());
    opts.master_port = args.master_port;
    opts.store_process = true;
    opts.restarts = args.restart_failed.unwrap_or(0);
    // A failed rank is replaced, not a reason to stop the others.
    opts.kill_on_failure = !args.no_kill_on_failure && opts.restarts == 0;
    opts.grace =
        Duration::try_from_secs_f64(args.grace_secs.max(0.0)).unwrap_or(Duration::from_secs(5));
    std::process::exit(launch::run(&opts));
}
