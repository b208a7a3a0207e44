"""One rank of test_store_host.py: `init_process_group("chorus", init_method="env://")`, so rank 0's
process hosts torch's TCPStore, then all_reduce of ones in a loop. Prints `replica <addr>` first (its
membership replica), `iter N` every 50 collectives; when a collective fails, `failed: <message>` and
exits 3. Once a sum shows fewer contributors than ranks (a rank was removed), prints `shrunk to K at
N`, runs AFTER (env) more collectives, prints `done <sum>` and exits 0. With UNTIL=rejoin it goes on
until the sum shows every rank again (`whole again at M`: a replacement joined) and runs AFTER more
from there; a replacement (CHORUS_JOIN=1) resumes at the survivors' count and does the same."""
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus

if os.environ.get("CHORUS_JOIN_VIA"):
    # The replacement of the store's host: torch's env:// would host a new TCPStore and wait for
    # every rank to connect to it; the group is found through the members' replicas instead, so
    # any store will do.
    chorus.join_group(dist.HashStore(), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), timeout=timedelta(seconds=60))
else:
    dist.init_process_group("chorus", init_method="env://", timeout=timedelta(seconds=60))
rank, n = dist.get_rank(), dist.get_world_size()
# Where a replacement can find the group once the store's host is gone (CHORUS_JOIN_VIA).
print(f"replica {chorus.get_replica_address()}", flush=True)
joined = os.environ.get("CHORUS_JOIN") == "1"
# UNTIL=rejoin: after the shrink, go on until the group is whole again (a replacement joined),
# then AFTER more collectives.
until_rejoin = os.environ.get("UNTIL") == "rejoin"
after = int(os.environ.get("AFTER", "100"))
t = torch.ones(16)
stop = None
shrunk = False
start = chorus.get_ops_completed() if joined else 0
for it in range(start, 10_000_000):
    if stop is not None and it >= stop:
        print(f"done {int(t[0])}", flush=True)
        sys.exit(0)
    t.fill_(1.0)
    try:
        dist.all_reduce(t)
    except Exception as e:  # noqa: BLE001 (any error type: the test reads the message)
        print("failed: " + str(e).replace("\n", " "), flush=True)
        sys.exit(3)
    if not shrunk and int(t[0]) < n:
        print(f"shrunk to {int(t[0])} at {it}", flush=True)
        shrunk = True
        if not until_rejoin:
            stop = it + 1 + after
    if stop is None and int(t[0]) == n and (joined or (shrunk and until_rejoin)):
        # The replacement's first collective is the first with every rank again, on every rank.
        print(f"whole again at {it}", flush=True)
        stop = it + 1 + after
    if it % 50 == 0:
        print(f"iter {it}", flush=True)
