//! A rank's signal block: monotonic sequence counters written by peers, plus one doorbell.
//!
//! Layout (one shared-memory segment per rank per group, its own registration, never inside a
//! data buffer — docs/design.md invariant 1):
//!
//! | offset | contents |
//! |---|---|
//! | 0   | magic `CHORSIG1` (u64), version (u64), ranks (u64), owner rank (u64), owner pid (u64) |
//! | 64  | doorbell: ring count (u32, the futex word), sleeping waiters (u32) |
//! | 128 | abort count (u64, monotonic), abort reason (u64: `reporter << 32 | code`), last mismatch notice (u64: `reporter << 32 | code`) |
//! | 192 + 64·(2·(peer·STREAMS + stream))     | `data_seq`: chunks `peer` has delivered to me on `stream` |
//! | 192 + 64·(2·(peer·STREAMS + stream) + 1) | `ack_seq`: chunks of mine `peer` has consumed on `stream` (my credits) |
//! | 192 + 64·(2·ranks·STREAMS + CONTROLS·peer + c) | control counter `c` written by `peer`: `Done` (last collective it finished its part of), `Heartbeat` (beats), `Recovery` (highest recovery round it asked for) |
//!
//! Every counter only grows (never reset for reuse); each sits on its own cache line. Whoever
//! stores a counter rings the doorbell afterwards, so one futex word wakes a rank that waits for
//! any mix of conditions.
use crate::sys::{futex, sched};
use crate::sys::shm::Segment;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const MAGIC: u64 = u64::from_le_bytes(*b"CHORSIG1");
pub const VERSION: u64 = 1;
/// Independent ordered streams per pair: collectives and point-to-point.
pub const STREAMS: usize = 2;
const LINES_START: usize = 192;

/// Which stream of a pair a chunk travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Collective = 0,
    P2p = 1,
}

/// Abort reason codes (low 32 bits of the reason word). A code whose low 4 bits are
/// `ABORT_MISMATCH` is a mismatch notice about one collective (`engine::desc::notice`): it fails
/// that collective, not the group, so it is kept apart from the abort count.
pub const ABORT_MISMATCH: u64 = 1;
pub const ABORT_DESTROYED: u64 = 2;
pub const ABORT_FAILED: u64 = 3;

/// Control counters each peer keeps in our block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Done = 0,
    Heartbeat = 1,
    Recovery = 2,
}
pub const CONTROLS: usize = 3;

impl Control {
    pub fn from_u8(v: u8) -> Option<Control> {
        match v {
            0 => Some(Control::Done),
            1 => Some(Control::Heartbeat),
            2 => Some(Control::Recovery),
            _ => None,
        }
    }
}

pub fn segment_len(ranks: usize) -> usize {
    LINES_START + 64 * 2 * ranks * STREAMS + 64 * CONTROLS * ranks
}

/// A view of one rank's signal block (ours or a peer's).
#[derive(Clone)]
pub struct SignalBlock {
    seg: Arc<Segment>,
    ranks: usize,
}

impl SignalBlock {
    /// Initialise a freshly created (zeroed) segment as ours.
    pub fn init(seg: Arc<Segment>, ranks: usize, owner: usize) -> SignalBlock {
        seg.atomic_u64(8).store(VERSION, Ordering::Relaxed);
        seg.atomic_u64(16).store(ranks as u64, Ordering::Relaxed);
        seg.atomic_u64(24).store(owner as u64, Ordering::Relaxed);
        seg.atomic_u64(32).store(crate::sys::proc::pid() as u64, Ordering::Relaxed);
        seg.atomic_u64(0).store(MAGIC, Ordering::Release);
        SignalBlock { seg, ranks }
    }

