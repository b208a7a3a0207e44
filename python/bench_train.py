#!/usr/bin/env python
"""A training step, end to end: DDP and FSDP2 over chorus against the peer backend.

    python python/bench_train.py                          # 2 ranks, CPU, DDP and FSDP2, chorus vs Gloo
    python python/bench_train.py --rounds 3 --steps 30 --mode ddp
    python python/bench_train.py --device cuda --nproc 2  # one rank per GPU, chorus vs NCCL
    torchrun --nproc-per-node 2 python/bench_train.py     # under torchrun (RANK set): every rank runs the worker

Each rank trains the same MLP (--layers Linear(hidden, hidden) + ReLU, then a 10-way head: a few million
parameters by default) with AdamW on deterministic synthetic data: the inputs are seeded per rank,
the labels come from a fixed random teacher, so the loss goes down. Every run starts from the same weights
(one state dict made with a fixed seed) and sees the same batches, and is done twice per round: once over
chorus (the default group, ``init_process_group("chorus")``) and once over the peer backend
(``new_group(backend="gloo")`` on CPU, ``"nccl"`` on CUDA), the order alternating round by round.

  ddp    DistributedDataParallel(model, process_group=g, bucket_cap_mb=--bucket-mb): several buckets,
         all-reduced while the backward pass computes.
  fsdp2  torch.distributed.fsdp.fully_shard on every Linear and on the root, over
         DeviceMesh.from_group(g, device_type): all_gather_into_tensor before each layer's forward and
         backward, reduce_scatter_tensor (AVG) of its gradients.

A step is zero_grad, forward, loss, backward, optimizer step (and a device synchronize on CUDA). Each rank
times its own steps; a step's time is the slowest rank's. Per backend the report keeps the round with the
lowest median and gives that median and the best single step over all rounds. Losses are reported at every
step (mean over ranks; warm-up steps are w1..); chorus's per-rank losses and final parameters are compared
with the peer's: on 2 ranks they must be equal (a 2-term sum is commutative), so a difference exits with 1;
on more ranks the summation order may differ, so the largest relative difference is reported.
Timing control (barriers, gathering the results) runs on a separate Gloo group.

--device cuda (one rank per GPU, torch.cuda.set_device(LOCAL_RANK), DDP with device_ids, FSDP2 on a "cuda"
mesh, a synchronize per step) has not been run yet: it was written on a machine without a GPU.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta

MODES = ["ddp", "fsdp2"]
CLASSES = 10


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def build_model(args):
    import torch.nn as nn

    layers = []
    for _ in range(args.layers):
        layers += [nn.Linear(args.hidden, args.hidden), nn.ReLU()]
    layers.append(nn.Linear(args.hidden, CLASSES))
    return nn.Sequential(*layers)


def worker(args):
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    import torch.nn.functional as F

    import chorus

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(args.threads or max(1, len(os.sched_getaffinity(0)) // max(1, local_world)))
    dist.init_process_group("chorus", rank=rank, world_size=world, timeout=timedelta(seconds=600))
    backend_path = chorus.backend_path() if hasattr(chorus, "backend_path") else "python"
    peer = "nccl" if cuda else "gloo"
    groups = {"chorus": dist.distributed_c10d._get_default_group(), peer: dist.new_group(backend=peer)}
    ctl = dist.new_group(backend="gloo")  # timing control stays off the measured groups

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # The same initial weights for every run: one state dict from a fixed seed (every rank builds the same).
    torch.manual_seed(args.seed)
    init_state = {k: v.detach().clone() for k, v in build_model(args).state_dict().items()}
    nparams = sum(v.numel() for v in init_state.values())
    # The same data for every run: inputs seeded per rank, labels from a fixed teacher shared by all ranks.
    teacher = torch.randn(args.hidden, CLASSES, generator=torch.Generator().manual_seed(args.seed + 1))
    gen = torch.Generator().manual_seed(1000 + rank)
    total = args.warmup + args.steps
    batches = []
    for _ in range(total):
        x = torch.randn(args.batch, args.hidden, generator=gen)
        batches.append((x.to(dev), (x @ teacher).argmax(dim=1).to(dev)))

    meshes = {}

    def make(mode, name):
        model = build_model(args).to(dev)
        model.load_state_dict(init_state)
        g = groups[name]
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, process_group=g, bucket_cap_mb=args.bucket_mb, device_ids=[local_rank] if cuda else None)
        else:
            from torch.distributed.device_mesh import DeviceMesh
            from torch.distributed.fsdp import fully_shard

            if name not in meshes:
                meshes[name] = DeviceMesh.from_group(g, args.device)
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=meshes[name])
            fully_shard(model, mesh=meshes[name])
        return model, torch.optim.AdamW(model.parameters(), lr=args.lr)

    def run(mode, name):
        """One training run: warm-up steps, then timed steps. Returns (losses of every rank [world, steps],
        the slowest rank's time of each timed step, this rank's final parameters or shards, DDP buckets)."""
        model, opt = make(mode, name)
        losses, times = [], []
        for i, (x, y) in enumerate(batches):
            if i == args.warmup:
                sync()
                dist.barrier(group=ctl)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sync()
            dt = time.perf_counter() - t0
            losses.append(loss.detach())
            if i >= args.warmup:
                times.append(dt)
        buckets = None
        if mode == "ddp":
            try:
                data = model._get_ddp_logging_data()
                sizes = [int(b) for b in str(data.get("rebuilt_bucket_sizes") or data["bucket_sizes"]).split(",")]
                buckets = f"{len(sizes)} ({', '.join(f'{b / 2**20:.1f}' for b in sizes)} MiB)"
            except Exception:  # a prototype interface; the bucket count is only informative
                buckets = None
        params = [(p.to_local() if hasattr(p, "to_local") else p).detach().to("cpu", copy=True) for p in model.parameters()]
        local = torch.tensor([float(v) for v in losses], dtype=torch.float64)
        every = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(every, local, group=ctl)
        t = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctl)  # a step takes as long as its slowest rank
        del model, opt
        return torch.stack(every), t.tolist(), params, buckets

    if rank == 0:
        print(f"# bench_train: {world} rank(s), {args.device}, torch {torch.__version__}, chorus backend: {backend_path}; "
              f"MLP {args.layers} x Linear({args.hidden}, {args.hidden}) + head, {nparams / 1e6:.2f}M params "
              f"({nparams * 4 / 2**20:.1f} MiB fp32), batch {args.batch}/rank, {args.warmup} warm-up + {args.steps} steps, "
              f"{args.rounds} round(s), peer {peer}", flush=True)
    summary = []
    failed = False
    for mode in args.mode:
        results = {name: {"rounds": [], "losses": None, "params": None, "deterministic": True} for name in groups}
        buckets = None
        for r in range(args.rounds):
            order = list(groups) if r % 2 == 0 else list(groups)[::-1]
            for name in order:
                every, times, params, nb = run(mode, name)
                buckets = nb if nb is not None else buckets
                res = results[name]
                res["rounds"].append(times)
                if res["losses"] is None:
                    res["losses"], res["params"] = every, params
                elif not torch.equal(res["losses"], every):
                    res["deterministic"] = False
        c, p = results["chorus"], results[peer]
        losses_equal = torch.equal(c["losses"], p["losses"])
        loss_rel = float(((c["losses"] - p["losses"]).abs() / p["losses"].abs().clamp_min(1e-30)).max())
        # Final parameters (the first round's; each rank compares its own, or its shards under FSDP2).
        eq = all(torch.equal(a, b) for a, b in zip(c["params"], p["params"]))
        rel = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(c["params"], p["params"]))
        flags = torch.tensor([0.0 if eq else 1.0, rel], dtype=torch.float64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=ctl)
        params_equal, param_rel = flags[0] == 0, float(flags[1])
        if rank == 0:
            stats = {}
            for name, res in results.items():
                best_round = min(res["rounds"], key=statistics.median)
                stats[name] = (statistics.median(best_round), min(min(t) for t in res["rounds"]))
            extra = f", DDP buckets: {buckets}" if buckets else ""
            print(f"\n## {mode}: loss per step (mean over {world} ranks){extra}")
            print(f"| step | chorus | {peer} | equal |")
            print("|---:|---:|---:|:---:|")
            for i in range(total):
                step = f"w{i + 1}" if i < args.warmup else str(i - args.warmup + 1)
                cl, pl = c["losses"][:, i], p["losses"][:, i]
                print(f"| {step} | {float(cl.mean()):.8f} | {float(pl.mean()):.8f} | {'yes' if torch.equal(cl, pl) else 'NO'} |")
            print(f"\n{mode}: chorus losses {'EQUAL' if losses_equal else 'DIFFER from'} {peer}'s step for step on every rank"
                  + ("" if losses_equal else f" (max relative difference {loss_rel:.3e})")
                  + f"; final parameters {'equal' if params_equal else f'differ (max relative difference {param_rel:.3e})'}")
            for name, res in results.items():
                if not res["deterministic"]:
                    print(f"{mode}: WARNING: {name}'s losses changed between rounds from the same start")
            for name in groups:
                med, best = stats[name]
                print(f"{mode}: {name:7s} step median {med * 1e3:8.2f} ms, best {best * 1e3:8.2f} ms, "
                      f"{args.batch * world / med:9.0f} samples/s", flush=True)
            for name in groups:
                med, best = stats[name]
                summary.append((mode, name, med, best, losses_equal, params_equal, loss_rel, param_rel))
        if world == 2 and not (losses_equal and params_equal):
            failed = True
    if rank == 0:
        print("\n| mode | backend | median step (ms) | best step (ms) | samples/s | losses = peer | final params = peer |")
        print("|---|---|---:|---:|---:|:---:|:---:|")
        for mode, name, med, best, le, pe, lr_, pr_ in summary:
            cmp_l = "yes" if le else f"no ({lr_:.1e})"
            cmp_p = "yes" if pe else f"no ({pr_:.1e})"
            print(f"| {mode} | {name} | {med * 1e3:.2f} | {best * 1e3:.2f} | {args.batch * world / med:.0f} | {cmp_l} | {cmp_p} |")
        print("\n| machine | |\n|---|---|")
        print(f"| nproc | {len(os.sched_getaffinity(0))} |")
        print(f"| load average (1, 5 min) at the end | {os.getloadavg()[0]:.1f}, {os.getloadavg()[1]:.1f} |")
        print(f"| CPU | {cpu_model()} |")
        if cuda:
            print(f"| GPU | {torch.cuda.get_device_name(dev)} |")
        print(f"| torch | {torch.__version__} |")
        print(f"| chorus backend path | {backend_path} |")
        print(f"| ranks | {world} x {args.device}, {torch.get_num_threads() if not cuda else '-'} thread(s)/rank |")
        print(f"| model | {args.layers} x {args.hidden} MLP, {nparams / 1e6:.2f}M params, batch {args.batch}/rank, bucket_cap_mb {args.bucket_mb} |", flush=True)
    dist.barrier(group=ctl)
    dist.destroy_process_group()
    return 1 if failed else 0


def launch(args) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(args.nproc):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(args.nproc), LOCAL_WORLD_SIZE=str(args.nproc),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CHORUS_BENCH_CHILD="1")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env=env))
    # A rank that fails would leave the others waiting in a collective: stop them.
    codes = {}
    while len(codes) < len(procs):
        for i, p in enumerate(procs):
            if i not in codes and p.poll() is not None:
                codes[i] = p.returncode
                if p.returncode != 0:
                    time.sleep(5)
                    for j, q in enumerate(procs):
                        if j not in codes and q.poll() is None:
                            print(f"bench_train: rank {i} exited with {p.returncode}; stopping rank {j}", file=sys.stderr)
                            q.kill()
        time.sleep(0.1)
    return max(abs(c) for c in codes.values())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2, help="ranks to start (ignored under torchrun)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per backend (best is kept)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--mode", type=lambda s: s.split(","), default=MODES, help="ddp,fsdp2")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=64, help="samples per rank and step")
    p.add_argument("--bucket-mb", type=float, default=2.0, help="DDP bucket_cap_mb (small: several buckets)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank on CPU (0: cores / local ranks)")
    args = p.parse_args()
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be at least 1")
    for m in args.mode:
        if m not in MODES:
            p.error(f"unknown mode {m}; choose from {MODES}")
    if "RANK" in os.environ:  # a child of this script, or launched by torchrun
        return worker(args)
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
