//! GPU memory on the host path, and which path a group's GPU collectives take.
//!
//! The GPU kernels (`DeviceGroup`) are fast but span at most `MAX_RANKS` ranks of one host, and a
//! peer that dies makes them time out. The host path copies each device buffer to the host on the
//! caller's stream, runs the host collective on the copies (with the whole fault-tolerance contract)
//! and copies the results back on the same stream. [`device_route`] decides between them, the same
//! way on every rank (from the group's options, its view and its links); [`DeviceOps`] runs a
//! device-pointer collective on the path decided, and [`DeviceStage`] is the host copies of one call
//! (the C ABI uses it for its asynchronous form).
//!
//! Copies between the caller's device pointers and host memory: a named exception to the backend's
//! `#![deny(unsafe_code)]`.
#![allow(unsafe_code)]
use super::device_group::DeviceGroup;
use super::issue::Issued;
use super::ProcessGroup;
use crate::error::{ChorusError, Result};
use crate::options::DevicePath;
use chorus_kernels::cuda::{copy_device_to_host, copy_host_to_device, RawStream};
use chorus_kernels::{DType, ReduceOp};
use std::cell::RefCell;
use std::time::Duration;

/// Why a group's GPU collectives take the host path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostReason {
    /// The options ask for it (`DevicePath::Host`, `CHORUS_CUDA_PATH=host`).
    Requested,
    /// The view has more members than a device communicator spans.
    TooManyRanks {
        /// Active ranks in the view.
        ranks: usize,
        /// The most ranks a device communicator spans.
        max: usize,
    },
    /// The group spans several hosts and one of them has more ranks than a device communicator
    /// spans.
    SeveralHosts,
}

impl std::fmt::Display for HostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostReason::Requested => write!(f, "the group's options ask for the host path (DevicePath::Host, CHORUS_CUDA_PATH=host)"),
            HostReason::TooManyRanks { ranks, max } => write!(f, "the group has {ranks} active ranks and the GPU kernels span at most {max}"),
            HostReason::SeveralHosts => write!(f, "the group spans several hosts and one of them has more ranks than the GPU kernels span"),
        }
    }
}

/// The path a collective on GPU memory takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRoute {
    /// The group's device communicator (NVLink / CUDA IPC kernels on the caller's stream).
    Kernels,
    /// Host copies and the host collective.
    Host(HostReason),
    /// A group spanning hosts: the kernels within each host (a device communicator over its
    /// ranks), the host transports across hosts (`api::hybrid`) for all_reduce and broadcast; the
    /// host path for the others.
    Hybrid,
}

/// The path for a group whose options say `path`, whose view has `members` active ranks of which
/// the largest host holds `widest`, and which spans several hosts or not (`several_hosts`), when a
/// device communicator spans at most `max_ranks`. Every rank decides the same: the inputs are the
/// same on every member.
pub fn device_route(path: DevicePath, members: usize, widest: usize, max_ranks: usize, several_hosts: bool) -> DeviceRoute {
    match (path, several_hosts) {
        (DevicePath::Host, _) => DeviceRoute::Host(HostReason::Requested),
        (_, false) if members > max_ranks => DeviceRoute::Host(HostReason::TooManyRanks { ranks: members, max: max_ranks }),
        (_, false) => DeviceRoute::Kernels,
        (_, true) if widest > max_ranks => DeviceRoute::Host(HostReason::SeveralHosts),
        (_, true) => DeviceRoute::Hybrid,
    }
}

impl ProcessGroup {
    /// The path this group's collectives on GPU memory take now (see [`device_route`]).
    pub fn device_route(&self) -> DeviceRoute {
        let path = self.options().device_path;
        if path == DevicePath::Host {
            return DeviceRoute::Host(HostReason::Requested);
        }
        // Counted in place: every GPU call of the C ABI asks (no allocation on that path).
        let members = self.inner.view.lock().unwrap_or_else(|p| p.into_inner()).active.iter().filter(|&&a| a).count();
        // A link that is not shared memory (tcp, rdma) leads to another host; with two hosts or
        // more every rank has such a link, so every rank decides alike.
        let several_hosts = self.inner.links().iter().flatten().any(|l| l.transport() != "shm");
        let widest = match several_hosts {
            true => self.host_layout().hosts.iter().map(Vec::len).max().unwrap_or(0),
            false => members,
        };
        device_route(path, members, widest, chorus_kernels::cuda::coll::MAX_RANKS, several_hosts)
    }

