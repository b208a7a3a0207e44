// Point-to-point: sends to `peer` use the sender's per-peer counter; the receiver's slot pair is indexed
// by the sender. A send may reuse a slot once the receiver acked the send two before it.
__device__ void ch_p2p(const CollArgs& a) {
    __shared__ u64 s_k;
    __shared__ int s_ok;
    const u32 me = a.rank, peer = a.root;
    const u64 flag = ((u64)blockIdx.x * CH_MAX_RANKS) * 8ull;
    bool send = a.kind == CH_SEND;
    if (threadIdx.x == 0) {
        u64* st = ch_state(a) + (send ? 2 : 10) + peer;
        s_k = *st + 1;
        *st = s_k;
        s_ok = 1;
        if (send && s_k > 2 && !ch_wait(a, a.ws[me] + CH_FLAG_P2P_ACK + flag + (u64)peer * 8ull, s_k - 2)) s_ok = 0;
        if (!send && !ch_wait(a, a.ws[me] + CH_FLAG_P2P_DATA + flag + (u64)peer * 8ull, s_k)) s_ok = 0;
    }
    __syncthreads();
    if (!s_ok) return;
    u64 k = s_k, lo, hi;
    ch_part(a.count, 16, &lo, &hi);
    u32 sender = send ? me : peer;
    u32 owner = send ? peer : me;
    u64 slot = a.ws[owner] + a.p2p_off + ((u64)sender * 2 + (k & 1ull)) * a.p2p_slot;
    if (send) ch_copy(slot + lo, a.src + lo, hi - lo);
    else ch_copy(a.dst + lo, slot + lo, hi - lo);
    __syncthreads();
    if (threadIdx.x == 0) {
        if (send) ch_st_release(a.ws[peer] + CH_FLAG_P2P_DATA + flag + (u64)me * 8ull, k);
        else ch_st_release(a.ws[peer] + CH_FLAG_P2P_ACK + flag + (u64)me * 8ull, k);
    }
}

extern "C" __global__ void __launch_bounds__(1024) chorus_coll_copy(const __grid_constant__ CollArgs a) {
    if (a.kind == CH_SEND || a.kind == CH_RECV) { ch_p2p(a); return; }
    const u32 me = a.rank, n = a.world;
    u64 lo, hi;
    if (a.kind == CH_BROADCAST) {
        // Pipelined like the one-shot all_reduce: the root pushes chunk j while the others copy
        // chunk j - 1 out of their staging.
        u64 steps = ch_steps(a.count, a.chunk);
        u64 chunk = steps == 1 ? a.count : a.chunk;
        u64 base = ch_begin(a, steps);
        for (u64 j = 0; j <= steps; ++j) {
            if (j < steps && me == a.root) {
                u64 c0 = j * chunk, len = a.count - c0 < chunk ? a.count - c0 : chunk;
                ch_part(len, 16, &lo, &hi);
                for (u32 k = 1; k < n; ++k) ch_copy(ch_slot(a, (me + k) % n, (base + j) & 1ull, me) + lo, a.src + c0 + lo, hi - lo);
                ch_copy(a.dst + c0 + lo, a.src + c0 + lo, hi - lo);
            }
            if (j >= 1 && me != a.root) {
                u64 c0 = (j - 1) * chunk, len = a.count - c0 < chunk ? a.count - c0 : chunk;
                ch_part(len, 16, &lo, &hi);
                ch_copy(a.dst + c0 + lo, ch_slot(a, me, (base + j - 1) & 1ull, a.root) + lo, hi - lo);
            }
            if (j < steps && !ch_barrier(a)) return;
        }
        return;
    }
    // all_gather and all_to_all, pipelined like broadcast: step j pushes chunk j of every outgoing
    // block and copies chunk j - 1 of every incoming block out of staging. `count` is the longest
    // block (the same on every rank), so every rank takes the same number of steps.
    const bool ag = a.kind == CH_ALL_GATHER;
    u64 steps = ch_steps(a.count, a.chunk);
    u64 chunk = steps == 1 ? a.count : a.chunk;
    u64 base = ch_begin(a, steps);
    for (u64 j = 0; j <= steps; ++j) {
        if (j < steps) {
            for (u32 k = 0; k < n; ++k) {
                u32 p = (me + k) % n;
                u64 len = ag ? a.count : a.send_len[p];
                u64 c0 = j * chunk < len ? j * chunk : len;
                u64 clen = len - c0 < chunk ? len - c0 : chunk;
                u64 from = (ag ? a.src : a.src + a.send_off[p]) + c0;
                ch_part(clen, 16, &lo, &hi);
                if (p == me) ch_copy((ag ? a.dst + (u64)me * a.dst_stride : a.dst + a.recv_off[me]) + c0 + lo, from + lo, hi - lo);
                else ch_copy(ch_slot(a, p, (base + j) & 1ull, me) + lo, from + lo, hi - lo);
            }
        }
        if (j >= 1) {
            for (u32 k = 1; k < n; ++k) {
                u32 q = (me + k) % n;
                u64 len = ag ? a.count : a.recv_len[q];
                u64 c0 = (j - 1) * chunk < len ? (j - 1) * chunk : len;
                u64 clen = len - c0 < chunk ? len - c0 : chunk;
                u64 to = (ag ? a.dst + (u64)q * a.dst_stride : a.dst + a.recv_off[q]) + c0;
                ch_part(clen, 16, &lo, &hi);
                ch_copy(to + lo, ch_slot(a, me, (base + j - 1) & 1ull, q) + lo, hi - lo);
            }
        }
        if (j < steps && !ch_barrier(a)) return;
    }
}
