"""One rank of the CUDA suite: collectives on CUDA tensors through chorus (a new_group) and a reference
(the default group), on the same inputs, compared element for element; plus sub-allocated tensors,
async work, a side stream, many back-to-back ops over several streams, and CUDA graph capture and
replay.

The reference is NCCL (CHORUS_TEST_REFERENCE=nccl, one rank per GPU), or, where NCCL cannot run
(ranks sharing one GPU), CHORUS_TEST_REFERENCE=cpu: every rank's input gathered on the CPU over
Gloo and the result computed there in float64 / int64 (exact for these inputs over 2 ranks).

Run by test_cuda.py as WORLD_SIZE processes; writes a JSON report to CHORUS_TEST_REPORT.
"""
import json
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus  # noqa: F401  (registers the backend)

R = dist.ReduceOp
rank = int(os.environ["RANK"])
ws = int(os.environ["WORLD_SIZE"])
failures: list[str] = []
counts = {"cases": 0}
dev = torch.device("cuda", rank % torch.cuda.device_count())


def data(seed: int, n: int, dtype) -> torch.Tensor:
    """Small integers: sums, products and averages over 2 ranks are exact in every dtype."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (0, 6) if dtype == torch.uint8 else (-6, 7)
    return torch.randint(lo, hi, (n,), generator=g).to(dtype).to(dev)


def check(name: str, got: torch.Tensor, want: torch.Tensor):
    counts["cases"] += 1
    if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got.cpu(), want.cpu()):
        bad = (got.cpu().float() != want.cpu().float()).nonzero()
        failures.append(f"{name}: differs at {bad[:3].flatten().tolist()} of {want.numel()} "
                        f"(got {got.flatten()[:4].tolist()}, want {want.flatten()[:4].tolist()})")


class NcclReference:
    """The same calls on the default (NCCL) group."""

    def __getattr__(self, name):
        return getattr(dist, name)


class CpuReference:
    """What the collectives return, from every rank's input gathered on the CPU (Gloo, default group)."""

    def _gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        wide = torch.float64 if t.dtype.is_floating_point else torch.int64
        x = t.detach().reshape(-1).cpu().to(wide)
        lens = [torch.zeros(1, dtype=torch.int64) for _ in range(ws)]
        dist.all_gather(lens, torch.tensor([x.numel()]))
        top = max(int(l) for l in lens)
        padded = torch.cat([x, torch.zeros(top - x.numel(), dtype=wide)])
        parts = [torch.empty(top, dtype=wide) for _ in range(ws)]
        dist.all_gather(parts, padded)
        return [p[:int(l)] for p, l in zip(parts, lens)]

    @staticmethod
    def _reduce(parts, op):
        s = torch.stack(parts)
        if op == R.SUM:
            return s.sum(0)
        if op == R.AVG:
            return s.sum(0) / len(parts)
        if op == R.MAX:
            return s.max(0).values
        if op == R.MIN:
            return s.min(0).values
        if op == R.PRODUCT:
            return s.prod(0)
        raise ValueError(f"no reference for {op}")

    def all_reduce(self, t, op=R.SUM):
        t.copy_(self._reduce(self._gather(t), op).to(t.dtype))

    def broadcast(self, t, src):
        t.copy_(self._gather(t)[src].to(t.dtype))

    def reduce(self, t, dst, op=R.SUM):
        r = self._reduce(self._gather(t), op)
        if rank == dst:
            t.copy_(r.to(t.dtype))

    def all_gather_into_tensor(self, out, x):
        out.copy_(torch.cat(self._gather(x)).to(out.dtype))

    def reduce_scatter_tensor(self, out, x, op=R.SUM):
        k = out.numel()
        out.copy_(self._reduce(self._gather(x), op)[rank * k:(rank + 1) * k].to(out.dtype))

    def gather(self, t, gather_list, dst):
        parts = self._gather(t)
        if rank == dst:
            for o, p in zip(gather_list, parts):
                o.copy_(p.to(o.dtype))

    def scatter(self, out, scatter_list, src):
        mine = torch.cat(scatter_list) if rank == src else out.new_zeros(0)
        k = out.numel()
        out.copy_(self._gather(mine)[src][rank * k:(rank + 1) * k].to(out.dtype))

    def all_to_all_single(self, out, x, output_split_sizes=None, input_split_sizes=None):
        splits = input_split_sizes or [x.numel() // ws] * ws
        every = [s.tolist() for s in self._gather(torch.tensor(splits))]
        parts = self._gather(x)
        blocks = [parts[p][sum(every[p][:rank]):sum(every[p][:rank + 1])] for p in range(ws)]
        out.copy_(torch.cat(blocks).to(out.dtype))


def run(ref, ch):
    sizes = [1, 7, 1031, 65537, 3_000_001]
    # all_reduce: dtypes x ops x sizes, including tensors carved out of one allocation at offsets.
    big = torch.zeros(64 << 20, dtype=torch.uint8, device=dev)
    for dtype, ops in [(torch.float32, [R.SUM, R.AVG, R.MAX, R.MIN, R.PRODUCT]), (torch.bfloat16, [R.SUM, R.AVG, R.MAX]),
                       (torch.float16, [R.SUM, R.MIN]), (torch.float64, [R.SUM]), (torch.int32, [R.SUM, R.MAX, R.MIN]),
                       (torch.int64, [R.SUM]), (torch.int8, [R.SUM]), (torch.uint8, [R.MAX])]:
        for op in ops:
            for i, n in enumerate(sizes):
                if op == R.PRODUCT and n > 1031:
                    continue
                x = data(rank * 1000 + i, n, dtype)
                want = x.clone()
                ref.all_reduce(want, op=op)
                off = (64 << (2 * i)) + 64 * rank  # 64 B, 256 B, 1 KB, 4 KB, 16 KB (+ rank)
                esz = x.element_size()
                view = big[off:off + n * esz].view(dtype)
                view.copy_(x)
                dist.all_reduce(view, op=op, group=ch)
                check(f"all_reduce {dtype} {op} n={n} at offset {off}", view, want)
    for n in [1, 1031, 3_000_001]:
        for root in range(ws):
            x = data(7 * rank + n, n, torch.float32)
            a, b = x.clone(), x.clone()
            ref.broadcast(a, root)
            dist.broadcast(b, root, group=ch)
            check(f"broadcast n={n} root={root}", b, a)
            a, b = x.clone(), x.clone()
            ref.reduce(a, root)
            dist.reduce(b, root, group=ch)
            if rank == root:
                check(f"reduce n={n} root={root}", b, a)
        x = data(11 * rank + n, n, torch.bfloat16)
        outs = [torch.empty(n * ws, dtype=x.dtype, device=dev) for _ in range(2)]
        ref.all_gather_into_tensor(outs[0], x)
        dist.all_gather_into_tensor(outs[1], x, group=ch)
        check(f"all_gather_into_tensor n={n}", outs[1], outs[0])
        lst = [torch.empty(n, dtype=x.dtype, device=dev) for _ in range(ws)]
        dist.all_gather(lst, x, group=ch)
        check(f"all_gather (list) n={n}", torch.cat(lst), outs[0])
        x = data(13 * rank + n, n * ws, torch.float32)
        outs = [torch.empty(n, dtype=x.dtype, device=dev) for _ in range(2)]
        ref.reduce_scatter_tensor(outs[0], x)
        dist.reduce_scatter_tensor(outs[1], x, group=ch)
        check(f"reduce_scatter_tensor n={n}", outs[1], outs[0])
        x = data(17 * rank + n, n * ws, torch.int32)
        outs = [torch.empty_like(x) for _ in range(2)]
        ref.all_to_all_single(outs[0], x)
        dist.all_to_all_single(outs[1], x, group=ch)
        check(f"all_to_all_single n={n}", outs[1], outs[0])
        # Uneven splits: rank r sends (p + 1) * (r + 1) * n // 7 + 1 elements to rank p.
        send = [(p + 1) * (rank + 1) * n // 7 + 1 for p in range(ws)]
        recv = [(rank + 1) * (p + 1) * n // 7 + 1 for p in range(ws)]
        x = data(19 * rank + n, sum(send), torch.float32)
        outs = [torch.empty(sum(recv), dtype=x.dtype, device=dev) for _ in range(2)]
        ref.all_to_all_single(outs[0], x, recv, send)
        dist.all_to_all_single(outs[1], x, recv, send, group=ch)
        check(f"all_to_all_single uneven n={n}", outs[1], outs[0])
        for root in range(ws):
            x = data(29 * rank + n + root, n, torch.float32)
            lists = [[torch.empty(n, device=dev) for _ in range(ws)] if rank == root else None for _ in range(2)]
            ref.gather(x, lists[0], root)
            dist.gather(x, lists[1], root, group=ch)
            if rank == root:
                check(f"gather n={n} root={root}", torch.cat(lists[1]), torch.cat(lists[0]))
            ins = [data(37 * rank + 3 * q + n, n, torch.float32) for q in range(ws)] if rank == root else None
            outs = [torch.empty(n, device=dev) for _ in range(2)]
            ref.scatter(outs[0], ins, root)
            dist.scatter(outs[1], ins, root, group=ch)
            check(f"scatter n={n} root={root}", outs[1], outs[0])
    # send/recv: rank 0 -> 1, then 1 -> 0 (one direction at a time).
    if ws >= 2 and rank < 2:
        for n in [5, 3_000_001]:
            x = data(23 + n, n, torch.float32)
            for src in (0, 1):
                buf = torch.zeros_like(x)
                if rank == src:
                    dist.send(x, 1 - src, group=ch)
                else:
                    dist.recv(buf, src, group=ch)
                    check(f"send/recv n={n} {src}->{1 - src}", buf, x)
    # Async work and a side stream.
    x = data(31 * rank, 4099, torch.float32)
    want = x.clone()
    ref.all_reduce(want)
    got = x.clone()
    w = dist.all_reduce(got, group=ch, async_op=True)
    w.wait()
    check("async all_reduce", got, want)
    s = torch.cuda.Stream(device=dev)
    got = x.clone()
    s.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(s):
        dist.all_reduce(got, group=ch)
    torch.cuda.current_stream(dev).wait_stream(s)
    check("all_reduce on a side stream", got, want)
    # 48 back-to-back ops over three streams, then one check each.
    streams = [torch.cuda.Stream(device=dev) for _ in range(3)]
    bufs, wants = [], []
    for i in range(48):
        x = data(1000 + 37 * rank + i, 2048 + i, torch.float32)
        w_ = x.clone()
        ref.all_reduce(w_)
        bufs.append(x)
        wants.append(w_)
    torch.cuda.synchronize(dev)
    for i, b in enumerate(bufs):
        with torch.cuda.stream(streams[i % 3]):
            dist.all_reduce(b, group=ch)
    torch.cuda.synchronize(dev)
    for i, (b, w_) in enumerate(zip(bufs, wants)):
        check(f"multi-stream all_reduce #{i}", b, w_)
    # CUDA graph: all_reduce (one-shot and two-shot sizes) and all_gather on static tensors.
    small, large = torch.zeros(1000, device=dev), torch.zeros(600_000, device=dev)
    gin, gout = torch.zeros(777, device=dev), torch.zeros(777 * ws, device=dev)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        dist.all_reduce(small, group=ch)
        dist.all_reduce(large, group=ch)
        dist.all_gather_into_tensor(gout, gin, group=ch)
    for replay in range(3):
        xs, xl, xg = data(50 + replay + rank, 1000, torch.float32), data(60 + replay + rank, 600_000, torch.float32), data(70 + replay + rank, 777, torch.float32)
        ws_, wl, wg = xs.clone(), xl.clone(), torch.empty(777 * ws, device=dev)
        ref.all_reduce(ws_)
        ref.all_reduce(wl)
        ref.all_gather_into_tensor(wg, xg)
        small.copy_(xs)
        large.copy_(xl)
        gin.copy_(xg)
        g.replay()
        torch.cuda.synchronize(dev)
        check(f"graph replay {replay}: all_reduce small", small, ws_)
        check(f"graph replay {replay}: all_reduce large", large, wl)
        check(f"graph replay {replay}: all_gather", gout, wg)


def main():
    torch.cuda.set_device(dev)
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws, is_master=False, timeout=timedelta(seconds=120))
    cpu_ref = os.environ.get("CHORUS_TEST_REFERENCE", "nccl") == "cpu"
    if cpu_ref:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=ws, timeout=timedelta(seconds=120))
    else:
        dist.init_process_group("nccl", store=store, rank=rank, world_size=ws, timeout=timedelta(seconds=120), device_id=dev)
    ch = dist.new_group(backend="chorus")
    try:
        run(CpuReference() if cpu_ref else NcclReference(), ch)
    except Exception:
        failures.append("worker crashed: " + traceback.format_exc())
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as fh:
        json.dump({"rank": rank, "failures": failures, **counts}, fh)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    import _worker_exit

    _worker_exit.run(main)
