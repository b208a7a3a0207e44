//! What an operation reported, through the C ABI: work handles (wait, completion, failed ranks,
//! contributors, epoch, free) and the calling thread's last blocking call.
use super::*;
use crate::group::{put_ranks, put_u64};

// ------------------------------------------------------------------ work handles

fn work_ref<'a>(w: *const chorus_work) -> FfiResult<&'a chorus_work> {
    // SAFETY: a non-null work pointer was returned by a collective and not yet freed (ABI).
    unsafe { w.as_ref() }.ok_or_else(|| FfiError::invalid("the work handle is NULL"))
}

/// Waits up to `timeout_ms` (negative: no limit) and returns the operation's status (repeatable).
/// CHORUS_ERR_TIMEOUT with the operation still running if the wait ran out.
///
/// # Safety
/// `work` is a live work handle.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_wait(work: *mut chorus_work, timeout_ms: i64) -> i32 {
    guard(|| {
        let w = work_ref(work)?;
        let t = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        w.wait(t)
    })
}

/// 1 if the operation finished (successfully or not), 0 if not, -CHORUS_ERR_INVALID_ARGUMENT for
/// a NULL handle.
///
/// # Safety
/// `work` is NULL or a live work handle.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_is_completed(work: *const chorus_work) -> i32 {
    guard_value(-error::CHORUS_ERR_INVALID_ARGUMENT, || Ok(work_ref(work)?.is_completed() as i32))
}

/// Ranks that failed during the completed operation (removed from the group; every survivor
/// reports the same ones at the same collective) into `out` (`cap` entries); `*n` is their number.
/// CHORUS_ERR_INVALID_ARGUMENT if the operation has not completed yet.
///
/// # Safety
/// `work` is a live work handle; `out` holds `cap` int32_t (may be NULL with cap 0); `n` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_failed_ranks(work: *const chorus_work, out: *mut i32, cap: usize, n: *mut usize) -> i32 {
    guard(|| put_ranks("chorus_work_failed_ranks", &work_ref(work)?.info()?.failed, out, cap, n))
}

/// The ranks whose data the completed operation's result contains (the active ranks it ran over).
///
/// # Safety
/// As for `chorus_work_failed_ranks`.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_contributors(work: *const chorus_work, out: *mut i32, cap: usize, n: *mut usize) -> i32 {
    guard(|| put_ranks("chorus_work_contributors", &work_ref(work)?.info()?.contributors, out, cap, n))
}

/// The membership epoch the completed operation's result was computed under.
///
/// # Safety
/// `work` is a live work handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_epoch(work: *const chorus_work, out: *mut u64) -> i32 {
    guard(|| put_u64("chorus_work_epoch", out, work_ref(work)?.info()?.epoch))
}

// ------------------------------------------------------------------ blocking calls' reports

/// Ranks that failed during the calling thread's last blocking collective (`work == NULL`), as
/// `chorus_work_failed_ranks` reports them for a work handle. Every blocking call replaces the
/// report, also a failing one (`CHORUS_ERR_PEER_FAILED` under the abort policy still names the
/// failed ranks); a call refused before it ran (bad arguments) leaves none, and then this returns
/// CHORUS_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `out` holds `cap` int32_t (may be NULL with cap 0); `n` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_last_op_failed_ranks(out: *mut i32, cap: usize, n: *mut usize) -> i32 {
    const WHAT: &str = "chorus_last_op_failed_ranks";
    guard(|| last_op::with(WHAT, |info| put_ranks(WHAT, &info.failed, out, cap, n)))
}

/// The ranks whose data the calling thread's last blocking collective's result contains.
///
/// # Safety
/// As for `chorus_last_op_failed_ranks`.
#[no_mangle]
pub unsafe extern "C" fn chorus_last_op_contributors(out: *mut i32, cap: usize, n: *mut usize) -> i32 {
    const WHAT: &str = "chorus_last_op_contributors";
    guard(|| last_op::with(WHAT, |info| put_ranks(WHAT, &info.contributors, out, cap, n)))
}

/// The membership epoch the calling thread's last blocking collective ran under.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_last_op_epoch(out: *mut u64) -> i32 {
    const WHAT: &str = "chorus_last_op_epoch";
    guard(|| last_op::with(WHAT, |info| put_u64(WHAT, out, info.epoch)))
}

/// Frees a work handle. Freeing one whose operation is still running is allowed, but the
/// operation's memory must stay valid until it completes.
///
/// # Safety
/// `work` is NULL or a live work handle, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_free(work: *mut chorus_work) {
    guard(|| {
        if !work.is_null() {
            // SAFETY: a live handle from Box::into_raw (emit); ownership returns here.
            drop(unsafe { Box::from_raw(work) });
        }
        Ok(())
    });
}

