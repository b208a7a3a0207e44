"""Destroys the default group and creates it again in the same processes, on one store, many times
(as Mooncake's test_destroy_and_reinit does once): each incarnation's all_reduce must be right."""
import json
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus  # noqa: F401  (registers the backend)


def main() -> int:
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    rounds = int(os.environ.get("CHORUS_TEST_ROUNDS", "20"))
    # "store": one TCPStore (hosted by the test) for every incarnation; "env": env:// as Mooncake's test
    # does, so each init_process_group makes a new TCPStore that rank 0 hosts on MASTER_PORT.
    mode = os.environ["CHORUS_TEST_REINIT"]
    store = None
    if mode == "store":
        store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws, is_master=False, timeout=timedelta(seconds=60))
    failures = []
    took = []
    for k in range(rounds):
        t0 = time.monotonic()
        if store is not None:
            dist.init_process_group("chorus", store=store, rank=rank, world_size=ws, timeout=timedelta(seconds=60))
        else:
            dist.init_process_group("chorus", init_method="env://", rank=rank, world_size=ws, timeout=timedelta(seconds=60))
        t = torch.full((1024,), float(rank + 1 + k))
        dist.all_reduce(t)
        want = sum(r + 1 + k for r in range(ws))
        if t[0].item() != want or t[-1].item() != want:
            failures.append(f"round {k}: all_reduce gave {t[0].item()}, expected {want}")
        dist.destroy_process_group()
        took.append(round(time.monotonic() - t0, 3))
        print(f"rank {rank}: round {k} done in {took[-1]} s", flush=True)
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as fh:
        json.dump({"rank": rank, "failures": failures, "seconds": took}, fh)
    return 0


if __name__ == "__main__":
    import _worker_exit

    _worker_exit.run(main)
