//! CPU reduce kernels for chorus.
//!
//! Everything here works on raw byte slices of any alignment (they come from shared-memory rings and
//! network buffers at arbitrary offsets). Elements are decoded with `from_ne_bytes` and processed in
//! blocks of [`BLOCK`] elements staged in stack arrays, so the inner loops are plain fixed-stride loops
//! that LLVM auto-vectorizes at baseline x86-64 (SSE2).
//!
//! With the `cuda` feature (default), [`cuda`] adds the GPU reduce kernels: CUDA C++ compiled at run time
//! with NVRTC and eagerly preloaded per device (libcuda/libnvrtc are loaded at run time, so the crate
//! builds and runs without CUDA). `unsafe` is denied crate-wide; the exceptions are `cuda/ffi.rs` and
//! [`fdpass`] (the libc calls that pass file descriptors between processes).
//!
//! Multi-source reductions make a single pass over memory: for each block the accumulator is loaded
//! once, every source is folded into it while it sits in L1, and the result is stored once.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod dtype;
pub use dtype::{DType, ReduceOp};

#[cfg(test)]
mod tests;

#[cfg(feature = "cuda")]
pub mod cuda;

#[cfg(target_os = "linux")]
pub mod fdpass;

/// Errors of the reduce kernels.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The (op, dtype) pair has no reduction.
    #[error("reduce op {op:?} ('{}') is not supported for dtype {dtype}: {}", .op.name(), supported_help(.dtype, *.op))]
    Unsupported {
        /// The requested op.
        op: ReduceOp,
        /// Name of the dtype ([`DType::name`]).
        dtype: &'static str,
    },
    /// Buffers of different lengths, or a length that is not a multiple of the element size.
    #[error(
        "buffer length mismatch for dtype {dtype} (element size {elem_size} bytes): expected {expected} bytes, \
         got {actual} bytes (buffer {index}); all buffers of a reduction must have the same length, \
         a multiple of the element size"
    )]
    LengthMismatch {
        /// Name of the dtype ([`DType::name`]).
        dtype: &'static str,
        /// Bytes per element of the dtype.
        elem_size: usize,
        /// Length of the destination/accumulator in bytes (or, for a non-multiple length, the length
        /// rounded down to whole elements).
        expected: usize,
        /// Length of the offending buffer in bytes.
        actual: usize,
        /// 0 = destination/accumulator, i >= 1 = the (i-1)-th source.
        index: usize,
    },
    /// An argument outside the domain of the kernel (no sources, divide by zero ranks).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What was wrong with the argument.
        reason: &'static str,
    },
    /// No usable CUDA here (no driver library, no NVRTC, no device); the text says which and why.
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    /// NVRTC rejected the kernel source; `log` is the NVRTC program log (with the options used).
    #[error("NVRTC failed to compile the chorus reduce kernels:\n{log}")]
    CudaCompile {
        /// The NVRTC program log.
        log: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA error while {what}: {reason}")]
    Cuda {
        /// What was being done (the step or driver call).
        what: String,
        /// The driver's error.
        reason: String,
    },
    /// Setting up a GPU communicator failed (the ranks disagree on its configuration, or the exchange
    /// of workspace handles failed); the text says which.
    #[error("GPU communicator setup failed: {0}")]
    CommSetup(String),
    /// A GPU collective kernel waited past its deadline for a peer; the communicator is unusable.
    #[error(
        "a GPU collective waited more than {timeout_ms} ms for a peer (thread block {block}): a peer process \
         died or hung, or the ranks issued collectives in different orders or with different sizes; this \
         device communicator cannot be used any more (CHORUS_CUDA_TIMEOUT_MS sets the deadline)"
    )]
    CollectiveTimeout {
        /// The thread block that gave up first.
        block: u32,
        /// The deadline it waited, in milliseconds.
        timeout_ms: u64,
    },
    /// The host aborted the device communicator (through its host control block): waiting kernels gave
    /// up and no further operation is accepted. The process group aborts it with reason `1 + rank`
    /// when its failure detector finds that rank dead.
    #[error(
        "the GPU communicator was aborted by the host ({}){}; its collectives since then did not complete \
         and this device communicator cannot be used any more",
        abort_reason_help(*.reason),
        .block.map(|b| format!(" while thread block {b} waited for a peer")).unwrap_or_default()
    )]
    CollectiveAborted {
        /// The abort reason the host set (`1 + rank` from the process group; 0 if none was given).
        reason: u64,
        /// The thread block that saw the abort while waiting, if a kernel recorded one.
        block: Option<u32>,
    },
}

