//! GPU collectives of a group that spans hosts (issue 26, item 2): NVLink / CUDA IPC kernels
//! within each host (a device communicator over the host's members), the host transports across
//! hosts, through host copies of the device buffer ("rails": rank `j` of every host forms a
//! subgroup). all_reduce and broadcast take this path; the other collectives take the host path.
//!
//! all_reduce: every host reduces on its GPUs (kernel all_reduce), rank `j < S` of every host
//! (`S` = ranks of the smallest host) all-reduces segment `j` with its rail, every host rank then
//! broadcasts its segment on the GPUs. broadcast: the root's host broadcasts on its GPUs, rail 0
//! (the root's host taking part through its rank 0 there) carries it across hosts, each other host
//! broadcasts on its GPUs.
//!
//! Failures keep the kernel path's contract (the collective during which a rank died fails on
//! every survivor): rails run with the `abort` policy, and every rank's outcome is agreed through
//! one host all_reduce of the group before the GPU kernels that follow it are launched.
//!
//! Device-pointer copies: a named exception to the backend's `#![deny(unsafe_code)]`.
#![allow(unsafe_code)]
use super::device_group::DeviceGroup;
use super::staged::{download, upload};
use super::ProcessGroup;
use crate::error::{ChorusError, Result};
use crate::options::FailurePolicy;
use chorus_kernels::cuda::RawStream;
use chorus_kernels::{DType, ReduceOp};

/// The active members of a group by host: `hosts[h]` the group ranks on host `h`, ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub hosts: Vec<Vec<usize>>,
}

impl Layout {
    /// From each member's host index (as `GroupInner::host_indices` numbers them).
    pub fn new(members: &[usize], host_of: &[usize]) -> Layout {
        let mut hosts: Vec<Vec<usize>> = vec![Vec::new(); host_of.iter().max().map_or(0, |h| h + 1)];
        for (&r, &h) in members.iter().zip(host_of) {
            hosts[h].push(r);
        }
        hosts.retain(|h| !h.is_empty());
        Layout { hosts }
    }

    /// Rails: ranks of the smallest host (every host has its `j`-th rank for `j` below it).
    pub fn rails(&self) -> usize {
        self.hosts.iter().map(Vec::len).min().unwrap_or(0)
    }

    /// Rail `j`: the `j`-th rank of every host, ascending.
    pub fn rail(&self, j: usize) -> Vec<usize> {
        let mut r: Vec<usize> = self.hosts.iter().map(|h| h[j]).collect();
        r.sort_unstable();
        r
    }

    /// `rank`'s host and its place there.
    pub fn place(&self, rank: usize) -> Option<(usize, usize)> {
        self.hosts.iter().enumerate().find_map(|(h, rs)| rs.iter().position(|&r| r == rank).map(|i| (h, i)))
    }

    /// Whether every host has the same number of ranks.
    pub fn even(&self) -> bool {
        self.hosts.iter().all(|h| h.len() == self.hosts[0].len())
    }
}

/// Element range `[lo, hi)` of segment `j` of `count` elements cut in `parts`.
pub fn segment(count: usize, parts: usize, j: usize) -> (usize, usize) {
    (count * j / parts, count * (j + 1) / parts)
}

/// The GPU collectives of a group spanning hosts: the device communicator of this rank's host,
/// and the group for the host collectives across hosts.
#[derive(Clone, Debug)]
pub struct HybridOps {
    pub(crate) pg: ProcessGroup,
    pub(crate) ordinal: usize,
    pub(crate) local: DeviceGroup,
    pub(crate) layout: Layout,
    /// This rank's rail (`None` past the smallest host's size).
    pub(crate) rail: Option<ProcessGroup>,
}

impl ProcessGroup {
    /// This rank's rail of `layout` in the current view (built on first use in each view: every
    /// member calls this at the same collective, creating rails `0..S` in order).
    pub(crate) fn rail(&self, layout: &Layout) -> Result<Option<ProcessGroup>> {
        let epoch = self.current_epoch();
        let mut cached = self.inner.rails.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((e, l, rail)) = &*cached {
            if *e == epoch && l == &layout.hosts {
                return Ok(rail.clone().map(|inner| ProcessGroup { inner, _server: None }));
            }
        }
        // A rail that loses a rank fails its collective on every member (the kernel path's
        // contract), instead of completing over the survivors with a segment missing.
        let opts = crate::options::Options { policy: FailurePolicy::Abort, ..self.subgroup_options() };
        let mut mine = None;
        for j in 0..layout.rails() {
            if let Some(g) = self.new_group_with(&layout.rail(j), opts.clone())? {
                mine = Some(g);
            }
        }
        *cached = Some((epoch, layout.hosts.clone(), mine.as_ref().map(|g| g.inner.clone())));
        Ok(mine)
    }
}

/// Runs `f`, then agrees with every rank of the group whether all of them succeeded: an error on
/// any rank is an error on every rank (`what` says which step).
fn agree(pg: &ProcessGroup, op: &'static str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let mine = f();
    let mut flag = [i64::from(mine.is_err())];
    pg.all_reduce(&mut flag, ReduceOp::Max)?;
    match (mine, flag[0]) {
        (Err(e), _) => Err(e),
        (Ok(()), 0) => Ok(()),
        (Ok(()), _) => Err(ChorusError::PeerFailed { op, peer: usize::MAX, why: "the host step failed on another rank".into() }),
    }
}

