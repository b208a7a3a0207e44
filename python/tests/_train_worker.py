"""A few training steps of DDP and of FSDP2, over chorus and over Gloo, from the same start on the same data.

Writes a JSON report (rewritten after each mode, so a crash in a later mode keeps the earlier results):
{"rank", "backend", "backend_path", "modes": {mode: {"losses": {"chorus": [...], "gloo": [...]}, "failures": [...]}}}.
"""
import json
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import chorus

rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
STEPS = 5
report = {"rank": rank, "modes": {}}


def write_report():
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as fh:
        json.dump(report, fh)


def build():
    # Odd sizes: FSDP2 shards dim 0 unevenly (33 -> 17 + 16, 5 -> 3 + 2) and pads.
    return nn.Sequential(nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))


def local(p):
    return (p.to_local() if hasattr(p, "to_local") else p).detach().clone()


def main():
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws, is_master=False, timeout=timedelta(seconds=120))
    dist.init_process_group("chorus", store=store, rank=rank, world_size=ws, timeout=timedelta(seconds=60))
    report["backend"] = dist.get_backend()
    report["backend_path"] = chorus.backend_path() if hasattr(chorus, "backend_path") else "python"
    groups = {"chorus": dist.group.WORLD, "gloo": dist.new_group(backend="gloo")}
    torch.set_num_threads(1)
    torch.manual_seed(0)
    init = build().state_dict()
    g = torch.Generator().manual_seed(100 + rank)
    batches = [(torch.randn(8, 16, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(STEPS)]

    def make(mode, name):
        model = build()
        model.load_state_dict(init)
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Rank-dependent start: DDP's initial broadcast from rank 0 must fix it.
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(rank * 0.01)
            # 4 KB buckets: every weight in a bucket of its own, the biases together (several buckets).
            model = DDP(model, process_group=groups[name], bucket_cap_mb=0.004)
        else:
            from torch.distributed.device_mesh import DeviceMesh
            from torch.distributed.fsdp import fully_shard

            mesh = DeviceMesh.from_group(groups[name], "cpu")
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
        return model, torch.optim.AdamW(model.parameters(), lr=0.01)

    for mode in ("ddp", "fsdp2"):
        res = report["modes"][mode] = {"losses": {}, "failures": []}
        params = {}
        try:
            for name in ("chorus", "gloo"):
                model, opt = make(mode, name)
                first = [local(p) for p in model.parameters()]
                losses = []
                for x, y in batches:
                    opt.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                res["losses"][name] = losses
                params[name] = [(n, local(p)) for n, p in model.named_parameters()]
                if all(torch.equal(a, b) for a, (_, b) in zip(first, params[name])):
                    res["failures"].append(f"{name}: parameters did not change")
        except Exception:
            res["failures"].append(traceback.format_exc())
            write_report()
            raise  # the ranks may be out of step now: leave (the test reports the log)
        # 2 ranks: a 2-term sum (DDP's all_reduce, FSDP2's reduce_scatter AVG = sum / 2) is exact and
        # commutative, so chorus and Gloo must give bit-identical gradients, losses and parameters.
        for step, (a, b) in enumerate(zip(res["losses"]["chorus"], res["losses"]["gloo"])):
            if a != b:
                res["failures"].append(f"step {step + 1}: loss {a!r} over chorus, {b!r} over gloo")
        for (n, a), (_, b) in zip(params["chorus"], params["gloo"]):
            if a.shape != b.shape or not torch.equal(a, b):
                diff = float((a - b).abs().max()) if a.shape == b.shape else f"shapes {tuple(a.shape)} / {tuple(b.shape)}"
                res["failures"].append(f"final {n}: max |diff| {diff}")
        write_report()
    dist.barrier(group=groups["gloo"])
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    import _worker_exit

    _worker_exit.run(main)