/// How the process group's abort reasons read (`1 + rank` of the failed peer).
fn abort_reason_help(reason: u64) -> String {
    match reason {
        0 => "no reason given".to_string(),
        r => format!("reason {r}: the process group sets 1 + the rank its failure detector found dead, here rank {}", r - 1),
    }
}

/// Result of the kernel functions.
pub type Result<T> = std::result::Result<T, KernelError>;

fn supported_help(dtype: &str, op: ReduceOp) -> String {
    let d = DType::from_name(dtype);
    match d {
        Some(d) if d.is_float() && d.is_reducible() => format!(
            "floating-point dtypes support sum, prod, min, max and avg; bitwise op '{}' needs an integer or bool \
             dtype (int8, uint8, int16, int32, int64, bool)",
            op.name()
        ),
        Some(DType::Bool) => "bool supports sum/max/bor (logical or), prod/min/band (logical and) and bxor \
             (logical xor); avg is not defined for bool"
            .to_string(),
        Some(d) if !d.is_reducible() => format!(
            "{} is a data-movement-only dtype (broadcast, all-gather, all-to-all, send/recv work; no reduce op \
             does); reducible dtypes are {}",
            d.name(),
            reducible_list()
        ),
        _ => format!("reducible dtypes are {}", reducible_list()),
    }
}

fn reducible_list() -> String {
    DType::reducible().iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
}

/// Ok if `op` has a reduction for `dtype`, otherwise [`KernelError::Unsupported`] with a message that says
/// what is supported.
pub fn check_supported(dtype: DType, op: ReduceOp) -> Result<()> {
    use DType::*;
    use ReduceOp::*;
    let ok = match dtype {
        F32 | F64 | F16 | BF16 => matches!(op, Sum | Prod | Min | Max | Avg),
        I8 | U8 | I16 | I32 | I64 => true,
        Bool => op != Avg,
        U16 | U32 | U64 | F8E4M3 | F8E5M2 => false,
    };
    if ok {
        Ok(())
    } else {
        Err(KernelError::Unsupported { op, dtype: dtype.name() })
    }
}

fn check_lengths(dtype: DType, dst_len: usize, srcs: &[&[u8]], first_src_index: usize) -> Result<()> {
    let size = dtype.size();
    let rem = dst_len % size;
    if rem != 0 {
        return Err(KernelError::LengthMismatch {
            dtype: dtype.name(),
            elem_size: size,
            expected: dst_len - rem,
            actual: dst_len,
            index: 0,
        });
    }
    for (i, s) in srcs.iter().enumerate() {
        if s.len() != dst_len {
            return Err(KernelError::LengthMismatch {
                dtype: dtype.name(),
                elem_size: size,
                expected: dst_len,
                actual: s.len(),
                index: first_src_index + i,
            });
        }
    }
    Ok(())
}

/// `acc[i] = op(acc[i], others[0][i], others[1][i], ...)`.
///
/// Byte slices of equal length, a multiple of `dtype.size()`, any alignment. f16/bf16 accumulate in f32
/// across `acc` and all `others` and round once. `Avg` behaves as `Sum` (the caller divides once with
/// [`finalize_avg`]). Bool output is normalized to 0/1.
pub fn reduce_accumulate(dtype: DType, op: ReduceOp, acc: &mut [u8], others: &[&[u8]]) -> Result<()> {
    check_supported(dtype, op)?;
    check_lengths(dtype, acc.len(), others, 1)?;
    dispatch(dtype, op, acc, None, others);
    Ok(())
}