    /// The view's members by host.
    pub(crate) fn host_layout(&self) -> super::hybrid::Layout {
        let members = self.active_ranks();
        super::hybrid::Layout::new(&members, &self.inner.host_indices(&members))
    }

    /// Collectives on GPU memory of device `ordinal`, on the path [`ProcessGroup::device_route`]
    /// decides: the group's GPU kernels, or host copies and the host collectives.
    pub fn device_ops(&self, ordinal: usize) -> Result<DeviceOps> {
        match self.device_route() {
            DeviceRoute::Kernels => Ok(DeviceOps::Kernels(self.device_group(ordinal)?)),
            DeviceRoute::Host(reason) => Ok(DeviceOps::Host(HostOps { pg: self.clone(), ordinal, reason })),
            DeviceRoute::Hybrid => {
                let layout = self.host_layout();
                let rail = self.rail(&layout)?;
                let local = self.device_group(ordinal)?;
                let host = HostOps { pg: self.clone(), ordinal, reason: HostReason::SeveralHosts };
                Ok(DeviceOps::Hybrid(super::hybrid::HybridOps { pg: self.clone(), ordinal, local, layout, rail }, host))
            }
        }
    }
}

/// Copies `len` bytes of device memory at `ptr` to the host, after the work queued on `stream`.
///
/// # Safety
/// `ptr` is `len` bytes of memory of device `ordinal`, valid until the copy completed on `stream`.
pub(crate) unsafe fn download(ordinal: usize, stream: RawStream, ptr: u64, len: usize, op: &'static str) -> Result<Vec<u8>> {
    let mut host = vec![0u8; len];
    if len > 0 {
        // SAFETY: forwarded to the caller.
        unsafe { copy_device_to_host(ordinal, stream, ptr, &mut host) }.map_err(|error| ChorusError::Device { op, error })?;
    }
    Ok(host)
}

/// Copies `data` to the device memory at `ptr` on `stream`.
///
/// # Safety
/// `ptr` is `data.len()` writable bytes of memory of device `ordinal`, not used concurrently.
pub(crate) unsafe fn upload(ordinal: usize, stream: RawStream, ptr: u64, data: &[u8], op: &'static str) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    // SAFETY: forwarded to the caller.
    unsafe { copy_host_to_device(ordinal, stream, ptr, data) }.map_err(|error| ChorusError::Device { op, error })
}

/// Collectives on GPU memory through host copies (the host path). Each call returns once the
/// results are back on the device; it reports through [`ProcessGroup::last_op_info`].
#[derive(Clone, Debug)]
pub struct HostOps {
    pg: ProcessGroup,
    ordinal: usize,
    reason: HostReason,
}

impl HostOps {
    /// Why the host path was taken.
    pub fn reason(&self) -> HostReason {
        self.reason
    }

    unsafe fn get(&self, stream: RawStream, ptr: u64, len: usize, op: &'static str) -> Result<Vec<u8>> {
        // SAFETY: forwarded to the caller of the public method.
        unsafe { download(self.ordinal, stream, ptr, len, op) }
    }

    unsafe fn put(&self, stream: RawStream, ptr: u64, data: &[u8], op: &'static str) -> Result<()> {
        // SAFETY: forwarded to the caller of the public method.
        unsafe { upload(self.ordinal, stream, ptr, data, op) }
    }

    fn bytes(count: usize, dtype: DType) -> Result<usize> {
        count.checked_mul(dtype.size()).ok_or_else(|| ChorusError::InvalidArgument(format!("{count} elements of {} overflow the address space", dtype.name())))
    }

