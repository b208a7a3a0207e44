//! Single-threaded simulator for a set of per-rank [`Plan`]s.
//!
//! Every ordered pair `(a, b)` has a FIFO of at most `slots` chunks. Ranks are stepped round-robin;
//! each rank advances while its next step can make progress. A `Send` (and the forward part of
//! `RecvCopySend`/`RecvReduceSend`) waits while the pair's FIFO is full, a receive waits while it is
//! empty. With [`Forwarding::Lenient`] a forwarding step frees its receive slot first and then waits
//! for room (partial progress, like an engine that stages the chunk); with [`Forwarding::Atomic`] a
//! step runs only when everything it needs is available at once (like an engine that holds the
//! receive slot until the forward has room). `RecvReduce` waits for all its inputs under `Atomic`
//! and drains them one by one under `Lenient`.
//!
//! Checked: every step length is at most `chunk`; every range lies inside its buffer; optional
//! `align` of every range boundary (the element size for reductions); peers are valid and never
//! the rank itself; reduce/copy ranges have equal lengths; every received chunk has exactly the
//! length the receiving step expects; no deadlock; every FIFO is empty at the end.
//! Reduction is a wrapping integer add of little-endian elements of `elem` bytes.

use std::collections::VecDeque;
use std::fmt::Write as _;

use super::plan::{Buf, Plan, Range, Step};

/// How forwarding steps interact with the slot rings (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    Lenient,
    Atomic,
}

#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Capacity of each per-pair FIFO, in chunks (>= 1).
    pub slots: usize,
    pub forwarding: Forwarding,
    /// Element size for reductions (1, 2, 4 or 8).
    pub elem: usize,
    /// The chunk size the plans were built with: no step may be longer.
    pub chunk: usize,
    /// Every range offset and length must be a multiple of this (use `elem` for reductions, 1 otherwise).
    pub align: usize,
}

/// One rank's buffers. With `in_place`, `Buf::Input` and `Buf::Output` both name `output`.
#[derive(Clone, Debug, Default)]
pub struct RankMem {
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub in_place: bool,
}

impl RankMem {
    fn buf(&self, b: Buf) -> &Vec<u8> {
        match (b, self.in_place) {
            (Buf::Input, false) => &self.input,
            _ => &self.output,
        }
    }
    fn buf_mut(&mut self, b: Buf) -> &mut Vec<u8> {
        match (b, self.in_place) {
            (Buf::Input, false) => &mut self.input,
            _ => &mut self.output,
        }
    }
    fn read(&self, r: Range) -> Vec<u8> {
        self.buf(r.buf)[r.off..r.end()].to_vec()
    }
    fn write(&mut self, r: Range, data: &[u8]) {
        self.buf_mut(r.buf)[r.off..r.end()].copy_from_slice(data);
    }
}

/// What the run did (for tests that want to check counts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Chunks moved through FIFOs, per ordered pair `[from * n + to]`.
    pub messages: Vec<usize>,
    /// Payload bytes moved through FIFOs, per ordered pair `[from * n + to]`.
    pub bytes: Vec<usize>,
    /// Steps executed in total.
    pub steps: usize,
}

/// Wrapping add of `other` into `acc`, elementwise, little-endian elements of `elem` bytes.
pub fn reduce_add(acc: &mut [u8], other: &[u8], elem: usize) {
    assert_eq!(acc.len(), other.len());
    assert_eq!(acc.len() % elem, 0);
    for (a, b) in acc.chunks_exact_mut(elem).zip(other.chunks_exact(elem)) {
        let mut x = [0u8; 8];
        let mut y = [0u8; 8];
        x[..elem].copy_from_slice(a);
        y[..elem].copy_from_slice(b);
        let s = u64::from_le_bytes(x).wrapping_add(u64::from_le_bytes(y));
        a.copy_from_slice(&s.to_le_bytes()[..elem]);
    }
}

enum Pending {
    None,
    /// `RecvReduce` (lenient): inputs received so far, by position in `from`.
    Gathering(Vec<Option<Vec<u8>>>),
    /// Forward part of `RecvCopySend`/`RecvReduceSend` (lenient): data and targets not yet sent.
    Forwarding(Vec<u8>, Vec<usize>),
}

struct Sim<'a> {
    n: usize,
    plans: &'a [Plan],
    mem: &'a mut [RankMem],
    cfg: SimConfig,
    fifos: Vec<VecDeque<Vec<u8>>>,
    pc: Vec<usize>,
    pending: Vec<Pending>,
    stats: SimStats,
}

