//! GPU collectives in group ranks. A [`DeviceComm`] spans the members of one view, as dense ranks
//! `0..m`; once a rank failed and the view shrank, a [`DeviceGroup`] maps the group's ranks and
//! buffer layouts (one block per group rank) onto the communicator, with the host path's semantics:
//! reductions run over the members (`Avg` divides by their count), all_gather blocks of inactive
//! ranks are zero, reduce_scatter and all_to_all move only the members' blocks, a collective rooted
//! at an inactive rank fails with `RootInactive` on every member, and a send to or receive from one
//! fails with `PeerInactive`. In a full view every call is the communicator's own.
use crate::error::{ChorusError, Result};
use chorus_kernels::cuda::{DeviceComm, RawStream};
use chorus_kernels::{DType, KernelError, ReduceOp};
use std::sync::Arc;

/// A group's GPU communicator on one device, for the view it was built in.
#[derive(Clone)]
pub struct DeviceGroup {
    comm: Arc<DeviceComm>,
    /// Group rank of each communicator rank (ascending: the view's members).
    members: Arc<[usize]>,
    size: usize,
    epoch: u64,
}

impl std::fmt::Debug for DeviceGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceGroup").field("members", &self.members).field("size", &self.size).field("epoch", &self.epoch).finish()
    }
}

fn dev(op: &'static str) -> impl FnOnce(KernelError) -> ChorusError {
    move |source| ChorusError::Device { op, source }
}

impl DeviceGroup {
    pub(crate) fn new(comm: Arc<DeviceComm>, members: Arc<[usize]>, size: usize, epoch: u64) -> DeviceGroup {
        DeviceGroup { comm, members, size, epoch }
    }

    /// The communicator (its ranks are positions in [`DeviceGroup::members`]).
    pub fn comm(&self) -> &Arc<DeviceComm> {
        &self.comm
    }

