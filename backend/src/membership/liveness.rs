//! Failure detection: process liveness and closed sockets (through `Link::check_alive`, instant
//! on one host), plus heartbeats for ranks that hang or become unreachable.
//!
//! Every rank raises its `Heartbeat` counter in each peer's signal block every `interval`
//! (`CHORUS_HEARTBEAT_MS`); a peer whose counter has not moved for `timeout`
//! (`CHORUS_HEARTBEAT_TIMEOUT_MS`) is suspected dead.
use crate::transport::signals::{Control, SignalBlock};
use crate::transport::Link;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Liveness {
    pub interval: Duration,
    pub timeout: Duration,
    /// Per peer: last heartbeat value seen and when it last moved.
    seen: Mutex<Vec<(u64, Instant)>>,
    /// Beats this rank has sent (monotonic).
    pub beats: AtomicU64,
}

impl Liveness {
    /// For `n` ranks, beating every `interval` and suspecting a peer silent for `timeout`
    /// (`Options::heartbeat_interval`, `Options::heartbeat_timeout`).
    pub fn new(n: usize, interval: Duration, timeout: Duration) -> Liveness {
        Liveness {
            interval,
            timeout,
            seen: Mutex::new(vec![(0, Instant::now()); n]),
            beats: AtomicU64::new(0),
        }
    }

    /// Whether `peer`'s heartbeat has stalled for longer than the timeout (reads its counter).
    pub fn stalled(&self, signals: &SignalBlock, peer: usize) -> Option<Duration> {
        let v = signals.control(peer, Control::Heartbeat).load(Ordering::Acquire);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (last, at) = &mut seen[peer];
        if v != *last {
            *last = v;
            *at = Instant::now();
            return None;
        }
        let quiet = at.elapsed();
        (quiet > self.timeout).then_some(quiet)
    }

    /// Sends one beat to every linked peer. Beat values are wall-clock milliseconds (kept
    /// strictly increasing), so a replacement process's beats always exceed its predecessor's.
    pub fn beat(&self, links: &[Option<Arc<dyn Link>>]) {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let prev = self.beats.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b + 1).max(now_ms))).unwrap_or(0);
        let b = (prev + 1).max(now_ms);
        for l in links.iter().flatten() {
            if l.check_alive().is_ok() {
                let _ = l.control(Control::Heartbeat, b);
            }
        }
    }

    /// Forget history (a replacement rank starts fresh).
    pub fn reset(&self, peer: usize) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen[peer] = (0, Instant::now());
    }
}
