//! Sharing the cores with other programs. Waiting ranks yield their core so that a peer (or this
//! rank's own reader thread) can run when ranks outnumber cores: cheap among cooperating ranks,
//! which each run briefly and wait again (4 ranks on 2 cores: an 8 B all_reduce in ~15-25 µs,
//! ~40 µs when waiters sleep at once). Programs that keep the cores busy are another matter:
//! with two CPU hogs on this 2-core machine the peer a rank waits for queues behind a hog while
//! the waiters yield to each other, and an all_reduce took ~3 ms; waiters that sleep on their
//! doorbell instead (the peer's wake-up preempts the hog) took ~0.2 ms. So waiters ask
//! [`contended`]: whether the tasks ready to run, less this host's ranks, fill every core.
//!
//! The count is the kernel's (`/proc/loadavg`: tasks runnable now), sampled at most every
//! [`SAMPLE_EVERY`] by whichever waiter gets to the yield phase first; the least of the last
//! [`SAMPLES`] counts is used, since a program that competes for the cores is runnable in every
//! sample, while our own helper threads (a progress thread woken by a doorbell) are runnable only
//! now and then: counted once, they made idle ranks sleep instead of yield (13 -> 28 us).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How old a sample of the runnable tasks may be.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// Samples kept: the contention must show in all of them.
const SAMPLES: u32 = 4;

/// When the runnable tasks were last counted (ns after [`epoch`]; 0: never), and the last
/// [`SAMPLES`] counts, 16 bits each, newest lowest.
static SAMPLED_AT: AtomicU64 = AtomicU64::new(0);
static RUNNABLE: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// This host's cores (as the process may use them), read once.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Whether other programs' runnable tasks occupy every core, with `local_ranks` ranks of this
/// host's groups counted as ours (each may be runnable while it spins or yields): then a waiter
/// that outlasted its spin should sleep rather than yield.
pub fn contended(local_ranks: usize) -> bool {
    foreign(runnable(), local_ranks) >= cores()
}

/// Runnable tasks that are not `local_ranks` of ours (the caller, also runnable, is one of them).
fn foreign(runnable: u64, local_ranks: usize) -> usize {
    (runnable as usize).saturating_sub(local_ranks.max(1))
}

/// The least of the kernel's last counts of runnable tasks, the newest at most [`SAMPLE_EVERY`] old.
fn runnable() -> u64 {
    let now = epoch().elapsed().as_nanos() as u64 + 1;
    let at = SAMPLED_AT.load(Ordering::Relaxed);
    // One waiter samples; the others use the last counts meanwhile.
    let stale = at == 0 || now.saturating_sub(at) >= SAMPLE_EVERY.as_nanos() as u64;
    if stale && SAMPLED_AT.compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        let count = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| parse_runnable(&s)).unwrap_or(0);
        let _ = RUNNABLE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| Some(push(old, count)));
    }
    least(RUNNABLE.load(Ordering::Relaxed))
}

/// `samples` with `count` as the newest (the oldest dropped).
fn push(samples: u64, count: u64) -> u64 {
    // SAMPLES x 16 bits fill the word: the oldest falls off the top.
    (samples << 16) | count.min(0xffff)
}

/// The least count in `samples` (a slot never filled counts as 0).
fn least(samples: u64) -> u64 {
    (0..SAMPLES).map(|i| (samples >> (16 * i)) & 0xffff).min().unwrap_or(0)
}

/// The runnable count of a `/proc/loadavg` line ("0.50 0.40 0.30 3/120 4567": 3).
fn parse_runnable(loadavg: &str) -> Option<u64> {
    loadavg.split_whitespace().nth(3)?.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runnable_count_is_read_from_loadavg() {
        assert_eq!(parse_runnable("2.85 3.34 3.33 1/108 28036\n"), Some(1));
        assert_eq!(parse_runnable("0.00 0.01 0.05 12/345 6"), Some(12));
        assert_eq!(parse_runnable("garbage"), None);
    }

    #[test]
    fn contention_must_show_in_every_recent_sample() {
        let mut s = 0;
        for count in [6, 6, 6] {
            s = push(s, count);
        }
        // One slot not yet filled: no contention seen in all of them.
        assert_eq!(least(s), 0);
        s = push(s, 7);
        assert_eq!(least(s), 6);
        // A quiet sample ends it; four busy ones bring it back.
        s = push(s, 4);
        assert_eq!(least(s), 4);
        for _ in 0..3 {
            s = push(s, 9);
        }
        assert_eq!(least(s), 4);
        s = push(s, 9);
        assert_eq!(least(s), 9);
    }

    #[test]
    fn only_tasks_beyond_our_ranks_count_as_foreign() {
        // 4 ranks yielding on 2 cores: ours. One hog: one foreign. Two hogs: two.
        assert_eq!(foreign(4, 4), 0);
        assert_eq!(foreign(5, 4), 1);
        assert_eq!(foreign(6, 4), 2);
        // A sample taken while some ranks slept.
        assert_eq!(foreign(2, 4), 0);
        assert_eq!(foreign(3, 0), 2);
    }
}
