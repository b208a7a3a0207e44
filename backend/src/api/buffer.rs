//! Typed elements and owned buffers for asynchronous operations.
use crate::engine::p2p::OpBuffer;
use crate::sys::pod::{self, Pod};
use chorus_kernels::DType;
use half::{bf16, f16};
use std::any::Any;

/// An element type with a chorus dtype. (`bool` data goes through the byte-level `*_raw` calls
/// with `DType::Bool`, since arbitrary bytes are not valid `bool`s.)
pub trait Element: Pod {
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DTYPE: DType = DType::$d; })* };
}
element!(f32 => F32, f64 => F64, f16 => F16, bf16 => BF16, i8 => I8, u8 => U8, i16 => I16, i32 => I32, i64 => I64, u16 => U16, u32 => U32, u64 => U64);

pub fn as_bytes<T: Element>(s: &[T]) -> &[u8] {
    pod::bytes(s)
}

pub fn as_bytes_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    pod::bytes_mut(s)
}

impl<T: Element> OpBuffer for Vec<T> {
    fn bytes(&self) -> &[u8] {
        pod::bytes(self)
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        pod::bytes_mut(self)
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl OpBuffer for Box<dyn OpBuffer> {
    fn bytes(&self) -> &[u8] {
        (**self).bytes()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        (**self).bytes_mut()
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}
