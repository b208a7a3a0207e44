"""new_group in both modes: every rank calls it (default) and only members call it
(use_local_synchronization=True); strict subsets of the world, checked by all_reduce."""
import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus  # noqa: F401  (registers the backend)


def main() -> int:
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group("chorus", store=store, rank=rank, world_size=ws)
    failures = []
    evens = [r for r in range(ws) if r % 2 == 0]
    g = dist.new_group(ranks=evens)  # every rank calls it
    if rank in evens:
        t = torch.full((7,), float(rank + 1))
        dist.all_reduce(t, group=g)
        if t[0].item() != sum(r + 1 for r in evens):
            failures.append(f"new_group(evens): {t.tolist()}")
    # Only members call it. The odd ranks: torch up to 2.11 salts a member-only group's name with the number
    # of groups the rank belongs to, so its members must have joined the same groups before (the odd ranks
    # all sat out the evens); torch 2.15 salts it with a count every rank raises, so it comes last.
    odds = [r for r in range(ws) if r % 2 == 1]
    if rank in odds:
        gl = dist.new_group(ranks=odds, use_local_synchronization=True)
        t = torch.full((7,), float(rank + 1))
        dist.all_reduce(t, group=gl)
        if t[0].item() != sum(r + 1 for r in odds):
            failures.append(f"new_group(local sync): {t.tolist()}")
    dist.barrier()
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as fh:
        json.dump({"rank": rank, "failures": failures}, fh)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    import _worker_exit

    _worker_exit.run(main)
