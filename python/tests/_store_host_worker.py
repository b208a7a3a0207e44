"""One rank of test_store_host.py: `init_process_group("chorus", init_method="env://")`, so rank 0's
process hosts torch's TCPStore, then all_reduce of ones in a loop. Prints `iter N` every 50
collectives; when a collective fails, `failed: <message>` and exits 3. Once a sum shows fewer
contributors than ranks (a rank was removed), prints `shrunk to K at N`, runs AFTER (env) more
collectives, prints `done <sum>` and exits 0."""
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus  # noqa: F401  (registers the backend)

dist.init_process_group("chorus", init_method="env://", timeout=timedelta(seconds=60))
rank, n = dist.get_rank(), dist.get_world_size()
after = int(os.environ.get("AFTER", "100"))
t = torch.ones(16)
stop = None
for it in range(10_000_000):
    if stop is not None and it >= stop:
        print(f"done {int(t[0])}", flush=True)
        sys.exit(0)
    t.fill_(1.0)
    try:
        dist.all_reduce(t)
    except Exception as e:  # noqa: BLE001 (any error type: the test reads the message)
        print("failed: " + str(e).replace("\n", " "), flush=True)
        sys.exit(3)
    if stop is None and int(t[0]) < n:
        print(f"shrunk to {int(t[0])} at {it}", flush=True)
        stop = it + 1 + after
    if it % 50 == 0:
        print(f"iter {it}", flush=True)
