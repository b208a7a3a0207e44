//! GPU tensors on the host path (`CHORUS_CUDA_PATH=host`, and the operations without a GPU kernel):
//! each device buffer of the call gets a host copy taken on the caller's stream, the host collective
//! runs on the copies (with the whole fault-tolerance contract), and the buffers the operation writes
//! are copied back on the same stream once it completed. The call returns after that, with the
//! work already complete (the host collective's failed ranks, contributors and epoch included).
use crate::error::{FfiError, FfiResult, CHORUS_ERR_TIMEOUT};
use chorus_backend::Issued;
use chorus_kernels::cuda::{copy_device_to_host, copy_host_to_device, RawStream};
use std::cell::RefCell;
use std::ffi::c_void;
use std::time::Duration;

/// One device buffer and its host copy. The host `Vec` is never touched (moved or read) while the
/// host collective may still write it through the pointer handed out.
struct Staged {
    host: Vec<u8>,
    device_ptr: u64,
    write_back: bool,
}

/// The host copies of one call's device buffers.
pub struct DeviceStage {
    device: usize,
    stream: RawStream,
    bufs: RefCell<Vec<Staged>>,
}

impl DeviceStage {
    pub fn new(device: usize, stream: *mut c_void) -> DeviceStage {
        DeviceStage { device, stream: RawStream(stream as usize), bufs: RefCell::new(Vec::new()) }
    }

    /// A host copy of the `len` bytes of device memory at `ptr` (after the work queued on the stream);
    /// with `write_back` the copy goes back to `ptr` once the operation succeeded. A null or empty
    /// buffer stays as it is.
    pub fn host_copy(&self, ptr: *const c_void, len: usize, write_back: bool, what: &dyn std::fmt::Display) -> FfiResult<*const u8> {
        if ptr.is_null() || len == 0 {
            return Ok(ptr as *const u8);
        }
        let mut host = vec![0u8; len];
        // SAFETY: the caller's contract (chorus.h): a pointer of a GPU call is `len` bytes of memory
        // of `device`, valid until the operation completes on `stream`.
        unsafe { copy_device_to_host(self.device, self.stream, ptr as u64, &mut host) }
            .map_err(|e| FfiError::from(chorus_backend::ChorusError::Device { op: "host path", source: e }))
            .map_err(|e| FfiError { code: e.code, msg: format!("{what}: {}", e.msg) })?;
        let p = host.as_ptr();
        self.bufs.borrow_mut().push(Staged { host, device_ptr: ptr as u64, write_back });
        Ok(p)
    }

    /// Waits (up to `deadline`) for the host operation, queued or already run (the blocking form),
    /// then copies its outputs back if it succeeded. Past the deadline the host copies are leaked,
    /// not freed: the operation may still write them.
    pub fn finish<R: Send + 'static>(self, op: &'static str, issued: Issued<R>, deadline: Duration) -> FfiResult<Issued<R>> {
        let ok = match &issued {
            Issued::Queued(work) => {
                if !work.wait_for(deadline) {
                    std::mem::forget(self.bufs.into_inner());
                    return Err(FfiError {
                        code: CHORUS_ERR_TIMEOUT,
                        msg: format!("{op} on GPU memory (host path): the host operation did not finish in {deadline:?}"),
                    });
                }
                work.error().is_none()
            }
            Issued::Ran(r, _) => r.is_ok(),
            Issued::Refused(_) => false,
        };
        if !ok {
            return Ok(issued); // the error travels on; outputs stay untouched
        }
        for b in self.bufs.into_inner().iter().filter(|b| b.write_back) {
            // SAFETY: as in `host_copy`; the operation completed, so nothing writes `b.host` any more.
            unsafe { copy_host_to_device(self.device, self.stream, b.device_ptr, &b.host) }
                .map_err(|e| FfiError::from(chorus_backend::ChorusError::Device { op, source: e }))?;
        }
        Ok(issued)
    }
}
