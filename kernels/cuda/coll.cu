// ================================ collectives =================================================
#define CH_MAX_RANKS 8
#define CH_MAX_BLOCKS 128
#define CH_FLAG_P2P_DATA 8192ull
#define CH_FLAG_P2P_ACK 16384ull
#define CH_STATE_WORDS 32ull
#define CH_ERROR 57344ull
// Host control block (page-locked host memory mapped into the device; `super::control`).
#define CH_CTL_ABORT 0ull
#define CH_CTL_ERROR 64ull
#define CH_FAIL_DEADLINE 1ull
#define CH_FAIL_ABORTED 2ull

#define CH_AR_ONESHOT 1u
#define CH_AR_TWOSHOT 2u
#define CH_AR_LL 5u
#define CH_REDUCE 3u
#define CH_REDUCE_SCATTER 4u
#define CH_BROADCAST 10u
#define CH_ALL_GATHER 11u
#define CH_ALL_TO_ALL 12u
#define CH_SEND 13u
#define CH_RECV 14u

// Passed by value; layout mirrored by `CollArgs` in ffi.rs (u64 fields first, then u32).
struct CollArgs {
    u64 ws[CH_MAX_RANKS];      // every rank's workspace base, mapped in this process (own included)
    u64 src;
    u64 dst;
    u64 count;                 // elements (reduce kinds) or bytes (copy kinds)
    u64 dst_stride;            // bytes between per-rank blocks of dst (all_gather)
    u64 slot_bytes;
    u64 p2p_slot;
    u64 staging_off;
    u64 p2p_off;
    u64 timeout_ns;
    u64 chunk;                 // one-shot all_reduce and broadcast: units per pipeline step
    u64 bar_off;               // the lane's barrier flags [block][rank]
    u64 state_off;             // the lane's per-block counters (p2p: always the bulk lane's)
    u64 ctl;                   // this rank's host control block, as the device addresses it
    u64 send_off[CH_MAX_RANKS];   // all_to_all, bytes
    u64 send_len[CH_MAX_RANKS];
    u64 recv_off[CH_MAX_RANKS];
    u64 recv_len[CH_MAX_RANKS];
    u32 kind;
    u32 rank;
    u32 world;
    u32 root;                  // broadcast/reduce root; send/recv peer
    u32 avg_n;                 // > 1: divide the result by it (ReduceOp::Avg)
    u32 pad;
};

__device__ __forceinline__ void ch_st_release(u64 addr, u64 v) {
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(addr), "l"(v) : "memory");
}
__device__ __forceinline__ u64 ch_ld_acquire(u64 addr) {
    u64 v;
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(addr) : "memory");
    return v;
}
__device__ __forceinline__ u64 ch_ld_volatile(u64 addr) {
    u64 v;
    asm volatile("ld.volatile.global.u64 %0, [%1];" : "=l"(v) : "l"(addr) : "memory");
    return v;
}
__device__ __forceinline__ u64 ch_now() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ u64* ch_state(const CollArgs& a) {
    return (u64*)(a.ws[a.rank] + a.state_off + (u64)blockIdx.x * CH_STATE_WORDS * 8ull);
}

// Records this block's failure of `kind` unless another block failed first; the first failure is
// mirrored into the host control block, where the host reads it without a CUDA call.
__device__ __noinline__ void ch_fail(const CollArgs& a, u64 kind) {
    u64 code = (kind << 32) | (u64)blockIdx.x;
    if (atomicCAS((unsigned long long*)(a.ws[a.rank] + CH_ERROR), 0ull, code) == 0ull) {
        ch_st_release(a.ctl + CH_CTL_ERROR, code);
    }
    __threadfence_system();
}

