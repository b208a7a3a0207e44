//! Stream-ordered copies between a caller's device memory and host memory, for GPU tensors whose
//! operation runs on the host: the fault-tolerant path (a host collective can lose a rank and still
//! finish; a GPU kernel waiting on a dead peer cannot) and the operations without a GPU kernel.
//!
//! Both copies run on the caller's stream, after everything already queued there, and return once
//! the bytes have landed (a stream synchronization), so host code may use or free the host side.
//! This module is part of the FFI layer: it takes raw device addresses and raw streams.
#![allow(unsafe_code)]

use super::{cuda_err, ffi, open_device, RawStream};
use crate::Result;

/// Copies `out.len()` bytes at device address `src` (memory of CUDA device `device`) into `out`,
/// after the work already queued on `stream`.
///
/// # Safety
/// `[src, src + out.len())` is device memory of `device`, valid until this returns; `stream` is a live
/// stream of `device`'s primary context (or 0, the legacy default stream).
pub unsafe fn copy_device_to_host(device: usize, stream: RawStream, src: u64, out: &mut [u8]) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let ctx = open_device(device)?;
    ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
    // SAFETY: forwarded to the caller (device range, stream); `out` is an exclusive host slice that
    // outlives the copy, which has completed when this returns (the stream is synchronized).
    unsafe { ffi::copy_dtoh_on_stream(out, src, stream.cu()) }.map_err(|e| cuda_err("copying a GPU tensor to the host (cuMemcpyDtoHAsync)", e))
}

/// Copies `data` to device address `dst` (memory of CUDA device `device`) on `stream` and waits
/// until it has landed.
///
/// # Safety
/// `[dst, dst + data.len())` is device memory of `device` that nothing else writes until this
/// returns; `stream` is a live stream of `device`'s primary context (or 0).
pub unsafe fn copy_host_to_device(device: usize, stream: RawStream, dst: u64, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let ctx = open_device(device)?;
    ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
    // SAFETY: forwarded to the caller; `data` outlives the copy (the stream is synchronized).
    unsafe { ffi::copy_htod_on_stream(dst, data, stream.cu()) }.map_err(|e| cuda_err("copying a result back to the GPU (cuMemcpyHtoDAsync)", e))
}
