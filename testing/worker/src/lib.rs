//! One rank of chorus's multi-process integration tests: the root `tests/*.rs` run it in a copy of
//! their own binary (`tests/common`), and the `chorus-test-worker` binary of this test-only crate
//! runs it for `chorus-run` and the GPU machine's bundle. Usage: `chorus-test-worker SCENARIO [ARGS...]`.
//!
//! Environment: `RANK`, `WORLD_SIZE` and either `CHORUS_STORE_ADDR` (a store hosted by the test
//! or launcher) or `MASTER_ADDR`/`MASTER_PORT` (rank 0 hosts the store); `CHORUS_TIMEOUT_MS`;
//! `CHORUS_TEST_HOSTS`, a comma list with one host label per rank: ranks with equal labels must be
//! connected by shared memory, others by TCP, or by the transport `CHORUS_TEST_REMOTE` names
//! (unset: every pair shares memory).
//!
//! Scenarios (each creates its group once and runs many cases; exit 0 = every result was right):
//! - `matrix [--dtypes all|reduced|LIST] [--sizes 0,1,7,4097,3M] [--big-ops all|LIST]`: every
//!   collective x dtype x reduce op x size, plus send/recv and batch_send_recv.
//! - `subgroups`: new_group / split, and two overlapping subgroups driven from two threads.
//! - `async`: many asynchronous operations in flight, interleaved with blocking ones.
//! - `errors-local`: invalid ranks/ops/lengths fail locally; use after destroy.
//! - `errors-mismatch [--barrier-first] [--repeat K] [CASE...]`: ranks that disagree on counts/dtypes/ops/roots/collectives all get an error naming the argument, and the group stays usable.
//! - `barrier-destroy`: rank 0 destroys each group right after a barrier.
//! - `create-timeout`: a failed group creation leaves nothing in /dev/shm.
//! - `recreate ROUNDS`: the same group (same store, same name) created, used and destroyed ROUNDS
//!   times in a row; each destroy returns promptly even with a long heartbeat interval.
//! - `create-dead-peer NAME DEAD|none`: creates group NAME; the test kills rank DEAD during the
//!   creation, and every other rank must fail well before CHORUS_TIMEOUT_MS, naming it (`none`:
//!   every rank creates the group and passes a barrier).
//! - `smoke`: a short all_reduce/broadcast/all_gather check (for the launcher and netns tests).

use chorus_backend::{as_bytes, as_bytes_mut};
use chorus_backend::{ChorusError, DType, Element, Options, P2pRequest, ProcessGroup, ReduceOp, Work};
use chorus_bootstrap::{Store, StoreClient};
use half::{bf16, f16};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) type R<T = ()> = Result<T, String>;

macro_rules! ensure {
    ($c:expr, $($f:tt)*) => { if !$c { return Err(format!($($f)*)); } };
}

/// `?` for library results, naming the failing call.
trait Ctx<T> {
    fn ctx(self, what: impl std::fmt::Display) -> R<T>;
}
impl<T> Ctx<T> for Result<T, ChorusError> {
    fn ctx(self, what: impl std::fmt::Display) -> R<T> {
        self.map_err(|e| format!("{what}: unexpected error: {e}"))
    }
}

pub(crate) fn env_usize(k: &str) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{k} must be set"))
}

mod data;
mod errors;
mod groups;
mod matrix;
mod misc;
use data::*;
use errors::*;
use groups::*;
use matrix::*;
use misc::*;

/// Runs scenario `args[0]` with its arguments; the process exit status (0: every result was right).
pub fn run(args: &[String]) -> i32 {
    chorus_backend::logging::install_stderr_logger();
    let scenario = args.first().cloned().unwrap_or_default();
    let rank = std::env::var("RANK").unwrap_or_else(|_| "?".into());
    let t0 = Instant::now();
    let r = match scenario.as_str() {
        "matrix" => matrix(&args[1..]),
        "subgroups" => subgroups(),
        "async" => async_ops(),
        "errors-local" => errors_local(),
        "errors-mismatch" => errors_mismatch(&args[1..]),
        "smoke" => smoke(),
        "barrier-destroy" => barrier_destroy(),
        "create-timeout" => create_timeout(),
        "create-dead-peer" => create_dead_peer(&args[1..]),
        "recreate" => recreate(&args[1..]),
        other => Err(format!("unknown scenario {other:?}")),
    };
    match r {
        Ok(()) => println!("rank {rank}: {scenario} ok in {} ms", t0.elapsed().as_millis()),
        Err(e) => {
            eprintln!("rank {rank}: {scenario} FAILED after {} ms: {e}", t0.elapsed().as_millis());
            return 1;
        }
    }
    0
}

// ------------------------------------------------------------------------------------------ setup

pub(crate) fn timeout() -> Duration {
    Duration::from_millis(std::env::var("CHORUS_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000))
}

/// A top-level group named `name` (fresh groups on one store need distinct names): through
/// `CHORUS_STORE_ADDR` when set, otherwise `from_env` (rank 0 hosts the store).
pub(crate) fn world(name: &str) -> R<ProcessGroup> {
    let opts = Options::default().with_name(name);
    let pg = match std::env::var("CHORUS_STORE_ADDR") {
        Ok(addr) if name != "default" => {
            let store: Arc<dyn Store> = Arc::new(StoreClient::connect(&addr, timeout()).map_err(|e| format!("store {addr}: {e}"))?);
            ProcessGroup::new(store, env_usize("RANK"), env_usize("WORLD_SIZE"), opts)
        }
        _ => ProcessGroup::from_env(opts),
    }
    .ctx(format!("creating group {name}"))?;
    ensure!(pg.rank() == env_usize("RANK") && pg.size() == env_usize("WORLD_SIZE"), "group {name}: rank/size {}/{} differ from the environment", pg.rank(), pg.size());
    Ok(pg)
}

/// Host label of every rank of the job (`CHORUS_TEST_HOSTS`).
pub(crate) fn host_labels(n: usize) -> R<Vec<String>> {
    match std::env::var("CHORUS_TEST_HOSTS") {
        Ok(s) => {
            let v: Vec<String> = s.split(',').map(|x| x.to_string()).collect();
            ensure!(v.len() == n, "CHORUS_TEST_HOSTS={s} names {} ranks, the job has {n}", v.len());
            Ok(v)
        }
        Err(_) => Ok(vec!["local".into(); n]),
    }
}

/// Checks `pg.transports()` against the host labels (`parent` maps group ranks to job ranks).
pub(crate) fn check_transports(pg: &ProcessGroup, parent: &dyn Fn(usize) -> usize) -> R {
    let labels = host_labels(env_usize("WORLD_SIZE"))?;
    let me = pg.rank();
    let remote = std::env::var("CHORUS_TEST_REMOTE").unwrap_or_else(|_| "tcp".into());
    let want: Vec<&str> = (0..pg.size())
        .map(|r| if r == me { "self" } else if labels[parent(r)] == labels[parent(me)] { "shm" } else { remote.as_str() })
        .collect();
    let got = pg.transports();
    ensure!(got == want, "group {}: transports {got:?}, expected {want:?} (host labels {labels:?})", pg.uid());
    Ok(())
}
