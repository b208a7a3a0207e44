//! The collectives of the C ABI: argument checks, the asynchronous and blocking forms, and the
//! routing of device memory (GPU kernels or the host path).
use super::*;
use crate::error::CHORUS_ERR_TIMEOUT;
use chorus_backend::{ChorusError, DeviceStage};
use crate::device::{device_collective, device_overlap_ok, gpu_kernels, gpu_route, on_device};
use chorus_backend::DeviceRoute;

// ------------------------------------------------------------------ collectives

/// The body every operation entry point shares, inside the panic guard: the group handle is
/// checked and `start` issues the operation. `work == NULL` asks for the blocking form: the
/// operation runs to completion on this thread (`Mode::Inline`), its status is returned and its
/// report kept for `chorus_last_op_*`; otherwise its work handle goes out through `work`.
pub(crate) fn with_work<R: Send + 'static>(
    group_: *mut chorus_group,
    work: *mut *mut chorus_work,
    op: &'static str,
    start: impl FnOnce(&chorus_group, Mode) -> FfiResult<Issued<R>>,
) -> i32 {
    let blocking = work.is_null();
    if blocking {
        last_op::clear();
    }
    guard(|| {
        let g = group(group_)?;
        let mode = if blocking { Mode::Inline } else { Mode::Queued };
        match start(g, mode)? {
            Issued::Refused(e) | Issued::Returned(e, _) => Err(e.into()),
            Issued::Ran(r, info) if blocking => {
                last_op::set(info);
                r.map(drop).map_err(FfiError::from)
            }
            Issued::Ran(r, info) => emit(work, chorus_backend::Work::ready_with(op, r, info)),
            Issued::Queued(w) => emit(work, w),
        }
    })
}

/// A collective's checked arguments, and the buffer wrapping every collective does the same way
/// (messages name the operation, `op`).
pub(crate) struct Call<'a> {
    pub(crate) g: &'a chorus_group,
    pub(crate) op: &'static str,
    pub(crate) dt: DType,
    /// Host copies of GPU buffers (the host path on device memory); `None` for host memory.
    pub(crate) stage: Option<&'a DeviceStage>,
    /// Queued (a work handle) or blocking (`work == NULL`).
    pub(crate) mode: Mode,
}

impl Call<'_> {
    /// `count` elements of the call's dtype in bytes.
    pub(crate) fn bytes(&self, count: u64) -> FfiResult<usize> {
        byte_len(count, self.dt, self.op)
    }

    /// `bytes` once per rank of the group.
    pub(crate) fn per_rank(&self, bytes: usize) -> FfiResult<usize> {
        bytes.checked_mul(self.g.pg.size()).ok_or_else(|| FfiError::invalid(format!("{}: size overflow", self.op)))
    }

    /// The single (in-place or receive) buffer `buf` of `count` elements, written by the operation.
    pub(crate) fn buf(&self, buf: *const c_void, count: u64) -> FfiResult<RawBuf> {
        self.wrap(buf, self.bytes(count)?, true, "buf")
    }

    /// The single buffer `buf` of `count` elements of a send, which only reads it.
    pub(crate) fn send_only(&self, buf: *const c_void, count: u64) -> FfiResult<RawBuf> {
        self.wrap(buf, self.bytes(count)?, false, "buf")
    }

    /// The output buffer `recvbuf` of `len` bytes.
    pub(crate) fn recv(&self, recvbuf: *mut c_void, len: usize) -> FfiResult<RawBuf> {
        self.wrap(recvbuf, len, true, "recvbuf")
    }

    /// The input buffer `sendbuf` of `len` bytes (a private copy where it overlaps `out`).
    pub(crate) fn send(&self, sendbuf: *const c_void, len: usize, out: &RawBuf) -> FfiResult<Input> {
        Ok(input_for(self.wrap(sendbuf, len, false, "sendbuf")?, out))
    }

    /// `len` bytes at `ptr`, or at its host copy on the host path for GPU memory (`written`: copied
    /// back once the operation succeeded).
    pub(crate) fn wrap(&self, ptr: *const c_void, len: usize, written: bool, what: &'static str) -> FfiResult<RawBuf> {
        let what = Arg { op: self.op, what };
        let p = match self.stage {
            // SAFETY: the caller's contract (chorus.h): a pointer of a GPU call is `len` bytes of
            // memory of `device`, valid (and writable when written) until the operation completes
            // on `stream`.
            Some(stage) => unsafe { stage.host_copy(ptr as u64, len, written) }.map_err(|e| {
                let e = FfiError::from(e);
                FfiError { code: e.code, msg: format!("{what}: {}", e.msg) }
            })?,
            None => ptr as *const u8,
        };
        RawBuf::new(p, len, what)
    }
}