/// `dst[i] = op(srcs[0][i], srcs[1][i], ...)`; `srcs.len() >= 1`; same rules as [`reduce_accumulate`].
/// `dst` does not alias any source (guaranteed by the borrow checker).
pub fn reduce_into(dtype: DType, op: ReduceOp, dst: &mut [u8], srcs: &[&[u8]]) -> Result<()> {
    check_supported(dtype, op)?;
    let Some((first, rest)) = srcs.split_first() else {
        return Err(KernelError::InvalidArgument { reason: "reduce_into needs at least one source buffer" });
    };
    check_lengths(dtype, dst.len(), srcs, 1)?;
    dispatch(dtype, op, dst, Some(first), rest);
    Ok(())
}

/// Finishes an `Avg` reduction: `buf[i] = buf[i] / n`. Floats divide in their own precision (f16/bf16 in
/// f32, rounded once); integers use truncating division. The caller calls this only for `Avg`; dtypes
/// without an `Avg` reduction (bool, data-movement-only dtypes) are `Unsupported`.
pub fn finalize_avg(dtype: DType, buf: &mut [u8], n: usize) -> Result<()> {
    check_supported(dtype, ReduceOp::Avg)?;
    check_lengths(dtype, buf.len(), &[], 1)?;
    if n == 0 {
        return Err(KernelError::InvalidArgument { reason: "finalize_avg: cannot average over 0 contributions" });
    }
    if n == 1 {
        return Ok(());
    }
    match dtype {
        DType::F32 => {
            let d = n as f32;
            map_in_place::<F32>(buf, |x| x / d)
        }
        DType::F64 => {
            let d = n as f64;
            map_in_place::<F64>(buf, |x| x / d)
        }
        DType::F16 => {
            let d = n as f32;
            map_in_place::<F16>(buf, |x| x / d)
        }
        DType::BF16 => {
            let d = n as f32;
            map_in_place::<BF16>(buf, |x| x / d)
        }
        // Truncating division; a divisor beyond the type's range makes every quotient 0.
        DType::I8 => int_avg::<I8>(buf, n, |x, d| (x as i64 / d) as i8),
        DType::U8 => int_avg::<U8>(buf, n, |x, d| (x as i64 / d) as u8),
        DType::I16 => int_avg::<I16>(buf, n, |x, d| (x as i64 / d) as i16),
        DType::I32 => int_avg::<I32>(buf, n, |x, d| (x as i64 / d) as i32),
        DType::I64 => {
            let d = i64::try_from(n).unwrap_or(i64::MAX);
            // i64::MIN / -1 cannot happen: d > 0.
            map_in_place::<I64>(buf, |x| x / d)
        }
        _ => unreachable!("check_supported rejects {dtype:?} for avg"),
    }
    Ok(())
}

fn int_avg<C: Codec>(buf: &mut [u8], n: usize, f: impl Fn(C::W, i64) -> C::W + Copy) {
    let d = i64::try_from(n).unwrap_or(i64::MAX);
    map_in_place::<C>(buf, move |x| f(x, d))
}

// ---------------------------------------------------------------------------------------------------
// Block machinery
// ---------------------------------------------------------------------------------------------------

/// Elements per staged block (at most 8 KiB of working values for 8-byte types).
const BLOCK: usize = 1024;

