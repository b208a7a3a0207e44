//! How a GPU collective is carried out, decided on the host before anything is launched: which kernel
//! launches (sub-operations), on which lane, over which bytes of the caller's buffers, with which
//! pipeline chunk. Pure functions of the operation's sizes and the communicator's options: the kernels
//! of all ranks barrier with each other launch by launch, so every rank must plan the same sequence from
//! sizes every rank knows; and the planning is testable without a GPU. The executor (`super`) turns
//! each [`Launch`] into kernel arguments by adding the communicator's constants and the buffer addresses.
#![deny(unsafe_code)]

use super::options::{CommOptions, AR_LL, AR_ONESHOT, AR_TWOSHOT, ALL_GATHER, ALL_TO_ALL, BROADCAST, MAX_RANKS, RECV, REDUCE, REDUCE_SCATTER, SEND};
use crate::{DType, KernelError, ReduceOp, Result};

#[cfg(test)]
mod tests;

/// Broadcasts of at least this many bytes over more than 2 ranks run as scatter + all-gather.
pub(super) const BCAST_SCATTER_MIN: usize = 8 << 20;

/// Which flags, counters, staging and grid a launch uses (see the workspace layout in `coll_source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Lane {
    /// Many thread blocks, staging slots of `slot_bytes`.
    #[default]
    Bulk,
    /// A few thread blocks, staging slots of `small_slot`: single steps whose per-peer data fits.
    Small,
    /// The low-latency all_reduce: the small lane's flags and blocks, its own staging of flagged lines.
    LowLatency,
}

/// One kernel launch, without the communicator's constants (workspaces, rank, timeout) and the
/// caller's buffer addresses, which the executor adds. Fields the kind does not use stay 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Launch {
    /// The kernel's operation code (`options::AR_ONESHOT`, ...).
    pub kind: u32,
    pub lane: Lane,
    /// Bytes into the caller's source buffer where this launch starts; `None`: no source (address 0).
    pub src_off: Option<usize>,
    /// Bytes into the caller's destination buffer where this launch starts; `None`: no destination.
    pub dst_off: Option<usize>,
    /// Elements for reductions, bytes for data movement and point-to-point.
    pub count: usize,
    /// What the kernel moves per step when it pipelines itself (elements or bytes, as `count`).
    pub chunk: usize,
    /// Bytes between the blocks of the destination (all_gather).
    pub dst_stride: usize,
    /// The root rank, or the peer of a send or receive.
    pub root: usize,
    /// What the reduced value is divided by (the world size for `Avg`), 0 for nothing.
    pub avg_n: u32,
    /// Per-rank byte offsets and lengths: reduce_scatter's blocks (`send_off`), all-to-all's blocks.
    pub send_off: [usize; MAX_RANKS],
    pub send_len: [usize; MAX_RANKS],
    pub recv_off: [usize; MAX_RANKS],
    pub recv_len: [usize; MAX_RANKS],
}

/// An uneven all-to-all: byte offsets and lengths per peer, as [`Planner::exchange`] takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Exchange {
    pub send_off: Vec<usize>,
    pub send_len: Vec<usize>,
    pub recv_off: Vec<usize>,
    pub recv_len: Vec<usize>,
    /// At least every length any rank sends, the same on every rank (the launch depends on it).
    pub max_pair_bytes: usize,
}

/// How a broadcast runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum BroadcastPlan {
    /// Broadcast launches (none for 0 bytes).
    Direct(Vec<Launch>),
    /// `scatter` from the source into the destination (rank p gets shard p from the root), then
    /// `gather` within the destination (each rank's own shard is the source): the root sends each byte
    /// once instead of world - 1 times.
    ScatterGather { scatter: Exchange, gather: Exchange },
}

/// The planning of one rank of a communicator.
#[derive(Clone, Copy, Debug)]
pub(super) struct Planner<'a> {
    pub rank: usize,
    pub world: usize,
    pub opts: &'a CommOptions,
    /// Bytes of a small-lane staging slot (`Layout::small_slot`).
    pub small_slot: usize,
}