// Called on spin `spin` of a wait that began at `t0`; every 64 spins it checks whether to give up:
// another block already failed (the error word is set), the deadline passed, or (every 1024 spins,
// a read across PCIe/C2C) the host raised the abort word; the last two set the error word. False:
// give up.
__device__ __forceinline__ bool ch_keep_waiting(const CollArgs& a, u64 t0, u32 spin) {
    if ((spin & 63u) != 63u) return true;
    if (ch_ld_volatile(a.ws[a.rank] + CH_ERROR) != 0) return false;
    if ((spin & 1023u) == 1023u && ch_ld_volatile(a.ctl + CH_CTL_ABORT) != 0) {
        ch_fail(a, CH_FAIL_ABORTED);
        return false;
    }
    if (ch_now() - t0 <= a.timeout_ns) return true;
    ch_fail(a, CH_FAIL_DEADLINE);
    return false;
}

// Waits until the counter at `addr` reaches `v`. False when the deadline passed or another block
// already failed (then the error word is set and the caller returns).
__device__ bool ch_wait(const CollArgs& a, u64 addr, u64 v) {
    if (ch_ld_acquire(addr) >= v) return true;
    u64 t0 = ch_now();
    for (u32 spin = 0;; ++spin) {
        if (ch_ld_acquire(addr) >= v) return true;
        if (!ch_keep_waiting(a, t0, spin)) return false;
    }
}

// Block-wide barrier with the same block on every other rank. Call with all threads; false: give up.
__device__ bool ch_barrier(const CollArgs& a) {
    __shared__ u64 s_seq;
    __shared__ int s_ok;
    __syncthreads();   // every store this block made in the phase is issued before the signal
    if (threadIdx.x == 0) {
        u64* st = ch_state(a);
        s_seq = st[0] + 1;
        st[0] = s_seq;
        s_ok = 1;
    }
    __syncthreads();
    u32 t = threadIdx.x;
    if (t < a.world && t != a.rank) {
        u64 slot = ((u64)blockIdx.x * CH_MAX_RANKS) * 8ull;
        ch_st_release(a.ws[t] + a.bar_off + slot + (u64)a.rank * 8ull, s_seq);
        if (!ch_wait(a, a.ws[a.rank] + a.bar_off + slot + (u64)t * 8ull, s_seq)) s_ok = 0;
    }
    __syncthreads();
    return s_ok != 0;
}

// The share [lo, hi) of `n` units that this block moves; shares are multiples of `align` units so that
// 16-byte vectors stay aligned. Identical on every rank for the same n.
__device__ __forceinline__ void ch_part(u64 n, u64 align, u64* lo, u64* hi) {
    u64 per = (n + gridDim.x - 1) / gridDim.x;
    per = (per + align - 1) / align * align;
    u64 l = (u64)blockIdx.x * per;
    *lo = l < n ? l : n;
    u64 h = *lo + per;
    *hi = h < n ? h : n;
}

// Byte copy by threads t of nt (of this block): 16-byte vectors (4 in flight per thread) when both
// sides are 16-aligned, words when 4-aligned, bytes otherwise.
__device__ void ch_copy_by(u64 dst, u64 src, u64 n, u64 t, u64 nt) {
    if (n == 0 || dst == src) return;
    u64 done = 0;
    if (((dst | src) & 15ull) == 0) {
        const uint4* s = (const uint4*)src;
        uint4* d = (uint4*)dst;
        u64 nv = n >> 4;
        u64 i = t;
        for (; i + 3 * nt < nv; i += 4 * nt) {
            uint4 v0 = s[i], v1 = s[i + nt], v2 = s[i + 2 * nt], v3 = s[i + 3 * nt];
            d[i] = v0; d[i + nt] = v1; d[i + 2 * nt] = v2; d[i + 3 * nt] = v3;
        }
        for (; i < nv; i += nt) d[i] = s[i];
        done = nv << 4;
    } else if (((dst | src) & 3ull) == 0) {
        const u32* s = (const u32*)src;
        u32* d = (u32*)dst;
        u64 nw = n >> 2;
        for (u64 i = t; i < nw; i += nt) d[i] = s[i];
        done = nw << 2;
    }
    for (u64 i = done + t; i < n; i += nt) ((u8*)dst)[i] = ((const u8*)src)[i];
}
// Block-wide byte copy.
__device__ __forceinline__ void ch_copy(u64 dst, u64 src, u64 n) { ch_copy_by(dst, src, n, threadIdx.x, blockDim.x); }