/// How one dtype is decoded from bytes into working values and encoded back.
trait Codec {
    /// The type the arithmetic runs in (f32 for f16/bf16).
    type W: Copy + Default;
    /// Bytes per element in memory.
    const SIZE: usize;
    /// `dst.len()` elements from `src` (exactly `dst.len() * SIZE` bytes).
    fn decode(src: &[u8], dst: &mut [Self::W]);
    /// `src.len()` elements into `dst` (exactly `src.len() * SIZE` bytes).
    fn encode(src: &[Self::W], dst: &mut [u8]);
    /// `acc[i] = f(acc[i], decode(src[i]))`. The default stages through a block-sized temporary;
    /// plain types override it with a fused loop.
    #[inline(always)]
    fn fold(acc: &mut [Self::W], src: &[u8], f: impl Fn(Self::W, Self::W) -> Self::W) {
        let mut tmp = [Self::W::default(); BLOCK];
        let tmp = &mut tmp[..acc.len()];
        Self::decode(src, tmp);
        for (a, &b) in acc.iter_mut().zip(tmp.iter()) {
            *a = f(*a, b);
        }
    }
}

/// A type computed in its own representation: loops run straight over the byte slices, no staging.
trait Plain: Codec {
    fn load(b: &[u8]) -> Self::W;
    fn store(v: Self::W, b: &mut [u8]);
    /// `out = src` for a single-source reduction (bool normalizes).
    #[inline(always)]
    fn copy_norm(out: &mut [u8], src: &[u8]) {
        out.copy_from_slice(src)
    }
    /// `out = out` for an accumulate with no other sources (bool normalizes).
    #[inline(always)]
    fn normalize(_out: &mut [u8]) {}
}

macro_rules! plain_codec {
    ($name:ident, $t:ty) => {
        struct $name;
        impl Codec for $name {
            type W = $t;
            const SIZE: usize = std::mem::size_of::<$t>();
            #[inline(always)]
            fn decode(src: &[u8], dst: &mut [$t]) {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(Self::SIZE)) {
                    *d = Self::load(s);
                }
            }
            #[inline(always)]
            fn encode(src: &[$t], dst: &mut [u8]) {
                for (s, d) in src.iter().zip(dst.chunks_exact_mut(Self::SIZE)) {
                    Self::store(*s, d);
                }
            }
        }
        impl Plain for $name {
            #[inline(always)]
            fn load(b: &[u8]) -> $t {
                <$t>::from_ne_bytes(b.try_into().unwrap())
            }
            #[inline(always)]
            fn store(v: $t, b: &mut [u8]) {
                b.copy_from_slice(&v.to_ne_bytes())
            }
        }
    };
}

plain_codec!(F32, f32);
plain_codec!(F64, f64);
plain_codec!(I8, i8);
plain_codec!(U8, u8);
plain_codec!(I16, i16);
plain_codec!(I32, i32);
plain_codec!(I64, i64);

/// Bool: one byte, nonzero = true; working values are normalized to 0/1 on decode.
struct Bool;
impl Codec for Bool {
    type W = u8;
    const SIZE: usize = 1;
    #[inline(always)]
    fn decode(src: &[u8], dst: &mut [u8]) {
        for (d, &s) in dst.iter_mut().zip(src.iter()) {
            *d = (s != 0) as u8;
        }
    }
    #[inline(always)]
    fn encode(src: &[u8], dst: &mut [u8]) {
        dst.copy_from_slice(src);
    }
}
impl Plain for Bool {
    #[inline(always)]
    fn load(b: &[u8]) -> u8 {
        (b[0] != 0) as u8
    }
    #[inline(always)]
    fn store(v: u8, b: &mut [u8]) {
        b[0] = v;
    }
    #[inline(always)]
    fn copy_norm(out: &mut [u8], src: &[u8]) {
        Self::decode(src, out)
    }
    #[inline(always)]
    fn normalize(out: &mut [u8]) {
        for b in out.iter_mut() {
            *b = (*b != 0) as u8;
        }
    }
}

