#!/usr/bin/env python
"""torch-level sweep of the chorus backend against Gloo, in one run.

    python python/bench_torch.py                 # 2 ranks, 1K..64M bytes
    python python/bench_torch.py --nproc 4 --max-bytes 16M --ops all_reduce,broadcast
    python python/bench_torch.py --percall       # per-call cost, 8 B..64 KB, blocking and async_op=True
    python python/bench_torch.py --percall --device cuda --nproc 1   # CUDA tensors against NCCL

--percall times back-to-back small calls of all_reduce, broadcast, all_gather_into_tensor,
reduce_scatter_tensor and all_to_all_single on chorus and on the peer a user would pick instead (Gloo on
CPU, NCCL on CUDA), alternating the two backends round by round and keeping each one's best round; the
async column issues each call with async_op=True and waits for its Work before the next. With
--device cuda it also times the replay of a CUDA graph holding one captured 1 KB all_reduce.

Each rank initialises a chorus default group and a Gloo group over the same ranks, then for every
op and size times both backends on the same float32 buffers (after a verified warm-up call). The
report has nccl-tests columns per backend (time in us, algbw and busbw in GB/s, #wrong) and ends
with the per-call host overhead: the mean time of a 1-element all_reduce on each backend.
"""
import argparse
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

OPS = ["all_reduce", "broadcast", "all_gather", "all_to_all"]


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(float(s[:-1] if s[-1:] in "KMG" else s) * mult)


def human(n: int) -> str:
    for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return str(n)


def busbw_factor(op: str, n: int) -> float:
    return {"all_reduce": 2 * (n - 1) / n, "broadcast": 1.0}.get(op, (n - 1) / n)


PERCALL_OPS = ["all_reduce", "broadcast", "all_gather_into_tensor", "reduce_scatter_tensor", "all_to_all_single"]


def percall_worker(args):
    """Per-call cost of small back-to-back calls, chorus against Gloo (CPU) or NCCL (CUDA)."""
    import torch
    import torch.distributed as dist

    import chorus

    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dist.init_process_group("chorus", rank=rank, world_size=n, timeout=timedelta(seconds=600))
    peer = "nccl" if cuda else "gloo"
    groups = {"chorus": dist.distributed_c10d._get_default_group(), peer: dist.new_group(backend=peer)}
    if n == 1:
        # torch's own do-nothing backend: the floor any backend pays per call (dispatch, Work), shown beside.
        import torch.testing._internal.distributed.fake_pg  # noqa: F401  (registers "fake")
        groups["fake"] = dist.new_group(backend="fake")
    ctl = dist.new_group(backend="gloo")  # timing control (barriers, max over ranks) stays off the measured groups
    torch.set_num_threads(1)

    def call(op, g, a, b, async_op):
        if op == "all_reduce":
            return dist.all_reduce(a, group=g, async_op=async_op)
        if op == "broadcast":
            return dist.broadcast(a, group_src=0, group=g, async_op=async_op)
        if op == "all_gather_into_tensor":
            return dist.all_gather_into_tensor(b, a, group=g, async_op=async_op)
        if op == "reduce_scatter_tensor":
            return dist.reduce_scatter_tensor(b, a, group=g, async_op=async_op)
        return dist.all_to_all_single(b, a, group=g, async_op=async_op)

    def buffers(op, nbytes):
        count = max(nbytes // 4, 1)
        if op in ("reduce_scatter_tensor", "all_to_all_single"):
            count = max(count - count % n, n)
        a = torch.ones(count, device=dev)
        if op == "all_gather_into_tensor":
            return a, torch.empty(count * n, device=dev)
        if op == "reduce_scatter_tensor":
            return a, torch.empty(count // n, device=dev)
        if op == "all_to_all_single":
            return a, torch.empty(count, device=dev)
        return a, None

    def timed(op, g, a, b, async_op, iters):
        for _ in range(20):
            w = call(op, g, a, b, async_op)
            if async_op:
                w.wait()
        if cuda:
            torch.cuda.synchronize()
        dist.barrier(group=ctl)
        t0 = time.perf_counter()
        for _ in range(iters):
            w = call(op, g, a, b, async_op)
            if async_op:
                w.wait()
        if cuda:
            torch.cuda.synchronize()
        t = torch.tensor([(time.perf_counter() - t0) / iters])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctl)
        return float(t) * 1e6

    sizes = [b for b in (8, 64, 1 << 10, 4 << 10, 16 << 10, 64 << 10) if args.min_bytes <= b <= args.max_bytes]
    if rank == 0:
        print(f"# per-call time (us), {n} rank(s), {args.device}, torch {torch.__version__}, chorus backend: {chorus.backend_path()}; "
              f"best of {args.rounds} alternating rounds of {args.percall_iters} calls")
        print(f"# {'op':>22} {'bytes':>6} | {'chorus':>8} {peer:>8} {'ratio':>6} | {'chorus async':>12} {peer + ' async':>10} {'ratio':>6}")
    for op in args.percall_ops:
        for size in sizes:
            a, b = buffers(op, size)
            best = {}
            for _ in range(args.rounds):
                for name, g in groups.items():
                    for async_op in (False, True):
                        t = timed(op, g, a, b, async_op, args.percall_iters)
                        best[name, async_op] = min(best.get((name, async_op), t), t)
            if rank == 0:
                c, p, ca, pa = best["chorus", False], best[peer, False], best["chorus", True], best[peer, True]
                floor = f" | fake {best['fake', False]:6.2f} {best['fake', True]:6.2f}" if "fake" in groups else ""
                print(f"  {op:>22} {a.numel() * 4:>6} | {c:8.2f} {p:8.2f} {c / p:6.2f} | {ca:12.2f} {pa:10.2f} {ca / pa:6.2f}{floor}", flush=True)
    if cuda:
        graph_replay(groups, dev, args, rank)
    dist.barrier(group=ctl)
    dist.destroy_process_group()


def graph_replay(groups, dev, args, rank):
    """Replay time of a CUDA graph holding one captured 1 KB all_reduce, per backend."""
    import torch
    import torch.distributed as dist

    for name, g in groups.items():
        x = torch.ones(256, device=dev)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                dist.all_reduce(x, group=g)  # warm-up outside the graph (communicators, kernels)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            dist.all_reduce(x, group=g)
        best = None
        for _ in range(args.rounds):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.percall_iters):
                graph.replay()
            torch.cuda.synchronize()
            t = (time.perf_counter() - t0) / args.percall_iters * 1e6
            best = t if best is None else min(best, t)
        if rank == 0:
            print(f"# CUDA graph replay, captured 1 KB all_reduce: {name} {best:.2f} us", flush=True)


