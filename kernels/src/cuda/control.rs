//! The host control block of a device communicator (docs/design.md invariant 3: host control memory is host
//! memory): one page of page-locked host memory mapped into the device, through which the host and
//! the collective kernels talk without a CUDA call or a stream synchronization.
//!
//! Layout (byte offsets; each word in its own 64-byte line; the CUDA source `#define`s the same):
//!
//! | offset | word | written by | meaning |
//! |---|---|---|---|
//! | 0 | abort | host | 0 while running; else the abort reason (non-zero, only ever raised, never cleared) |
//! | 64 | error | device | 0 while healthy; else the first failure, `kind << 32 | block` (kind 1: a wait passed its deadline, kind 2: a wait saw the abort word) |
//!
//! A raised abort word makes every waiting kernel of the communicator give up within microseconds,
//! so a survivor's stream drains instead of spinning until the deadline when a peer died. An aborted
//! communicator stays aborted (a new communicator gets a new block): the words are one-way state,
//! not reusable flags.
use super::ffi::HostMapping;
use super::{cuda_err, KernelError};
use crate::Result;
use cudarc::driver::CudaContext;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Byte offset of the abort word.
pub(crate) const CTL_ABORT: usize = 0;
/// Byte offset of the error mirror.
pub(crate) const CTL_ERROR: usize = 64;
/// Size of the block.
pub const CONTROL_BYTES: usize = 4096;
/// Error kinds in the upper half of an error word.
pub(crate) const FAIL_DEADLINE: u64 = 1;
pub(crate) const FAIL_ABORTED: u64 = 2;

/// A host control block: page-locked, mapped into the device, readable and writable from the host
/// with plain atomics.
pub struct HostControl {
    mapping: HostMapping,
}

impl std::fmt::Debug for HostControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (host, len) = self.host_range();
        f.debug_struct("HostControl").field("host", &format_args!("{host:#x}")).field("len", &len).field("abort", &self.abort_reason()).field("error", &self.error_word()).finish()
    }
}

impl HostControl {
    /// A zeroed block, page-locked and mapped into `ctx`'s device (and every other context).
    pub fn new(ctx: &Arc<CudaContext>) -> Result<HostControl> {
        ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        let mapping = HostMapping::new(CONTROL_BYTES).map_err(|(what, e)| KernelError::Cuda {
            what: format!("page-locking the host control block ({what}; is the locked-memory limit, ulimit -l, too low?)"),
            reason: e.to_string(),
        })?;
        Ok(HostControl { mapping })
    }

    /// `(host address, length)`: what the process group's memory registry records, as host memory.
    pub fn host_range(&self) -> (usize, usize) {
        self.mapping.host_range()
    }

    /// The address kernels use.
    pub(crate) fn device_ptr(&self) -> u64 {
        self.mapping.device_ptr()
    }

    /// Raises the abort word to `reason` (0 counts as 1; a lower reason than the current one leaves
    /// it). Every kernel of the communicator that is waiting, or starts waiting, gives up.
    pub fn abort(&self, reason: u64) {
        self.mapping.word(CTL_ABORT).fetch_max(reason.max(1), Ordering::SeqCst);
    }

    /// The abort reason, if the block was aborted.
    pub fn abort_reason(&self) -> Option<u64> {
        Some(self.mapping.word(CTL_ABORT).load(Ordering::SeqCst)).filter(|&r| r != 0)
    }

    /// The first failure a kernel recorded (0: none).
    pub fn error_word(&self) -> u64 {
        self.mapping.word(CTL_ERROR).load(Ordering::Acquire)
    }

    /// `Err` once any kernel gave up or the block was aborted: the failure a kernel recorded, else the
    /// abort itself. No CUDA call: safe to poll while kernels run.
    pub fn status(&self, timeout_ms: u64) -> Result<()> {
        let err = self.error_word();
        let (kind, block) = (err >> 32, (err & 0xffff_ffff) as u32);
        match (kind, self.abort_reason()) {
            (0, None) => Ok(()),
            (FAIL_DEADLINE, _) => Err(KernelError::CollectiveTimeout { block, timeout_ms }),
            (_, reason) => Err(KernelError::CollectiveAborted { reason: reason.unwrap_or(0), block: (kind == FAIL_ABORTED).then_some(block) }),
        }
    }
}