/// Runs the plans of all `plans.len()` ranks on `mem` (one per rank).
pub fn simulate(plans: &[Plan], mem: &mut [RankMem], cfg: SimConfig) -> Result<SimStats, String> {
    let n = plans.len();
    if mem.len() != n {
        return Err(format!("{} plans but {} rank memories", n, mem.len()));
    }
    if cfg.slots == 0 || cfg.chunk == 0 || cfg.align == 0 || !matches!(cfg.elem, 1 | 2 | 4 | 8) {
        return Err(format!("bad simulator config {cfg:?}"));
    }
    for (r, plan) in plans.iter().enumerate() {
        for (i, step) in plan.steps.iter().enumerate() {
            validate(n, r, step, &mem[r], &cfg)
                .map_err(|e| format!("rank {r} step {i} {step:?}: {e}"))?;
        }
    }
    let mut sim = Sim {
        n,
        plans,
        mem,
        cfg,
        fifos: vec![VecDeque::new(); n * n],
        pc: vec![0; n],
        pending: (0..n).map(|_| Pending::None).collect(),
        stats: SimStats {
            messages: vec![0; n * n],
            bytes: vec![0; n * n],
            steps: 0,
        },
    };
    loop {
        let mut progressed = false;
        for r in 0..n {
            while sim.advance(r)? {
                progressed = true;
            }
        }
        let done = (0..n).all(|r| sim.pc[r] == plans[r].steps.len());
        if done {
            break;
        }
        if !progressed {
            return Err(sim.deadlock_report());
        }
    }
    for a in 0..n {
        for b in 0..n {
            let q = &sim.fifos[a * n + b];
            if !q.is_empty() {
                return Err(format!(
                    "{} unreceived chunk(s) left from rank {a} to rank {b}",
                    q.len()
                ));
            }
        }
    }
    Ok(sim.stats)
}

fn validate(
    n: usize,
    me: usize,
    step: &Step,
    mem: &RankMem,
    cfg: &SimConfig,
) -> Result<(), String> {
    let range = |r: &Range, reduce: bool| -> Result<(), String> {
        if r.len > cfg.chunk {
            return Err(format!(
                "range {r:?} is longer than the chunk size {}",
                cfg.chunk
            ));
        }
        if r.end() > mem.buf(r.buf).len() {
            return Err(format!(
                "range {r:?} is outside its buffer of {} bytes",
                mem.buf(r.buf).len()
            ));
        }
        let align = if reduce {
            cfg.align.max(cfg.elem)
        } else {
            cfg.align
        };
        if !r.off.is_multiple_of(align) || !r.len.is_multiple_of(align) {
            return Err(format!("range {r:?} is not aligned to {align} bytes"));
        }
        Ok(())
    };
    let peer = |p: usize| -> Result<(), String> {
        if p >= n || p == me {
            return Err(format!("bad peer {p} (n = {n}, me = {me})"));
        }
        Ok(())
    };
    let distinct = |ps: &[usize]| -> Result<(), String> {
        for (i, p) in ps.iter().enumerate() {
            peer(*p)?;
            if ps[..i].contains(p) {
                return Err(format!("peer {p} listed twice"));
            }
        }
        Ok(())
    };
    match step {
        Step::Send { to, src } => {
            peer(*to)?;
            range(src, false)
        }
        Step::Recv { from, dst } => {
            peer(*from)?;
            range(dst, false)
        }
        Step::RecvReduce { from, local, dst } => {
            distinct(from)?;
            range(local, true)?;
            range(dst, true)?;
            if local.len != dst.len {
                return Err("local and dst lengths differ".into());
            }
            Ok(())
        }
        Step::RecvCopySend { from, to, dst } => {
            peer(*from)?;
            distinct(to)?;
            range(dst, false)
        }
        Step::RecvReduceSend {
            from,
            to,
            local,
            dst,
        } => {
            peer(*from)?;
            peer(*to)?;
            range(local, true)?;
            if let Some(d) = dst {
                range(d, true)?;
                if d.len != local.len {
                    return Err("local and dst lengths differ".into());
                }
            }
            Ok(())
        }
        Step::Copy { src, dst } => {
            range(src, false)?;
            range(dst, false)?;
            if src.len != dst.len {
                return Err("copy lengths differ".into());
            }
            Ok(())
        }
    }
}

