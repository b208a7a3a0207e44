"""Failure policy `abort` and deactivate_ranks through torch.distributed (3 ranks, 12 all_reduces).

FT_MODE=abort:  rank 2 vanishes before collective 5; ranks 0 and 1 get the same error for it, then
                continue over [0, 1].
FT_MODE=deact:  rank 0 deactivates rank 2 before collective 5; rank 2's collective 5 fails (excluded),
                ranks 0 and 1 continue over [0, 1]. Prints one JSON record per collective.
"""
import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus


def main():
    rank, n, mode = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["FT_MODE"]
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), n + 1, is_master=False, timeout=timedelta(seconds=60))
    opts = chorus.Options(failure_policy="abort" if mode == "abort" else "shrink", heartbeat_timeout_ms=1000)
    dist.init_process_group("chorus", store=store, rank=rank, world_size=n, timeout=timedelta(seconds=20), pg_options=opts)
    for it in range(12):
        if it == 5 and mode == "deact" and rank == 0:
            chorus.deactivate_ranks([2])
        if it == 5 and mode == "abort" and rank == 2:
            os._exit(0)  # gone without a word
        t = torch.full((256,), float(rank + 1))
        rec = {"iter": it}
        try:
            w = dist.all_reduce(t, async_op=True)
            w.wait()
            rec.update(sum=t[0].item(), failed=chorus.get_failed_ranks(w), contributors=chorus.get_contributors(w), epoch=chorus.get_work_epoch(w))
        except chorus.ChorusError as e:
            rec.update(error=str(e), active=chorus.get_active_ranks(), epoch=chorus.get_current_epoch())
        print(json.dumps(rec), flush=True)
        if "error" in rec and mode == "deact" and rank == 2:
            break
        time.sleep(0.01)
    if rank == 0:
        store.set("ft_policy_done", b"1")
    else:
        store.wait(["ft_policy_done"])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