/// An argument's name in messages ("all_gather: sendbuf"), formatted only when one is written.
struct Arg {
    op: &'static str,
    what: &'static str,
}

impl std::fmt::Display for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.what)
    }
}

/// [`with_work`] for a collective over data on the host path: checks the device and the dtype code
/// before `start` wraps the buffers; GPU memory (`device >= 0`) is staged through host copies
/// ([`DeviceStage`], the backend's host path) and the call returns once the results are back on the GPU.
pub(crate) fn collective<R: Send + 'static>(
    group_: *mut chorus_group,
    work: *mut *mut chorus_work,
    op: &'static str,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    start: impl FnOnce(&Call) -> FfiResult<Issued<R>>,
) -> i32 {
    with_work(group_, work, op, |g, mode| {
        let dt = dtype(dtype_)?;
        if device == CHORUS_DEVICE_CPU {
            return start(&Call { g, op, dt, stage: None, mode });
        }
        if device < 0 {
            return Err(FfiError::invalid(format!("{op}: invalid device {device} (use CHORUS_DEVICE_CPU = -1 for host memory, or a CUDA device ordinal)")));
        }
        // GPU memory on the host path: host copies in, the host collective, results back.
        let stage = DeviceStage::new(device as usize, chorus_kernels::cuda::RawStream(stream as usize));
        let issued = start(&Call { g, op, dt, stage: Some(&stage), mode })?;
        // The host collective's own waits have deadlines; recovery from a failure may take a few.
        stage.finish(op, issued, g.pg.options().timeout.saturating_mul(3)).map_err(|e| match e {
            // The host operation outlived the wait: a timeout of this call.
            ChorusError::Incomplete(msg) => FfiError { code: CHORUS_ERR_TIMEOUT, msg },
            e => e.into(),
        })
    })
}

/// In-place all-reduce of `count` elements at `buf`. Like every collective: with `work` non-NULL
/// it returns at once with a work handle in `*work`; with `work == NULL` it runs to completion on
/// the calling thread (after the group's queued operations) and returns the operation's status.
///
/// # Safety
/// `group` is a live handle; `buf` holds `count` elements of `dtype` and stays valid until the
/// work completes (or the blocking call returns); `work` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_all_reduce(
    group_: *mut chorus_group,
    buf: *mut c_void,
    count: u64,
    dtype_: i32,
    op: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    match gpu_route(group_, device) {
        Some(DeviceRoute::Kernels) => {
            return device_collective(group_, work, "all_reduce", dtype_, device, stream, |c, dg, s| {
                let (op, n) = (reduce_op(op)?, c.bytes(count)? / c.dt.size());
                // SAFETY: the caller's contract: `buf` is device memory of `device` holding `count`
                // elements, valid until the operation completes on `stream`.
                unsafe { dg.all_reduce(s, c.dt, op, buf as u64, buf as u64, n) }.map_err(FfiError::from)
            });
        }
        Some(DeviceRoute::Hybrid) => {
            // The group's DeviceOps: kernels within each host, rails across.
            return on_device(group_, work, "all_reduce", dtype_, device, stream, |pg, d| pg.device_ops(d), |c, ops, s| {
                let (op, n) = (reduce_op(op)?, c.bytes(count)? / c.dt.size());
                // SAFETY: as above.
                unsafe { ops.all_reduce(s, c.dt, op, buf as u64, buf as u64, n) }.map_err(FfiError::from)
            });
        }
        _ => {}
    }
    collective(group_, work, "all_reduce", dtype_, device, stream, |c| {
        let op = reduce_op(op)?;
        Ok(c.g.pg.all_reduce_issue(c.mode, c.buf(buf, count)?, c.dt, op))
    })
}