template <typename T> struct ChDiv {
    static __device__ __forceinline__ T apply(T x, u32 n) { return (T)((long long)x / (long long)n); }
};
template <> struct ChDiv<float> {
    static __device__ __forceinline__ float apply(float x, u32 n) { return __fdiv_rn(x, (float)n); }
};
template <> struct ChDiv<double> {
    static __device__ __forceinline__ double apply(double x, u32 n) { return __ddiv_rn(x, (double)n); }
};

// Rounds like the CPU path: the sum is stored in the element type first, then divided (Avg).
template <typename C>
__device__ __forceinline__ typename C::S ch_finish(typename C::W acc, u32 avg_n) {
    typename C::S s = C::store(acc);
    if (avg_n > 1) s = C::store(ChDiv<typename C::W>::apply(C::load(s), avg_n));
    return s;
}

// By threads t of nt: for i in [lo, hi): v = op(srcs[0][i], ..., srcs[nsrc-1][i]) (rank order, so
// every rank computes bit-identical results), stored to every dsts[d][i]. Addresses are
// element-indexed bases.
template <typename C, typename Op>
__device__ void ch_reduce_by(const u64* srcs, u32 nsrc, const u64* dsts, u32 ndst, u64 lo, u64 hi, u32 avg_n, u64 t, u64 nt) {
    typedef typename C::S S; typedef typename C::W W;
    const u32 V = 16 / sizeof(S);
    if (hi <= lo) return;
    u64 n = hi - lo;
    u64 aligned = 0;
    for (u32 s = 0; s < nsrc; ++s) aligned |= srcs[s] + lo * sizeof(S);
    for (u32 d = 0; d < ndst; ++d) aligned |= dsts[d] + lo * sizeof(S);
    u64 done = 0;
    if ((aligned & 15ull) == 0) {
        u64 nv = n / V;
        for (u64 v = t; v < nv; v += nt) {
            u64 off = lo * sizeof(S) + v * 16;
            union { uint4 q; S e[16 / sizeof(S)]; } in, out;
            W acc[16 / sizeof(S)];
            in.q = *(const uint4*)(srcs[0] + off);
#pragma unroll
            for (u32 k = 0; k < V; ++k) acc[k] = C::load(in.e[k]);
            for (u32 s = 1; s < nsrc; ++s) {
                in.q = *(const uint4*)(srcs[s] + off);
#pragma unroll
                for (u32 k = 0; k < V; ++k) acc[k] = Op::apply(acc[k], C::load(in.e[k]));
            }
#pragma unroll
            for (u32 k = 0; k < V; ++k) out.e[k] = ch_finish<C>(acc[k], avg_n);
            for (u32 d = 0; d < ndst; ++d) *(uint4*)(dsts[d] + off) = out.q;
        }
        done = nv * V;
    }
    for (u64 i = lo + done + t; i < hi; i += nt) {
        W acc = C::load(((const S*)srcs[0])[i]);
        for (u32 s = 1; s < nsrc; ++s) acc = Op::apply(acc, C::load(((const S*)srcs[s])[i]));
        S out = ch_finish<C>(acc, avg_n);
        for (u32 d = 0; d < ndst; ++d) ((S*)dsts[d])[i] = out;
    }
}
// Block-wide ch_reduce_by.
template <typename C, typename Op>
__device__ __forceinline__ void ch_reduce(const u64* srcs, u32 nsrc, const u64* dsts, u32 ndst, u64 lo, u64 hi, u32 avg_n) {
    ch_reduce_by<C, Op>(srcs, nsrc, dsts, ndst, lo, hi, avg_n, threadIdx.x, blockDim.x);
}

// Slot `q` of rank `x`'s staging, parity region `par`.
__device__ __forceinline__ u64 ch_slot(const CollArgs& a, u32 x, u64 par, u32 q) {
    return a.ws[x] + a.staging_off + (par * a.world + q) * a.slot_bytes;
}

