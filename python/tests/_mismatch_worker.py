"""Issue 25: ranks that pass disagreeing arguments each get a clear error, no process dies of a
signal, and the group works afterwards. Each case is followed by a correct all_reduce:
- broadcast: rank 0 broadcasts float32, the others receive into int32 (this used to succeed with
  the bits of 7.0 in the int32 tensor);
- all_gather: rank 0 gathers float32, the others int32;
- all_to_all_single: rank 0's split to itself (2 rows) differs from its split from itself (1 row)
  (this used to panic the engine thread)."""
import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus  # registers the backend


def attempt(fn):
    try:
        fn()
        return None
    except Exception as e:  # the backend's error, as torch raises it
        return f"{type(e).__name__}: {e}"


def main() -> int:
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws + 1, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group("chorus", store=store, rank=rank, world_size=ws, timeout=timedelta(seconds=60))

    def all_reduce_works():
        t = torch.full((64,), float(rank + 1))
        err = attempt(lambda: dist.all_reduce(t))
        return err or (None if t.eq(ws * (ws + 1) / 2).all().item() else f"all_reduce gave {t[0].item()}")

    report = {"rank": rank, "path": chorus.backend_path(), "cases": {}}
    t = torch.full((16,), 7.0) if rank == 0 else torch.zeros(16, dtype=torch.int32)
    report["cases"]["broadcast"] = {"error": attempt(lambda: dist.broadcast(t, 0)), "value": t[0].item(), "after": all_reduce_works()}

    inp = torch.ones(4) if rank == 0 else torch.ones(4, dtype=torch.int32)
    outs = [torch.zeros_like(inp) for _ in range(ws)]
    report["cases"]["all_gather"] = {"error": attempt(lambda: dist.all_gather(outs, inp)), "after": all_reduce_works()}

    in_splits = [2] * ws
    out_splits = [1] + [2] * (ws - 1) if rank == 0 else [2] * ws
    src, dst = torch.arange(2.0 * ws), torch.zeros(sum(out_splits))
    err = attempt(lambda: dist.all_to_all_single(dst, src, out_splits, in_splits))
    report["cases"]["all_to_all_single"] = {"error": err, "after": all_reduce_works()}

    with open(os.environ["CHORUS_TEST_REPORT"], "w") as fh:
        json.dump(report, fh)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    import _worker_exit

    _worker_exit.run(main)
