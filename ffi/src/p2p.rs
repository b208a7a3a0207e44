//! Point-to-point send and receive through the C ABI.
use super::*;
use crate::collectives::collective;
use crate::device::{device_collective, gpu_kernels};

/// Sends `count` elements to `peer` with `tag`; completes once the data left `buf`.
///
/// # Safety
/// As for `chorus_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn chorus_send(
    group_: *mut chorus_group,
    buf: *const c_void,
    count: u64,
    dtype_: i32,
    peer: i32,
    tag: u64,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "send", dtype_, device, stream, |c, dg, s| {
            let (bytes, peer) = (c.bytes(count)?, rank_arg(peer, "peer")?);
            // SAFETY: as in chorus_all_reduce.
            unsafe { dg.send(s, buf as u64, bytes, peer) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "send", dtype_, device, stream, |c| {
        let b = c.send_only(buf, count)?;
        Ok(c.g.pg.send_issue(c.mode, b, rank_arg(peer, "peer")?, tag))
    })
}

/// Receives exactly `count` elements from `peer` with `tag` into `buf`.
///
/// # Safety
/// As for `chorus_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn chorus_recv(
    group_: *mut chorus_group,
    buf: *mut c_void,
    count: u64,
    dtype_: i32,
    peer: i32,
    tag: u64,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "recv", dtype_, device, stream, |c, dg, s| {
            let (bytes, peer) = (c.bytes(count)?, rank_arg(peer, "peer")?);
            // SAFETY: as in chorus_all_reduce.
            unsafe { dg.recv(s, buf as u64, bytes, peer) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "recv", dtype_, device, stream, |c| {
        let b = c.buf(buf, count)?;
        Ok(c.g.pg.recv_issue(c.mode, b, rank_arg(peer, "peer")?, tag))
    })
}