    /// Attach to a block a peer initialised; checks the magic and version.
    pub fn attach(seg: Arc<Segment>, ranks: usize) -> Option<SignalBlock> {
        let ok = seg.atomic_u64(0).load(Ordering::Acquire) == MAGIC
            && seg.atomic_u64(8).load(Ordering::Relaxed) == VERSION
            && seg.atomic_u64(16).load(Ordering::Relaxed) == ranks as u64;
        ok.then_some(SignalBlock { seg, ranks })
    }

    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    fn line(&self, peer: usize, stream: Stream, which: usize) -> &AtomicU64 {
        assert!(peer < self.ranks);
        self.seg.atomic_u64(LINES_START + 64 * (2 * (peer * STREAMS + stream as usize) + which))
    }

    /// Chunks `peer` has delivered into our inbound ring on `stream`.
    pub fn data_seq(&self, peer: usize, stream: Stream) -> &AtomicU64 {
        self.line(peer, stream, 0)
    }

    /// Chunks of ours that `peer` has consumed on `stream`.
    pub fn ack_seq(&self, peer: usize, stream: Stream) -> &AtomicU64 {
        self.line(peer, stream, 1)
    }

    /// Control counter `c` that `peer` keeps in our block.
    pub fn control(&self, peer: usize, c: Control) -> &AtomicU64 {
        assert!(peer < self.ranks);
        self.seg.atomic_u64(LINES_START + 64 * (2 * self.ranks * STREAMS + CONTROLS * peer + c as usize))
    }

    fn doorbell_word(&self) -> &AtomicU32 {
        self.seg.atomic_u32(64)
    }

    fn waiters(&self) -> &AtomicU32 {
        self.seg.atomic_u32(68)
    }

    pub fn abort_count(&self) -> &AtomicU64 {
        self.seg.atomic_u64(128)
    }

    pub fn abort_reason(&self) -> &AtomicU64 {
        self.seg.atomic_u64(136)
    }

    /// Raise a counter to `value` (monotonic: never lowers it) and ring the doorbell.
    pub fn publish(&self, counter: &AtomicU64, value: u64) {
        counter.fetch_max(value, Ordering::SeqCst);
        self.ring();
    }

    /// The last mismatch notice a peer sent (`reporter << 32 | code`; 0: none).
    pub fn mismatch_notice(&self) -> &AtomicU64 {
        self.seg.atomic_u64(144)
    }

    /// Record an abort (reporter and code) and wake every waiter of this block.
    pub fn raise_abort(&self, reporter: usize, code: u64) {
        if code & 0xf == ABORT_MISMATCH {
            self.mismatch_notice().store(((reporter as u64) << 32) | code, Ordering::SeqCst);
            self.ring();
            return;
        }
        self.abort_reason().store(((reporter as u64) << 32) | code, Ordering::SeqCst);
        self.abort_count().fetch_add(1, Ordering::SeqCst);
        self.ring();
    }

    pub fn ring(&self) {
        self.doorbell_word().fetch_add(1, Ordering::SeqCst);
        if self.waiters().load(Ordering::SeqCst) > 0 {
            futex::wake_all(self.doorbell_word());
        }
    }

    /// Sleeps until anyone rings this block's doorbell, or `max` passed (for loops that also
    /// poll something else, like the store).
    pub fn wait_doorbell(&self, max: Duration) {
        self.waiters().fetch_add(1, Ordering::SeqCst);
        let seen = self.doorbell_word().load(Ordering::SeqCst);
        futex::wait(self.doorbell_word(), seen, max);
        self.waiters().fetch_sub(1, Ordering::SeqCst);
    }