/// In-place broadcast of `count` elements from `root`.
///
/// # Safety
/// As for `chorus_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn chorus_broadcast(
    group_: *mut chorus_group,
    buf: *mut c_void,
    count: u64,
    dtype_: i32,
    root: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    match gpu_route(group_, device) {
        Some(DeviceRoute::Kernels) => {
            return device_collective(group_, work, "broadcast", dtype_, device, stream, |c, dg, s| {
                let (bytes, root) = (c.bytes(count)?, rank_arg(root, "root")?);
                // SAFETY: as in chorus_all_reduce.
                unsafe { dg.broadcast(s, buf as u64, buf as u64, bytes, root) }.map_err(FfiError::from)
            });
        }
        Some(DeviceRoute::Hybrid) => {
            return on_device(group_, work, "broadcast", dtype_, device, stream, |pg, d| pg.device_ops(d), |c, ops, s| {
                let (bytes, root) = (c.bytes(count)?, rank_arg(root, "root")?);
                // SAFETY: as in chorus_all_reduce.
                unsafe { ops.broadcast(s, buf as u64, buf as u64, bytes, root) }.map_err(FfiError::from)
            });
        }
        _ => {}
    }
    collective(group_, work, "broadcast", dtype_, device, stream, |c| {
        let b = c.buf(buf, count)?;
        Ok(c.g.pg.broadcast_issue(c.mode, b, Some(c.dt), rank_arg(root, "root")?))
    })
}

/// In-place reduce to `root` (other ranks' `buf` is left unchanged).
///
/// # Safety
/// As for `chorus_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn chorus_reduce(
    group_: *mut chorus_group,
    buf: *mut c_void,
    count: u64,
    dtype_: i32,
    op: i32,
    root: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "reduce", dtype_, device, stream, |c, dg, s| {
            let (op, n, root) = (reduce_op(op)?, c.bytes(count)? / c.dt.size(), rank_arg(root, "root")?);
            // SAFETY: as in chorus_all_reduce (in place: the root reads and writes each element once).
            unsafe { dg.reduce(s, c.dt, op, buf as u64, buf as u64, n, root) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "reduce", dtype_, device, stream, |c| {
        let op = reduce_op(op)?;
        let b = c.buf(buf, count)?;
        Ok(c.g.pg.reduce_issue(c.mode, b, rank_arg(root, "root")?, c.dt, op))
    })
}

