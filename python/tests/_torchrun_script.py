"""Launched by torchrun: env:// rendezvous, the default group on chorus, subgroups, objects."""
import os

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.distributed.device_mesh import init_device_mesh

import chorus  # noqa: F401

dist.init_process_group("chorus")
rank, ws = dist.get_rank(), dist.get_world_size()
assert dist.get_backend() == "chorus", dist.get_backend()
assert rank == int(os.environ["RANK"]) and ws == int(os.environ["WORLD_SIZE"])
t = torch.full((1031,), float(rank + 1))
dist.all_reduce(t)
assert torch.equal(t, torch.full((1031,), float(ws * (ws + 1) // 2))), t
objs = [None] * ws
dist.all_gather_object(objs, {"rank": rank})
assert objs == [{"rank": r} for r in range(ws)], objs
sub = dist.new_group(ranks=[0], backend="chorus")
if rank == 0:
    x = torch.ones(3)
    dist.all_reduce(x, group=sub)
    assert torch.equal(x, torch.ones(3))
mesh = init_device_mesh("cpu", (ws,))
y = funcol.all_reduce(torch.ones(5) * rank, "sum", mesh)
assert torch.equal(y, torch.full((5,), float(sum(range(ws))))), y
dist.barrier()
dist.destroy_process_group()
print(f"torchrun rank {rank} of {ws}: OK", flush=True)