impl HybridOps {
    fn elem_bytes(&self, count: usize, dtype: DType) -> Result<usize> {
        count.checked_mul(dtype.size()).ok_or_else(|| ChorusError::InvalidArgument(format!("{count} elements of {} overflow the address space", dtype.name())))
    }

    /// # Safety
    /// As [`DeviceGroup::all_reduce`] (`src`, `dst`: `count` elements of device `ordinal`).
    pub unsafe fn all_reduce(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        let esz = dtype.size();
        self.elem_bytes(count, dtype)?;
        tracing::debug!(count, hosts = ?self.layout.hosts, "hybrid all_reduce: kernels within the host, rails across");
        // Within each host, on the GPUs. (Avg: each host's average, then the rails average the
        // hosts' — the group's average when hosts hold equal numbers of ranks.)
        // SAFETY: forwarded to the caller.
        unsafe { self.local.all_reduce(stream, dtype, op, src, dst, count) }?;
        let parts = self.layout.rails();
        let me = self.layout.place(self.pg.rank()).map(|(_, i)| i);
        // Across hosts: segment j on rail j.
        agree(&self.pg, "all_reduce", || {
            let (Some(j), Some(rail)) = (me.filter(|&i| i < parts), &self.rail) else { return Ok(()) };
            let (lo, hi) = segment(count, parts, j);
            let at = dst + (lo * esz) as u64;
            // SAFETY: [lo, hi) lies inside the caller's `count` elements at `dst`.
            let mut seg = unsafe { download(self.ordinal, stream, at, (hi - lo) * esz, "all_reduce") }?;
            rail.all_reduce_raw(&mut seg, dtype, op)?;
            // SAFETY: as above.
            unsafe { upload(self.ordinal, stream, at, &seg, "all_reduce") }
        })?;
        // Within each host again: rank j hands its segment to the others.
        let host = self.layout.place(self.pg.rank()).map(|(h, _)| h).unwrap_or(0);
        for j in 0..parts {
            let (lo, hi) = segment(count, parts, j);
            let at = dst + (lo * esz) as u64;
            // SAFETY: as above; an in-place broadcast of the segment.
            unsafe { self.local.broadcast(stream, at, at, (hi - lo) * esz, self.layout.hosts[host][j]) }?;
        }
        Ok(())
    }

    /// # Safety
    /// As [`DeviceGroup::broadcast`].
    pub unsafe fn broadcast(&self, stream: RawStream, src: u64, dst: u64, bytes: usize, root: usize) -> Result<()> {
        let Some((root_host, _)) = self.layout.place(root) else {
            return Err(ChorusError::RootInactive { op: "broadcast", root });
        };
        let (host, idx) = self.layout.place(self.pg.rank()).ok_or(ChorusError::Excluded { epoch: self.pg.current_epoch() })?;
        tracing::debug!(bytes, root, hosts = ?self.layout.hosts, "hybrid broadcast: kernels within the host, rail 0 across");
        if host == root_host {
            // SAFETY: forwarded to the caller.
            unsafe { self.local.broadcast(stream, src, dst, bytes, root) }?;
        }
        // Rail 0 carries it across hosts, from the root's host's first rank.
        let bridge = self.layout.hosts[root_host][0];
        agree(&self.pg, "broadcast", || {
            let (0, Some(rail)) = (idx, &self.rail) else { return Ok(()) };
            let from = rail_rank(&self.layout.rail(0), bridge);
            let mut buf = match host == root_host {
                // SAFETY: `dst` holds `bytes` bytes of device `ordinal` (the caller's contract).
                true => unsafe { download(self.ordinal, stream, dst, bytes, "broadcast") }?,
                false => vec![0u8; bytes],
            };
            rail.broadcast_raw(&mut buf, from)?;
            match host == root_host {
                true => Ok(()),
                // SAFETY: as above.
                false => unsafe { upload(self.ordinal, stream, dst, &buf, "broadcast") },
            }
        })?;
        if host != root_host {
            // SAFETY: an in-place broadcast of the caller's `dst` from this host's first rank.
            unsafe { self.local.broadcast(stream, dst, dst, bytes, self.layout.hosts[host][0]) }?;
        }
        Ok(())
    }
}

/// `rank`'s place in `rail` (its rank in the rail's group).
fn rail_rank(rail: &[usize], rank: usize) -> usize {
    rail.iter().position(|&r| r == rank).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{segment, Layout};

    #[test]
    fn layouts_rails_and_places() {
        // Ranks dealt round-robin to two hosts, one of them missing a rank (a failure).
        let l = Layout::new(&[0, 1, 2, 3, 5], &[0, 1, 0, 1, 1]);
        assert_eq!(l.hosts, vec![vec![0, 2], vec![1, 3, 5]]);
        assert_eq!(l.rails(), 2);
        assert_eq!((l.rail(0), l.rail(1)), (vec![0, 1], vec![2, 3]));
        assert_eq!((l.place(5), l.place(2), l.place(4)), (Some((1, 2)), Some((0, 1)), None));
        assert!(!l.even());
        assert!(Layout::new(&[0, 1, 2, 3], &[0, 0, 1, 1]).even());
    }

    #[test]
    fn segments_cover_every_element_once() {
        for (count, parts) in [(0, 3), (1, 2), (7, 3), (1000, 8), (5, 8)] {
            let mut next = 0;
            for j in 0..parts {
                let (lo, hi) = segment(count, parts, j);
                assert_eq!(lo, next, "count {count} parts {parts}");
                assert!(hi >= lo);
                next = hi;
            }
            assert_eq!(next, count);
        }
    }
}