    fn times_size(&self, block: usize) -> Result<usize> {
        block.checked_mul(self.pg.size()).ok_or_else(|| ChorusError::InvalidArgument(format!("{} blocks of {block} bytes overflow the address space", self.pg.size())))
    }
}

/// A device-pointer collective on the path the group decided. The methods take what
/// [`DeviceGroup`]'s take, with its safety contracts.
#[derive(Clone, Debug)]
pub enum DeviceOps {
    /// The group's device communicator.
    Kernels(DeviceGroup),
    /// Host copies and the host collective.
    Host(HostOps),
    /// Kernels within each host and the host transports across (all_reduce, broadcast); the
    /// host path (`.1`) for the other collectives.
    Hybrid(super::hybrid::HybridOps, HostOps),
}

impl DeviceOps {
    /// # Safety
    /// As [`DeviceGroup::all_reduce`].
    pub unsafe fn all_reduce(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.all_reduce(stream, dtype, op, src, dst, count) },
            // An average over uneven hosts is not the hosts' averages averaged: the host path.
            DeviceOps::Hybrid(x, _) if op != ReduceOp::Avg || x.layout.even() => unsafe { x.all_reduce(stream, dtype, op, src, dst, count) },
            DeviceOps::Host(h) | DeviceOps::Hybrid(_, h) => unsafe {
                let mut buf = h.get(stream, src, HostOps::bytes(count, dtype)?, "all_reduce")?;
                h.pg.all_reduce_raw(&mut buf, dtype, op)?;
                h.put(stream, dst, &buf, "all_reduce")
            },
        }
    }

    /// # Safety
    /// As [`DeviceGroup::reduce`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn reduce(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize, root: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.reduce(stream, dtype, op, src, dst, count, root) },
            DeviceOps::Host(h) | DeviceOps::Hybrid(_, h) => unsafe {
                let mut buf = h.get(stream, src, HostOps::bytes(count, dtype)?, "reduce")?;
                h.pg.reduce_raw(&mut buf, root, dtype, op)?;
                if h.pg.rank() == root {
                    h.put(stream, dst, &buf, "reduce")?;
                }
                Ok(())
            },
        }
    }

    /// # Safety
    /// As [`DeviceGroup::broadcast`].
    pub unsafe fn broadcast(&self, stream: RawStream, src: u64, dst: u64, bytes: usize, root: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.broadcast(stream, src, dst, bytes, root) },
            DeviceOps::Hybrid(x, _) => unsafe { x.broadcast(stream, src, dst, bytes, root) },
            DeviceOps::Host(h) => unsafe {
                let mut buf = if h.pg.rank() == root { h.get(stream, src, bytes, "broadcast")? } else { vec![0u8; bytes] };
                h.pg.broadcast_raw(&mut buf, root)?;
                h.put(stream, dst, &buf, "broadcast")
            },
        }
    }

    /// # Safety
    /// As [`DeviceGroup::all_gather`].
    pub unsafe fn all_gather(&self, stream: RawStream, src: u64, dst: u64, block: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.all_gather(stream, src, dst, block) },
            DeviceOps::Host(h) | DeviceOps::Hybrid(_, h) => unsafe {
                let input = h.get(stream, src, block, "all_gather")?;
                let mut out = vec![0u8; h.times_size(block)?];
                h.pg.all_gather_raw(&input, &mut out)?;
                h.put(stream, dst, &out, "all_gather")
            },
        }
    }

    /// # Safety
    /// As [`DeviceGroup::reduce_scatter`].
    pub unsafe fn reduce_scatter(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.reduce_scatter(stream, dtype, op, src, dst, count) },
            DeviceOps::Host(h) | DeviceOps::Hybrid(_, h) => unsafe {
                let block = HostOps::bytes(count, dtype)?;
                let input = h.get(stream, src, h.times_size(block)?, "reduce_scatter")?;
                let mut out = vec![0u8; block];
                h.pg.reduce_scatter_raw(&input, &mut out, dtype, op)?;
                h.put(stream, dst, &out, "reduce_scatter")
            },
        }
    }

    /// # Safety
    /// As [`DeviceGroup::all_to_all`].
    pub unsafe fn all_to_all(&self, stream: RawStream, src: u64, dst: u64, block: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.all_to_all(stream, src, dst, block) },
            DeviceOps::Host(h) | DeviceOps::Hybrid(_, h) => unsafe {
                let total = h.times_size(block)?;
                let input = h.get(stream, src, total, "all_to_all")?;
                let mut out = vec![0u8; total];
                h.pg.all_to_all_raw(&input, &mut out)?;
                h.put(stream, dst, &out, "all_to_all")
            },
        }
    }

    /// # Safety
    /// As [`DeviceGroup::gather`].
    pub unsafe fn gather(&self, stream: RawStream, src: u64, dst: u64, block: usize, root: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.gather(stream, src, dst, block, root) },
            DeviceOps::Host(h) | DeviceOps::Hybrid(_, h) => unsafe {
                let input = h.get(stream, src, block, "gather")?;
                let is_root = h.pg.rank() == root;
                let mut out = vec![0u8; if is_root { h.times_size(block)? } else { 0 }];
                h.pg.gather_raw(&input, &mut out, root)?;
                if is_root {
                    h.put(stream, dst, &out, "gather")?;
                }
                Ok(())
            },
        }
    }

    /// # Safety
    /// As [`DeviceGroup::scatter`].
    pub unsafe fn scatter(&self, stream: RawStream, src: u64, dst: u64, block: usize, root: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.scatter(stream, src, dst, block, root) },
            DeviceOps::Host(h) | DeviceOps::Hybrid(_, h) => unsafe {
                let input = if h.pg.rank() == root { h.get(stream, src, h.times_size(block)?, "scatter")? } else { Vec::new() };
                let mut out = vec![0u8; block];
                h.pg.scatter_raw(&input, &mut out, root)?;
                h.put(stream, dst, &out, "scatter")
            },
        }
    }

    /// Sends `bytes` at `src` to `peer` (tag 0 on the host path: the kernel path has no tags and
    /// matches in issue order, which tag 0 keeps).
    ///
    /// # Safety
    /// As [`DeviceGroup::send`].
    pub unsafe fn send(&self, stream: RawStream, src: u64, bytes: usize, peer: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.send(stream, src, bytes, peer) },
            DeviceOps::Host(h) | DeviceOps::Hybrid(_, h) => unsafe {
                let buf = h.get(stream, src, bytes, "send")?;
                h.pg.send_raw(&buf, peer, 0)
            },
        }
    }

    /// # Safety
    /// As [`DeviceGroup::recv`].
    pub unsafe fn recv(&self, stream: RawStream, dst: u64, bytes: usize, peer: usize) -> Result<()> {
        match self {
            // SAFETY (both arms): forwarded to the caller.
            DeviceOps::Kernels(g) => unsafe { g.recv(stream, dst, bytes, peer) },
            DeviceOps::Host(h) | DeviceOps::Hybrid(_, h) => unsafe {
                let mut buf = vec![0u8; bytes];
                h.pg.recv_raw(&mut buf, peer, 0)?;
                h.put(stream, dst, &buf, "recv")
            },
        }
    }
}

