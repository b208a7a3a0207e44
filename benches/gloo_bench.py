#!/usr/bin/env python3
"""torch.distributed Gloo counterpart of chorus-bench (CPU, float32 by default).

Same collectives, sizes, iteration scaling and timing method as chorus-bench: per size, warm up,
barrier, time the iterations (wall clock), report the maximum over ranks of the mean time per
iteration; then one untimed iteration on fresh inputs is verified (#wrong). Prints nccl-tests
columns on rank 0 and writes JSON with --json.

    python benches/gloo_bench.py all_reduce,broadcast --nprocs 2 -b 1K -e 64M -f 4 --json out.json

Launch: --nprocs N spawns N processes (torch.multiprocessing); under torchrun
(`python -m torch.distributed.run --standalone --nproc-per-node N benches/gloo_bench.py ...`) the
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) is used instead.
"""
import argparse
import json
import os
import socket
import sys
import time

COLLECTIVES = ["all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "all_to_all",
               "gather", "scatter", "sendrecv", "barrier"]
ALIASES = {"allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter",
           "alltoall": "all_to_all"}
HEADER = "#       size         count      type   redop    root     time   algbw   busbw #wrong"
UNITS = "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)       "
DTYPES = {"float": "float32", "float32": "float32", "f32": "float32", "double": "float64",
          "float64": "float64", "half": "float16", "float16": "float16", "bfloat16": "bfloat16",
          "int32": "int32", "int64": "int64", "int8": "int8", "uint8": "uint8"}
SHORT = {"float32": "float", "float64": "double", "float16": "half", "bfloat16": "bfloat16",
         "int32": "int32", "int64": "int64", "int8": "int8", "uint8": "uint8"}


def parse_size(s):
    t = s.strip().upper()
    for suf in ("IB", "B"):
        if t.endswith(suf) and len(t) > len(suf):
            t = t[: -len(suf)]
            break
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    return int(float(t) * mult)


def sizes(a):
    out, s = [], a.minbytes
    while s <= a.maxbytes:
        out.append(s)
        nxt = s * a.stepfactor if a.stepfactor > 1 else s + max(1, a.stepbytes)
        if nxt <= s:
            break
        s = nxt
    return out


