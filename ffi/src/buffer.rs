//! Caller-owned memory as a chorus [`OpBuffer`]: the only place raw data pointers become slices.
use crate::error::{FfiError, FfiResult};
use chorus_backend::{DType, OpBuffer};
use std::any::Any;

/// Host memory the C caller owns: `len` bytes at `ptr`. The caller guarantees (the contract of
/// every collective in `chorus.h`) that the memory stays valid, and is not written by anyone
/// else, until the operation's work handle reports completion.
pub struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: RawBuf is a (pointer, length) pair into memory the caller keeps alive and does not touch
// until the operation completes; chorus accesses it from exactly one thread at a time (the worker
// or progress thread that runs the operation), so moving the handle across threads is sound.
unsafe impl Send for RawBuf {}

impl RawBuf {
    /// Wraps `len` bytes at `ptr`. A null pointer is only accepted for an empty buffer; `what`
    /// names the argument in error messages.
    pub fn new(ptr: *const u8, len: usize, what: impl std::fmt::Display) -> FfiResult<RawBuf> {
        if ptr.is_null() && len != 0 {
            return Err(FfiError::invalid(format!("{what} is a null pointer but must hold {len} bytes")));
        }
        if len > isize::MAX as usize {
            return Err(FfiError::invalid(format!("{what}: {len} bytes is larger than any allocation can be")));
        }
        Ok(RawBuf { ptr: ptr as *mut u8, len })
    }

    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Whether the byte ranges of `self` and `other` share at least one byte.
    pub fn overlaps(&self, other: &RawBuf) -> bool {
        self.len != 0 && other.len != 0 && self.addr() < other.addr() + other.len && other.addr() < self.addr() + self.len
    }
}

impl OpBuffer for RawBuf {
    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is non-null (checked in `new`) and points to `len` readable bytes that the
        // caller keeps alive and unmodified until the operation completes (the ABI contract);
        // `len <= isize::MAX` was checked in `new`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `bytes`, plus: output buffers are writable by contract, and an input that
        // overlaps the output of the same operation is copied first (`input_for`), so no other live
        // slice aliases this one while the operation runs. Inputs are only ever read (`bytes`).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// The input side of an operation: the caller's memory, or a private copy of it when it overlaps
/// the output (torch's in-place `all_gather_into_tensor` passes a slice of the output as input).
/// An enum, not a box: the common case allocates nothing.
pub enum Input {
    Caller(RawBuf),
    Copy(Vec<u8>),
}

impl OpBuffer for Input {
    fn bytes(&self) -> &[u8] {
        match self {
            Input::Caller(b) => b.bytes(),
            Input::Copy(v) => v,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Input::Caller(b) => b.bytes_mut(),
            Input::Copy(v) => v,
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

pub fn input_for(input: RawBuf, output: &RawBuf) -> Input {
    if input.overlaps(output) {
        Input::Copy(input.bytes().to_vec())
    } else {
        Input::Caller(input)
    }
}

/// `count` elements of `dtype` in bytes, refusing overflow.
pub fn byte_len(count: u64, dtype: DType, what: &str) -> FfiResult<usize> {
    usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(dtype.size()))
        .ok_or_else(|| FfiError::invalid(format!("{what}: {count} elements of {} overflow the address space", dtype.name())))
}