// Claims `steps` staging steps (every block advances its own step counter); step j of this
// collective uses parity region (returned value + j) & 1.
__device__ __forceinline__ u64 ch_begin(const CollArgs& a, u64 steps) {
    __shared__ u64 s_base;
    if (threadIdx.x == 0) {
        u64* st = ch_state(a);
        s_base = st[1];
        st[1] = st[1] + steps;
    }
    __syncthreads();
    return s_base;
}

__device__ __forceinline__ u64 ch_steps(u64 count, u64 chunk) {
    if (chunk == 0 || chunk >= count) return 1;
    return (count + chunk - 1) / chunk;
}

// ---- low-latency all_reduce (see the module documentation) ----
__device__ __forceinline__ void ch_ll_store(u64 addr, u64 v, u32 f) {
    asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};"
                 ::"l"(addr), "r"((u32)v), "r"(f), "r"((u32)(v >> 32)), "r"(f) : "memory");
}
__device__ __forceinline__ bool ch_ll_load(u64 addr, u32 f, u64* v) {
    u32 x, f1, y, f2;
    asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(x), "=r"(f1), "=r"(y), "=r"(f2) : "l"(addr) : "memory");
    *v = (u64)x | ((u64)y << 32);
    return f1 == f && f2 == f;
}
// Waits for the line at `addr` to carry flag `f`; false past the deadline or after another failure.
__device__ bool ch_ll_wait(const CollArgs& a, u64 addr, u32 f, u64* v) {
    if (ch_ll_load(addr, f, v)) return true;
    u64 t0 = ch_now();
    for (u32 spin = 0;; ++spin) {
        if (ch_ll_load(addr, f, v)) return true;
        if (!ch_keep_waiting(a, t0, spin)) return false;
    }
}
// Payload bytes [8 i, 8 i + 8) of `bytes` at `p` (elements of `E` bytes; zero past the end).
__device__ __forceinline__ u64 ch_ll_get(u64 p, u64 i, u64 bytes, u64 E) {
    u64 o = i * 8;
    if (((p & 7ull) == 0) && o + 8 <= bytes) return *(const u64*)(p + o);
    u64 v = 0;
    for (u64 b = 0; b < 8 && o + b < bytes; b += E) {
        u64 e = E == 1 ? *(const u8*)(p + o + b) : E == 2 ? *(const u16*)(p + o + b) : E == 4 ? *(const u32*)(p + o + b) : *(const u64*)(p + o + b);
        v |= e << (8 * b);
    }
    return v;
}
__device__ __forceinline__ void ch_ll_put(u64 p, u64 i, u64 bytes, u64 E, u64 v) {
    u64 o = i * 8;
    if (((p & 7ull) == 0) && o + 8 <= bytes) { *(u64*)(p + o) = v; return; }
    for (u64 b = 0; b < 8 && o + b < bytes; b += E) {
        u64 e = v >> (8 * b);
        if (E == 1) *(u8*)(p + o + b) = (u8)e;
        else if (E == 2) *(u16*)(p + o + b) = (u16)e;
        else if (E == 4) *(u32*)(p + o + b) = (u32)e;
        else *(u64*)(p + o + b) = e;
    }
}

