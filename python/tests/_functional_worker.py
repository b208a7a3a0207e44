"""One rank of test_functional.py: DeviceMesh, functional collectives and torch.compile over chorus.

Functional collectives (torch.distributed._functional_collectives, what DTensor and torch.compile emit)
find the backend by group name through torch's registry; the compiled function traces them into the
graph (aot_eager: the graph is captured and run without generating C++).
"""

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.distributed.device_mesh import init_device_mesh

import chorus
from _checked_rank import expect, finish, init, rank, ws

init()

mesh = init_device_mesh("cpu", (ws,), mesh_dim_names=("dp",))
expect(dist.get_backend(mesh.get_group("dp")) == "chorus", f"mesh backend {dist.get_backend(mesh.get_group('dp'))}")

x = torch.full((6,), float(rank + 1))
expect(torch.equal(funcol.all_reduce(x, "sum", mesh), torch.full((6,), float(ws * (ws + 1) // 2))), "funcol all_reduce")
g = funcol.all_gather_tensor(x, 0, mesh)
expect(torch.equal(g, torch.arange(1, ws + 1, dtype=torch.float32).repeat_interleave(6)), f"funcol all_gather_tensor {g}")
rs = funcol.reduce_scatter_tensor(torch.arange(2.0 * ws), "sum", 0, mesh)
expect(torch.equal(rs, torch.tensor([2.0 * rank, 2.0 * rank + 1]) * ws), f"funcol reduce_scatter_tensor {rs}")
a2a = funcol.all_to_all_single(torch.full((ws,), float(rank)), None, None, mesh)
expect(torch.equal(a2a, torch.arange(ws, dtype=torch.float32)), f"funcol all_to_all_single {a2a}")


@torch.compile(backend="aot_eager", fullgraph=True)
def step(t):
    return funcol.all_reduce(t * 2, "sum", mesh) + 1


out = step(torch.full((4,), float(rank)))
expect(torch.equal(out, torch.full((4,), 2.0 * sum(range(ws)) + 1)), f"compiled step {out}")

# A 2-D mesh over 4 ranks: row and column subgroups are chorus groups too.
if ws == 4:
    mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("a", "b"))
    col = funcol.all_reduce(torch.full((3,), float(rank)), "sum", (mesh2, 1))
    row_peer = rank ^ 1
    expect(torch.equal(col, torch.full((3,), float(rank + row_peer))), f"2-D mesh dim 1 all_reduce {col}")

# torch's split_group: the native backend splits (the Python fallback cannot). torch 2.11 splits only a
# default group bound to a CUDA device; 2.15 splits CPU groups too.
TORCH = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
if chorus.backend_path() == "native" and TORCH >= (2, 15):
    halves = [list(range(0, ws, 2)), list(range(1, ws, 2))]
    sub = dist.split_group(split_ranks=halves)
    mine = halves[rank % 2]
    t = torch.full((5,), float(rank + 1))
    dist.all_reduce(t, group=sub)
    expect(torch.equal(t, torch.full((5,), float(sum(r + 1 for r in mine)))), f"split_group all_reduce {t}")
    expect(dist.get_process_group_ranks(sub) == mine, f"split_group ranks {dist.get_process_group_ranks(sub)}")

finish()
