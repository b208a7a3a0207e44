"""One rank of test_native.py: which backend torch routes to, and a few collectives through it.

Checks, beside the results: the default group's CPU backend is the C++ ChorusBackend on the native
path; plain (blocking) calls return nothing to wait for and async works complete; chorus errors raise
chorus.ChorusError; the fault-tolerance functions answer on the native objects.
"""

import torch
import torch.distributed as dist

import chorus
from _checked_rank import expect, finish, init, rank, ws

init()
backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))

# Blocking all_reduce, in place, with a non-contiguous tensor (copied back).
t = torch.arange(12.0).reshape(3, 4).t() * (rank + 1)
dist.all_reduce(t)
expect(torch.equal(t, torch.arange(12.0).reshape(3, 4).t() * (ws * (ws + 1) // 2)), f"all_reduce gave {t}")

# Async: the work completes and reports the group's contributors.
x = torch.full((1031,), float(rank))
w = dist.all_reduce(x, op=dist.ReduceOp.MAX, async_op=True)
w.wait()
expect(w.is_completed(), "async all_reduce: work not completed after wait")
expect(torch.equal(x, torch.full((1031,), float(ws - 1))), "async all_reduce MAX")
expect(chorus.get_failed_ranks(w) == [], f"failed ranks {chorus.get_failed_ranks(w)}")
expect(chorus.get_contributors(w) == list(range(ws)), f"contributors {chorus.get_contributors(w)}")

# Futures (DDP's comm hooks use them).
y = torch.ones(7)
fut = dist.all_reduce(y, async_op=True).get_future()
res = fut.wait()
expect(torch.equal(res[0], torch.full((7,), float(ws))), f"future result {res}")

# all_gather (list), all_gather_into_tensor, reduce_scatter_tensor, all_to_all_single with splits.
outs = [torch.empty(3) for _ in range(ws)]
dist.all_gather(outs, torch.full((3,), float(rank)))
expect(all(torch.equal(o, torch.full((3,), float(r))) for r, o in enumerate(outs)), "all_gather")
big = torch.empty(2 * ws)
dist.all_gather_into_tensor(big, torch.full((2,), float(rank)))
expect(torch.equal(big, torch.arange(ws, dtype=torch.float32).repeat_interleave(2)), "all_gather_into_tensor")
rs = torch.empty(2)
dist.reduce_scatter_tensor(rs, torch.arange(2.0 * ws))
expect(torch.equal(rs, torch.tensor([2.0 * rank, 2.0 * rank + 1]) * ws), f"reduce_scatter_tensor {rs}")
splits = [r + 1 for r in range(ws)]
inp = torch.full((sum(splits),), float(rank))
out = torch.empty((rank + 1) * ws)
dist.all_to_all_single(out, inp, output_split_sizes=[rank + 1] * ws, input_split_sizes=splits)
expect(torch.equal(out, torch.arange(ws, dtype=torch.float32).repeat_interleave(rank + 1)), f"all_to_all_single {out}")

# send/recv around a ring, and a barrier.
nxt, prv = (rank + 1) % ws, (rank - 1) % ws
buf = torch.empty(5)
if rank % 2 == 0:
    dist.send(torch.full((5,), float(rank)), nxt)
    dist.recv(buf, prv)
else:
    dist.recv(buf, prv)
    dist.send(torch.full((5,), float(rank)), nxt)
expect(torch.equal(buf, torch.full((5,), float(prv))), f"recv {buf}")
dist.barrier()

# A chorus error reaches Python as chorus.ChorusError (a root outside the group).
try:
    opts = dist.BroadcastOptions()
    opts.rootRank = ws + 3
    backend.broadcast([torch.ones(1)], opts).wait()
    failures.append("broadcast from a root outside the group did not fail")
except chorus.ChorusError as e:
    expect("rank" in str(e).lower(), f"error text: {e}")
except Exception as e:  # noqa: BLE001
    failures.append(f"broadcast from a bad root raised {type(e).__name__}, not ChorusError: {e}")

# Fault-tolerance functions on the native objects.
expect(chorus.get_active_ranks() == list(range(ws)), f"active ranks {chorus.get_active_ranks()}")
expect(chorus.get_current_epoch() >= 0, "epoch")
expect(chorus.get_ops_completed() >= 8, f"ops completed {chorus.get_ops_completed()}")

finish(backend_type=type(backend).__name__)
