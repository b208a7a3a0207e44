//! Byte views of plain element slices.
use half::{bf16, f16};

/// Types whose every bit pattern is a valid value and which have no padding, so a slice of them
/// can be viewed as bytes and written from bytes.
///
/// # Safety
/// Implement only for types with no padding, no invalid bit patterns and no interior pointers.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

// SAFETY: primitive numbers: no padding, every bit pattern valid.
unsafe impl Pod for f32 {}
// SAFETY: as above.
unsafe impl Pod for f64 {}
// SAFETY: as above.
unsafe impl Pod for i8 {}
// SAFETY: as above.
unsafe impl Pod for u8 {}
// SAFETY: as above.
unsafe impl Pod for i16 {}
// SAFETY: as above.
unsafe impl Pod for u16 {}
// SAFETY: as above.
unsafe impl Pod for i32 {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for i64 {}
// SAFETY: as above.
unsafe impl Pod for u64 {}
// SAFETY: `half::f16` is a `repr(transparent)` u16.
unsafe impl Pod for f16 {}
// SAFETY: `half::bf16` is a `repr(transparent)` u16.
unsafe impl Pod for bf16 {}

/// The bytes of a slice of plain values.
pub fn bytes<T: Pod>(s: &[T]) -> &[u8] {
    // SAFETY: T is Pod (no padding), so every byte is initialised; the length covers exactly the
    // slice and the lifetime is tied to it.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

/// The bytes of a slice of plain values, writable (any bytes written form valid values).
pub fn bytes_mut<T: Pod>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: T is Pod (every bit pattern valid, no padding); exclusive borrow of exactly the slice.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, std::mem::size_of_val(s)) }
}
