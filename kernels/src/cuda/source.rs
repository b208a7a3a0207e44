//! The CUDA C++ source of the reduce kernels (compiled at run time with NVRTC) and the table that names
//! one kernel per supported (dtype, op) pair.
//!
//! Half and bfloat16 conversions are written out as plain integer/float code, ported one to one from the
//! CPU kernels (`f16_bits_to_f32`, `f32_to_f16_bits`, ...), instead of including `cuda_fp16.h` /
//! `cuda_bf16.h`: the source then needs no toolkit headers on the target machine (NVRTC alone is enough)
//! and the GPU rounds exactly like the CPU path (round to nearest even, NaN quieted with its payload kept).

use crate::{DType, ReduceOp};

/// Most sources one kernel launch folds together (`dst = op(src0, ..., src7)`).
pub const MAX_SRCS: usize = 8;

/// Common part of the module: element codecs, ops and the vectorized reduce body.
pub(crate) const REDUCE_SRC: &str = r#"
// chorus reduce kernels: dst[i] = op(src[0][i], ..., src[nsrc-1][i]), 1 <= nsrc <= 8.
// All arithmetic is elementwise; f16/bf16 accumulate in f32 and round once at the store.
typedef unsigned char      u8;
typedef signed char        i8;
typedef unsigned short     u16;
typedef short              i16;
typedef unsigned int       u32;
typedef int                i32;
typedef unsigned long long u64;
typedef long long          i64;

#define CHORUS_MAX_SRCS 8

// Passed by value: one kernel parameter of 88 bytes.
struct ReduceArgs {
    u64 src[CHORUS_MAX_SRCS];
    u64 dst;
    u64 count;    // elements
    u32 nsrc;
    u32 pad;
};

// ---- f16 / bf16 <-> f32, bit-identical to the CPU kernels -------------------------------------------
__device__ __forceinline__ float f16_to_f32(u16 h16) {
    u32 h = h16;
    u32 sign = (h & 0x8000u) << 16;
    u32 shifted = (h & 0x7fffu) << 13;
    u32 exp = shifted & 0x0f800000u;
    u32 normal = shifted + ((127u - 15u) << 23);
    u32 inf_nan = (normal + ((128u - 16u) << 23)) | ((u32)((h & 0x03ffu) != 0) << 22);
    u32 sub = __float_as_uint(__uint_as_float(normal + (1u << 23)) - __uint_as_float(113u << 23));
    u32 bits = exp == 0x0f800000u ? inf_nan : (exp == 0 ? sub : normal);
    return __uint_as_float(bits | sign);
}
__device__ __forceinline__ u16 f32_to_f16(float v) {
    const u32 F32_INF = 0x7f800000u;
    const u32 F16_OVERFLOW = (127u + 16u) << 23;
    const u32 DENORM_MAGIC = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    u32 x = __float_as_uint(v);
    u32 sign = (x >> 16) & 0x8000u;
    u32 u = x & 0x7fffffffu;
    u32 inf_nan = u > F32_INF ? (0x7e00u | ((u >> 13) & 0x03ffu)) : 0x7c00u;
    u32 sub = __float_as_uint(__fadd_rn(__uint_as_float(u), __uint_as_float(DENORM_MAGIC))) - DENORM_MAGIC;
    u32 mant_odd = (u >> 13) & 1u;
    u32 normal = (u + (((u32)(15 - 127) << 23) + 0xfffu) + mant_odd) >> 13;
    u32 bits = u >= F16_OVERFLOW ? inf_nan : (u < (113u << 23) ? sub : normal);
    return (u16)(bits | sign);
}
__device__ __forceinline__ float bf16_to_f32(u16 b) {
    u32 quiet = ((u32)((b & 0x7fffu) > 0x7f80u) << 22) & 0x00400000u;
    return __uint_as_float(((u32)b << 16) | quiet);
}
__device__ __forceinline__ u16 f32_to_bf16(float v) {
    u32 x = __float_as_uint(v);
    bool is_nan = (x & 0x7fffffffu) > 0x7f800000u;
    u32 nan = (x >> 16) | 0x0040u;
    u32 rounded = (x + (0x7fffu + ((x >> 16) & 1u))) >> 16;
    return (u16)(is_nan ? nan : rounded);
}