/// One device buffer and its host copy. The host `Vec` is never touched (moved or read) while the
/// host collective may still write it through the pointer handed out.
struct Staged {
    host: Vec<u8>,
    device_ptr: u64,
    write_back: bool,
}

/// The host copies of one call's device buffers, for a host collective issued on them (queued or
/// run at once): [`DeviceStage::host_copy`] for each buffer, then [`DeviceStage::finish`].
pub struct DeviceStage {
    device: usize,
    stream: RawStream,
    bufs: RefCell<Vec<Staged>>,
}

impl DeviceStage {
    /// An empty stage for buffers on GPU `device` (its ordinal), copied on `stream`.
    pub fn new(device: usize, stream: RawStream) -> DeviceStage {
        DeviceStage { device, stream, bufs: RefCell::new(Vec::new()) }
    }

    /// A host copy of the `len` bytes of device memory at `ptr` (after the work queued on the
    /// stream); with `write_back` the copy goes back to `ptr` once the operation succeeded. A null
    /// or empty buffer stays as it is.
    ///
    /// # Safety
    /// A non-null `ptr` is `len` bytes of memory of the stage's device, valid until the operation
    /// completed on the stage's stream, and writable if `write_back`.
    pub unsafe fn host_copy(&self, ptr: u64, len: usize, write_back: bool) -> Result<*const u8> {
        if ptr == 0 || len == 0 {
            return Ok(ptr as *const u8);
        }
        // SAFETY: forwarded to the caller.
        let host = unsafe { download(self.device, self.stream, ptr, len, "host path") }?;
        let p = host.as_ptr();
        self.bufs.borrow_mut().push(Staged { host, device_ptr: ptr, write_back });
        Ok(p)
    }