// One-shot all_reduce in LL lines: every thread pushes its lines to every peer, then reduces the same
// lines (own input read directly, in rank order like ch_reduce) into dst, so in place is safe.
template <typename C, typename Op>
__device__ void ch_ll_all_reduce(const CollArgs& a) {
    typedef typename C::S S; typedef typename C::W W;
    const u32 K = 8 / sizeof(S);
    const u64 E = sizeof(S);
    __shared__ u64 s_seq;
    if (threadIdx.x == 0) {
        u64* st = ch_state(a);
        s_seq = st[2] + 1;
        st[2] = s_seq;
    }
    __syncthreads();
    const u64 seq = s_seq;
    const u32 flag = (u32)(1ull + seq % 0xffffffffull);
    const u64 par = seq & 1ull;
    const u32 me = a.rank, n = a.world;
    const u64 bytes = a.count * E, lines = (bytes + 7) / 8;
    const u64 gt = (u64)blockIdx.x * blockDim.x + threadIdx.x, gn = (u64)gridDim.x * blockDim.x;
    for (u64 i = gt; i < lines; i += gn) {
        u64 v = ch_ll_get(a.src, i, bytes, E);
        for (u32 k = 1; k < n; ++k) {
            u32 p = (me + k) % n;
            ch_ll_store(a.ws[p] + a.staging_off + ((par * n + me) * a.slot_bytes) + i * 16, v, flag);
        }
    }
    for (u64 i = gt; i < lines; i += gn) {
        union { u64 q; S e[8 / sizeof(S)]; } in, out;
        W acc[8 / sizeof(S)];
        for (u32 q = 0; q < n; ++q) {
            if (q == me) in.q = ch_ll_get(a.src, i, bytes, E);
            else if (!ch_ll_wait(a, a.ws[me] + a.staging_off + ((par * n + q) * a.slot_bytes) + i * 16, flag, &in.q)) return;
#pragma unroll
            for (u32 k = 0; k < K; ++k) acc[k] = q == 0 ? C::load(in.e[k]) : Op::apply(acc[k], C::load(in.e[k]));
        }
#pragma unroll
        for (u32 k = 0; k < K; ++k) out.e[k] = ch_finish<C>(acc[k], a.avg_n);
        ch_ll_put(a.dst, i, bytes, E, out.q);
    }
}