// ---- codecs: storage type S, working type W --------------------------------------------------------
template <typename T> struct Plain {
    typedef T S; typedef T W;
    static __device__ __forceinline__ W load(S s) { return s; }
    static __device__ __forceinline__ S store(W w) { return w; }
};
struct Half {
    typedef u16 S; typedef float W;
    static __device__ __forceinline__ W load(S s) { return f16_to_f32(s); }
    static __device__ __forceinline__ S store(W w) { return f32_to_f16(w); }
};
struct BFloat {
    typedef u16 S; typedef float W;
    static __device__ __forceinline__ W load(S s) { return bf16_to_f32(s); }
    static __device__ __forceinline__ S store(W w) { return f32_to_bf16(w); }
};
struct Bool {
    typedef u8 S; typedef u8 W;
    static __device__ __forceinline__ W load(S s) { return s != 0; }
    static __device__ __forceinline__ S store(W w) { return w; }
};

// ---- ops ---------------------------------------------------------------------------------------------
// Integer sum/prod wrap (two's complement), computed in an unsigned type wide enough that promotion
// cannot overflow a signed int.
template <typename T> struct WideU { typedef u32 U; };
template <> struct WideU<i64> { typedef u64 U; };
template <> struct WideU<u64> { typedef u64 U; };

struct OpSum {
    template <typename T> static __device__ __forceinline__ T apply(T a, T b) {
        typedef typename WideU<T>::U U; return (T)((U)a + (U)b);
    }
    static __device__ __forceinline__ float apply(float a, float b) { return __fadd_rn(a, b); }
    static __device__ __forceinline__ double apply(double a, double b) { return __dadd_rn(a, b); }
};
struct OpProd {
    template <typename T> static __device__ __forceinline__ T apply(T a, T b) {
        typedef typename WideU<T>::U U; return (T)((U)a * (U)b);
    }
    static __device__ __forceinline__ float apply(float a, float b) { return __fmul_rn(a, b); }
    static __device__ __forceinline__ double apply(double a, double b) { return __dmul_rn(a, b); }
};
// Floats: IEEE 754-2019 minimum/maximum (NaN propagates, -0 < +0), the same selects as the CPU kernels.
struct OpMin {
    template <typename T> static __device__ __forceinline__ T apply(T a, T b) { return b < a ? b : a; }
    static __device__ __forceinline__ float apply(float a, float b) {
        if (a < b) return a;
        if (b < a) return b;
        if (a == b) return __uint_as_float(__float_as_uint(a) | __float_as_uint(b));
        return a + b;
    }
    static __device__ __forceinline__ double apply(double a, double b) {
        if (a < b) return a;
        if (b < a) return b;
        if (a == b) return __longlong_as_double(__double_as_longlong(a) | __double_as_longlong(b));
        return a + b;
    }
};
struct OpMax {
    template <typename T> static __device__ __forceinline__ T apply(T a, T b) { return b > a ? b : a; }
    static __device__ __forceinline__ float apply(float a, float b) {
        if (a > b) return a;
        if (b > a) return b;
        if (a == b) return __uint_as_float(__float_as_uint(a) & __float_as_uint(b));
        return a + b;
    }
    static __device__ __forceinline__ double apply(double a, double b) {
        if (a > b) return a;
        if (b > a) return b;
        if (a == b) return __longlong_as_double(__double_as_longlong(a) & __double_as_longlong(b));
        return a + b;
    }
};
struct OpAnd { template <typename T> static __device__ __forceinline__ T apply(T a, T b) { return a & b; } };
struct OpOr  { template <typename T> static __device__ __forceinline__ T apply(T a, T b) { return a | b; } };
struct OpXor { template <typename T> static __device__ __forceinline__ T apply(T a, T b) { return a ^ b; } };

// ---- the reduce body -----------------------------------------------------------------------------------
template <typename C, typename Op>
__device__ __forceinline__ void reduce_one(const ReduceArgs& a, u64 i) {
    typedef typename C::S S; typedef typename C::W W;
    W acc = C::load(((const S*)a.src[0])[i]);
    for (u32 s = 1; s < a.nsrc; ++s) acc = Op::apply(acc, C::load(((const S*)a.src[s])[i]));
    ((S*)a.dst)[i] = C::store(acc);
}

// Elements [begin, end) one at a time, grid-stride.
template <typename C, typename Op>
__device__ __forceinline__ void reduce_scalar(const ReduceArgs& a, u64 begin, u64 end) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = begin + (u64)blockIdx.x * blockDim.x + threadIdx.x; i < end; i += stride) reduce_one<C, Op>(a, i);
}

