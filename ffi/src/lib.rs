//! The C ABI of chorus (`include/chorus.h`): opaque group and work handles, integer status codes
//! with a per-thread message (`chorus_last_error`), store callbacks for rendezvous, and one entry
//! point per collective, asynchronous (a work handle out) or blocking (`work == NULL`: it runs on
//! the calling thread and reports through `chorus_last_op_*`). Every entry point runs inside
//! `catch_unwind`, so no panic crosses into C. The header is rendered from the tables in
//! [`header`] and checked for drift by `cargo test -p chorus-ffi`.
//!
//! Memory contract: every data pointer must stay valid (and not be written by the caller) until
//! the returned work handle reports completion (the blocking form: until the call returns); torch
//! keeps tensors alive in its `Work` object.
#![allow(non_camel_case_types)]

pub mod buffer;
pub mod error;
pub mod header;
mod collectives;
mod completion;
mod device;
mod group;
mod last_op;
mod p2p;
pub mod store;
pub mod work;

use buffer::{byte_len, input_for, Input, RawBuf};
use chorus_backend::OpInfo;
use chorus_backend::{DType, Issued, Mode, OpBuffer, Options, ProcessGroup, ReduceOp};
use chorus_bootstrap::{Store, StoreClient, StoreServer};
use error::{guard, guard_value, last_error_ptr, FfiError, FfiResult};
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;
use std::time::Duration;
pub use store::{chorus_buf, chorus_store_callbacks, CallbackStore};
pub use work::chorus_work;

/// Bumped whenever a declaration of `chorus.h` changes incompatibly.
pub const CHORUS_ABI_VERSION: u32 = 2;
/// `device` argument for host memory; values >= 0 name a CUDA device ordinal.
pub const CHORUS_DEVICE_CPU: i32 = -1;

/// An opaque group handle.
pub struct chorus_group {
    pg: ProcessGroup,
    /// A store server this rank hosts (`chorus_group_create_tcp` with `host_store`).
    _server: Option<Arc<StoreServer>>,
}

// ------------------------------------------------------------------ argument helpers

fn group<'a>(g: *const chorus_group) -> FfiResult<&'a chorus_group> {
    // SAFETY: a non-null group pointer was returned by a chorus_group_create* call and, by the
    // ABI contract, not yet passed to chorus_group_destroy.
    unsafe { g.as_ref() }.ok_or_else(|| FfiError::invalid("the group handle is NULL"))
}

fn check_out<T>(out: *mut *mut T, what: &str) -> FfiResult<()> {
    if out.is_null() {
        return Err(FfiError::invalid(format!("the `{what}` out-pointer is NULL")));
    }
    Ok(())
}

fn put_out<T>(out: *mut *mut T, v: T) {
    // SAFETY: `out` was checked non-null by `check_out` and points to writable storage for one
    // pointer (ABI contract).
    unsafe { *out = Box::into_raw(Box::new(v)) };
}

fn dtype(d: i32) -> FfiResult<DType> {
    u8::try_from(d)
        .ok()
        .and_then(DType::from_u8)
        .ok_or_else(|| FfiError::invalid(format!("unknown dtype code {d} (see chorus_dtype_t in chorus.h)")))
}

fn reduce_op(op: i32) -> FfiResult<ReduceOp> {
    u8::try_from(op)
        .ok()
        .and_then(ReduceOp::from_u8)
        .ok_or_else(|| FfiError::invalid(format!("unknown reduce op code {op} (see chorus_reduce_op_t in chorus.h)")))
}

fn rank_arg(v: i32, what: &str) -> FfiResult<usize> {
    usize::try_from(v).map_err(|_| FfiError::invalid(format!("{what} {v} is negative")))
}

fn opt_str<'a>(s: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-null string argument is a NUL-terminated C string valid for the call (ABI).
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str().map(Some).map_err(|_| FfiError::invalid(format!("{what} is not valid UTF-8")))
}

/// A group's options: the environment's, the caller's `timeout_ms` (> 0) bounded by an explicit
/// `CHORUS_TIMEOUT_MS` (torch always passes its own timeout, and the variable must still apply).
fn options(name: *const c_char, timeout_ms: i64) -> FfiResult<Options> {
    // The C ABI's callers (torch, C programs) cannot install a Rust subscriber: `CHORUS_LOG` asks
    // for one here, at every group creation or join (all go through this function).
    chorus_backend::logging::install_stderr_logger();
    let mut o = Options::default();
    if timeout_ms > 0 {
        o = o.with_caller_timeout(Duration::from_millis(timeout_ms as u64));
    }
    if let Some(n) = opt_str(name, "name")? {
        if !n.is_empty() {
            o = o.with_name(n);
        }
    }
    Ok(o)
}

fn counts<'a>(p: *const u64, n: usize, what: &str) -> FfiResult<&'a [u64]> {
    if p.is_null() {
        return Err(FfiError::invalid(format!("{what} is NULL but must hold {n} counts")));
    }
    // SAFETY: non-null, and by the ABI contract points to one count per rank of the group.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

fn emit<R: Send + 'static>(out: *mut *mut chorus_work, w: chorus_backend::Work<R>) -> FfiResult<()> {
    let w = chorus_work::start(w)?;
    put_out(out, w);
    Ok(())
}

// ------------------------------------------------------------------ library

/// ABI version of this library (compare with `CHORUS_ABI_VERSION` in the header).
#[no_mangle]
pub extern "C" fn chorus_abi_version() -> u32 {
    CHORUS_ABI_VERSION
}

/// The calling thread's last error message ("" if none); valid until the next failing call on
/// this thread.
#[no_mangle]
pub extern "C" fn chorus_last_error() -> *const c_char {
    last_error_ptr()
}

/// Replaces the contents of a chorus-owned buffer (store callbacks return values through it).
///
/// # Safety
/// `buf` is a buffer chorus passed to a store callback (during that callback); `data` points to
/// `len` readable bytes (or is NULL with `len == 0`).
#[no_mangle]
pub unsafe extern "C" fn chorus_buf_write(buf: *mut chorus_buf, data: *const u8, len: usize) -> i32 {
    guard(|| {
        // SAFETY: per this function's contract `buf` is a live chorus_buf handed to a callback.
        let b = unsafe { buf.as_mut() }.ok_or_else(|| FfiError::invalid("chorus_buf_write: buf is NULL"))?;
        let src = RawBuf::new(data, len, "chorus_buf_write: data")?;
        b.data.clear();
        b.data.extend_from_slice(src.bytes());
        Ok(())
    })
}


pub use collectives::*;
pub use completion::*;
pub use group::*;
pub use p2p::*;
