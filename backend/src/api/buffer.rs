//! Typed elements and owned buffers for asynchronous operations.
use crate::engine::p2p::OpBuffer;
use crate::sys::pod::{self, Pod};
use chorus_kernels::DType;
use half::{bf16, f16};
use std::any::Any;

/// An element type with a chorus dtype. (`bool` data goes through the byte-level `*_raw` calls
/// with `DType::Bool`, since arbitrary bytes are not valid `bool`s.)
pub trait Element: Pod {
    /// The chorus dtype of `Self`.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DTYPE: DType = DType::$d; })* };
}
element!(f32 => F32, f64 => F64, f16 => F16, bf16 => BF16, i8 => I8, u8 => U8, i16 => I16, i32 => I32, i64 => I64, u16 => U16, u32 => U32, u64 => U64);

/// The bytes of `s`.
pub fn as_bytes<T: Element>(s: &[T]) -> &[u8] {
    pod::bytes(s)
}

/// The bytes of `s`, writable.
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
    /// `Vec<u8>` is the byte form: any dtype.
    fn element_type(&self) -> Option<DType> {
        (T::DTYPE != DType::U8).then_some(T::DTYPE)
    }
}

/// Refuses buffers whose elements are not of `dtype` (`Vec<f32>` passed as `DType::I64` gave
/// nonsense silently).
pub fn check_element_types(op: &str, dtype: Option<DType>, bufs: &[Option<DType>]) -> crate::error::Result<()> {
    let Some(dtype) = dtype else { return Ok(()) };
    match bufs.iter().flatten().find(|&&t| t != dtype) {
        Some(t) => Err(crate::error::ChorusError::InvalidArgument(format!(
            "{op}: the buffer holds {} elements but the dtype given is {}; pass the buffer's own dtype (or a Vec<u8> of bytes to read it as another)",
            t.name(),
            dtype.name()
        ))),
        None => Ok(()),
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
    fn element_type(&self) -> Option<DType> {
        (**self).element_type()
    }
}
