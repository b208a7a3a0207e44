"""Time to the first GPU collective on a fresh machine: `init_process_group` plus the first CUDA
all_reduce (and its synchronize), per rank, with an empty chorus kernel cache and the driver's JIT
cache off (`CUDA_CACHE_DISABLE=1`), for chorus and NCCL side by side, alternating, best of `--rounds`.
Every rank is a fresh process; torch is imported and the CUDA context made before the clock starts
(the same for both backends), and the ranks start the clock together, so the time is the backend's own.

    python python/bench_startup.py --nproc 1,2 --rounds 3

NCCL runs only where every rank has its own GPU (it refuses two ranks on one device); chorus also
runs 2 ranks sharing one GPU.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

WORKER = r"""
import json, os, sys, time
import torch
import torch.distributed as dist
backend = sys.argv[1]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
t_import = time.perf_counter()
if backend == "chorus":
    import chorus  # registers the backend (the native adapter is already built and cached)
t_import = time.perf_counter() - t_import
dev = torch.device("cuda", rank % torch.cuda.device_count())
torch.cuda.set_device(dev)
x = torch.ones(256, device=dev)
torch.cuda.synchronize()
# Start together: every rank waits here until all are ready (files, outside any backend), so a rank's
# time does not include the others' torch import.
ready = os.environ["BENCH_READY_DIR"]
open(os.path.join(ready, str(rank)), "w").close()
while len(os.listdir(ready)) < world:
    time.sleep(0.001)
t0 = time.perf_counter()
dist.init_process_group(backend, rank=rank, world_size=world)
t1 = time.perf_counter()
dist.all_reduce(x)
torch.cuda.synchronize()
t2 = time.perf_counter()
ok = float(x[0].item()) == float(world)
print(json.dumps({"rank": rank, "init": t1 - t0, "first": t2 - t1, "total": t2 - t0, "import": t_import, "ok": ok}), flush=True)
dist.destroy_process_group()
os._exit(0)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(backend, world, timeout):
    with tempfile.TemporaryDirectory(prefix="chorus-startup-") as cache, tempfile.TemporaryDirectory() as ready:
        env = dict(os.environ)
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world),
                   CUDA_CACHE_DISABLE="1", CHORUS_KERNEL_CACHE=cache, BENCH_READY_DIR=ready)
        procs = []
        for r in range(world):
            e = dict(env, RANK=str(r), LOCAL_RANK=str(r))
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, backend], env=e,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        rows = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise SystemExit(f"{backend} world {world}: timed out after {timeout} s")
            line = [ln for ln in out.splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not line:
                raise SystemExit(f"{backend} world {world}: rank failed (rc {p.returncode})\n{out}\n{err[-3000:]}")
            rows.append(json.loads(line[-1]))
        if not all(r["ok"] for r in rows):
            raise SystemExit(f"{backend} world {world}: wrong all_reduce result")
        return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", default="1,2", help="world sizes (comma list)")
    ap.add_argument("--backends", default="chorus,nccl")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    import torch
    ngpu = torch.cuda.device_count()
    if ngpu == 0:
        raise SystemExit("no CUDA device")
    print(f"# torch {torch.__version__}, {ngpu} x {torch.cuda.get_device_name(0)}; fresh processes, empty kernel "
          f"cache, CUDA_CACHE_DISABLE=1; seconds, max over ranks, best of {args.rounds} rounds", flush=True)
    best = {}
    for rnd in range(args.rounds):
        for world in [int(w) for w in args.nproc.split(",")]:
            for backend in args.backends.split(","):
                if backend == "nccl" and world > ngpu:
                    continue
                rows = run_once(backend, world, args.timeout)
                worst = max(rows, key=lambda r: r["total"])
                print(f"round {rnd} {backend:6s} world {world}: init {worst['init']:.3f} + first all_reduce "
                      f"{worst['first']:.3f} = {worst['total']:.3f} s (import {worst['import']:.3f} s)", flush=True)
                key = (backend, world)
                if key not in best or worst["total"] < best[key]["total"]:
                    best[key] = worst
    print("\n| backend | world | init_process_group | first all_reduce | total |\n|---|---|---|---|---|")
    for (backend, world), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| {backend} | {world} | {r['init']:.3f} | {r['first']:.3f} | {r['total']:.3f} |")


if __name__ == "__main__":
    main()
