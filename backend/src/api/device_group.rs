//! GPU collectives in group ranks. A [`DeviceComm`] spans the members of one view, as dense ranks
//! `0..m`; once a rank failed and the view shrank, a [`DeviceGroup`] maps the group's ranks and
//! buffer layouts (one block per group rank) onto the communicator, with the host path's semantics:
//! reductions run over the members (`Avg` divides by their count), all_gather and gather blocks of
//! inactive ranks are zero, reduce_scatter and all_to_all move only the members' blocks, a collective rooted
//! at an inactive rank fails with `RootInactive` on every member, and a send to or receive from one
//! fails with `PeerInactive`. In a full view every call is the communicator's own.
//!
//! Takes raw CUDA device pointers and streams from the caller: a named exception to the backend's
//! `#![deny(unsafe_code)]`.
#![allow(unsafe_code)]
use crate::error::{ChorusError, Result};
use chorus_kernels::cuda::{DeviceComm, RawStream};
use chorus_kernels::{DType, KernelError, ReduceOp};
use std::sync::Arc;

/// Group ranks against a communicator's dense ranks: the pure part of [`DeviceGroup`] (no device).
#[derive(Clone, Debug, PartialEq, Eq)]
struct MemberMap {
    /// Group rank of each communicator rank (ascending: the view's members).
    members: Arc<[usize]>,
    size: usize,
    epoch: u64,
}

impl MemberMap {
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

    /// Byte ranges of the inactive ranks' blocks in such a buffer.
    fn inactive_blocks(&self, block: usize) -> Vec<(usize, usize)> {
        (0..self.size).filter(|&r| self.dense(r).is_none()).map(|r| (r * block, block)).collect()
    }

    /// The members' entries of per-group-rank `(offset, length)` splits, as offsets and lengths.
    fn member_splits(&self, splits: &[(usize, usize)]) -> (Vec<usize>, Vec<usize>) {
        self.members.iter().map(|&r| splits[r]).unzip()
    }
}

/// A group's GPU communicator on one device, for the view it was built in.
#[derive(Clone)]
pub struct DeviceGroup {
    comm: Arc<DeviceComm>,
    map: MemberMap,
}

impl std::fmt::Debug for DeviceGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceGroup").field("members", &self.map.members).field("size", &self.map.size).field("epoch", &self.map.epoch).finish()
    }
}

fn dev(op: &'static str) -> impl FnOnce(KernelError) -> ChorusError {
    move |error| ChorusError::Device { op, error }
}

impl DeviceGroup {
    pub(crate) fn new(comm: Arc<DeviceComm>, members: Arc<[usize]>, size: usize, epoch: u64) -> DeviceGroup {
        DeviceGroup { comm, map: MemberMap { members, size, epoch } }
    }

    /// The communicator (its ranks are positions in [`DeviceGroup::members`]).
    pub fn comm(&self) -> &Arc<DeviceComm> {
        &self.comm
    }

    /// The group ranks the communicator spans, ascending.
    pub fn members(&self) -> &[usize] {
        &self.map.members
    }

