#!/usr/bin/env python3
"""chorus's algorithm choices as a latency-bandwidth (alpha-beta) cost model.

Fits alpha (per step) and beta (per byte) for each link class to numbers recorded in
benches/RESULTS.md (and the GPU CSVs it links), prints the parameters and the residuals, and
prints the projection to 8..1024 GPUs (8 per node) described in docs/cost-model.md.

    python3 benches/cost_model.py            # fits, residuals, projection
    python3 benches/cost_model.py --markdown # the same, projection tables as markdown

Standard library only. Every input is parsed from the repository; the only constants typed in
here are the published RDMA/NCCL figures in PUBLISHED (each with its source) and the algorithm
thresholds, which mirror backend/src/api/select.rs and kernels/src/cuda/coll/{options,plan}.rs.
"""
import csv
import math
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "RESULTS.md")
GPU_CSV = os.path.join(HERE, "results", "gpu_h200x{}.csv")

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
US = 1e-6

# Published figures used for the link that was not measured here (RDMA, 400 Gb/s), and NCCL's
# own tuning-model constants. Times in seconds, bandwidths in bytes/s.
PUBLISHED = {
    # NVIDIA maintainer (AddyLaddy), https://github.com/NVIDIA/nccl-tests/issues/290 :
    # "For NDR @ 400Gbps you should see 46-48GB/s per NIC" (nccl-tests busbw). Middle taken.
    "nic_bw": 47e9,
    # NCCL src/graph/tuning.cc (https://github.com/NVIDIA/nccl/blob/b6475625fbcaa2c3c0e50eed2fa1255d7514d4a2/src/graph/tuning.cc):
    # hwLat[NET][Ring][LL] = 2.7 us per network hop; getNetOverhead() = 1 us per network step
    # (Intel host; 2 us on AMD).
    "net_hop": 2.7 * US,
    "net_overhead": 1.0 * US,
    # The rest of that table, for NCCL's own latency estimate (LL protocol, small messages):
    "nccl_base_ring_ll": 6.6 * US,
    "nccl_base_tree_ll": 6.8 * US,
    "nccl_nvl_ring_ll": 0.6 * US,
    "nccl_nvl_tree_ll": 0.6 * US,
    "nccl_net_ring_ll": 2.7 * US,
    "nccl_net_tree_ll": 5.0 * US,
}

# ----------------------------------------------------------------------------- parsing


def size_of(s):
    s = s.strip()
    m = re.fullmatch(r"(\d+)([KMG]?)", s)
    if not m:
        raise ValueError(s)
    return int(m.group(1)) * {"": 1, "K": KiB, "M": MiB, "G": GiB}[m.group(2)]


def section(text, heading_regex):
    """The text from the first heading matching `heading_regex` to the next heading of the same level."""
    m = re.search(r"^(#+) " + heading_regex + r".*$", text, re.M)
    if not m:
        raise KeyError(heading_regex)
    level = len(m.group(1))
    rest = text[m.end():]
    end = re.search(r"^#{1,%d} " % level, rest, re.M)
    return rest[: end.start()] if end else rest


def table_after(text, heading_regex):
    """Rows (lists of cells) of the first markdown table under the heading matching `heading_regex`."""
    body = section(text, heading_regex)
    rows = []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(re.fullmatch(r":?-+:?", c) for c in cells):
                continue
            rows.append(cells)
        elif rows:
            break
    return rows[0], rows[1:]


def load_shm(text):
    """chorus times on the 2-core machine, from 'chorus against Open MPI' (idle, 2 and 4 ranks)."""
    mpi = section(text, r"chorus against Open MPI")
    out = []
    for n in (2, 4):
        for op in ("all_reduce", "broadcast", "all_gather", "all_to_all"):
            head, rows = table_after(mpi, re.escape("%s (%d ranks, idle)" % (op, n)))
            col = head.index("chorus time (us)")
            for r in rows:
                out.append((op, n, size_of(r[0]), float(r[col]) * US))
    return out