template <typename C, typename Op>
__device__ void ch_coll_reduce(const CollArgs& a) {
    typedef typename C::S S;
    const u64 E = sizeof(S), AL = 16 / sizeof(S);
    const u32 me = a.rank, n = a.world;
    u64 lo, hi;
    u64 srcs[CH_MAX_RANKS];
    u64 dsts[CH_MAX_RANKS];
    if (a.kind == CH_AR_LL) {
        ch_ll_all_reduce<C, Op>(a);
        return;
    }
    if (a.kind == CH_AR_ONESHOT) {
        // Pipelined: step j pushes chunk j while reducing chunk j - 1 (pushed in step j - 1). A step
        // writes region (base + j) & 1, last read in step j - 1 by every peer, which signalled the
        // barrier that ended step j - 1 only after that read. With several steps the block's threads
        // split in two halves that run side by side, pushers (NVLink) and reducers (local memory), so
        // a step costs the longer of the two rather than their sum.
        u64 steps = ch_steps(a.count, a.chunk);
        u64 chunk = steps == 1 ? a.count : a.chunk;
        u64 base = ch_begin(a, steps);
        const bool halves = steps > 1 && blockDim.x >= 128;
        const u64 nt = halves ? blockDim.x / 2 : blockDim.x;
        const bool pusher = !halves || threadIdx.x < nt;
        const bool reducer = !halves || threadIdx.x >= nt;
        const u64 t = halves && !pusher ? threadIdx.x - nt : threadIdx.x;
        for (u64 j = 0; j <= steps; ++j) {
            if (j < steps && pusher) {
                u64 c0 = j * chunk, len = a.count - c0 < chunk ? a.count - c0 : chunk;
                ch_part(len, AL, &lo, &hi);
                for (u32 k = 1; k < n; ++k) {
                    u32 p = (me + k) % n;
                    ch_copy_by(ch_slot(a, p, (base + j) & 1ull, me) + lo * E, a.src + (c0 + lo) * E, (hi - lo) * E, t, nt);
                }
            }
            if (j >= 1 && reducer) {
                u64 c0 = (j - 1) * chunk, len = a.count - c0 < chunk ? a.count - c0 : chunk;
                ch_part(len, AL, &lo, &hi);
                for (u32 q = 0; q < n; ++q) srcs[q] = q == me ? a.src + c0 * E : ch_slot(a, me, (base + j - 1) & 1ull, q);
                dsts[0] = a.dst + c0 * E;
                ch_reduce_by<C, Op>(srcs, n, dsts, 1, lo, hi, a.avg_n, t, nt);
            }
            if (j < steps && !ch_barrier(a)) return;
        }
        return;
    }
    u64 par = ch_begin(a, 1) & 1ull;
    if (a.kind == CH_REDUCE) {
        ch_part(a.count, AL, &lo, &hi);
        if (me != a.root) ch_copy(ch_slot(a, a.root, par, me) + lo * E, a.src + lo * E, (hi - lo) * E);
        if (!ch_barrier(a)) return;
        if (me != a.root) return;
        for (u32 q = 0; q < n; ++q) srcs[q] = q == me ? a.src : ch_slot(a, me, par, q);
        dsts[0] = a.dst;
        ch_reduce<C, Op>(srcs, n, dsts, 1, lo, hi, a.avg_n);
    } else if (a.kind == CH_REDUCE_SCATTER) {
        ch_part(a.count, AL, &lo, &hi);
        for (u32 k = 1; k < n; ++k) {
            u32 p = (me + k) % n;
            ch_copy(ch_slot(a, p, par, me) + lo * E, a.src + a.send_off[p] + lo * E, (hi - lo) * E);
        }
        if (!ch_barrier(a)) return;
        for (u32 q = 0; q < n; ++q) srcs[q] = q == me ? a.src + a.send_off[me] : ch_slot(a, me, par, q);
        dsts[0] = a.dst;
        ch_reduce<C, Op>(srcs, n, dsts, 1, lo, hi, a.avg_n);
    } else if (a.kind == CH_AR_TWOSHOT) {
        // Shards of `shard` elements (a multiple of AL); the last may be short or empty.
        u64 shard = (a.count + n - 1) / n;
        shard = (shard + AL - 1) / AL * AL;
        u64 half = a.slot_bytes / 2;
        // 1. reduce-scatter: push shard p of the input to rank p.
        for (u32 k = 1; k < n; ++k) {
            u32 p = (me + k) % n;
            u64 b = (u64)p * shard < a.count ? (u64)p * shard : a.count;
            u64 e = b + shard < a.count ? b + shard : a.count;
            ch_part(e - b, AL, &lo, &hi);
            ch_copy(ch_slot(a, p, par, me) + lo * E, a.src + (b + lo) * E, (hi - lo) * E);
        }
        if (!ch_barrier(a)) return;
        // 2. reduce my shard; store it to my output and into every peer's all-gather half.
        {
            u64 b = (u64)me * shard < a.count ? (u64)me * shard : a.count;
            u64 e = b + shard < a.count ? b + shard : a.count;
            ch_part(e - b, AL, &lo, &hi);
            for (u32 q = 0; q < n; ++q) srcs[q] = q == me ? a.src + b * E : ch_slot(a, me, par, q);
            dsts[0] = a.dst + b * E;
            u32 nd = 1;
            for (u32 k = 1; k < n; ++k) dsts[nd++] = ch_slot(a, (me + k) % n, par, me) + half;
            ch_reduce<C, Op>(srcs, n, dsts, nd, lo, hi, a.avg_n);
        }
        if (!ch_barrier(a)) return;
        // 3. all-gather: copy the peers' shards out of my staging.
        for (u32 k = 1; k < n; ++k) {
            u32 q = (me + k) % n;
            u64 b = (u64)q * shard < a.count ? (u64)q * shard : a.count;
            u64 e = b + shard < a.count ? b + shard : a.count;
            ch_part(e - b, AL, &lo, &hi);
            ch_copy(a.dst + (b + lo) * E, ch_slot(a, me, par, q) + half + lo * E, (hi - lo) * E);
        }
    }
}

#define CHORUS_COLL(NAME, CODEC, OP) \
    extern "C" __global__ void __launch_bounds__(1024) NAME(const __grid_constant__ CollArgs a) { ch_coll_reduce<CODEC, OP>(a); }