/// IEEE binary16, computed in f32. Conversions are branch-free integer/float code (bit-identical to
/// `half`/F16C: round to nearest even, NaN payload kept with the quiet bit set), so LLVM vectorizes them
/// at baseline SSE2; `half`'s slice helpers call an out-of-line F16C routine per 8 elements.
struct F16;
impl Codec for F16 {
    type W = f32;
    const SIZE: usize = 2;
    #[inline(always)]
    fn decode(src: &[u8], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *d = f16_bits_to_f32(u16::from_ne_bytes(s.try_into().unwrap()));
        }
    }
    #[inline(always)]
    fn encode(src: &[f32], dst: &mut [u8]) {
        for (s, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
            d.copy_from_slice(&f32_to_f16_bits(*s).to_ne_bytes());
        }
    }
    #[inline(always)]
    fn fold(acc: &mut [f32], src: &[u8], f: impl Fn(f32, f32) -> f32) {
        for (a, s) in acc.iter_mut().zip(src.chunks_exact(2)) {
            *a = f(*a, f16_bits_to_f32(u16::from_ne_bytes(s.try_into().unwrap())));
        }
    }
}

/// binary16 -> binary32, exact, with selects only (no arithmetic on subnormal f32 operands, which is
/// slow on some x86 cores). A NaN comes out quiet, as with F16C and `half`.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let shifted = (h & 0x7fff) << 13; // exponent + mantissa in f32 position
    let exp = shifted & 0x0f80_0000;
    let normal = shifted + ((127 - 15) << 23);
    let inf_nan = (normal + ((128 - 16) << 23)) | ((((h & 0x03ff) != 0) as u32) << 22);
    // Subnormal (or zero): let the FPU normalize: (1.mantissa * 2^-14) - 2^-14, both operands normal.
    let sub = (f32::from_bits(normal + (1 << 23)) - f32::from_bits(113 << 23)).to_bits();
    let bits = if exp == 0x0f80_0000 {
        inf_nan
    } else if exp == 0 {
        sub
    } else {
        normal
    };
    f32::from_bits(bits | sign)
}

/// binary32 -> binary16, round to nearest even; overflow -> inf; NaN keeps the top payload bits and
/// gets the quiet bit (what F16C `vcvtps2ph` and `half` do).
#[inline(always)]
fn f32_to_f16_bits(v: f32) -> u16 {
    const F32_INF: u32 = 0x7f80_0000;
    const F16_OVERFLOW: u32 = (127 + 16) << 23; // 65536.0: everything at or above rounds to inf
    const DENORM_MAGIC: u32 = ((127 - 15) + (23 - 10) + 1) << 23; // 0.5
    let x = v.to_bits();
    let sign = (x >> 16) & 0x8000;
    let u = x & 0x7fff_ffff;
    let inf_nan = if u > F32_INF { 0x7e00 | ((u >> 13) & 0x03ff) } else { 0x7c00 };
    // Subnormal results: adding 0.5 makes the FPU round the mantissa into the low bits (RNE).
    let sub = (f32::from_bits(u) + f32::from_bits(DENORM_MAGIC)).to_bits().wrapping_sub(DENORM_MAGIC);
    // Normal results: rebias the exponent and round to nearest even on bit 13.
    let mant_odd = (u >> 13) & 1;
    let normal = u.wrapping_add((15u32.wrapping_sub(127) << 23).wrapping_add(0xfff)).wrapping_add(mant_odd) >> 13;
    let bits = if u >= F16_OVERFLOW {
        inf_nan
    } else if u < (113 << 23) {
        sub
    } else {
        normal
    };
    (bits | sign) as u16
}