    /// The view epoch the communicator was built in.
    pub fn epoch(&self) -> u64 {
        self.map.epoch
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
        let root = self.map.root("reduce", root)?;
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.reduce(stream, dtype, op, src, dst, count, root) }.map_err(dev("reduce"))
    }

    /// [`DeviceComm::broadcast`] from group rank `root`.
    ///
    /// # Safety
    /// As [`DeviceComm::broadcast`].
    pub unsafe fn broadcast(&self, stream: RawStream, src: u64, dst: u64, bytes: usize, root: usize) -> Result<()> {
        let root = self.map.root("broadcast", root)?;
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
        if self.map.full() {
            // SAFETY: forwarded to the caller.
            return unsafe { self.comm.all_gather(stream, src, dst, block) }.map_err(dev(op));
        }
        for (off, len) in self.map.inactive_blocks(block) {
            // SAFETY: an inactive rank's block of `dst`, inside the caller's `size * block` bytes.
            unsafe { self.comm.zero(stream, dst + off as u64, len) }.map_err(dev(op))?;
        }
        let m = self.map.members.len();
        let (from, lens) = (vec![0usize; m], vec![block; m]);
        // SAFETY: every member reads its one input block and writes the members' blocks of `dst`,
        // which are disjoint and inside it (the caller's contract).
        unsafe { self.comm.all_to_allv(stream, src, dst, &from, &lens, &self.map.member_blocks(block), &lens, block) }.map_err(dev(op))
    }

    /// Rank r gets the reduction over the members of their block r (`count` elements), in `dst`.
    ///
    /// # Safety
    /// As [`DeviceComm::reduce_scatter`], `src` holding one block per group rank.
    pub unsafe fn reduce_scatter(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        let name = "reduce_scatter";
        if self.map.full() {
            // SAFETY: forwarded to the caller.
            return unsafe { self.comm.reduce_scatter(stream, dtype, op, src, dst, count) }.map_err(dev(name));
        }
        let bytes = count.checked_mul(dtype.size()).ok_or_else(|| ChorusError::InvalidArgument(format!("{name}: count overflows")))?;
        // SAFETY: forwarded to the caller: the members' blocks lie inside `src`.
        unsafe { self.comm.reduce_scatter_blocks(stream, dtype, op, src, &self.map.member_blocks(bytes), dst, count) }.map_err(dev(name))
    }

    /// Block p of `src` goes to group rank p, which stores it as block `rank` of `dst` (`block` bytes
    /// each); blocks to or from inactive ranks do not move.
    ///
    /// # Safety
    /// As [`DeviceComm::all_to_all`], both buffers holding one block per group rank.
    pub unsafe fn all_to_all(&self, stream: RawStream, src: u64, dst: u64, block: usize) -> Result<()> {
        if self.map.full() {
            // SAFETY: forwarded to the caller.
            return unsafe { self.comm.all_to_all(stream, src, dst, block) }.map_err(dev("all_to_all"));
        }
        let (offs, lens) = (self.map.member_blocks(block), vec![block; self.map.members.len()]);
        // SAFETY: the members' blocks tile part of both buffers (the caller's contract).
        unsafe { self.comm.all_to_allv(stream, src, dst, &offs, &lens, &offs, &lens, block) }.map_err(dev("all_to_all"))
    }

    /// [`DeviceComm::all_to_allv`] with one `(offset, length)` per group rank; entries of inactive
    /// ranks are ignored.
    ///
    /// # Safety
    /// As [`DeviceComm::all_to_allv`].
    pub unsafe fn all_to_allv(
        &self,
        stream: RawStream,
        src: u64,
        dst: u64,
        send: &[(usize, usize)],
        recv: &[(usize, usize)],
        max_pair_bytes: usize,
    ) -> Result<()> {
        if send.len() != self.map.size || recv.len() != self.map.size {
            return Err(ChorusError::InvalidArgument(format!("all_to_all_v: one split per rank ({}) expected", self.map.size)));
        }
        let ((so, sl), (ro, rl)) = (self.map.member_splits(send), self.map.member_splits(recv));
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.all_to_allv(stream, src, dst, &so, &sl, &ro, &rl, max_pair_bytes) }.map_err(dev("all_to_all_v"))
    }

    /// Gather to group rank `root`: its `dst` holds one `block` per group rank (the members' inputs,
    /// zeros at inactive ranks' places); `dst` is not touched on other ranks (it may be 0 there).
    /// One launch: an all-to-all in which every member sends only to the root.
    ///
    /// # Safety
    /// `src` valid for `block`; on the root `dst` valid for `size * block`, disjoint from `src` or
    /// `src` exactly the root's block of it; stream as [`DeviceComm::all_to_allv`].
    pub unsafe fn gather(&self, stream: RawStream, src: u64, dst: u64, block: usize, root: usize) -> Result<()> {
        let op = "gather";
        let root = self.map.root(op, root)?;
        let m = self.map.members.len();
        let (zero, mut send_len) = (vec![0usize; m], vec![0usize; m]);
        send_len[root] = block;
        let (recv_off, recv_len) = if self.comm.rank() == root {
            for (off, len) in self.map.inactive_blocks(block) {
                // SAFETY: an inactive rank's block of the root's `dst` (the caller's contract).
                unsafe { self.comm.zero(stream, dst + off as u64, len) }.map_err(dev(op))?;
            }
            (self.map.member_blocks(block), vec![block; m])
        } else {
            (zero.clone(), zero.clone())
        };
        // SAFETY: every member reads its input block; only the root writes, the members' blocks of
        // its `dst` (the caller's contract).
        unsafe { self.comm.all_to_allv(stream, src, dst, &zero, &send_len, &recv_off, &recv_len, block) }.map_err(dev(op))
    }

    /// Scatter from group rank `root`: its `src` holds one `block` per group rank; every member gets
    /// its block in `dst` (`src` is not read on other ranks and may be 0 there).
    ///
    /// # Safety
    /// `dst` valid for `block`; on the root `src` valid for `size * block`, disjoint from `dst` or `dst`
    /// exactly the root's block of it; stream as [`DeviceComm::all_to_allv`].
    pub unsafe fn scatter(&self, stream: RawStream, src: u64, dst: u64, block: usize, root: usize) -> Result<()> {
        let op = "scatter";
        let root = self.map.root(op, root)?;
        let m = self.map.members.len();
        let (zero, mut recv_len) = (vec![0usize; m], vec![0usize; m]);
        recv_len[root] = block;
        let (send_off, send_len) = if self.comm.rank() == root { (self.map.member_blocks(block), vec![block; m]) } else { (zero.clone(), zero.clone()) };
        // SAFETY: only the root reads, the members' blocks of its `src`; every member writes its `dst`
        // block (the caller's contract).
        unsafe { self.comm.all_to_allv(stream, src, dst, &send_off, &send_len, &zero, &recv_len, block) }.map_err(dev(op))
    }

    /// [`DeviceComm::send`] to group rank `peer`.
    ///
    /// # Safety
    /// As [`DeviceComm::send`].
    pub unsafe fn send(&self, stream: RawStream, src: u64, bytes: usize, peer: usize) -> Result<()> {
        let peer = self.map.peer("send", peer)?;
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.send(stream, src, bytes, peer) }.map_err(dev("send"))
    }

    /// [`DeviceComm::recv`] from group rank `peer`.
    ///
    /// # Safety
    /// As [`DeviceComm::recv`].
    pub unsafe fn recv(&self, stream: RawStream, dst: u64, bytes: usize, peer: usize) -> Result<()> {
        let peer = self.map.peer("recv", peer)?;
        // SAFETY: forwarded to the caller.
        unsafe { self.comm.recv(stream, dst, bytes, peer) }.map_err(dev("recv"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(members: &[usize], size: usize) -> MemberMap {
        MemberMap { members: members.into(), size, epoch: 3 }
    }

    #[test]
    fn a_full_view_maps_every_rank_to_itself() {
        let m = map(&[0, 1, 2, 3], 4);
        assert!(m.full());
        assert_eq!((0..4).map(|r| m.dense(r)).collect::<Vec<_>>(), [Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(m.member_blocks(10), [0, 10, 20, 30]);
        assert!(m.inactive_blocks(10).is_empty());
    }

    #[test]
    fn a_shrunk_view_keeps_blocks_at_group_ranks_and_names_the_missing_rank() {
        let m = map(&[0, 2, 3], 4);
        assert!(!m.full());
        assert_eq!((m.dense(0), m.dense(1), m.dense(2), m.dense(3)), (Some(0), None, Some(1), Some(2)));
        assert_eq!(m.member_blocks(8), [0, 16, 24]);
        assert_eq!(m.inactive_blocks(8), [(8, 8)]);
        assert_eq!(m.root("broadcast", 3).unwrap(), 2);
        assert!(matches!(m.root("broadcast", 1), Err(ChorusError::RootInactive { op: "broadcast", root: 1 })));
        assert!(matches!(m.root("reduce", 4), Err(ChorusError::InvalidRank { rank: 4, size: 4 })));
        assert!(matches!(m.peer("send", 1), Err(ChorusError::PeerInactive { op: "send", peer: 1, epoch: 3 })));
        assert_eq!(m.peer("recv", 2).unwrap(), 1);
        let splits = [(0, 5), (5, 7), (12, 1), (13, 0)];
        assert_eq!(m.member_splits(&splits), (vec![0, 12, 13], vec![5, 1, 0]));
        let msg = m.peer("send", 1).unwrap_err().to_string();
        assert!(msg.contains("rank 1") && msg.contains("epoch 3") && msg.contains("rejoin"), "{msg}");
    }

    #[test]
    fn a_view_of_one_survivor_has_only_its_block() {
        let m = map(&[2], 3);
        assert_eq!(m.member_blocks(4), [8]);
        assert_eq!(m.inactive_blocks(4), [(0, 4), (4, 4)]);
        assert_eq!(m.dense(2), Some(0));
    }
}
