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