def iters_for(a, nbytes):
    return max(1, min(a.iters, max(1, a.cap // max(1, nbytes))))


def warmup_for(a, nbytes):
    return min(a.warmup, max(1, a.cap // (4 * max(1, nbytes))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("collective", nargs="?", default="all")
    p.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("8"))
    p.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("16M"))
    p.add_argument("-f", "--stepfactor", type=int, default=4)
    p.add_argument("-i", "--stepbytes", type=parse_size, default=parse_size("1M"))
    p.add_argument("-n", "--iters", type=int, default=20)
    p.add_argument("-w", "--warmup_iters", dest="warmup", type=int, default=5)
    p.add_argument("-o", "--op", default="sum", choices=["sum", "prod", "min", "max", "avg"])
    p.add_argument("-d", "--datatype", default="float")
    p.add_argument("-r", "--root", type=int, default=0)
    p.add_argument("-c", "--check", type=int, default=1)
    p.add_argument("--nprocs", type=int, default=None)
    p.add_argument("--max-bytes-per-size", dest="cap", type=parse_size, default=parse_size("256M"))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank (default 1)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.collective == "all":
        a.colls = list(COLLECTIVES)
    else:
        a.colls = []
        for c in a.collective.split(","):
            c = ALIASES.get(c.strip().replace("-", "_"), c.strip().replace("-", "_"))
            if c not in COLLECTIVES:
                p.error(f"unknown collective {c!r}")
            a.colls.append(c)
    if a.datatype not in DTYPES:
        p.error(f"unsupported datatype {a.datatype!r}")
    return a


def shape(coll, nbytes, esz, n):
    """(size, count, busbw factor, reduces, rooted) or None when the row is empty."""
    if coll == "barrier":
        return (0, 0, 0.0, False, False)
    if coll in ("all_reduce",):
        c = nbytes // esz
        return (c * esz, c, 2.0 * (n - 1) / n, True, False) if c else None
    if coll in ("broadcast", "reduce", "sendrecv"):
        c = nbytes // esz
        return (c * esz, c, 1.0, coll == "reduce", coll != "sendrecv") if c else None
    blk = nbytes // esz // n
    if blk == 0:
        return None
    return (blk * n * esz, blk, (n - 1) / n, coll == "reduce_scatter", coll in ("gather", "scatter"))


def line(size, count, typ, redop, root, time_us, algbw, busbw, wrong):
    t = f"{time_us:.0f}" if time_us >= 1e6 else f"{time_us:.2f}"
    return f"{size:>12}{count:>14}{typ:>10}{redop:>8}{root:>8}{t:>9}{algbw:>8.2f}{busbw:>8.2f}{wrong:>7}"


class Case:
    """Buffers, one iteration, refill and verification for one (collective, size)."""

    def __init__(self, torch, dist, coll, dtype, op, root, n, me, count):
        self.t, self.d = torch, dist
        self.coll, self.dtype, self.root, self.n, self.me, self.count = coll, dtype, root, n, me, count
        self.op = {"sum": dist.ReduceOp.SUM, "prod": dist.ReduceOp.PRODUCT, "min": dist.ReduceOp.MIN,
                   "max": dist.ReduceOp.MAX, "avg": getattr(dist.ReduceOp, "AVG", dist.ReduceOp.SUM)}[op]
        self.opname = op
        self.fill()

    def pattern(self, rank, nelem, blk=0):
        t = self.t
        idx = t.arange(nelem, dtype=t.int64)
        return ((idx + 3 * rank + 5 * blk) % 8).to(self.dtype)

    def fill(self):
        t, n, me, c = self.t, self.n, self.me, self.count
        coll = self.coll
        if coll in ("all_reduce", "reduce"):
            self.a = self.pattern(me, c)
        elif coll == "broadcast":
            self.a = self.pattern(me, c) if me == self.root else t.full((c,), 9, dtype=self.dtype)
        elif coll == "sendrecv":
            self.a, self.b = self.pattern(me, c), t.full((c,), 9, dtype=self.dtype)
        elif coll == "all_gather":
            self.a, self.b = self.pattern(me, c), t.full((c * n,), 9, dtype=self.dtype)
        elif coll == "reduce_scatter":
            self.a, self.b = self.pattern(me, c * n), t.full((c,), 9, dtype=self.dtype)
        elif coll == "all_to_all":
            self.a = t.cat([self.pattern(me, c, p) for p in range(n)])
            self.b = t.full((c * n,), 9, dtype=self.dtype)
        elif coll == "gather":
            self.a = self.pattern(me, c)
            self.b = [t.full((c,), 9, dtype=self.dtype) for _ in range(n)] if me == self.root else None
        elif coll == "scatter":
            self.a = [self.pattern(me, c, p) for p in range(n)] if me == self.root else None
            self.b = t.full((c,), 9, dtype=self.dtype)

    def run(self):
        d, coll = self.d, self.coll
        if coll == "all_reduce":
            d.all_reduce(self.a, op=self.op)
        elif coll == "reduce":
            d.reduce(self.a, dst=self.root, op=self.op)
        elif coll == "broadcast":
            d.broadcast(self.a, src=self.root)
        elif coll == "all_gather":
            d.all_gather_into_tensor(self.b, self.a)
        elif coll == "reduce_scatter":
            d.reduce_scatter_tensor(self.b, self.a, op=self.op)
        elif coll == "all_to_all":
            d.all_to_all_single(self.b, self.a)
        elif coll == "gather":
            d.gather(self.a, gather_list=self.b, dst=self.root)
        elif coll == "scatter":
            d.scatter(self.b, scatter_list=self.a, src=self.root)
        elif coll == "sendrecv":
            nxt, prv = (self.me + 1) % self.n, (self.me - 1) % self.n
            reqs = d.batch_isend_irecv([d.P2POp(d.isend, self.a, nxt), d.P2POp(d.irecv, self.b, prv)])
            for r in reqs:
                r.wait()
        elif coll == "barrier":
            d.barrier()

    def _reduced(self, nelem, first=0):
        t = self.t
        vals = [((t.arange(first, first + nelem, dtype=t.int64) + 3 * r) % 8).to(t.float64) for r in range(self.n)]
        st = t.stack(vals)
        if self.opname in ("sum", "avg"):
            out = st.sum(0)
            if self.opname == "avg":
                out = out / self.n
        elif self.opname == "prod":
            out = st.prod(0)
        elif self.opname == "min":
            out = st.min(0).values
        else:
            out = st.max(0).values
        return out.to(self.dtype)

    def verify(self):
        t, n, me, c, coll = self.t, self.n, self.me, self.count, self.coll
        ne = lambda x, y: int((x != y).sum().item())
        if coll == "all_reduce" or (coll == "reduce" and me == self.root):
            return ne(self.a, self._reduced(c))
        if coll == "reduce_scatter":
            return ne(self.b, self._reduced(c, me * c))
        if coll == "broadcast":
            return ne(self.a, self.pattern(self.root, c))
        if coll == "sendrecv":
            return ne(self.b, self.pattern((me - 1) % n, c))
        if coll == "all_gather":
            return ne(self.b, t.cat([self.pattern(s, c) for s in range(n)]))
        if coll == "all_to_all":
            return ne(self.b, t.cat([self.pattern(s, c, me) for s in range(n)]))
        if coll == "gather" and me == self.root:
            return sum(ne(self.b[s], self.pattern(s, c)) for s in range(n))
        if coll == "scatter":
            return ne(self.b, self.pattern(self.root, c, me))
        return 0


def worker(a, rank, world, init_method):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    n, me = dist.get_world_size(), dist.get_rank()
    dtype = getattr(torch, DTYPES[a.datatype])
    esz = torch.empty((), dtype=dtype).element_size()
    typ = SHORT[DTYPES[a.datatype]]
    lead = me == 0

    def say(s):
        if lead:
            print(s, flush=True)

    say(f"# gloo_bench: torch {torch.__version__}, nranks {n}, datatype {typ}, redop {a.op}, root {a.root}, "
        f"sizes {a.minbytes}..{a.maxbytes} x{a.stepfactor}, iters {a.iters} warmup {a.warmup} "
        f"(capped at {a.cap} bytes per size), threads/rank {a.threads}")
    rows, total_wrong, failed = [], 0, False
    for coll in a.colls:
        if coll == "sendrecv" and n < 2:
            continue
        say(f"#\n# Collective: {coll}")
        say(HEADER)
        say(UNITS)
        first = len(rows)
        for nbytes in ([0] if coll == "barrier" else sizes(a)):
            sh = shape(coll, nbytes, esz, n)
            if sh is None:
                continue
            size, count, factor, reduces, rooted = sh
            if coll == "barrier":
                iters, warm = max(1, a.iters), a.warmup
            else:
                iters, warm = iters_for(a, max(1, size)), warmup_for(a, max(1, size))
            try:
                case = Case(torch, dist, coll, dtype, a.op, a.root, n, me, count)
                for _ in range(warm):
                    case.run()
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(iters):
                    case.run()
                per_iter = (time.perf_counter() - t0) / iters
                wrong = 0
                if a.check:
                    case.fill()
                    case.run()
                    wrong = case.verify()
                del case
            except RuntimeError as e:  # e.g. an op Gloo does not implement
                msg = str(e).splitlines()[0][:160]
                say(f"# {coll}: unsupported or failed in Gloo: {msg}")
                failed = True
                break
            st = torch.tensor([per_iter], dtype=torch.float64)
            dist.all_reduce(st, op=dist.ReduceOp.MAX)
            wt = torch.tensor([wrong], dtype=torch.int64)
            dist.all_reduce(wt)
            tm, wrong = st.item(), int(wt.item())
            total_wrong += wrong
            algbw = size / tm / 1e9 if size else 0.0
            row = {"op": coll, "size": size, "count": count, "dtype": typ if coll != "barrier" else "none",
                   "redop": a.op if reduces else "none", "root": a.root if rooted else -1,
                   "time_us": tm * 1e6, "algbw": algbw, "busbw": algbw * factor, "wrong": wrong,
                   "iters": iters, "nranks": n}
            rows.append(row)
            say(line(size, count, row["dtype"], row["redop"], row["root"], row["time_us"], algbw, row["busbw"], wrong))
        mine = rows[first:]
        w = sum(r["wrong"] for r in mine)
        avg = sum(r["busbw"] for r in mine) / len(mine) if mine else 0.0
        say(f"# Out of bounds values : {w} {'OK' if w == 0 else 'FAILED'}")
        say(f"# Avg bus bandwidth    : {avg:.4f}")
    if lead and a.json:
        with open(a.json, "w") as f:
            json.dump({"bench": "gloo", "torch": torch.__version__, "nranks": n, "results": rows}, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    return 1 if total_wrong else 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    a = parse_args()
    if a.nprocs is None and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        sys.exit(worker(a, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://"))
    import torch.multiprocessing as mp
    n = a.nprocs or 2
    init = f"tcp://127.0.0.1:{free_port()}"
    ctx = mp.spawn(_run_rank, args=(a, n, init), nprocs=n, join=False)
    ok = True
    try:
        while not ctx.join():
            pass
    except Exception as e:  # a rank raised or exited non-zero
        print(f"gloo_bench: {e}", file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)


def _run_rank(rank, a, world, init_method):
    code = worker(a, rank, world, init_method)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
