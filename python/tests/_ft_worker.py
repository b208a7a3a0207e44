"""Fault-tolerance worker: loops dist.all_reduce on CPU tensors and prints, per collective, a digest of
the result with its contributors, failed ranks and epoch (checked in-process against the sum over the
contributors). The test kills one rank and starts a replacement (CHORUS_JOIN=1) for it.

Env: RANK, WORLD_SIZE, CHORUS_TEST_STORE_PORT, CHORUS_JOIN (replacement), FT_AFTER (collectives to run
after the group grew back, then stop: every member sees the growth at the same collective), FT_DEVICE
(cpu, or cuda: the tensors live on GPU rank % device_count and take the host path, cuda_path="host";
or cuda-kernels: see below).

FT_DEVICE=cuda-kernels runs the GPU kernel path, which cannot finish a collective without a peer: the
original ranks first loop GPU all_reduces (printing `gpu ...`) until one fails because a peer died
(the group aborts its GPU communicator; printed as `gpu failed ...`). One host all_reduce then removes
the dead rank from the view, and GPU_SURVIVORS rounds of GPU collectives run over the survivors on a
communicator built for that view (`gpu-survivors ...`, then `gpu-survivors done`; the test starts the
replacement only then). Then the host loop above runs on CPU tensors while the group grows back, and
every rank (the replacement too) runs GPU_AFTER more GPU all_reduces over all ranks on a communicator
rebuilt for the new view.
"""
import hashlib
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus

ELEMS = 1000


def values(rank: int, it: int) -> torch.Tensor:
    return (rank + 1) * 1_000_003 + it * 7919 + torch.arange(ELEMS, dtype=torch.float64)


def gpu_all_reduce(rank: int, n: int, gpu, it: int) -> str:
    """One all_reduce on the GPU kernel path over all n ranks, checked; returns the result's digest."""
    t = values(rank, it).to(gpu)
    dist.all_reduce(t)
    torch.cuda.synchronize()
    chorus.check_device()
    want = sum(values(r, it) for r in range(n))
    got = t.cpu()
    if not torch.equal(got, want):
        print(f"gpu {it}: wrong result {got[:4].tolist()} != {want[:4].tolist()}", flush=True)
        sys.exit(3)
    return hashlib.sha1(got.numpy().tobytes()).hexdigest()[:16]


def gpu_until_failure(rank: int, n: int, gpu):
    """GPU all_reduces until one fails (a peer was killed): the failure must come from the abort, long
    before the kernels' 60 s deadline, and name the dead rank."""
    deadline = time.time() + 120
    it = 0
    while time.time() < deadline:
        t0 = time.time()
        try:
            digest = gpu_all_reduce(rank, n, gpu, it)
        except chorus.ChorusError as e:
            msg = str(e).replace("\n", " ")
            print(f"gpu failed at {it} after {time.time() - t0:.2f} s: {msg}", flush=True)
            return
        print(f"gpu {it} digest {digest}", flush=True)
        it += 1
        time.sleep(0.005)
    print("gave up: no GPU collective failed", flush=True)
    sys.exit(4)


def gpu_over_survivors(rank: int, n: int, gpu, rounds: int):
    """GPU collectives in a view without the dead rank, checked against the host path's semantics:
    reductions over the members (AVG divides by their count), zeros in all_gather and gather blocks
    of inactive ranks, all_to_all blocks from inactive ranks untouched, and a broadcast from the dead
    root and a send to the dead rank fail on every survivor."""
    t = torch.zeros(4, dtype=torch.float64)
    work = dist.all_reduce(t, async_op=True)
    work.wait()
    active = chorus.get_active_ranks()
    dead = [r for r in range(n) if r not in active]
    print(f"survivors {active} dead {dead} failed {chorus.get_failed_ranks(work)} epoch {chorus.get_current_epoch()}", flush=True)
    b, f64 = 257, torch.float64
    for j in range(rounds):
        it = 20_000 + j
        v = {r: values(r, it)[:b] for r in range(n)}
        x = values(rank, it).to(gpu)
        dist.all_reduce(x)
        ag = torch.full((n * b,), -1.0, dtype=f64, device=gpu)
        dist.all_gather_into_tensor(ag, v[rank].to(gpu))
        rs = torch.full((b,), -1.0, dtype=f64, device=gpu)
        dist.reduce_scatter_tensor(rs, torch.cat([v[rank] + 10 * q for q in range(n)]).to(gpu))
        a2a = torch.full((n * b,), -1.0, dtype=f64, device=gpu)
        dist.all_to_all_single(a2a, torch.cat([v[rank] * (q + 1) for q in range(n)]).to(gpu))
        avg = values(rank, it).to(gpu)
        dist.all_reduce(avg, op=dist.ReduceOp.AVG)
        root = active[j % len(active)]
        bc = (v[rank] if rank == root else torch.zeros(b, dtype=f64)).to(gpu)
        dist.broadcast(bc, root)
        gathered = [torch.full((b,), -1.0, dtype=f64, device=gpu) for _ in range(n)] if rank == root else None
        dist.gather(v[rank].to(gpu), gathered, root)
        sc = torch.full((b,), -1.0, dtype=f64, device=gpu)
        dist.scatter(sc, [(v[root] * (q + 3)).to(gpu) for q in range(n)] if rank == root else None, root)
        torch.cuda.synchronize()
        chorus.check_device()
        wants = {
            "all_reduce": (x, sum(values(r, it) for r in active)),
            "all_gather": (ag, torch.cat([v[r] if r in active else torch.zeros(b, dtype=f64) for r in range(n)])),
            "reduce_scatter": (rs, sum(v[r] + 10 * rank for r in active)),
            "all_to_all": (a2a, torch.cat([v[p] * (rank + 1) if p in active else torch.full((b,), -1.0, dtype=f64) for p in range(n)])),
            "all_reduce avg": (avg, sum(values(r, it) for r in active) / len(active)),
            "broadcast": (bc, v[root]),
            "scatter": (sc, v[root] * (rank + 3)),
        }
        if rank == root:
            wants["gather"] = (torch.cat(gathered), torch.cat([v[r] if r in active else torch.zeros(b, dtype=f64) for r in range(n)]))
        h = hashlib.sha1()  # over the results every survivor shares
        for name, (got, want) in wants.items():
            got = got.cpu()
            if not torch.equal(got, want):
                print(f"gpu-survivors {j}: wrong {name} {got[:4].tolist()} != {want[:4].tolist()}", flush=True)
                sys.exit(3)
            if name in ("all_reduce", "all_reduce avg", "all_gather", "broadcast"):
                h.update(got.numpy().tobytes())
        print(f"gpu-survivors {j} digest {h.hexdigest()[:16]}", flush=True)
    try:
        dist.broadcast(torch.zeros(b, dtype=f64, device=gpu), dead[0])
        torch.cuda.synchronize()
        print(f"gpu-survivors: a broadcast from dead rank {dead[0]} did not fail", flush=True)
        sys.exit(3)
    except chorus.ChorusError as e:
        print(f"gpu-survivors dead root: {str(e).splitlines()[0]}", flush=True)
    try:
        dist.send(torch.zeros(b, dtype=f64, device=gpu), dead[0])
        print(f"gpu-survivors: a send to dead rank {dead[0]} did not fail", flush=True)
        sys.exit(3)
    except chorus.ChorusError as e:
        print(f"gpu-survivors dead peer: {str(e).splitlines()[0]}", flush=True)
    print("gpu-survivors done", flush=True)