    /// The group ranks the communicator spans, ascending.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// The view epoch the communicator was built in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn full(&self) -> bool {
        self.members.len() == self.size
    }

    fn dense(&self, rank: usize) -> Option<usize> {
        self.members.binary_search(&rank).ok()
    }

    fn root(&self, op: &'static str, root: usize) -> Result<usize> {
        if root >= self.size {
            return Err(ChorusError::InvalidRank { rank: root, size: self.size });
        }
        self.dense(root).ok_or(ChorusError::RootInactive { op, root })
    }

    fn peer(&self, op: &'static str, peer: usize) -> Result<usize> {
        if peer >= self.size {
            return Err(ChorusError::InvalidRank { rank: peer, size: self.size });
        }
        self.dense(peer).ok_or(ChorusError::PeerInactive { op, peer, epoch: self.epoch })
    }

    /// Byte offsets of the members' blocks in a buffer of one `block` per group rank.
    fn member_blocks(&self, block: usize) -> Vec<usize> {
        self.members.iter().map(|&r| r * block).collect()
    }

    /// [`DeviceComm::all_reduce`] over the members.
    ///
    /// # Safety
    /// As [`DeviceComm::all_reduce`].
    pub unsafe fn all_reduce(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.all_reduce(stream, dtype, op, src, dst, count) }.map_err(dev("all_reduce"))
    }

    /// [`DeviceComm::reduce`] to group rank `root`.
    ///
    /// # Safety
    /// As [`DeviceComm::reduce`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn reduce(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize, root: usize) -> Result<()> {
        let root = self.root("reduce", root)?;
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.reduce(stream, dtype, op, src, dst, count, root) }.map_err(dev("reduce"))
    }

    /// [`DeviceComm::broadcast`] from group rank `root`.
    ///
    /// # Safety
    /// As [`DeviceComm::broadcast`].
    pub unsafe fn broadcast(&self, stream: RawStream, src: u64, dst: u64, bytes: usize, root: usize) -> Result<()> {
        let root = self.root("broadcast", root)?;
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.broadcast(stream, src, dst, bytes, root) }.map_err(dev("broadcast"))
    }

    /// `dst` holds one `block` per group rank: the members' inputs at their ranks' places, zeros at
    /// inactive ranks' places.
    ///
    /// # Safety
    /// `src` valid for `block`, `dst` for `size * block`, disjoint or `src` exactly this rank's block of
    /// `dst`; stream as [`DeviceComm::all_gather`].
    pub unsafe fn all_gather(&self, stream: RawStream, src: u64, dst: u64, block: usize) -> Result<()> {
        let op = "all_gather";
        if self.full() {
            // SAFETY: forwarded to the caller.
            return unsafe { self.comm.all_gather(stream, src, dst, block) }.map_err(dev(op));
        }
        for r in (0..self.size).filter(|&r| self.dense(r).is_none()) {
            // SAFETY: block r of `dst`, inside the caller's `size * block` bytes.
            unsafe { self.comm.zero(stream, dst + (r * block) as u64, block) }.map_err(dev(op))?;
        }
        let m = self.members.len();
        let (from, lens) = (vec![0usize; m], vec![block; m]);
        // SAFETY: every member reads its one input block and writes the members' blocks of `dst`,
        // which are disjoint and inside it (the caller's contract).
        unsafe { self.comm.all_to_allv(stream, src, dst, &from, &lens, &self.member_blocks(block), &lens, block) }.map_err(dev(op))
    }

    /// Rank r gets the reduction over the members of their block r (`count` elements), in `dst`.
    ///
    /// # Safety
    /// As [`DeviceComm::reduce_scatter`], `src` holding one block per group rank.
    pub unsafe fn reduce_scatter(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        let name = "reduce_scatter";
        if self.full() {
            // SAFETY: forwarded to the caller.
            return unsafe { self.comm.reduce_scatter(stream, dtype, op, src, dst, count) }.map_err(dev(name));
        }
        let bytes = count.checked_mul(dtype.size()).ok_or_else(|| ChorusError::InvalidArgument(format!("{name}: count overflows")))?;
        // SAFETY: forwarded to the caller: the members' blocks lie inside `src`.
        unsafe { self.comm.reduce_scatter_blocks(stream, dtype, op, src, &self.member_blocks(bytes), dst, count) }.map_err(dev(name))
    }

    /// Block p of `src` goes to group rank p, which stores it as block `rank` of `dst` (`block` bytes
    /// each); blocks to or from inactive ranks do not move.
    ///
    /// # Safety
    /// As [`DeviceComm::all_to_all`], both buffers holding one block per group rank.
    pub unsafe fn all_to_all(&self, stream: RawStream, src: u64, dst: u64, block: usize) -> Result<()> {
        if self.full() {
            // SAFETY: forwarded to the caller.
            return unsafe { self.comm.all_to_all(stream, src, dst, block) }.map_err(dev("all_to_all"));
        }
        let (offs, lens) = (self.member_blocks(block), vec![block; self.members.len()]);
        // SAFETY: the members' blocks tile part of both buffers (the caller's contract).
        unsafe { self.comm.all_to_allv(stream, src, dst, &offs, &lens, &offs, &lens, block) }.map_err(dev("all_to_all"))
    }

    /// [`DeviceComm::all_to_allv`] with one `(offset, length)` per group rank; entries of inactive
    /// ranks are ignored.
    ///
    /// # Safety
    /// As [`DeviceComm::all_to_allv`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn all_to_allv(
        &self,
        stream: RawStream,
        src: u64,
        dst: u64,
        send: &[(usize, usize)],
        recv: &[(usize, usize)],
        max_pair_bytes: usize,
    ) -> Result<()> {
        if send.len() != self.size || recv.len() != self.size {
            return Err(ChorusError::InvalidArgument(format!("all_to_all_v: one split per rank ({}) expected", self.size)));
        }
        let pick = |v: &[(usize, usize)]| -> (Vec<usize>, Vec<usize>) { self.members.iter().map(|&r| v[r]).unzip() };
        let ((so, sl), (ro, rl)) = (pick(send), pick(recv));
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.all_to_allv(stream, src, dst, &so, &sl, &ro, &rl, max_pair_bytes) }.map_err(dev("all_to_all_v"))
    }

    /// [`DeviceComm::send`] to group rank `peer`.
    ///
    /// # Safety
    /// As [`DeviceComm::send`].
    pub unsafe fn send(&self, stream: RawStream, src: u64, bytes: usize, peer: usize) -> Result<()> {
        let peer = self.peer("send", peer)?;
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.send(stream, src, bytes, peer) }.map_err(dev("send"))
    }

    /// [`DeviceComm::recv`] from group rank `peer`.
    ///
    /// # Safety
    /// As [`DeviceComm::recv`].
    pub unsafe fn recv(&self, stream: RawStream, dst: u64, bytes: usize, peer: usize) -> Result<()> {
        let peer = self.peer("recv", peer)?;
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.recv(stream, dst, bytes, peer) }.map_err(dev("recv"))
    }
}
