//! `chorus-run -n N [--master-port P] [--grace-secs S] [--no-kill-on-failure] [--] PROGRAM ARGS...`
//!
//! Like `torchrun --standalone`: hosts the store, spawns N ranks with torchrun's environment plus
//! `CHORUS_STORE_ADDR`, prefixes their output with `[rank K] `, and exits with the first failure.

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
    /// When a rank fails, wait for all others instead of terminating them.
    #[arg(long)]
    no_kill_on_failure: bool,
    /// Program to run, followed by its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    launch::forward_termination_signals();
    let mut command = args.command.into_iter();
    let program = command.next().unwrap_or_default();
    let mut opts = LaunchOptions::new(args.nproc, program, command.collect());
    opts.master_port = args.master_port;
    opts.kill_on_failure = !args.no_kill_on_failure;
    opts.grace =
        Duration::try_from_secs_f64(args.grace_secs.max(0.0)).unwrap_or(Duration::from_secs(5));
    std::process::exit(launch::run(&opts));
}