    /// Waits (up to `deadline`) for the host operation, queued or already run (the blocking form),
    /// then copies its outputs back if it succeeded. Past the deadline the host copies are leaked,
    /// not freed: the operation may still write them.
    pub fn finish<R: Send + 'static>(self, op: &'static str, issued: Issued<R>, deadline: Duration) -> Result<Issued<R>> {
        let ok = match &issued {
            Issued::Queued(work) => {
                if !work.wait_for(deadline) {
                    std::mem::forget(self.bufs.into_inner());
                    return Err(ChorusError::Incomplete(format!("{op} on GPU memory (host path): the host operation did not finish in {deadline:?}")));
                }
                work.error().is_none()
            }
            Issued::Ran(r, _) => r.is_ok(),
            Issued::Refused(_) | Issued::Returned(..) => false,
        };
        if !ok {
            return Ok(issued); // the error travels on; outputs stay untouched
        }
        for b in self.bufs.into_inner().iter().filter(|b| b.write_back) {
            // SAFETY: `host_copy`'s contract; the operation completed, so nothing writes `b.host`.
            unsafe { upload(self.device, self.stream, b.device_ptr, &b.host, op) }?;
        }
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::{device_route, DeviceRoute, HostReason};
    use crate::options::DevicePath;

    #[test]
    fn kernels_when_asked_for_and_the_group_fits_one_host() {
        assert_eq!(device_route(DevicePath::Kernels, 1, 1, 8, false), DeviceRoute::Kernels);
        assert_eq!(device_route(DevicePath::Kernels, 8, 8, 8, false), DeviceRoute::Kernels);
    }

    #[test]
    fn kernels_within_each_host_when_the_group_spans_hosts() {
        assert_eq!(device_route(DevicePath::Kernels, 4, 2, 8, true), DeviceRoute::Hybrid);
        // More than a device communicator spans in all, but not on any one host.
        assert_eq!(device_route(DevicePath::Kernels, 16, 8, 8, true), DeviceRoute::Hybrid);
    }

    #[test]
    fn the_host_path_when_asked_for_or_the_kernels_cannot_span_the_group() {
        assert_eq!(device_route(DevicePath::Host, 2, 2, 8, false), DeviceRoute::Host(HostReason::Requested));
        assert_eq!(device_route(DevicePath::Host, 16, 8, 8, true), DeviceRoute::Host(HostReason::Requested));
        assert_eq!(device_route(DevicePath::Kernels, 9, 9, 8, false), DeviceRoute::Host(HostReason::TooManyRanks { ranks: 9, max: 8 }));
        assert_eq!(device_route(DevicePath::Kernels, 18, 9, 8, true), DeviceRoute::Host(HostReason::SeveralHosts));
    }

    #[test]
    fn every_reason_says_why() {
        let why = HostReason::TooManyRanks { ranks: 9, max: 8 }.to_string();
        assert!(why.contains('9') && why.contains('8'), "{why}");
        assert!(HostReason::SeveralHosts.to_string().contains("several hosts"));
        assert!(HostReason::Requested.to_string().contains("CHORUS_CUDA_PATH=host"));
    }
}
