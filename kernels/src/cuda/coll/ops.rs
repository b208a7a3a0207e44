//! The collectives of a [`DeviceComm`]: each checks its arguments, asks the planning (`super::plan`)
//! for its launches and enqueues them on the caller's stream. They take raw device addresses, so they
//! are `unsafe fn`s whose contracts the callers keep.
#![allow(unsafe_code)]

use super::options::{RECV, SEND};
use super::plan::{even_blocks, BroadcastPlan};
use super::{DeviceComm, RawStream};
use crate::cuda::{cuda_err, ffi};
use crate::{DType, KernelError, ReduceOp, Result};

/// The bytes of `count` elements of `dtype`, or an error when that overflows.
fn elems_bytes(dtype: DType, count: usize) -> Result<usize> {
    count.checked_mul(dtype.size()).ok_or(KernelError::InvalidArgument { reason: "element count overflows" })
}

impl DeviceComm {
    /// `dst = op over ranks of src` (`count` elements; `dst == src` for in place).
    ///
    /// # Safety
    /// `src` and `dst` are device memory of this communicator's device, valid for `count` elements of
    /// `dtype` until the operation completes on `stream`; they are equal or do not overlap; `stream` is
    /// a live stream of the device's primary context (or 0), and so is the stream of this
    /// communicator's previous operation (all ops share this last condition).
    pub unsafe fn all_reduce(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        let func = self.kernels.coll_func(dtype, op)?;
        elems_bytes(dtype, count)?;
        if self.planner().identity_at_world_1(src == dst, Some(dtype)) {
            return self.check();
        }
        let subs = self.launch_args(&self.planner().all_reduce(dtype, op, count), src, dst);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, func, &subs) }
    }

    /// `dst` (on `root` only) `= op over ranks of src`.
    ///
    /// # Safety
    /// As [`DeviceComm::all_reduce`]; `dst` is only touched on `root`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn reduce(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize, root: usize) -> Result<()> {
        self.check_rank(root)?;
        let func = self.kernels.coll_func(dtype, op)?;
        elems_bytes(dtype, count)?;
        if self.planner().identity_at_world_1(src == dst, Some(dtype)) {
            return self.check();
        }
        let subs = self.launch_args(&self.planner().reduce(dtype, op, count, root), src, dst);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, func, &subs) }
    }

    /// `dst = op over ranks of src[rank * count .. (rank + 1) * count]`.
    ///
    /// # Safety
    /// `src` valid for `world * count` elements, `dst` for `count`, not overlapping; otherwise as
    /// [`DeviceComm::all_reduce`].
    pub unsafe fn reduce_scatter(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        let bytes = elems_bytes(dtype, count)?;
        elems_bytes(dtype, count.saturating_mul(self.world))?;
        let blocks = even_blocks(self.world, bytes);
        // SAFETY: forwarded to the caller; the blocks tile `src`.
        unsafe { self.reduce_scatter_blocks(stream, dtype, op, src, &blocks, dst, count) }
    }

    /// `dst = op over ranks of the block at src + block_offsets[rank]` (`count` elements each): the
    /// blocks may sit anywhere in `src` (a group whose view lost ranks keeps its blocks where the
    /// group ranks put them).
    ///
    /// # Safety
    /// Every `[src + block_offsets[p], + count elements)` is valid device memory, none overlapping
    /// `dst` (valid for `count`); otherwise as [`DeviceComm::all_reduce`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn reduce_scatter_blocks(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, block_offsets: &[usize], dst: u64, count: usize) -> Result<()> {
        if block_offsets.len() != self.world {
            return Err(KernelError::InvalidArgument { reason: "reduce_scatter: one block offset per rank" });
        }
        let func = self.kernels.coll_func(dtype, op)?;
        elems_bytes(dtype, count)?;
        let subs = self.launch_args(&self.planner().reduce_scatter(dtype, op, block_offsets, count), src, dst);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, func, &subs) }
    }

    /// Zeroes `bytes` at `ptr` on `stream` (stream-ordered, capturable in a CUDA graph): the blocks a
    /// group's inactive ranks would have filled.
    ///
    /// # Safety
    /// `ptr` is device memory of this device valid for `bytes` until the memset runs; stream as above.
    pub unsafe fn zero(&self, stream: RawStream, ptr: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.kernels.context().bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: forwarded to the caller.
        unsafe { ffi::memset_zero_async(ptr, bytes, stream.cu()) }.map_err(|e| cuda_err("cuMemsetD8Async", e))
    }

    /// Copies `bytes` from `src` on `root` to `dst` on every rank (`src == dst` for in place; `src` is
    /// only read on `root`).
    ///
    /// # Safety
    /// `src` (on root) and `dst` valid for `bytes`, equal or not overlapping; stream as above.
    pub unsafe fn broadcast(&self, stream: RawStream, src: u64, dst: u64, bytes: usize, root: usize) -> Result<()> {
        self.check_rank(root)?;
        if self.planner().identity_at_world_1(src == dst, None) {
            return self.check();
        }
        let launches = match self.planner().broadcast(bytes, root) {
            BroadcastPlan::ScatterGather { scatter: s, gather: g } => {
                // SAFETY: forwarded to the caller: the root reads `src` (its shards tile it), every rank
                // writes only its own shard of `dst`.
                unsafe { self.all_to_allv(stream, src, dst, &s.send_off, &s.send_len, &s.recv_off, &s.recv_len, s.max_pair_bytes)? };
                // SAFETY: forwarded to the caller; the only source range is this rank's shard, whose
                // destination is itself (no copy), and the other destinations tile the rest of `dst`.
                return unsafe { self.all_to_allv(stream, dst, dst, &g.send_off, &g.send_len, &g.recv_off, &g.recv_len, g.max_pair_bytes) };
            }
            BroadcastPlan::Direct(launches) => launches,
        };
        let subs = self.launch_args(&launches, src, dst);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// `dst[q * bytes ..][..bytes] = src of rank q` for every rank q.
    ///
    /// # Safety
    /// `src` valid for `bytes`, `dst` for `world * bytes`, not overlapping; stream as above.
    pub unsafe fn all_gather(&self, stream: RawStream, src: u64, dst: u64, bytes: usize) -> Result<()> {
        if self.planner().identity_at_world_1(src == dst, None) {
            return self.check();
        }
        let subs = self.launch_args(&self.planner().all_gather(bytes), src, dst);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// Even all-to-all: block p (`bytes` long) of `src` goes to rank p, which stores it as block `rank`
    /// of its `dst`.
    ///
    /// # Safety
    /// `src` and `dst` valid for `world * bytes`, not overlapping; stream as above.
    pub unsafe fn all_to_all(&self, stream: RawStream, src: u64, dst: u64, bytes: usize) -> Result<()> {
        let ex = self.planner().even_exchange(bytes);
        // SAFETY: forwarded to the caller; the blocks tile both buffers exactly.
        unsafe { self.all_to_allv(stream, src, dst, &ex.send_off, &ex.send_len, &ex.recv_off, &ex.recv_len, ex.max_pair_bytes) }
    }

    /// Uneven all-to-all (byte offsets and lengths per peer). `max_pair_bytes` must be the same on every
    /// rank and at least every length any rank sends (the split into sub-operations depends on it).
    ///
    /// # Safety
    /// Every `[src + send_off[p], + send_len[p])` and `[dst + recv_off[q], + recv_len[q])` is valid device
    /// memory of this device until the operation completes; destination ranges do not overlap each
    /// other or a source range; `send_len[p]` equals what rank p passes as `recv_len[rank]`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn all_to_allv(
        &self,
        stream: RawStream,
        src: u64,
        dst: u64,
        send_off: &[usize],
        send_len: &[usize],
        recv_off: &[usize],
        recv_len: &[usize],
        max_pair_bytes: usize,
    ) -> Result<()> {
        let launches = self.planner().exchange(send_off, send_len, recv_off, recv_len, max_pair_bytes)?;
        let subs = self.launch_args(&launches, src, dst);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// Sends `bytes` at `src` to `peer` (which posts a matching [`DeviceComm::recv`]). Sends of more
    /// than two p2p slots wait for the receiver: exchange in both directions with
    /// [`DeviceComm::send_recv`].
    ///
    /// # Safety
    /// `src` valid for `bytes` until the operation completes on `stream`; stream as above.
    pub unsafe fn send(&self, stream: RawStream, src: u64, bytes: usize, peer: usize) -> Result<()> {
        self.check_peer(peer)?;
        let subs = self.launch_args(&self.planner().p2p(SEND, bytes, peer), src, 0);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// Receives `bytes` from `peer` into `dst`.
    ///
    /// # Safety
    /// `dst` valid for `bytes` until the operation completes on `stream`; stream as above.
    pub unsafe fn recv(&self, stream: RawStream, dst: u64, bytes: usize, peer: usize) -> Result<()> {
        self.check_peer(peer)?;
        let subs = self.launch_args(&self.planner().p2p(RECV, bytes, peer), 0, dst);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// A grouped send to `to` and receive from `from` (as NCCL's grouped `ncclSend` + `ncclRecv`): the
    /// chunks of both are interleaved, so rings and pairwise exchanges of any size cannot deadlock.
    /// (A lone [`DeviceComm::send`] larger than two p2p slots completes only once the peer's matching
    /// receive runs, which a receive queued behind the peer's own send never does.)
    ///
    /// # Safety
    /// `src` valid for `send_bytes`, `dst` for `recv_bytes`, not overlapping, until the operation
    /// completes on `stream`; stream as above.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn send_recv(&self, stream: RawStream, src: u64, send_bytes: usize, to: usize, dst: u64, recv_bytes: usize, from: usize) -> Result<()> {
        self.check_peer(to)?;
        self.check_peer(from)?;
        let subs = self.launch_args(&self.planner().send_recv(send_bytes, to, recv_bytes, from), src, dst);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    fn check_rank(&self, r: usize) -> Result<()> {
        if r >= self.world {
            return Err(KernelError::InvalidArgument { reason: "root rank out of range" });
        }
        Ok(())
    }

    fn check_peer(&self, p: usize) -> Result<()> {
        if p >= self.world || p == self.rank {
            return Err(KernelError::InvalidArgument { reason: "peer must be another rank of the communicator" });
        }
        Ok(())
    }
}