/// bfloat16, computed in f32. The conversions are branch-free bit manipulation (bit-identical to
/// `half::bf16::{to_f32, from_f32}`: round to nearest even, NaN stays NaN with the quiet bit set) so
/// they vectorize; `half`'s bf16 slice helpers are scalar loops.
struct BF16;
impl Codec for BF16 {
    type W = f32;
    const SIZE: usize = 2;
    #[inline(always)]
    fn decode(src: &[u8], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *d = bf16_bits_to_f32(u16::from_ne_bytes(s.try_into().unwrap()));
        }
    }
    #[inline(always)]
    fn encode(src: &[f32], dst: &mut [u8]) {
        for (s, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
            d.copy_from_slice(&f32_to_bf16_bits(*s).to_ne_bytes());
        }
    }
    #[inline(always)]
    fn fold(acc: &mut [f32], src: &[u8], f: impl Fn(f32, f32) -> f32) {
        for (a, s) in acc.iter_mut().zip(src.chunks_exact(2)) {
            *a = f(*a, bf16_bits_to_f32(u16::from_ne_bytes(s.try_into().unwrap())));
        }
    }
}

#[inline(always)]
fn bf16_bits_to_f32(b: u16) -> f32 {
    // A NaN comes out quiet (as `half` does).
    let quiet = ((((b & 0x7fff) > 0x7f80) as u32) << 22) & 0x0040_0000;
    f32::from_bits(((b as u32) << 16) | quiet)
}

#[inline(always)]
fn f32_to_bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let is_nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    let nan = (x >> 16) | 0x0040;
    // Round to nearest, ties to even. Cannot overflow for non-NaN inputs (max finite + bias < 2^32).
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    (if is_nan { nan } else { rounded }) as u16
}

/// Staged driver (f16/bf16): per block, convert `first` (or `out` itself) into f32, fold every `rest`
/// source in, round once, store.
#[inline(always)]
fn run_staged<C: Codec>(out: &mut [u8], first: Option<&[u8]>, rest: &[&[u8]], f: impl Fn(C::W, C::W) -> C::W + Copy) {
    let block_bytes = BLOCK * C::SIZE;
    let mut work = [C::W::default(); BLOCK];
    for (bi, out_chunk) in out.chunks_mut(block_bytes).enumerate() {
        let off = bi * block_bytes;
        let end = off + out_chunk.len();
        let w = &mut work[..out_chunk.len() / C::SIZE];
        match first {
            Some(s) => C::decode(&s[off..end], w),
            None => C::decode(out_chunk, w),
        }
        for r in rest {
            C::fold(w, &r[off..end], f);
        }
        C::encode(w, out_chunk);
    }
}

/// Bytes per block of the direct driver: the output block stays in L1 while every source is folded in.
const DIRECT_BLOCK_BYTES: usize = 8192;

/// Direct driver (types computed in their own representation): loops straight over the byte slices.
#[inline(always)]
fn run_direct<P: Plain>(out: &mut [u8], first: Option<&[u8]>, rest: &[&[u8]], f: impl Fn(P::W, P::W) -> P::W + Copy) {
    let s = P::SIZE;
    for (bi, oc) in out.chunks_mut(DIRECT_BLOCK_BYTES).enumerate() {
        let off = bi * DIRECT_BLOCK_BYTES;
        let end = off + oc.len();
        let mut others = rest.iter();
        match first {
            Some(first) => match others.next() {
                Some(second) => {
                    let (a, b) = (&first[off..end], &second[off..end]);
                    for ((o, x), y) in oc.chunks_exact_mut(s).zip(a.chunks_exact(s)).zip(b.chunks_exact(s)) {
                        P::store(f(P::load(x), P::load(y)), o);
                    }
                }
                None => P::copy_norm(oc, &first[off..end]),
            },
            None if rest.is_empty() => P::normalize(oc),
            None => {}
        }
        // Fold the remaining sources in groups of up to three per pass over the (L1-resident) block.
        let others = others.as_slice();
        let mut groups = others.chunks_exact(3);
        for g in &mut groups {
            let (a, b, c) = (&g[0][off..end], &g[1][off..end], &g[2][off..end]);
            for (((o, x), y), z) in
                oc.chunks_exact_mut(s).zip(a.chunks_exact(s)).zip(b.chunks_exact(s)).zip(c.chunks_exact(s))
            {
                P::store(f(f(f(P::load(o), P::load(x)), P::load(y)), P::load(z)), o);
            }
        }
        match groups.remainder() {
            [a] => {
                for (o, x) in oc.chunks_exact_mut(s).zip(a[off..end].chunks_exact(s)) {
                    P::store(f(P::load(o), P::load(x)), o);
                }
            }
            [a, b] => {
                let (a, b) = (&a[off..end], &b[off..end]);
                for ((o, x), y) in oc.chunks_exact_mut(s).zip(a.chunks_exact(s)).zip(b.chunks_exact(s)) {
                    P::store(f(f(P::load(o), P::load(x)), P::load(y)), o);
                }
            }
            _ => {}
        }
    }
}

