"""CUDA tensors in a group spanning (simulated) hosts (test_cuda.py): ranks share one GPU, and
CHORUS_TEST_HOSTS gives each its host (CHORUS_HOST_ID), so the group takes the kernels within each
host and the host transports across (chorus's hybrid route) for all_reduce and broadcast, and the
host path for the rest. Every result is checked against what the CPU computes."""
import json
import os
from datetime import timedelta

rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
os.environ["CHORUS_HOST_ID"] = os.environ["CHORUS_TEST_HOSTS"].split(",")[rank]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import chorus  # noqa: E402,F401


def value(r, i, n):
    return ((r + 1) * 7 + i * 3 + n) % 23 - 11


def main():
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws + 1, is_master=False, timeout=timedelta(seconds=120))
    dist.init_process_group("chorus", store=store, rank=rank, world_size=ws, timeout=timedelta(seconds=120))
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    fails = []
    # 0, 1, odd, and more than a chunk (256 KiB of floats is 65536).
    for n in (0, 1, 7, 1001, 200_003):
        idx = torch.arange(n, dtype=torch.float64)
        mine = lambda r: (((r + 1) * 7 + idx * 3 + n) % 23 - 11).to(torch.float32)  # noqa: E731
        for op, want in (
            (dist.ReduceOp.SUM, sum(mine(r) for r in range(ws)) if n else torch.zeros(0)),
            (dist.ReduceOp.MAX, torch.stack([mine(r) for r in range(ws)]).max(0).values if n else torch.zeros(0)),
            (dist.ReduceOp.AVG, sum(mine(r) for r in range(ws)) / ws if n else torch.zeros(0)),
        ):
            t = mine(rank).to(dev)
            dist.all_reduce(t, op=op)
            torch.cuda.synchronize()
            if not torch.allclose(t.cpu(), want.to(torch.float32), atol=1e-4):
                fails.append(f"all_reduce {op} n={n}: {t.cpu()[:5].tolist()} want {want[:5].tolist()}")
        for root in range(ws):
            t = (mine(root) if rank == root else torch.zeros(n)).to(dev)
            dist.broadcast(t, root)
            torch.cuda.synchronize()
            if not torch.equal(t.cpu(), mine(root)):
                fails.append(f"broadcast root {root} n={n}")
        # A collective of the host path in the same group, between them.
        out = [torch.zeros(n, device=dev) for _ in range(ws)]
        dist.all_gather(out, mine(rank).to(dev))
        torch.cuda.synchronize()
        if not all(torch.equal(o.cpu(), mine(r)) for r, o in enumerate(out)):
            fails.append(f"all_gather n={n}")
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as f:
        json.dump({"rank": rank, "fails": fails}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