/// `bytes` cut into `world` shards of a 16-byte multiple (the last ones short or empty): (offsets,
/// lengths, the longest).
pub(super) fn byte_shards(bytes: usize, world: usize) -> (Vec<usize>, Vec<usize>, usize) {
    let shard = bytes.div_ceil(world).next_multiple_of(16);
    let offs: Vec<usize> = (0..world).map(|p| (p * shard).min(bytes)).collect();
    let lens: Vec<usize> = (0..world).map(|p| ((p + 1) * shard).min(bytes) - offs[p]).collect();
    (offs, lens, shard)
}

/// See [`Planner::pipeline_chunk`]: `bytes` in 2 to `max_steps` steps of at most `slot` bytes each.
pub(super) fn pipeline_chunk(bytes: usize, slot: usize, max_steps: usize) -> usize {
    let steps = (bytes >> 23).clamp(2, max_steps.max(2));
    bytes.div_ceil(steps).next_multiple_of(4096).min(slot)
}

/// One sub-operation per `cap` units of `total` (elements or bytes): `f(offset, len)` for each, in
/// order; none for 0.
pub(super) fn split(total: usize, cap: usize, mut f: impl FnMut(usize, usize) -> Launch) -> Vec<Launch> {
    let mut subs = Vec::new();
    let mut off = 0;
    while off < total {
        let n = cap.min(total - off);
        subs.push(f(off, n));
        off += n;
    }
    subs
}

/// Elements per sub-operation for a reduce kind whose per-rank share must fit `cap` bytes (a multiple
/// of 16 bytes, so every sub-operation starts 16-byte aligned).
pub(super) fn chunk_elems(dtype: DType, cap: usize) -> usize {
    let al = 16 / dtype.size();
    (cap / dtype.size()) / al * al
}

/// `world` blocks of `bytes`, back to back: the offsets.
pub(super) fn even_blocks(world: usize, bytes: usize) -> Vec<usize> {
    (0..world).map(|p| p * bytes).collect()
}

/// Copies the first `MAX_RANKS` values of `v` into a kernel-sized array (zeros after).
fn per_rank(v: &[usize]) -> [usize; MAX_RANKS] {
    let mut a = [0usize; MAX_RANKS];
    for (slot, &x) in a.iter_mut().zip(v) {
        *slot = x;
    }
    a
}