fn map_in_place<C: Codec>(buf: &mut [u8], f: impl Fn(C::W) -> C::W + Copy) {
    let mut work = [C::W::default(); BLOCK];
    for chunk in buf.chunks_mut(BLOCK * C::SIZE) {
        let w = &mut work[..chunk.len() / C::SIZE];
        C::decode(chunk, w);
        for x in w.iter_mut() {
            *x = f(*x);
        }
        C::encode(w, chunk);
    }
}

// ---------------------------------------------------------------------------------------------------
// Scalar ops
// ---------------------------------------------------------------------------------------------------

macro_rules! float_minmax {
    ($min:ident, $max:ident, $t:ty) => {
        /// IEEE 754-2019 `minimum`: NaN propagates, -0 < +0. Branch-free selects, so it vectorizes.
        #[inline(always)]
        fn $min(a: $t, b: $t) -> $t {
            if a < b {
                a
            } else if b < a {
                b
            } else if a == b {
                <$t>::from_bits(a.to_bits() | b.to_bits())
            } else {
                a + b // at least one NaN: the sum is NaN
            }
        }
        /// IEEE 754-2019 `maximum`: NaN propagates, +0 > -0.
        #[inline(always)]
        fn $max(a: $t, b: $t) -> $t {
            if a > b {
                a
            } else if b > a {
                b
            } else if a == b {
                <$t>::from_bits(a.to_bits() & b.to_bits())
            } else {
                a + b
            }
        }
    };
}
float_minmax!(fmin32, fmax32, f32);
float_minmax!(fmin64, fmax64, f64);

macro_rules! float_ops {
    ($run:ident, $C:ty, $op:expr, $out:expr, $first:expr, $rest:expr, $min:ident, $max:ident) => {
        match $op {
            ReduceOp::Sum | ReduceOp::Avg => $run::<$C>($out, $first, $rest, |a, b| a + b),
            ReduceOp::Prod => $run::<$C>($out, $first, $rest, |a, b| a * b),
            ReduceOp::Min => $run::<$C>($out, $first, $rest, $min),
            ReduceOp::Max => $run::<$C>($out, $first, $rest, $max),
            _ => unreachable!("check_supported rejects bitwise ops on floats"),
        }
    };
}

macro_rules! int_ops {
    ($run:ident, $C:ty, $op:expr, $out:expr, $first:expr, $rest:expr) => {
        match $op {
            ReduceOp::Sum | ReduceOp::Avg => $run::<$C>($out, $first, $rest, |a, b| a.wrapping_add(b)),
            ReduceOp::Prod => $run::<$C>($out, $first, $rest, |a, b| a.wrapping_mul(b)),
            ReduceOp::Min => $run::<$C>($out, $first, $rest, |a, b| if b < a { b } else { a }),
            ReduceOp::Max => $run::<$C>($out, $first, $rest, |a, b| if b > a { b } else { a }),
            ReduceOp::BAnd => $run::<$C>($out, $first, $rest, |a, b| a & b),
            ReduceOp::BOr => $run::<$C>($out, $first, $rest, |a, b| a | b),
            ReduceOp::BXor => $run::<$C>($out, $first, $rest, |a, b| a ^ b),
        }
    };
}