/// All-gather: `sendcount` elements from every rank land in `recvbuf` (size * sendcount
/// elements, rank order). `sendbuf` may alias a block of `recvbuf` (it is copied first).
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_all_gather(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    sendcount: u64,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "all_gather", dtype_, device, stream, |c, dg, s| {
            let block = c.bytes(sendcount)?;
            let total = c.per_rank(block)?;
            let at = (c.g.pg.rank() * block) as u64;
            device_overlap_ok(c.op, sendbuf as u64, block, recvbuf as u64, total, at)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (checked: disjoint or exactly in place).
            unsafe { dg.all_gather(s, sendbuf as u64, recvbuf as u64, block) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "all_gather", dtype_, device, stream, |c| {
        let block = c.bytes(sendcount)?;
        let out = c.recv(recvbuf, c.per_rank(block)?)?;
        let inp = c.send(sendbuf, block, &out)?;
        Ok(c.g.pg.all_gather_issue(c.mode, inp, out, Some(c.dt)))
    })
}

/// Reduce-scatter: `sendbuf` holds size * recvcount elements; rank r gets the reduction of every
/// rank's block r in `recvbuf`. The buffers may overlap (the input is copied first).
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_reduce_scatter(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    recvcount: u64,
    dtype_: i32,
    op: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "reduce_scatter", dtype_, device, stream, |c, dg, s| {
            let op = reduce_op(op)?;
            let block = c.bytes(recvcount)?;
            let total = c.per_rank(block)?;
            // In place: recvbuf is this rank's block of sendbuf.
            let at = (c.g.pg.rank() * block) as u64;
            device_overlap_ok(c.op, recvbuf as u64, block, sendbuf as u64, total, at)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (checked: disjoint or exactly in place).
            unsafe { dg.reduce_scatter(s, c.dt, op, sendbuf as u64, recvbuf as u64, block / c.dt.size()) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "reduce_scatter", dtype_, device, stream, |c| {
        let op = reduce_op(op)?;
        let block = c.bytes(recvcount)?;
        let total = c.per_rank(block)?;
        let out = c.recv(recvbuf, block)?;
        let inp = c.send(sendbuf, total, &out)?;
        Ok(c.g.pg.reduce_scatter_issue(c.mode, inp, out, c.dt, op))
    })
}

/// All-to-all with equal blocks: block p (`count` elements) of `sendbuf` goes to rank p; block p
/// of `recvbuf` comes from rank p. Both hold size * count elements.
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_all_to_all(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: u64,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "all_to_all", dtype_, device, stream, |c, dg, s| {
            let block = c.bytes(count)?;
            let total = c.per_rank(block)?;
            device_overlap_ok(c.op, sendbuf as u64, total, recvbuf as u64, total, 0)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (checked: disjoint or identical).
            unsafe { dg.all_to_all(s, sendbuf as u64, recvbuf as u64, block) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "all_to_all", dtype_, device, stream, |c| {
        let total = c.per_rank(c.bytes(count)?)?;
        let out = c.recv(recvbuf, total)?;
        let inp = c.send(sendbuf, total, &out)?;
        Ok(c.g.pg.all_to_all_issue(c.mode, inp, out, Some(c.dt)))
    })
}

/// The per-rank element counts of `chorus_all_to_all_v` and their sums: (send, recv, send total,
/// recv total).
fn v_counts(c: &Call, send_counts: *const u64, recv_counts: *const u64) -> FfiResult<(Vec<usize>, Vec<usize>, usize, usize)> {
    let n = c.g.pg.size();
    let to_usize = |c: &[u64], what: &str| -> FfiResult<Vec<usize>> {
        c.iter().map(|&x| usize::try_from(x).map_err(|_| FfiError::invalid(format!("all_to_all_v: {what} count {x} is too large")))).collect()
    };
    let sc = to_usize(counts(send_counts, n, "all_to_all_v: send_counts")?, "send")?;
    let rc = to_usize(counts(recv_counts, n, "all_to_all_v: recv_counts")?, "recv")?;
    let sum = |c: &[usize]| c.iter().try_fold(0usize, |a, &x| a.checked_add(x)).ok_or_else(|| FfiError::invalid("all_to_all_v: counts overflow"));
    let (ss, rs) = (sum(&sc)?, sum(&rc)?);
    Ok((sc, rc, ss, rs))
}

/// All-to-all with per-rank counts: `send_counts[p]` consecutive elements of `sendbuf` go to
/// rank p, `recv_counts[p]` elements from rank p land consecutively in `recvbuf`. Both count
/// arrays have one entry per rank and are read during the call only.
///
/// # Safety
/// As for `chorus_all_reduce`; `send_counts` and `recv_counts` point to size entries each.
#[no_mangle]
pub unsafe extern "C" fn chorus_all_to_all_v(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    send_counts: *const u64,
    recvbuf: *mut c_void,
    recv_counts: *const u64,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "all_to_all_v", dtype_, device, stream, |c, dg, s| {
            let (sc, rc, ss, rs) = v_counts(c, send_counts, recv_counts)?;
            device_overlap_ok(c.op, sendbuf as u64, c.bytes(ss as u64)?, recvbuf as u64, c.bytes(rs as u64)?, u64::MAX)?;
            let (send, recv, max_pair) = c.g.pg.device_all_to_all_v_splits(&sc, &rc, c.dt)?;
            // SAFETY: as in chorus_all_reduce; the blocks tile both buffers, which do not overlap.
            unsafe { dg.all_to_allv(s, sendbuf as u64, recvbuf as u64, &send, &recv, max_pair) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "all_to_all_v", dtype_, device, stream, |c| {
        let (sc, rc, ss, rs) = v_counts(c, send_counts, recv_counts)?;
        let out = c.recv(recvbuf, c.bytes(rs as u64)?)?;
        let inp = c.send(sendbuf, c.bytes(ss as u64)?, &out)?;
        Ok(c.g.pg.all_to_all_v_issue(c.mode, inp, sc, out, rc, c.dt))
    })
}

/// Gather: every rank's `count` elements land in `root`'s `recvbuf` (size * count elements, rank
/// order). `recvbuf` is ignored (may be NULL) on other ranks.
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_gather(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: u64,
    dtype_: i32,
    root: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "gather", dtype_, device, stream, |c, dg, s| {
            let (root, block) = device_rooted(c, root, count, sendbuf as u64, recvbuf as u64)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (on the root: checked disjoint or
            // exactly in place; elsewhere `recvbuf` is not touched).
            unsafe { dg.gather(s, sendbuf as u64, recvbuf as u64, block, root) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "gather", dtype_, device, stream, |c| {
        let (root, block) = rooted(c, root, count)?;
        let out = c.recv(recvbuf, if c.g.pg.rank() == root { c.per_rank(block)? } else { 0 })?;
        let inp = c.send(sendbuf, block, &out)?;
        Ok(c.g.pg.gather_issue(c.mode, inp, out, Some(c.dt), root))
    })
}

/// Scatter: `root`'s `sendbuf` (size * count elements) is split so rank r gets block r in
/// `recvbuf`. `sendbuf` is ignored (may be NULL) on other ranks.
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_scatter(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: u64,
    dtype_: i32,
    root: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "scatter", dtype_, device, stream, |c, dg, s| {
            let (root, block) = device_rooted(c, root, count, recvbuf as u64, sendbuf as u64)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (on the root: checked disjoint or
            // exactly in place; elsewhere `sendbuf` is not read).
            unsafe { dg.scatter(s, sendbuf as u64, recvbuf as u64, block, root) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "scatter", dtype_, device, stream, |c| {
        let (root, block) = rooted(c, root, count)?;
        let total = if c.g.pg.rank() == root { c.per_rank(block)? } else { 0 };
        let out = c.recv(recvbuf, block)?;
        let inp = c.send(sendbuf, total, &out)?;
        Ok(c.g.pg.scatter_issue(c.mode, inp, out, Some(c.dt), root))
    })
}

/// The root rank and the per-rank block in bytes of a gather or scatter.
pub(crate) fn rooted(c: &Call, root: i32, count: u64) -> FfiResult<(usize, usize)> {
    Ok((rank_arg(root, "root")?, c.bytes(count)?))
}

/// `rooted` for gather and scatter on the kernel path, where the root's one-block buffer (`block_buf`)
/// must lie outside its size-block buffer (`whole_buf`) or be exactly its own block of it.
pub(crate) fn device_rooted(c: &Call, root: i32, count: u64, block_buf: u64, whole_buf: u64) -> FfiResult<(usize, usize)> {
    let (root, block) = rooted(c, root, count)?;
    if c.g.pg.rank() == root {
        device_overlap_ok(c.op, block_buf, block, whole_buf, c.per_rank(block)?, (root * block) as u64)?;
    }
    Ok((root, block))
}

/// Barrier: completes once every rank has entered it (`work == NULL`: returns then).
///
/// # Safety
/// `group` is a live handle; `work` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_barrier(group_: *mut chorus_group, work: *mut *mut chorus_work) -> i32 {
    with_work(group_, work, "barrier", |g, mode| Ok(g.pg.barrier_issue(mode)))
}