impl Planner<'_> {
    /// The lane of an operation moving at most `per_peer` bytes to each peer in one step.
    pub fn lane(&self, per_peer: usize) -> Lane {
        if per_peer <= self.small_slot {
            Lane::Small
        } else {
            Lane::Bulk
        }
    }

    /// Bytes per pipeline step for a pipelined operation of `bytes`: one step per 8 MiB, 2 to 64 steps
    /// (the fill and drain cost one step each, so 1 GiB takes 64; the per-step barrier is a few
    /// microseconds against about 45 us of data per step), within a slot.
    pub fn pipeline_chunk(&self, bytes: usize) -> usize {
        pipeline_chunk(bytes, self.opts.slot_bytes, self.opts.max_pipeline_steps)
    }

    /// Bytes per step of a pipelined data-movement operation whose longest block is `bytes`: one step
    /// on the small lane, [`Planner::pipeline_chunk`] on the bulk lane.
    pub fn step_bytes(&self, bytes: usize) -> usize {
        if bytes <= self.small_slot {
            bytes
        } else {
            self.pipeline_chunk(bytes)
        }
    }

    /// Whether an operation has nothing to do: one rank, in place, and (for reductions) a result equal
    /// to the input — every op but on bool, whose kernels also normalise nonzero bytes to 1. Like
    /// NCCL, which enqueues nothing then either (a CUDA graph capturing it stays empty), the launch is
    /// skipped.
    pub fn identity_at_world_1(&self, in_place: bool, dtype: Option<DType>) -> bool {
        self.world == 1 && in_place && dtype != Some(DType::Bool)
    }

    /// What the kernels divide the reduced value by: the world size for `Avg`, nothing (0) otherwise.
    pub fn avg_divisor(&self, op: ReduceOp) -> u32 {
        if op == ReduceOp::Avg {
            self.world as u32
        } else {
            0
        }
    }

    /// The one launch of a data-movement kind whose longest block is `bytes` (none when 0): the kernel
    /// pipelines the chunks itself (pushes of chunk j beside copy-outs of chunk j - 1); `set` fills in
    /// what the kind needs beyond the buffers.
    fn movement(&self, kind: u32, bytes: usize, set: impl FnOnce(&mut Launch)) -> Vec<Launch> {
        if bytes == 0 {
            return Vec::new();
        }
        let mut l = Launch {
            kind,
            lane: self.lane(bytes),
            src_off: Some(0),
            dst_off: Some(0),
            count: bytes,
            chunk: self.step_bytes(bytes),
            ..Default::default()
        };
        set(&mut l);
        vec![l]
    }

    /// all_reduce of `count` elements (`count * dtype.size()` must not overflow): low-latency up to
    /// `ll_max` bytes, one-shot up to `oneshot_max` (and pipelined from `pipeline_min` with 2 ranks),
    /// else two-shot in sub-operations whose per-rank share fits half a slot.
    pub fn all_reduce(&self, dtype: DType, op: ReduceOp, count: usize) -> Vec<Launch> {
        let bytes = count * dtype.size();
        let avg_n = self.avg_divisor(op);
        let whole = Launch { src_off: Some(0), dst_off: Some(0), count, avg_n, ..Default::default() };
        let pipelined = self.world == 2 && bytes >= self.opts.pipeline_min;
        if self.world > 1 && bytes <= self.opts.ll_max {
            vec![Launch { kind: AR_LL, lane: Lane::LowLatency, ..whole }]
        } else if bytes <= self.opts.oneshot_max || self.world == 1 || pipelined {
            // One launch; above one slot (or when pipelining) the kernel steps through chunks itself.
            let chunk = if pipelined { self.pipeline_chunk(bytes) } else { self.opts.slot_bytes };
            let chunk = chunk_elems(dtype, chunk).max(1);
            let lane = if pipelined { Lane::Bulk } else { self.lane(bytes) };
            vec![Launch { kind: AR_ONESHOT, lane, chunk, ..whole }]
        } else {
            let chunk = chunk_elems(dtype, self.opts.slot_bytes / 2) * self.world;
            // (Spelled out rather than `..whole`: that update inside the closure crashes rustc 1.95.)
            split(count, chunk, |off, n| {
                let o = off * dtype.size();
                Launch { kind: AR_TWOSHOT, src_off: Some(o), dst_off: Some(o), count: n, avg_n, ..Default::default() }
            })
        }
    }

    /// reduce of `count` elements to `root`, in sub-operations of at most a slot.
    pub fn reduce(&self, dtype: DType, op: ReduceOp, count: usize, root: usize) -> Vec<Launch> {
        let avg_n = self.avg_divisor(op);
        let chunk = chunk_elems(dtype, self.opts.slot_bytes).max(1);
        split(count, chunk, |off, n| {
            let o = off * dtype.size();
            Launch { kind: REDUCE, lane: self.lane(n * dtype.size()), src_off: Some(o), dst_off: Some(o), count: n, root, avg_n, ..Default::default() }
        })
    }

    /// reduce_scatter of `count` elements per rank whose blocks start at `block_offsets` (bytes, one
    /// per rank) in the source, in sub-operations of at most a slot per block.
    pub fn reduce_scatter(&self, dtype: DType, op: ReduceOp, block_offsets: &[usize], count: usize) -> Vec<Launch> {
        let avg_n = self.avg_divisor(op);
        let chunk = chunk_elems(dtype, self.opts.slot_bytes).max(1);
        let blocks = per_rank(block_offsets);
        split(count, chunk, |off, n| {
            let o = off * dtype.size();
            Launch {
                kind: REDUCE_SCATTER,
                lane: self.lane(n * dtype.size()),
                src_off: Some(o),
                dst_off: Some(o),
                count: n,
                send_off: blocks,
                avg_n,
                ..Default::default()
            }
        })
    }

    /// broadcast of `bytes` from `root`.
    pub fn broadcast(&self, bytes: usize, root: usize) -> BroadcastPlan {
        if self.world > 2 && bytes >= BCAST_SCATTER_MIN {
            let (offs, lens, shard) = byte_shards(bytes, self.world);
            let none = vec![0usize; self.world];
            let me = self.rank;
            // The root sends shard p to rank p (itself included: kept in place or copied).
            let send_len = if me == root { lens.clone() } else { none.clone() };
            let (mut recv_off, mut recv_len) = (none.clone(), none);
            (recv_off[root], recv_len[root]) = (offs[me], lens[me]);
            let scatter = Exchange { send_off: offs.clone(), send_len, recv_off, recv_len, max_pair_bytes: shard };
            // Every rank sends its shard to every rank (to itself in place, so no copy).
            let gather = Exchange {
                send_off: vec![offs[me]; self.world],
                send_len: vec![lens[me]; self.world],
                recv_off: offs,
                recv_len: lens,
                max_pair_bytes: shard,
            };
            return BroadcastPlan::ScatterGather { scatter, gather };
        }
        BroadcastPlan::Direct(self.movement(BROADCAST, bytes, |l| l.root = root))
    }

    /// all_gather of `bytes` per rank: block q of the destination (`q * bytes`) comes from rank q.
    pub fn all_gather(&self, bytes: usize) -> Vec<Launch> {
        self.movement(ALL_GATHER, bytes, |l| l.dst_stride = bytes)
    }

    /// The even all-to-all of blocks of `bytes`: block p of the source goes to rank p, stored as block
    /// `rank` of its destination.
    pub fn even_exchange(&self, bytes: usize) -> Exchange {
        let offs = even_blocks(self.world, bytes);
        let lens = vec![bytes; self.world];
        Exchange { send_off: offs.clone(), send_len: lens.clone(), recv_off: offs, recv_len: lens, max_pair_bytes: bytes }
    }

    /// Uneven all-to-all: checks the exchange, then one launch pipelined over chunks of the longest
    /// block (`max_pair_bytes`, agreed by every rank).
    pub fn exchange(&self, send_off: &[usize], send_len: &[usize], recv_off: &[usize], recv_len: &[usize], max_pair_bytes: usize) -> Result<Vec<Launch>> {
        if [send_off.len(), send_len.len(), recv_off.len(), recv_len.len()].iter().any(|&l| l != self.world) {
            return Err(KernelError::InvalidArgument { reason: "all_to_allv: offsets and lengths need one entry per rank" });
        }
        if send_len.iter().chain(recv_len).any(|&l| l > max_pair_bytes) {
            return Err(KernelError::InvalidArgument { reason: "all_to_allv: a length exceeds max_pair_bytes" });
        }
        if send_len[self.rank] != recv_len[self.rank] {
            return Err(KernelError::InvalidArgument { reason: "all_to_allv: the block a rank sends itself must match what it receives" });
        }
        Ok(self.movement(ALL_TO_ALL, max_pair_bytes, |l| {
            (l.send_off, l.send_len) = (per_rank(send_off), per_rank(send_len));
            (l.recv_off, l.recv_len) = (per_rank(recv_off), per_rank(recv_len));
        }))
    }

    /// One launch per p2p slot of a send (`kind` [`SEND`], from the source buffer) or a receive
    /// ([`RECV`], into the destination buffer) of `bytes` with `peer`.
    pub fn p2p(&self, kind: u32, bytes: usize, peer: usize) -> Vec<Launch> {
        split(bytes, self.opts.p2p_slot, |off, n| {
            let (src_off, dst_off) = if kind == SEND { (Some(off), None) } else { (None, Some(off)) };
            Launch { kind, src_off, dst_off, count: n, root: peer, ..Default::default() }
        })
    }

    /// A send of `send_bytes` to `to` and a receive of `recv_bytes` from `from`, their chunks
    /// interleaved (so rings and pairwise exchanges of any size cannot deadlock).
    pub fn send_recv(&self, send_bytes: usize, to: usize, recv_bytes: usize, from: usize) -> Vec<Launch> {
        let sends = self.p2p(SEND, send_bytes, to);
        let recvs = self.p2p(RECV, recv_bytes, from);
        let mut subs = Vec::with_capacity(sends.len() + recvs.len());
        for i in 0..sends.len().max(recvs.len()) {
            subs.extend(sends.get(i).copied());
            subs.extend(recvs.get(i).copied());
        }
        subs
    }
}