def worker(args):
    import torch
    import torch.distributed as dist

    import chorus  # noqa: F401

    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("chorus", rank=rank, world_size=n, timeout=timedelta(seconds=600))
    groups = {"chorus": dist.distributed_c10d._get_default_group(), "gloo": dist.new_group(backend="gloo")}
    torch.set_num_threads(1)

    def run(op, g, inp, out):
        if op == "all_reduce":
            dist.all_reduce(inp, group=g)
        elif op == "broadcast":
            dist.broadcast(inp, group_src=0, group=g)
        elif op == "all_gather":
            dist.all_gather_into_tensor(out, inp, group=g)
        else:
            dist.all_to_all_single(out, inp, group=g)

    def wrong(op, inp, out) -> int:
        """Elements that differ from the expected result of one call on fresh inputs."""
        count = inp.numel()
        if op == "all_reduce":
            return int((inp != n * (n + 1) / 2).sum())
        if op == "broadcast":
            return int((inp != 1).sum())
        if op == "all_gather":
            exp = torch.arange(1, n + 1, dtype=torch.float32).repeat_interleave(count)
            return int((out != exp).sum())
        exp = (torch.arange(n, dtype=torch.float32) * 1000 + rank).repeat_interleave(count // n)
        return int((out != exp).sum())  # all_to_all

    def fresh(op, count):
        if op == "all_to_all":
            # Block p goes to rank p: rank r then holds s*1000 + r in block s.
            inp = torch.cat([torch.full((count // n,), float(rank * 1000 + p)) for p in range(n)])
            return inp, torch.empty(count)
        if op == "all_gather":
            return torch.full((count,), float(rank + 1)), torch.empty(count * n)
        return torch.full((count,), float(rank + 1)), None

    rows = []
    sizes = []
    s = args.min_bytes
    while s <= args.max_bytes:
        sizes.append(s)
        s *= args.step
    for op in args.ops:
        for size in sizes:
            count = size // 4
            if op == "all_to_all":
                count -= count % n
            if count == 0:
                continue
            row = {"op": op, "size": count * 4, "count": count}
            for name, g in groups.items():
                inp, out = fresh(op, count)
                run(op, g, inp, out)
                w = wrong(op, inp, out)
                iters = max(args.min_iters, min(args.max_iters, int(args.target_bytes // max(size, 1))))
                for _ in range(2):
                    run(op, g, inp, out)
                dist.barrier(group=groups["gloo"])
                t0 = time.perf_counter()
                for _ in range(iters):
                    run(op, g, inp, out)
                dt = (time.perf_counter() - t0) / iters
                t = torch.tensor([dt], dtype=torch.float64)
                dist.all_reduce(t, op=dist.ReduceOp.MAX, group=groups["gloo"])
                wt = torch.tensor([w], dtype=torch.int64)
                dist.all_reduce(wt, group=groups["gloo"])
                dt = float(t)
                algbw = count * 4 / dt / 1e9
                row[name] = (dt * 1e6, algbw, algbw * busbw_factor(op, n), int(wt))
            rows.append(row)
            if rank == 0:
                print_row(row, header=len(rows) == 1)

    # Per-call host overhead: 1-element all_reduce.
    over = {}
    for name, g in groups.items():
        x = torch.ones(1)
        for _ in range(200):
            dist.all_reduce(x, group=g)
        dist.barrier(group=groups["gloo"])
        t0 = time.perf_counter()
        for _ in range(args.overhead_iters):
            dist.all_reduce(x, group=g)
        dt = torch.tensor([(time.perf_counter() - t0) / args.overhead_iters])
        dist.all_reduce(dt, op=dist.ReduceOp.MAX, group=groups["gloo"])
        over[name] = float(dt) * 1e6
    if rank == 0:
        print(f"\n# per-call host overhead (1-element all_reduce, {n} ranks, mean of {args.overhead_iters}):")
        for name, us in over.items():
            print(f"#   {name:7s} {us:9.2f} us/call")
        wrong_total = sum(r[b][3] for r in rows for b in groups)
        print(f"# out of bounds values : {wrong_total} {'OK' if wrong_total == 0 else 'FAILED'}")
    dist.barrier(group=groups["gloo"])
    dist.destroy_process_group()


def print_row(row, header):
    if header:
        print(f"# {'op':>10} {'size':>10} {'count':>10} {'type':>6} {'redop':>5} | {'chorus time(us)':>15} {'algbw':>7} {'busbw':>7} {'#wrong':>6} | {'gloo time(us)':>13} {'algbw':>7} {'busbw':>7} {'#wrong':>6} | {'speedup':>7}")
    c, g = row["chorus"], row["gloo"]
    redop = "sum" if row["op"] == "all_reduce" else "none"
    print(f"  {row['op']:>10} {row['size']:>10} {row['count']:>10} {'float':>6} {redop:>5} | {c[0]:15.1f} {c[1]:7.3f} {c[2]:7.3f} {c[3]:6d} | {g[0]:13.1f} {g[1]:7.3f} {g[2]:7.3f} {g[3]:6d} | {g[0] / c[0]:6.2f}x", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--min-bytes", type=parse_size, default=parse_size("1K"))
    p.add_argument("--max-bytes", type=parse_size, default=parse_size("64M"))
    p.add_argument("--step", type=int, default=4, help="size multiplier between rows")
    p.add_argument("--ops", type=lambda s: s.split(","), default=OPS)
    p.add_argument("--min-iters", type=int, default=3)
    p.add_argument("--max-iters", type=int, default=200)
    p.add_argument("--target-bytes", type=float, default=256e6, help="bytes moved per measurement (sets the iterations)")
    p.add_argument("--overhead-iters", type=int, default=2000)
    p.add_argument("--percall", action="store_true", help="per-call cost of small calls instead of the size sweep")
    p.add_argument("--percall-ops", type=lambda s: s.split(","), default=PERCALL_OPS)
    p.add_argument("--percall-iters", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per backend (best is kept)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    if args.percall and "--min-bytes" not in " ".join(sys.argv):
        args.min_bytes = 8
    if args.percall and "--max-bytes" not in " ".join(sys.argv):
        args.max_bytes = 64 << 10
    if args.percall:
        for op in args.percall_ops:
            if op not in PERCALL_OPS:
                p.error(f"unknown op {op}; choose from {PERCALL_OPS}")
    for op in args.ops:
        if op not in OPS:
            p.error(f"unknown op {op}; choose from {OPS}")
    if "RANK" in os.environ:  # a child of this script, or launched by torchrun: every rank runs the worker
        return percall_worker(args) if args.percall else worker(args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(args.nproc):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(args.nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CHORUS_BENCH_CHILD="1")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env=env))
    codes = [p.wait() for p in procs]
    return max(abs(c) for c in codes)


if __name__ == "__main__":
    sys.exit(main())