/// Lengths and support already checked.
fn dispatch(dtype: DType, op: ReduceOp, out: &mut [u8], first: Option<&[u8]>, rest: &[&[u8]]) {
    if out.is_empty() {
        return;
    }
    match dtype {
        DType::F32 => float_ops!(run_direct, F32, op, out, first, rest, fmin32, fmax32),
        DType::F64 => float_ops!(run_direct, F64, op, out, first, rest, fmin64, fmax64),
        DType::F16 => float_ops!(run_staged, F16, op, out, first, rest, fmin32, fmax32),
        DType::BF16 => float_ops!(run_staged, BF16, op, out, first, rest, fmin32, fmax32),
        DType::I8 => int_ops!(run_direct, I8, op, out, first, rest),
        DType::U8 => int_ops!(run_direct, U8, op, out, first, rest),
        DType::I16 => int_ops!(run_direct, I16, op, out, first, rest),
        DType::I32 => int_ops!(run_direct, I32, op, out, first, rest),
        DType::I64 => int_ops!(run_direct, I64, op, out, first, rest),
        DType::Bool => match op {
            ReduceOp::Sum | ReduceOp::Max | ReduceOp::BOr => run_direct::<Bool>(out, first, rest, |a, b| a | b),
            ReduceOp::Prod | ReduceOp::Min | ReduceOp::BAnd => run_direct::<Bool>(out, first, rest, |a, b| a & b),
            ReduceOp::BXor => run_direct::<Bool>(out, first, rest, |a, b| a ^ b),
            ReduceOp::Avg => unreachable!("check_supported rejects avg on bool"),
        },
        DType::U16 | DType::U32 | DType::U64 | DType::F8E4M3 | DType::F8E5M2 => {
            unreachable!("check_supported rejects data-movement-only dtypes")
        }
    }
}

#[cfg(test)]
mod convert_tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn f16_to_f32_exhaustive_matches_half() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            if want.is_nan() {
                // Same payload up to the quiet bit (decode keeps a signaling NaN signaling).
                assert!(got.is_nan(), "{h:#06x}");
                assert_eq!(got.to_bits() | 0x0040_0000, want.to_bits(), "nan payload {h:#06x}");
                assert_eq!(f32_to_f16_bits(got), f16::from_f32(want).to_bits(), "nan round trip {h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }

    fn f32_patterns() -> impl Iterator<Item = u32> {
        // A dense stride over all patterns plus every pattern around each f16 rounding boundary.
        let strided = (0..=u32::MAX / 9973).map(|i| i.wrapping_mul(9973));
        let boundaries = (0..=u16::MAX).flat_map(|h| {
            let b = f16::from_bits(h).to_f32().to_bits();
            let hb = b.wrapping_add(1 << 12); // halfway to the next f16
            [b, b.wrapping_add(1), b.wrapping_sub(1), hb, hb.wrapping_add(1), hb.wrapping_sub(1)]
        });
        strided.chain(boundaries).chain([0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0x477f_f000, 0x477f_efff])
    }

    #[test]
    fn f32_to_f16_matches_half() {
        for x in f32_patterns() {
            let v = f32::from_bits(x);
            let want = f16::from_f32(v).to_bits();
            let got = f32_to_f16_bits(v);
            assert_eq!(got, want, "f32 {x:#010x} ({v:e})");
        }
    }

    #[test]
    fn bf16_conversions_match_half() {
        for h in 0..=u16::MAX {
            assert_eq!(bf16_bits_to_f32(h).to_bits(), bf16::from_bits(h).to_f32().to_bits());
        }
        for x in f32_patterns() {
            let v = f32::from_bits(x);
            assert_eq!(f32_to_bf16_bits(v), bf16::from_f32(v).to_bits(), "f32 {x:#010x} ({v:e})");
        }
    }
}
