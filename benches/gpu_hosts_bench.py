"""CUDA all_reduce and broadcast in a group spanning simulated hosts (issue 26, item 2): ranks share
the visible GPUs (round-robin), CHORUS_HOST_ID gives each its host; the hybrid route (kernels
within each host, host transports across) against the host path (CHORUS_CUDA_PATH=host) for the
same layout, alternating, best of the rounds. Launches its own ranks.

    python3 benches/gpu_hosts_bench.py --hosts h0,h0,h1,h1 [--sizes 64K,1M,16M,64M] [--rounds 3]
"""
import argparse
import os
import subprocess
import sys
import time
from datetime import timedelta

HERE = os.path.abspath(__file__)


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def rank_main():
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    os.environ["CHORUS_HOST_ID"] = os.environ["BENCH_HOSTS"].split(",")[rank]
    import torch
    import torch.distributed as dist
    import chorus  # noqa: F401
    store = dist.TCPStore("127.0.0.1", int(os.environ["BENCH_PORT"]), ws + 1, is_master=False, timeout=timedelta(seconds=120))
    dist.init_process_group("chorus", store=store, rank=rank, world_size=ws)
    dev = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    iters = int(os.environ["BENCH_ITERS"])
    for size in os.environ["BENCH_SIZES"].split(","):
        n = parse_size(size) // 4
        t = torch.ones(n, device=dev)
        for op in ("all_reduce", "broadcast"):
            run = (lambda: dist.all_reduce(t)) if op == "all_reduce" else (lambda: dist.broadcast(t, 0))
            for _ in range(3):
                run()
            torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(iters):
                run()
            torch.cuda.synchronize()
            us = (time.perf_counter() - t0) / iters * 1e6
            if rank == 0:
                print(f"result {op} {size} {us:.1f}", flush=True)
    dist.destroy_process_group()


def launch(hosts, sizes, iters, path):
    import torch.distributed as dist
    store = dist.TCPStore("127.0.0.1", 0, len(hosts) + 1, is_master=True, timeout=timedelta(seconds=120), wait_for_workers=False)
    env = dict(os.environ, BENCH_HOSTS=",".join(hosts), BENCH_PORT=str(store.port), BENCH_SIZES=",".join(sizes), BENCH_ITERS=str(iters),
               WORLD_SIZE=str(len(hosts)), BENCH_RANK="1")
    if path == "host":
        env["CHORUS_CUDA_PATH"] = "host"
    else:
        env.pop("CHORUS_CUDA_PATH", None)
    procs = [subprocess.Popen([sys.executable, HERE], env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, text=True) for r in range(len(hosts))]
    out = procs[0].communicate(timeout=600)[0]
    for p in procs[1:]:
        p.wait(timeout=600)
    res = {}
    for line in out.splitlines():
        if line.startswith("result "):
            _, op, size, us = line.split()
            res[(op, size)] = float(us)
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hosts", default="h0,h0,h1,h1")
    p.add_argument("--sizes", default="64K,1M,16M,64M")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    hosts, sizes = a.hosts.split(","), a.sizes.split(",")
    best = {"hybrid": {}, "host": {}}
    for _ in range(a.rounds):
        for path in ("hybrid", "host"):
            for k, v in launch(hosts, sizes, a.iters, path).items():
                best[path][k] = min(v, best[path].get(k, float("inf")))
    print(f"hosts {a.hosts}, float32, best of {a.rounds} alternating rounds, {a.iters} iterations each (µs per call)")
    print("| op | size | hybrid (us) | host path (us) | host / hybrid |")
    print("|---|---:|---:|---:|---:|")
    for op in ("all_reduce", "broadcast"):
        for s in sizes:
            h, c = best["hybrid"].get((op, s)), best["host"].get((op, s))
            print(f"| {op} | {s} | {h:.1f} | {c:.1f} | {c / h:.2f}x |" if h and c else f"| {op} | {s} | {h} | {c} | |")


if __name__ == "__main__":
    rank_main() if os.environ.get("BENCH_RANK") else main()
