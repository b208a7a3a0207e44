//! Device memory through the C ABI: whether a call takes the GPU kernels or the host path, and the
//! GPU form of a collective on the group's device communicator.
use super::*;
use crate::collectives::{with_work, Call};

/// Whether a call on `device` takes the GPU kernels: device memory, and the group's device route
/// says kernels (not told to run GPU tensors on the host path with `CHORUS_CUDA_PATH=host`, and a
/// group the kernels can span: at most 8 active ranks on one host). An invalid group handle answers
/// yes; the kernel path reports it.
pub(crate) fn gpu_kernels(group_: *mut chorus_group, device: i32) -> bool {
    device >= 0 && group(group_).map_or(true, |g| g.pg.device_route() == chorus_backend::DeviceRoute::Kernels)
}

/// Whether a call on `device` takes the kernels within each host and the host transports across
/// (`DeviceRoute::Hybrid`: a group spanning hosts; all_reduce and broadcast).
pub(crate) fn gpu_hybrid(group_: *mut chorus_group, device: i32) -> bool {
    device >= 0 && group(group_).is_ok_and(|g| g.pg.device_route() == chorus_backend::DeviceRoute::Hybrid)
}

/// A GPU collective of a group spanning hosts (`gpu_hybrid`): `run` does it on the group's
/// [`chorus_backend::DeviceOps`]; it returns once the host steps are done (the GPU steps are
/// stream-ordered), so the returned work is complete.
pub(crate) fn hybrid_collective(
    group_: *mut chorus_group,
    work: *mut *mut chorus_work,
    op: &'static str,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    run: impl FnOnce(&Call, &chorus_backend::DeviceOps, chorus_kernels::cuda::RawStream) -> FfiResult<()>,
) -> i32 {
    with_work(group_, work, op, |g, mode| {
        let call = Call { g, op, dt: dtype(dtype_)?, stage: None, mode };
        let ops = g.pg.device_ops(device as usize).map_err(|e| FfiError::from(e).in_op(op))?;
        run(&call, &ops, chorus_kernels::cuda::RawStream(stream as usize))?;
        Ok(Issued::Ran(Ok(()), OpInfo::default()))
    })
}

/// A GPU collective: `device >= 0` names the CUDA device every pointer lives on and `stream` is a
/// `CUstream` of it (NULL: the legacy default stream). `enqueue` puts the operation on that stream
/// through the group's device communicator; the returned work is already complete (the operation is
/// stream-ordered, as NCCL's are: later work on `stream` sees its result).
pub(crate) fn device_collective(
    group_: *mut chorus_group,
    work: *mut *mut chorus_work,
    op: &'static str,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    enqueue: impl FnOnce(&Call, &chorus_backend::DeviceGroup, chorus_kernels::cuda::RawStream) -> FfiResult<()>,
) -> i32 {
    with_work(group_, work, op, |g, mode| {
        let call = Call { g, op, dt: dtype(dtype_)?, stage: None, mode };
        // Setup errors (no CUDA, a peer's workspace) say which call needed the communicator.
        let dg = g.pg.device_group(device as usize).map_err(|e| FfiError::from(e).in_op(op))?;
        enqueue(&call, &dg, chorus_kernels::cuda::RawStream(stream as usize))?;
        // Enqueued is done (stream-ordered), in both forms; it reports what a work handle would.
        Ok(Issued::Ran(Ok(()), OpInfo::default()))
    })
}

/// Device buffers of one GPU call may only coincide exactly (`sendbuf == recvbuf + at`, in place) or
/// not overlap at all.
pub(crate) fn device_overlap_ok(op: &str, send: u64, send_len: usize, recv: u64, recv_len: usize, in_place_at: u64) -> FfiResult<()> {
    let disjoint = send.saturating_add(send_len as u64) <= recv || recv.saturating_add(recv_len as u64) <= send;
    if disjoint || send_len == 0 || recv_len == 0 || recv.checked_add(in_place_at) == Some(send) {
        return Ok(());
    }
    Err(FfiError::invalid(format!(
        "{op}: on CUDA the send buffer must either not overlap the receive buffer or be exactly this rank's block of it"
    )))
}