// 16-byte vectors: every pointer has the same offset modulo 16, so after a scalar prefix of `head`
// elements all of them are 16-byte aligned; the body moves one uint4 per source per thread-iteration,
// the tail (< 16 bytes) goes scalar again.
template <typename C, typename Op>
__device__ __forceinline__ void reduce_body(const ReduceArgs& a) {
    typedef typename C::S S; typedef typename C::W W;
    const u32 V = 16 / sizeof(S);
    u32 mis = (u32)(a.dst & 15u);
    bool same = true;
    for (u32 s = 0; s < a.nsrc; ++s) same &= ((u32)(a.src[s] & 15u) == mis);
    if (!same || (mis % sizeof(S)) != 0 || a.count < 2 * V) {
        reduce_scalar<C, Op>(a, 0, a.count);
        return;
    }
    u64 head = mis == 0 ? 0 : (16 - mis) / sizeof(S);
    u64 nvec = (a.count - head) / V;
    u64 tail = head + nvec * V;
    reduce_scalar<C, Op>(a, 0, head);
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 v = (u64)blockIdx.x * blockDim.x + threadIdx.x; v < nvec; v += stride) {
        u64 off = head * sizeof(S) + v * 16;
        union { uint4 q; S e[16 / sizeof(S)]; } in, out;
        W acc[16 / sizeof(S)];
        in.q = *(const uint4*)(a.src[0] + off);
#pragma unroll
        for (u32 k = 0; k < V; ++k) acc[k] = C::load(in.e[k]);
        for (u32 s = 1; s < a.nsrc; ++s) {
            in.q = *(const uint4*)(a.src[s] + off);
#pragma unroll
            for (u32 k = 0; k < V; ++k) acc[k] = Op::apply(acc[k], C::load(in.e[k]));
        }
#pragma unroll
        for (u32 k = 0; k < V; ++k) out.e[k] = C::store(acc[k]);
        *(uint4*)(a.dst + off) = out.q;
    }
    reduce_scalar<C, Op>(a, tail, a.count);
}

#define CHORUS_REDUCE(NAME, CODEC, OP) \
    extern "C" __global__ void __launch_bounds__(512) NAME(const __grid_constant__ ReduceArgs a) { reduce_body<CODEC, OP>(a); }
"#;

/// The resident "spinner" used to reproduce the first-collective hang of invariant 4 (a kernel that
/// occupies one SM until released). Its own module, so that loading it says nothing about the reduce
/// module. It can never wedge the GPU: it gives up after `timeout_ns` (globaltimer) or `2 * timeout_ns`
/// SM cycles (clock64, a backstop in case the global timer is unavailable), whichever comes first.
pub(crate) const SPIN_SRC: &str = r#"
// flag[0]: set nonzero by the host to release; flag[1]: written by the kernel on exit
// (1 = released, 2 = timed out); flag[2]: set to 1 as soon as the kernel runs.
extern "C" __global__ void chorus_spin(unsigned int* flag, unsigned long long timeout_ns) {
    volatile unsigned int* f = flag;
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    long long c0 = clock64();
    f[2] = 1;
    __threadfence_system();
    for (;;) {
        if (f[0] != 0) { f[1] = 1; __threadfence_system(); return; }
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t - t0 > timeout_ns || (unsigned long long)(clock64() - c0) > 2ull * timeout_ns) {
            f[1] = 2; __threadfence_system(); return;
        }
    }
}
"#;

/// The spinner's entry point.
pub(crate) const SPIN_KERNEL: &str = "chorus_spin";

/// Kernel-level operation: `Avg` runs the `Sum` kernel (the caller divides), bool maps its logical ops
/// onto bitwise ones on 0/1 values.
fn kernel_op(dtype: DType, op: ReduceOp) -> Option<(&'static str, &'static str)> {
    use ReduceOp::*;
    let float = matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16);
    Some(match (dtype, op) {
        (DType::Bool, Sum | Max | BOr) => ("bor", "OpOr"),
        (DType::Bool, Prod | Min | BAnd) => ("band", "OpAnd"),
        (DType::Bool, BXor) => ("bxor", "OpXor"),
        (DType::Bool, Avg) => return None,
        (_, Sum | Avg) => ("sum", "OpSum"),
        (_, Prod) => ("prod", "OpProd"),
        (_, Min) => ("min", "OpMin"),
        (_, Max) => ("max", "OpMax"),
        (_, _) if float => return None,
        (_, BAnd) => ("band", "OpAnd"),
        (_, BOr) => ("bor", "OpOr"),
        (_, BXor) => ("bxor", "OpXor"),
    })
}

fn codec(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "Plain<float>",
        DType::F64 => "Plain<double>",
        DType::F16 => "Half",
        DType::BF16 => "BFloat",
        DType::I8 => "Plain<i8>",
        DType::U8 => "Plain<u8>",
        DType::I16 => "Plain<i16>",
        DType::I32 => "Plain<i32>",
        DType::I64 => "Plain<i64>",
        DType::Bool => "Bool",
        _ => return None,
    })
}