impl Sim<'_> {
    fn q(&self, from: usize, to: usize) -> &VecDeque<Vec<u8>> {
        &self.fifos[from * self.n + to]
    }
    fn has_room(&self, from: usize, to: usize) -> bool {
        self.q(from, to).len() < self.cfg.slots
    }
    fn has_data(&self, from: usize, to: usize) -> bool {
        !self.q(from, to).is_empty()
    }
    fn push(&mut self, from: usize, to: usize, data: Vec<u8>) {
        debug_assert!(self.has_room(from, to));
        self.stats.messages[from * self.n + to] += 1;
        self.stats.bytes[from * self.n + to] += data.len();
        self.fifos[from * self.n + to].push_back(data);
    }
    fn pop(&mut self, from: usize, me: usize, expect: usize) -> Result<Vec<u8>, String> {
        let data = self.fifos[from * self.n + me]
            .pop_front()
            .expect("pop from an empty FIFO");
        if data.len() != expect {
            return Err(format!(
                "rank {me} step {} {:?}: received a {}-byte chunk from rank {from}, expected {expect} bytes",
                self.pc[me],
                self.plans[me].steps[self.pc[me]],
                data.len()
            ));
        }
        Ok(data)
    }
    fn finish(&mut self, me: usize) {
        self.pc[me] += 1;
        self.pending[me] = Pending::None;
        self.stats.steps += 1;
    }

    /// Tries to make progress on rank `me`; true if anything happened.
    fn advance(&mut self, me: usize) -> Result<bool, String> {
        let plans = self.plans;
        let Some(step) = plans[me].steps.get(self.pc[me]) else {
            return Ok(false);
        };
        let lenient = self.cfg.forwarding == Forwarding::Lenient;
        // A lenient forwarding step that already received: push to whoever has room.
        if let Pending::Forwarding(data, left) = &mut self.pending[me] {
            let (data, mut left) = (std::mem::take(data), std::mem::take(left));
            let before = left.len();
            let mut i = 0;
            while i < left.len() {
                if self.has_room(me, left[i]) {
                    let to = left.remove(i);
                    self.push(me, to, data.clone());
                } else {
                    i += 1;
                }
            }
            let progressed = left.len() < before;
            if left.is_empty() {
                self.finish(me);
            } else {
                self.pending[me] = Pending::Forwarding(data, left);
            }
            return Ok(progressed);
        }
        match step {
            Step::Send { to, src } => {
                if !self.has_room(me, *to) {
                    return Ok(false);
                }
                let data = self.mem[me].read(*src);
                self.push(me, *to, data);
                self.finish(me);
            }
            Step::Recv { from, dst } => {
                if !self.has_data(*from, me) {
                    return Ok(false);
                }
                let data = self.pop(*from, me, dst.len)?;
                self.mem[me].write(*dst, &data);
                self.finish(me);
            }
            Step::Copy { src, dst } => {
                let data = self.mem[me].read(*src);
                self.mem[me].write(*dst, &data);
                self.finish(me);
            }
            Step::RecvReduce { from, local, dst } => {
                let mut got = match std::mem::replace(&mut self.pending[me], Pending::None) {
                    Pending::Gathering(g) => g,
                    _ => vec![None; from.len()],
                };
                if !lenient && !from.iter().all(|&p| self.has_data(p, me)) {
                    return Ok(false);
                }
                let mut progressed = false;
                for (i, &p) in from.iter().enumerate() {
                    if got[i].is_none() && self.has_data(p, me) {
                        got[i] = Some(self.pop(p, me, dst.len)?);
                        progressed = true;
                    }
                }
                if got.iter().all(Option::is_some) {
                    let mut acc = self.mem[me].read(*local);
                    for g in got.iter().flatten() {
                        reduce_add(&mut acc, g, self.cfg.elem);
                    }
                    self.mem[me].write(*dst, &acc);
                    self.finish(me);
                    return Ok(true);
                }
                self.pending[me] = Pending::Gathering(got);
                return Ok(progressed);
            }
            Step::RecvCopySend { from, to, dst } => {
                if !self.has_data(*from, me) {
                    return Ok(false);
                }
                if !lenient && !to.iter().all(|&t| self.has_room(me, t)) {
                    return Ok(false);
                }
                let data = self.pop(*from, me, dst.len)?;
                self.mem[me].write(*dst, &data);
                self.pending[me] = Pending::Forwarding(data, to.clone());
                self.advance(me)?; // forward whatever fits now (all of it under Atomic)
            }
            Step::RecvReduceSend {
                from,
                to,
                local,
                dst,
            } => {
                if !self.has_data(*from, me) {
                    return Ok(false);
                }
                if !lenient && !self.has_room(me, *to) {
                    return Ok(false);
                }
                let data = self.pop(*from, me, local.len)?;
                let mut acc = self.mem[me].read(*local);
                reduce_add(&mut acc, &data, self.cfg.elem);
                if let Some(d) = dst {
                    self.mem[me].write(*d, &acc);
                }
                self.pending[me] = Pending::Forwarding(acc, vec![*to]);
                self.advance(me)?;
            }
        }
        Ok(true)
    }

    fn deadlock_report(&self) -> String {
        let mut s = format!(
            "deadlock ({} slots per pair, {:?} forwarding); blocked steps:\n",
            self.cfg.slots, self.cfg.forwarding
        );
        for r in 0..self.n {
            if let Some(step) = self.plans[r].steps.get(self.pc[r]) {
                let phase = match &self.pending[r] {
                    Pending::None => String::new(),
                    Pending::Gathering(g) => {
                        format!(" (received {}/{})", g.iter().flatten().count(), g.len())
                    }
                    Pending::Forwarding(_, left) => {
                        format!(" (received; still forwarding to {left:?})")
                    }
                };
                let _ = writeln!(
                    s,
                    "  rank {r} step {}/{}: {step:?}{phase}",
                    self.pc[r],
                    self.plans[r].steps.len()
                );
            }
        }
        for a in 0..self.n {
            for b in 0..self.n {
                let len = self.q(a, b).len();
                if len > 0 {
                    let _ = writeln!(s, "  fifo {a}->{b}: {len} chunk(s)");
                }
            }
        }
        s
    }
}