def load_tcp(text):
    """4 ranks as 2 hosts x 2 over loopback TCP, from 'Two-level all_reduce on several hosts'."""
    sec = section(text, r"Two-level all_reduce on several hosts")
    # the wall-time table is the one whose header starts with 'bytes | before (us)'
    tables, cur = [], []
    for line in sec.splitlines():
        if line.strip().startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur)
            cur = []
    if cur:
        tables.append(cur)
    t = next(t for t in tables if t[0][:2] == ["bytes", "before (us)"])
    out = []
    for r in t[2:]:
        m = re.fullmatch(r"([\d.]+) \((\w+)\)", r[1])
        out.append(("before", m.group(2), size_of(r[0]), float(m.group(1)) * US))
        out.append(("after", "two_level", size_of(r[0]), float(r[2]) * US))
    return out


def load_gpu(world):
    with open(GPU_CSV.format(world)) as f:
        return [dict(r) for r in csv.DictReader(f)]


# ----------------------------------------------------------------------------- least squares


def solve(a, b):
    """Gaussian elimination for a small dense system."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-300:
            return None
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                for k in range(c, n + 1):
                    m[r][k] -= f * m[c][k]
    return [m[i][n] / m[i][i] for i in range(n)]


def fit(rows, names):
    """Non-negative least squares on relative error: minimise sum ((x . f - t) / t)^2 over x >= 0.

    rows: (features, fixed, measured); the model is fixed + x . features. Small problems only: every
    subset of the parameters is tried and the best non-negative solution kept."""
    k = len(names)
    best = None
    for mask in range(1, 1 << k):
        idx = [i for i in range(k) if mask >> i & 1]
        ata = [[0.0] * len(idx) for _ in idx]
        atb = [0.0] * len(idx)
        for f, fixed, t in rows:
            w = 1.0 / t
            g = [f[i] * w for i in idx]
            y = (t - fixed) * w
            for i in range(len(idx)):
                atb[i] += g[i] * y
                for j in range(len(idx)):
                    ata[i][j] += g[i] * g[j]
        x = solve(ata, atb)
        if x is None or any(v < 0 for v in x):
            continue
        full = [0.0] * k
        for i, v in zip(idx, x):
            full[i] = v
        err = sum(((sum(a * b for a, b in zip(full, f)) + fixed - t) / t) ** 2 for f, fixed, t in rows)
        if best is None or err < best[0]:
            best = (err, full)
    return dict(zip(names, best[1]))


def predict(params, names, f, fixed=0.0):
    return fixed + sum(params[n] * v for n, v in zip(names, f))


# ----------------------------------------------------------------------------- host engine (algo/*.rs, select.rs)

SHM_CHUNK = 256 * KiB  # options.rs shm_chunk
# On several hosts the group's chunk is the smallest slot of any transport (transport::Table::chunk):
# shm's 256 KiB, below tcp_chunk / rdma_chunk (512 KiB).
NET_CHUNK = 256 * KiB
MIXED_CHUNK = 256 * KiB


def cdiv(a, b):
    return max(1, -(-a // b))


def shm_features(op, n, M, c=SHM_CHUNK):
    """(algorithm, [steps, bytes sent per rank]) of the flat host schedule select.rs picks on one host."""
    if op == "all_reduce":
        small = max(128 * KiB // n, 16 * KiB)
        if (n <= 2 and M <= c) or M <= small:
            return "direct", [cdiv(M, c), (n - 1) * M]
        return "rs_ag", [2 * cdiv(M // n, c), 2 * (n - 1) / n * M]
    if op == "broadcast":
        if n > 2 and M > c:
            r = cdiv(M, c)
            return "chain", [n - 2 + r, (n - 2 + r) * min(c, M)]
        return "direct", [cdiv(M, c), (n - 1) * M]
    if op == "all_gather":
        b = M // n
        return "direct", [cdiv(b, c), (n - 1) * b]
    if op == "all_to_all":
        b = M // n
        return "pairwise", [(n - 1) * cdiv(b, c), (n - 1) * b]
    raise KeyError(op)


# ----------------------------------------------------------------------------- GPU kernels (kernels/src/cuda/coll)


def gpu_opts(w):
    slot = min(max((512 * MiB) // (2 * w), 64 * KiB), 256 * MiB) & ~4095
    oneshot = {1: 256 * KiB, 2: 256 * KiB, 3: 128 * KiB, 4: 128 * KiB}.get(w, 64 * KiB)
    return {"slot": slot, "oneshot": oneshot, "ll": 64 * KiB, "pipe_min": 96 * MiB,
            "small_slot": -(-oneshot // 4096) * 4096, "bcast_scatter": 8 * MiB}


def pipe_steps(x, slot, max_steps=64):
    steps = min(max(x >> 23, 2), max_steps)
    chunk = min(-(-(-(-x // steps)) // 4096) * 4096, slot)
    return cdiv(x, chunk)


def gpu_features(op, w, M, o):
    """(algorithm, [launches, barrier steps, bytes each rank pushes over NVLink]) of the kernels' plan."""
    def steps(x):
        return 1 if x <= o["small_slot"] else pipe_steps(x, o["slot"])
    if op == "all_reduce":
        if M <= o["ll"]:
            return "LL one-shot", [1, 0, 2 * (w - 1) * M]
        if w == 2 and M >= o["pipe_min"]:
            return "pipelined one-shot", [1, pipe_steps(M, o["slot"]), (w - 1) * M]
        if M <= o["oneshot"]:
            return "one-shot", [1, cdiv(M, o["slot"]), (w - 1) * M]
        subs = cdiv(M, (o["slot"] // 2) * w)
        return "two-shot", [subs, 2 * subs, 2 * (w - 1) / w * M]
    if op == "broadcast":
        if w > 2 and M >= o["bcast_scatter"]:
            return "scatter+all-gather", [2, 2 * steps(M // w), 2 * (w - 1) / w * M]
        return "root push", [1, steps(M), (w - 1) * M]
    if op in ("all_gather", "all_to_all"):
        return "push", [1, steps(M // w), (w - 1) / w * M]
    if op == "reduce_scatter":
        subs = cdiv(M // w, o["slot"])
        return "direct", [subs, subs, (w - 1) / w * M]
    if op == "reduce":
        # not in chorus-gpu-bench: slot-sized sub-operations, the root takes in (w-1) M
        subs = cdiv(M, o["slot"])
        return "direct to root", [subs, subs, (w - 1) * M]
    raise KeyError(op)


BUSBW = {"all_reduce": lambda n: 2 * (n - 1) / n, "reduce_scatter": lambda n: (n - 1) / n,
         "all_gather": lambda n: (n - 1) / n, "all_to_all": lambda n: (n - 1) / n,
         "broadcast": lambda n: 1.0, "reduce": lambda n: 1.0}

# ----------------------------------------------------------------------------- fits


def report(title, rows, params, names, label):
    errs = []
    for key, f, fixed, t in rows:
        p = predict(params, names, f, fixed)
        errs.append((abs(p - t) / t, key, t, p))
    errs.sort(reverse=True)
    mean = sum(e[0] for e in errs) / len(errs)
    print("%s: %s  (%d points; relative error mean %.0f%%, max %.0f%%)" % (
        title, ", ".join("%s=%s" % (n, label(n, params[n])) for n in names), len(rows), 100 * mean, 100 * errs[0][0]))
    per_op = {}
    for e, key, t, p in errs:
        op = key.split()[0]
        per_op[op] = max(per_op.get(op, 0.0), e)
    print("    max error by op: " + ", ".join("%s %.0f%%" % (op, 100 * e) for op, e in sorted(per_op.items())))
    large = [e for e, key, t, p in errs if size_of(key.split()[-1].rstrip("B") or "0") >= MiB]
    huge = [e for e, key, t, p in errs if size_of(key.split()[-1].rstrip("B") or "0") >= 64 * MiB]
    if large:
        print("    max error at 1 MiB and above: %.0f%% (%d points)" % (100 * max(large), len(large)))
    if huge:
        print("    max error at 64 MiB and above: %.0f%% (%d points)" % (100 * max(huge), len(huge)))
    for e, key, t, p in errs[:3]:
        print("    worst: %-40s measured %10.1f us  model %10.1f us  (%+.0f%%)" % (key, t / US, p / US, 100 * (p - t) / t))
    return mean, errs[0][0]


def lab(n, v):
    return "%.2f us" % (v / US) if n.startswith("alpha") else "%.2f GB/s" % (1 / v / 1e9 if v else float("inf"))


def fit_shm(text):
    data = load_shm(text)
    names = ["alpha_shm", "beta_shm"]
    out = {}
    for n in (2, 4):
        rows = []
        for op, nn, M, t in data:
            if nn != n:
                continue
            algo, f = shm_features(op, n, M)
            rows.append(("%s %s n=%d %s" % (op, algo, n, fmt(M)), f, 0.0, t))
        p = fit([(f, fx, t) for _, f, fx, t in rows], names)
        q = report("shared memory, 2-core machine, %d ranks" % n, rows, p, names, lab)
        out[n] = (p, q)
        for op in ("all_reduce", "broadcast", "all_gather", "all_to_all"):
            sub = [r for r in rows if r[0].startswith(op)]
            ps = fit([(f, fx, t) for _, f, fx, t in sub], names)
            errs = [abs(predict(ps, names, f, fx) - t) / t for _, f, fx, t in sub]
            print("    %-11s alone: alpha %.2f us, %s, max error %.0f%%" % (op, ps["alpha_shm"] / US, lab("beta", ps["beta_shm"]), 100 * max(errs)))
    return out


def fit_tcp(text, shm):
    """alpha/beta of a TCP link (loopback) with the shared-memory phases' cost taken from the 4-rank fit."""
    a_s, b_s = shm["alpha_shm"], shm["beta_shm"]
    rows = []
    for when, algo, M, t in load_tcp(text):
        if when == "before" and algo == "direct":
            # every rank sends M to its 3 peers, 2 of them across the host boundary (TCP)
            r = cdiv(M, MIXED_CHUNK)
            f, fixed, name = [r, 2 * M], r * a_s + M * b_s, "flat direct"
        elif when == "before":
            # 4-rank ring, hosts consecutive: 6 hops per chunk round; the TCP links carry 1.5 M
            r = cdiv(M // 4, MIXED_CHUNK)
            f, fixed, name = [6 * r, 1.5 * M], 0.0, "flat ring"
        elif M <= 64 * KiB:
            r = cdiv(M, MIXED_CHUNK)
            f, fixed, name = [r, M], 2 * (r * a_s + M * b_s), "two-level leaders"
        else:
            r = cdiv(M // 2, MIXED_CHUNK)
            f, fixed, name = [r, M / 2], 2 * (r * a_s + M / 2 * b_s), "two-level segments"
        rows.append(("%s %s" % (name, fmt(M)), f, fixed, t))
    names = ["alpha_tcp", "beta_tcp"]
    p = fit([(f, fx, t) for _, f, fx, t in rows], names)
    q = report("TCP over loopback, 2 hosts x 2 ranks (shm phases from the 4-rank fit)", rows, p, names, lab)
    return p, q


def fit_gpu():
    names = ["alpha_launch", "alpha_step", "beta_nvl"]
    out = {}
    for w in (2, 4, 8):
        o = gpu_opts(w)
        if w == 8:
            o = dict(o, bcast_scatter=512 * KiB)  # the 8-GPU table was taken with this threshold (RESULTS.md)
        rows = []
        for r in load_gpu(w):
            M = int(r["bytes"])
            algo, f = gpu_features(r["op"], w, M, o)
            rows.append(("%s %s %s" % (r["op"], algo, fmt(M)), f, 0.0, float(r["chorus_us"]) * US))
        p = fit([(f, fx, t) for _, f, fx, t in rows], names)
        q = report("GPU kernels, %d x H200 (chorus-gpu-bench)" % w, rows, p, names, lab)
        out[w] = (p, q)
    return out


def fmt(M):
    for unit, s in ((GiB, "G"), (MiB, "M"), (KiB, "K")):
        if M >= unit and M % unit == 0:
            return "%d%s" % (M // unit, s)
    return "%dB" % M


# ----------------------------------------------------------------------------- projection


class Links:
    def __init__(self, gpu, net_hop, net_overhead, nic_bw):
        self.g = gpu  # alpha_launch, alpha_step, beta_nvl
        self.an, self.on, self.bn = net_hop, net_overhead, 1.0 / nic_bw

    def intra(self, m, steps=1, launches=1):
        g = self.g
        return launches * g["alpha_launch"] + steps * g["alpha_step"] + m * g["beta_nvl"]

    def op(self, op, M):
        """A within-node phase that is one of the kernels' collectives over 8 GPUs on M bytes: the
        measured 8 x H200 chorus time where the run has that size, else the fitted model."""
        if not hasattr(self, "_meas"):
            self._meas = {(r["op"], int(r["bytes"])): float(r["chorus_us"]) * US for r in load_gpu(8)}
        M = int(M)
        if (op, M) in self._meas:
            return self._meas[(op, M)]
        _, f = gpu_features(op, 8, M, gpu_opts(8))
        return predict(self.g, ["alpha_launch", "alpha_step", "beta_nvl"], f)

    def cross_direct(self, H, m):
        """Everyone to everyone among H (one per host), m bytes to each peer in chunks: one network
        latency (the chunk rounds pipeline), a posting overhead per message, the bytes through one NIC."""
        r = cdiv(int(m), NET_CHUNK)
        return self.an + (H - 1) * r * self.on + (H - 1) * m * self.bn

    def cross_ring(self, H, m):
        """Ring all-reduce of m bytes among H, chunk-major (algo::all_reduce_ring)."""
        r = cdiv(int(m // H), NET_CHUNK)
        return 2 * (H - 1) * r * (self.an + self.on) + 2 * (H - 1) / H * m * self.bn

    def cross_ring_pipelined(self, H, m):
        """Ring all-reduce whose chunk rounds overlap (not in chorus: its rings are chunk-major)."""
        r = cdiv(int(m // H), NET_CHUNK)
        return (2 * (H - 1) + r - 1) * (self.an + self.on) + 2 * (H - 1) / H * m * self.bn

    def cross_recdbl(self, H, m):
        """Recursive doubling (not in chorus): log2 H exchanges of the whole m."""
        k = math.ceil(math.log2(H))
        return k * (self.an + cdiv(int(m), NET_CHUNK) * self.on + m * self.bn)

    def cross_chain(self, H, m):
        r = cdiv(int(m), NET_CHUNK)
        c = min(NET_CHUNK, m)
        return (H - 2 + r) * (self.an + self.on + c * self.bn)

    def cross_star(self, H, m):
        """One rank to H - 1 others (a star across hosts), m bytes each: as cross_direct."""
        return self.cross_direct(H, m)


def overlap(a, b, chunks):
    """Two phases pipelined chunk by chunk: the slower one, plus one chunk of the other (with one
    chunk, nothing overlaps)."""
    return max(a, b) + min(a, b) / max(1, chunks)


HIER_LEADERS_MAX = 64 * KiB
HIER_DIRECT_MAX = 256 * KiB


def chorus_pick(op, H, L, M, k):
    """(algorithm as select.rs names it, time) for N = H * L GPUs, H >= 2 (select::two_level)."""
    N = H * L
    if op == "all_reduce":
        def exchange(b):
            return ("direct", k.cross_direct(H, b)) if H <= 2 or b * (H - 1) <= HIER_DIRECT_MAX else ("ring", k.cross_ring(H, b))
        if M <= HIER_LEADERS_MAX:
            x, t = exchange(M)
            return "leaders, %s across" % x, k.op("reduce", M) + t + k.op("broadcast", M)
        x, t = exchange(M / L)
        return "segments, %s across" % x, k.op("reduce_scatter", M) + t + k.op("all_gather", M)
    if op in ("broadcast", "reduce"):
        if H > 2 and M > NET_CHUNK:
            x, t = "chain", k.cross_chain(H, M)
        else:
            x, t = "star", k.cross_star(H, M)
        inside = k.op(op, M)
        # chunk-pipelined down (up) the tree: the network and NVLink parts overlap
        return "tree, %s across" % x, overlap(t, inside, cdiv(int(M), NET_CHUNK))
    if op == "all_gather":
        b = M / N
        return "blocks (star per block)", overlap(k.cross_star(H, b), k.op("all_gather", M), cdiv(int(M / L), NET_CHUNK))
    if op == "reduce_scatter":
        b = M / N
        return "blocks (chain in host, star across)", overlap(k.op("reduce_scatter", M) + (L - 2) * k.g["alpha_step"], k.cross_star(H, b), cdiv(int(M / L), NET_CHUNK))
    if op == "all_to_all":
        b = M / N
        # flat pairwise (no two-level schedule): N - 1 steps, N - L of them across hosts
        return "flat pairwise", (N - L) * (k.an + k.on + b * k.bn) + (L - 1) * (k.g["alpha_step"] + b * k.g["beta_nvl"]) + k.g["alpha_launch"]
    raise KeyError(op)


def better_pick(op, H, L, M, k):
    """What the model says should run where chorus's table has no rule for the scale (not built)."""
    if op == "all_reduce" and M <= HIER_LEADERS_MAX:
        return "leaders, recursive doubling across", k.op("reduce", M) + k.cross_recdbl(H, M) + k.op("broadcast", M)
    if op == "all_reduce":
        b = M / L
        cands = [("segments, ring across", k.cross_ring(H, b)), ("segments, pipelined ring across", k.cross_ring_pipelined(H, b)),
                 ("segments, recursive doubling across", k.cross_recdbl(H, b))]
        x, t = min(cands, key=lambda c: c[1])
        return x, k.op("reduce_scatter", M) + t + k.op("all_gather", M)
    if op in ("broadcast", "reduce") and M <= NET_CHUNK:
        kk = math.ceil(math.log2(H))
        return "tree, binomial across", kk * (k.an + k.on + M * k.bn) + k.op(op, M)
    if op in ("broadcast", "reduce"):
        # the message split into L slices, each down its own chain through a different local rank
        # (and NIC), then an all-gather (reduce-scatter) within the host
        inside = k.op("all_gather" if op == "broadcast" else "reduce_scatter", M)
        return "L slices, chain across each", overlap(k.cross_chain(H, M / L), inside, cdiv(int(M / L), NET_CHUNK))
    if op in ("all_gather", "reduce_scatter"):
        b = M / (H * L)
        kk = math.ceil(math.log2(H))
        # Bruck/PAT-like across hosts: log2 H steps, (H-1) b bytes per rank in all
        t = kk * k.an + max(kk, cdiv(int((H - 1) * b), NET_CHUNK)) * k.on + (H - 1) * b * k.bn
        return "within: the kernel's own; across: logarithmic (PAT-like)", overlap(t, k.op(op, M), cdiv(int(M / (H * L)), NET_CHUNK))
    return None


def as_built_all_reduce(H, L, M, shm, k):
    """Today's route for GPU memory on several hosts (api/staged.rs): copy to the host, run the host
    two-level schedule (shared memory within the host, RDMA across), copy back. The PCIe copies are
    left out (not measured here), so this is a lower bound; the shared-memory alpha/beta are the
    2-core machine's."""
    a_s, b_s = shm["alpha_shm"], shm["beta_shm"]

    def intra(m, c=SHM_CHUNK):
        return cdiv(int(m), c) * a_s + m * b_s
    if M <= HIER_LEADERS_MAX:
        cross = k.cross_direct(H, M) if H <= 2 or M * (H - 1) <= HIER_DIRECT_MAX else k.cross_ring(H, M)
        return 2 * intra((L - 1) * M) + cross
    b = M / L
    cross = k.cross_direct(H, b) if H <= 2 or b * (H - 1) <= HIER_DIRECT_MAX else k.cross_ring(H, b)
    return 2 * intra((L - 1) / L * M) + cross


def nccl_model_latency(H, L):
    """NCCL's own small-message all_reduce estimate from its tuning constants (LL protocol)."""
    P = PUBLISHED
    N = H * L
    tree = P["nccl_base_tree_ll"] + 2 * ((L - 1) * P["nccl_nvl_tree_ll"] + math.ceil(math.log2(H)) * P["nccl_net_tree_ll"]) if H > 1 else None
    n_inter = 2 * H if H > 1 else 0
    intra = max(P["nccl_nvl_ring_ll"], P["net_overhead"] if H > 1 else 0.0)
    ring = P["nccl_base_ring_ll"] + (2 * (N - 1) - n_inter) * intra + n_inter * P["nccl_net_ring_ll"]
    return ring, tree


SCALES = [8, 16, 32, 64, 128, 256, 512, 1024]
SIZES = [8, 64 * KiB, MiB, 64 * MiB, GiB]
OPS = ["all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "all_to_all"]


def gbps(op, N, M, t):
    return BUSBW[op](N) * M / t / 1e9


def measured_8(op, M, col):
    for r in load_gpu(8):
        if r["op"] == op and int(r["bytes"]) == M:
            return float(r[col]) * US
    return None


def project_as_built(shm, k):
    print()
    print("As built today (GPU memory on several hosts takes the host path), all_reduce, lower bound:")
    print()
    print("| GPUs | bytes | time (us) | busbw (GB/s) |")
    print("|---|---|---|---|")
    for N in (16, 64, 1024):
        for M in (8, GiB):
            t = as_built_all_reduce(N // 8, 8, M, shm, k)
            print("| %d | %s | %.1f | %.2f |" % (N, fmt(M), t / US, gbps("all_reduce", N, M, t)))


def project(gpu8, md):
    k = Links(gpu8, PUBLISHED["net_hop"], PUBLISHED["net_overhead"], PUBLISHED["nic_bw"])
    L = 8
    print()
    print("Projection: N GPUs, 8 per node, NVLink within (measured 8 x H200 phase times, else the fitted kernels), 400 Gb/s RDMA across")
    print("(published: %.1f us per hop + %.1f us per message, %.0f GB/s per NIC; one NIC per GPU)" % (
        PUBLISHED["net_hop"] / US, PUBLISHED["net_overhead"] / US, PUBLISHED["nic_bw"] / 1e9))
    for op in OPS:
        print()
        print("### %s" % op if md else "== %s" % op)
        print()
        hdr = ["GPUs", "bytes", "chorus picks", "time (us)", "busbw (GB/s)", "kind", "should pick (not built)", "time (us)", "NCCL (us / busbw)", "NCCL kind"]
        print("| " + " | ".join(hdr) + " |")
        print("|" + "|".join(["---"] * len(hdr)) + "|")
        for N in SCALES:
            H = N // L
            for M in SIZES:
                if op in ("all_gather", "reduce_scatter", "all_to_all") and M < 8 * N:
                    continue
                nccl, nkind = "–", "none found"
                if H == 1:
                    o = gpu_opts(8)
                    algo, f = gpu_features(op, 8, M, o)
                    t = predict(gpu8, ["alpha_launch", "alpha_step", "beta_nvl"], f)
                    kind = "fitted"
                    meas = measured_8(op, M, "chorus_us")
                    if meas:
                        t, kind = meas, "measured"
                    nm = measured_8(op, M, "nccl_us")
                    if nm:
                        nccl, nkind = "%.1f / %.1f" % (nm / US, gbps(op, N, M, nm)), "measured here (2.28)"
                    alt = None
                else:
                    algo, t = chorus_pick(op, H, L, M, k)
                    kind = "projected"
                    alt = better_pick(op, H, L, M, k)
                    if op == "all_reduce" and M == 8:
                        ring, tree = nccl_model_latency(H, L)
                        nccl, nkind = "%.0f (tree) / %.0f (ring)" % (tree / US, ring / US), "NCCL tuning model"
                    if op == "all_reduce" and M == GiB:
                        nb = 8 * PUBLISHED["nic_bw"] / L  # 8 NICs per node, ring: per-rank busbw bound
                        nccl, nkind = "≤ %.0f GB/s" % (nb * 8 / 1e9), "bound from per-NIC figure"
                if op == "all_reduce" and M == 8 and H == 1:
                    ring, _ = nccl_model_latency(1, L)
                    nccl += " (model %.1f)" % (ring / US)
                alt_s = ("%s | %.1f" % (alt[0], alt[1] / US)) if alt and alt[1] < 0.95 * t else "same | –"
                print("| %d | %s | %s | %.1f | %.2f | %s | %s | %s | %s |" % (
                    N, fmt(M), algo, t / US, gbps(op, N, M, t), kind, alt_s, nccl, nkind))


def main():
    md = "--markdown" in sys.argv
    with open(RESULTS) as f:
        text = f.read()
    print("Fits (parameters; relative error of the fitted model against each measured point)")
    print()
    shm = fit_shm(text)
    print()
    fit_tcp(text, shm[4][0])
    print()
    gpu = fit_gpu()
    shm2 = shm[2][0]
    print()
    print("NCCL's tuning model at 8 x H200, 8 B all_reduce (ring, LL): %.1f us; measured here: %.1f us" % (
        nccl_model_latency(1, 8)[0] / US, measured_8("all_reduce", 8, "nccl_us") / US))
    project(gpu[8][0], md)
    project_as_built(shm2, Links(gpu[8][0], PUBLISHED["net_hop"], PUBLISHED["net_overhead"], PUBLISHED["nic_bw"]))


if __name__ == "__main__":
    main()