/// The kernel that implements `(dtype, op)`, or None when the pair has no reduction.
pub fn kernel_name(dtype: DType, op: ReduceOp) -> Option<String> {
    crate::check_supported(dtype, op).ok()?;
    codec(dtype)?;
    let (opname, _) = kernel_op(dtype, op)?;
    Some(format!("chorus_reduce_{}_{}", dtype.short_name(), opname))
}

/// Every distinct reduce kernel: (entry point name, codec, op functor), in a stable order.
pub(crate) fn kernels() -> Vec<(String, &'static str, &'static str)> {
    let mut out: Vec<(String, &'static str, &'static str)> = Vec::new();
    for &d in DType::reducible() {
        for &op in ReduceOp::all() {
            let (Some(name), Some(c), Some((_, f))) = (kernel_name(d, op), codec(d), kernel_op(d, op)) else {
                continue;
            };
            if !out.iter().any(|(n, _, _)| *n == name) {
                out.push((name, c, f));
            }
        }
    }
    out
}

/// The collective kernel of a reduce kernel (same dtype and op): `chorus_reduce_f32_sum` ->
/// `chorus_coll_f32_sum`.
pub(crate) fn coll_kernel_name(reduce_kernel: &str) -> String {
    reduce_kernel.replacen("chorus_reduce_", "chorus_coll_", 1)
}

/// Parts the module is compiled in (one NVRTC program each, built side by side). A constant, not the
/// machine's core count, so a part's source, and with it its cache key, is the same on every machine.
pub(crate) const MODULE_PARTS: usize = 16;

/// One NVRTC program of the module: [`REDUCE_SRC`] and the collectives' source, plus the kernels of
/// some entries of [`kernels`] (`entries` names them).
pub(crate) struct ModulePart {
    pub source: String,
    pub entries: Vec<String>,
}

/// The module in [`MODULE_PARTS`] parts: entry `i` of [`kernels`] (its reduce and its collective
/// kernel) goes to part `i % MODULE_PARTS`, which spreads the dtypes (whose collective kernels cost
/// alike to compile, about 0.8 s each) evenly; the data-movement kernel goes to the last part, one of
/// those with fewest entries.
pub(crate) fn module_parts() -> Vec<ModulePart> {
    use super::coll_source::{COLL_SRC, COPY_KERNEL, COPY_SRC};
    let mut parts: Vec<ModulePart> =
        (0..MODULE_PARTS).map(|_| ModulePart { source: format!("{REDUCE_SRC}{COLL_SRC}"), entries: Vec::new() }).collect();
    for (i, (name, c, f)) in kernels().into_iter().enumerate() {
        let part = &mut parts[i % MODULE_PARTS];
        let coll = coll_kernel_name(&name);
        part.source.push_str(&format!("CHORUS_REDUCE({name}, {c}, {f})\nCHORUS_COLL({coll}, {c}, {f})\n"));
        part.entries.push(name);
        part.entries.push(coll);
    }
    let last = &mut parts[MODULE_PARTS - 1];
    last.source.push_str(COPY_SRC);
    last.entries.push(COPY_KERNEL.to_string());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_pair_has_a_kernel_in_the_source() {
        let parts = module_parts();
        let src: String = parts.iter().map(|p| p.source.as_str()).collect();
        let mut pairs = 0;
        for &d in DType::all() {
            for &op in ReduceOp::all() {
                let supported = crate::check_supported(d, op).is_ok();
                let name = kernel_name(d, op);
                assert_eq!(supported, name.is_some(), "{d} {op}");
                if let Some(n) = name {
                    assert!(src.contains(&format!("CHORUS_REDUCE({n},")), "{n} missing");
                    pairs += 1;
                }
            }
        }
        // 4 floats x 5 ops + 5 ints x 8 ops + bool x 7 ops.
        assert_eq!(pairs, 4 * 5 + 5 * 8 + 7);
        // Distinct kernels: floats 4 x 4 (avg = sum), ints 5 x 7, bool 3 (or, and, xor).
        assert_eq!(kernels().len(), 16 + 35 + 3);
        // Every kernel is in exactly one part, and the part's source defines it.
        let entries: Vec<&String> = parts.iter().flat_map(|p| &p.entries).collect();
        assert_eq!(entries.len(), 2 * kernels().len() + 1);
        for p in &parts {
            assert!(!p.entries.is_empty());
            for e in &p.entries {
                assert_eq!(entries.iter().filter(|x| **x == e).count(), 1, "{e}");
                assert!(p.source.contains(&format!("({e},")) || p.source.contains(&format!(" {e}(")), "{e}");
            }
        }
    }
}
