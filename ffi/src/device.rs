//! Device memory through the C ABI: whether a call takes the GPU kernels or the host path, and the
//! GPU form of a collective on the group's device communicator.
use super::*;
use crate::collectives::{with_work, Call};

/// The route a call on `device` takes: `None` for host memory, else the group's device route. An
/// invalid group handle answers the kernels; the kernel path reports it.
pub(crate) fn gpu_route(group_: *mut chorus_group, device: i32) -> Option<chorus_backend::DeviceRoute> {
    (device >= 0).then(|| group(group_).map_or(chorus_backend::DeviceRoute::Kernels, |g| g.pg.device_route()))
}

/// Whether a call on `device` takes the GPU kernels: device memory, and the group's device route
/// says kernels (not told to run GPU tensors on the host path with `CHORUS_CUDA_PATH=host`, and a
/// group the kernels can span: at most 8 active ranks on one host).
pub(crate) fn gpu_kernels(group_: *mut chorus_group, device: i32) -> bool {
    gpu_route(group_, device) == Some(chorus_backend::DeviceRoute::Kernels)
}

/// A GPU collective on what `open` makes of the group for `device` (its device communicator, or
/// its [`chorus_backend::DeviceOps`]): `device >= 0` names the CUDA device every pointer lives on
/// and `stream` is a `CUstream` of it (NULL: the legacy default stream). `enqueue` puts the
/// operation on that stream; the returned work is already complete (the operation is
/// stream-ordered, as NCCL's are: later work on `stream` sees its result; a host step of the
/// hybrid route is done by then).
#[allow(clippy::too_many_arguments)]
pub(crate) fn on_device<T>(
    group_: *mut chorus_group,
    work: *mut *mut chorus_work,
    op: &'static str,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    open: impl FnOnce(&chorus_backend::ProcessGroup, usize) -> chorus_backend::Result<T>,
    enqueue: impl FnOnce(&Call, &T, chorus_kernels::cuda::RawStream) -> FfiResult<()>,
) -> i32 {
    with_work(group_, work, op, |g, mode| {
        let call = Call { g, op, dt: dtype(dtype_)?, stage: None, mode };
        // Setup errors (no CUDA, a peer's workspace) say which call needed the communicator.
        let on = open(&g.pg, device as usize).map_err(|e| FfiError::from(e).in_op(op))?;
        enqueue(&call, &on, chorus_kernels::cuda::RawStream(stream as usize))?;
        // Enqueued is done (stream-ordered), in both forms; it reports what a work handle would.
        Ok(Issued::Ran(Ok(()), OpInfo::default()))
    })
}

/// A GPU collective on the group's device communicator (the kernel route).
pub(crate) fn device_collective(
    group_: *mut chorus_group,
    work: *mut *mut chorus_work,
    op: &'static str,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    enqueue: impl FnOnce(&Call, &chorus_backend::DeviceGroup, chorus_kernels::cuda::RawStream) -> FfiResult<()>,
) -> i32 {
    on_device(group_, work, op, dtype_, device, stream, |pg, d| pg.device_group(d), enqueue)
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