    /// Wait on our own block until `ready()` returns Some, `check()` returns an error, or the
    /// deadline passes (then `Err(None)`). Spins for a few microseconds first (cheap when the peer
    /// runs on another core), then yields the core for a while (so a peer, or this rank's own
    /// socket reader thread, gets to run on a busy machine), then sleeps on the doorbell futex in
    /// short slices so liveness and deadlines are re-checked.
    pub fn wait<T, E>(
        &self,
        policy: &WaitPolicy,
        deadline: Instant,
        mut ready: impl FnMut() -> Option<T>,
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<T, Option<E>> {
        let start = Instant::now();
        let mut i: u32 = 0;
        loop {
            if let Some(v) = ready() {
                return Ok(v);
            }
            i = i.wrapping_add(1);
            // Reading the clock every 64 turns keeps the spin tight.
            if i.is_multiple_of(64) && start.elapsed() >= policy.spin {
                break;
            }
            std::hint::spin_loop();
        }
        // Other programs fill the cores (sys/sched.rs): yielding would hand the core to them
        // while the peer we wait for queues behind them; sleep on the doorbell at once. Asked only
        // by waits that outlast the spin, so quick ones pay nothing (and sleeping too soon made
        // 2 ranks' 16 B all_reduce 1.5 -> 12 us when our own threads were counted as others').
        let contended = sched::contended(policy.local_ranks);
        while !contended && start.elapsed() < policy.spin + policy.yield_for {
            if let Some(v) = ready() {
                return Ok(v);
            }
            std::thread::yield_now();
        }
        loop {
            self.waiters().fetch_add(1, Ordering::SeqCst);
            let seen = self.doorbell_word().load(Ordering::SeqCst);
            if let Some(v) = ready() {
                self.waiters().fetch_sub(1, Ordering::SeqCst);
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                self.waiters().fetch_sub(1, Ordering::SeqCst);
                return Err(None);
            }
            let slice = (deadline - now).min(policy.sleep_slice);
            futex::wait(self.doorbell_word(), seen, slice);
            self.waiters().fetch_sub(1, Ordering::SeqCst);
            if let Some(v) = ready() {
                return Ok(v);
            }
            check().map_err(Some)?;
        }
    }
}

/// How long a waiter spins and yields before it sleeps. With more ranks than cores, spinning
/// starves the very peer being waited for, so the policy shrinks spinning there; every phase is
/// bounded in time, not iterations, so a loaded machine degrades gracefully.
#[derive(Clone, Debug)]
pub struct WaitPolicy {
    pub spin: Duration,
    pub yield_for: Duration,
    pub sleep_slice: Duration,
    /// This host's ranks of the group, each runnable while it spins or yields.
    pub local_ranks: usize,
    /// The spin of a wait for what this process's own helper thread delivers (a socket's
    /// reader: [`WaitPolicy::relayed`]).
    relayed_spin: Duration,
}

impl WaitPolicy {
    /// The policy for `local_ranks` contenders for this host's cores; `spin` and `yield_for`
    /// (`Options::spin`, `Options::yield_for`) override the phases' lengths, of relayed waits too.
    pub fn for_host(local_ranks: usize, spin: Option<Duration>, yield_for: Option<Duration>) -> WaitPolicy {
        let cores = sched::cores();
        let us = Duration::from_micros;
        let (default_spin, default_yield) = if local_ranks <= cores { (us(50), us(2000)) } else { (us(2), us(500)) };
        WaitPolicy {
            spin: spin.unwrap_or(default_spin),
            yield_for: yield_for.unwrap_or(default_yield),
            sleep_slice: Duration::from_millis(5),
            local_ranks,
            relayed_spin: spin.unwrap_or(Duration::ZERO),
        }
    }

    /// The policy for a wait on a peer whose chunks and counters this process's own helper thread
    /// delivers (a socket's reader thread): no spin by default, straight to the yield phase. A
    /// spinning waiter holds a core that the reader, just woken by the network, needs, and the
    /// reader waits for the spin to end; a yielding one hands it over, and unlike a sleeping one it
    /// keeps the core out of its idle state (waking a vCPU of this VM from idle costs tens of us: a
    /// Python TCP ping-pong between two namespaces takes 8 us a round trip when the machine is busy,
    /// 60 us when it is idle). 2-rank 8-byte all_reduce across two namespaces on the 2-core
    /// machine, same minutes: the 50 us spin 48-150 us, no spin 26-79 us, sleeping at once 61-81 us
    /// (`benches/RESULTS.md`, issue 26). Where spare cores make spinning pay, `CHORUS_SPIN_US`
    /// applies here too.
    pub fn relayed(&self) -> WaitPolicy {
        WaitPolicy { spin: self.relayed_spin, ..self.clone() }
    }
}
