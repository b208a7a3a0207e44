"""A few DDP training steps over chorus and over Gloo from the same start: parameters must agree."""
import copy
import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import chorus  # noqa: F401

rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def main():
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws, is_master=False, timeout=timedelta(seconds=120))
    dist.init_process_group("chorus", store=store, rank=rank, world_size=ws)
    gloo = dist.new_group(backend="gloo")
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 33), nn.ReLU(), nn.Linear(33, 4))
    # Rank-dependent starting weights: DDP's initial broadcast from rank 0 must fix them.
    with torch.no_grad():
        for p in base.parameters():
            p.add_(rank * 0.01)
    models = {}
    for name, pg in [("chorus", None), ("gloo", gloo)]:
        m = DDP(copy.deepcopy(base), process_group=pg, bucket_cap_mb=0.002)  # several buckets
        models[name] = (m, torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))
    g = torch.Generator().manual_seed(100 + rank)
    batches = [(torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)) for _ in range(5)]
    for x, y in batches:
        for m, opt in models.values():
            opt.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    diffs = []
    for (n1, p1), (_, p2) in zip(models["chorus"][0].named_parameters(), models["gloo"][0].named_parameters()):
        if not torch.equal(p1, p2):
            diffs.append(f"{n1}: max |diff| {float((p1 - p2).abs().max())}")
    changed = not torch.equal(next(models["chorus"][0].parameters()), next(base.parameters()))
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as fh:
        json.dump({"rank": rank, "failures": diffs if changed else diffs + ["parameters did not change"]}, fh)
    dist.barrier(group=gloo)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    import _worker_exit

    _worker_exit.run(main)