def gpu_rounds(rank: int, n: int, gpu, rounds: int):
    for j in range(rounds):
        print(f"gpu-after {j} digest {gpu_all_reduce(rank, n, gpu, 10_000 + j)}", flush=True)


def main():
    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    after = int(os.environ.get("FT_AFTER", "30"))
    joining = os.environ.get("CHORUS_JOIN") == "1"
    device = torch.device("cpu")
    mode = os.environ.get("FT_DEVICE", "cpu")
    if mode.startswith("cuda"):
        gpu = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(gpu)
        device = gpu if mode == "cuda" else device
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), n + 1, is_master=False, timeout=timedelta(seconds=60))
    # join comes from CHORUS_JOIN=1 (honoured by the backend factory); the rest from pg_options.
    dist.init_process_group("chorus", store=store, rank=rank, world_size=n, timeout=timedelta(seconds=30),
                            pg_options=chorus.Options(failure_policy="shrink", heartbeat_ms=50, heartbeat_timeout_ms=1000,
                                                      cuda_path="host" if mode == "cuda" else None))
    print(f"start rank {rank} join {int(joining)} device {device} ops {chorus.get_ops_completed()} active {chorus.get_active_ranks()}", flush=True)
    if mode == "cuda-kernels" and not joining:
        gpu_until_failure(rank, n, gpu)
        gpu_over_survivors(rank, n, gpu, int(os.environ.get("GPU_SURVIVORS", "10")))
    prev = None
    stop_at = 1_000_000
    deadline = time.time() + 90
    it = chorus.get_ops_completed()  # a replacement resumes at the survivors' collective count
    while it < stop_at:
        if time.time() > deadline:
            print("gave up: the group never grew back", flush=True)
            sys.exit(4)
        assert chorus.get_ops_completed() == it, (chorus.get_ops_completed(), it)
        t = values(rank, it).to(device)
        work = dist.all_reduce(t, async_op=True)
        work.wait()
        t = t.cpu()
        failed = chorus.get_failed_ranks(work)
        contributors = chorus.get_contributors(work)
        epoch = chorus.get_work_epoch(work)
        want = sum(values(r, it) for r in contributors)
        if not torch.equal(t, want):
            print(f"iter {it}: wrong result over contributors {contributors}: {t[:4].tolist()} != {want[:4].tolist()}", flush=True)
            sys.exit(3)
        if rank not in contributors:
            print(f"iter {it}: this rank is not among the contributors {contributors}", flush=True)
            sys.exit(3)
        digest = hashlib.sha1(t.numpy().tobytes()).hexdigest()[:16]
        print(f"iter {it} digest {digest} contributors {contributors} failed {failed} epoch {epoch}", flush=True)
        grew = (prev is not None and len(contributors) > len(prev)) or (prev is None and joining)
        if grew and stop_at == 1_000_000:
            stop_at = it + 1 + after
        prev = contributors
        it += 1
        time.sleep(0.002)
    if mode == "cuda-kernels":
        gpu_rounds(rank, n, gpu, int(os.environ.get("GPU_AFTER", "20")))
    print(f"done epoch {chorus.get_current_epoch()} active {chorus.get_active_ranks()}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
