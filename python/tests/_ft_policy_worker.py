"""Failure policy `abort` and deactivate_ranks through torch.distributed (3 ranks, 12 all_reduces).

FT_MODE=abort:  rank 2 vanishes before collective 5; ranks 0 and 1 get the same error for it, then
                continue over [0, 1].
FT_MODE=deact:  rank 0 deactivates rank 2 before collective 5; rank 2's collective 5 fails (excluded),
                ranks 0 and 1 continue over [0, 1]. Prints one JSON record per collective.
FT_MODE=p2p:    every rank isends to and irecvs from both others, 6 rounds (odd ones through
                batch_isend_irecv); rank 1 vanishes before round 3: each survivor's receive from it
                fails alone (naming rank 1, its Work saying rank 1 failed) while the exchange between
                the survivors completes, and the view no longer counts rank 1 once it did; then an
                all_reduce runs over the survivors. One JSON record per round.
"""
import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus


def p2p_rounds(rank, n):
    for it in range(6):
        if it == 3 and rank == 1:
            os._exit(0)  # gone without a word
        peers = [p for p in range(n) if p != rank]
        outs = [(p, torch.full((64,), float(rank * 100 + it))) for p in peers]
        ins = [(p, torch.zeros(64)) for p in peers]
        if it % 2:
            # Odd rounds as one batch: each operation still completes (or fails) on its own.
            works = dist.batch_isend_irecv([dist.P2POp(dist.isend, t, p, tag=it) for p, t in outs] + [dist.P2POp(dist.irecv, t, p, tag=it) for p, t in ins])
            sends = [(p, w) for (p, _), w in zip(outs, works[: len(outs)])]
            recvs = [(p, t, w) for (p, t), w in zip(ins, works[len(outs):])]
        else:
            sends = [(p, dist.isend(t, p, tag=it)) for p, t in outs]
            recvs = [(p, t, dist.irecv(t, p, tag=it)) for p, t in ins]
        rec = {"iter": it, "recv": {}, "send": {}}
        for p, t, w in recvs:
            try:
                w.wait()
                rec["recv"][p] = "ok" if t[0].item() == p * 100 + it else f"wrong {t[0].item()}"
            except Exception as e:  # noqa: BLE001 (torch wraps the backend's error)
                rec["recv"][p] = {"error": str(e), "failed": chorus.get_failed_ranks(w)}
        for p, w in sends:
            try:
                w.wait()
                rec["send"][p] = "ok"
            except Exception as e:  # noqa: BLE001
                rec["send"][p] = {"error": str(e), "failed": chorus.get_failed_ranks(w)}
        # Once a failure completed, the view no longer counts the dead rank (no collective ran).
        rec["active"] = chorus.get_active_ranks()
        print(json.dumps(rec), flush=True)
    t = torch.full((8,), float(rank + 1))
    w = dist.all_reduce(t, async_op=True)
    w.wait()
    print(json.dumps({"all_reduce": t[0].item(), "contributors": chorus.get_contributors(w), "failed": chorus.get_failed_ranks(w)}), flush=True)


def main():
    rank, n, mode = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["FT_MODE"]
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), n + 1, is_master=False, timeout=timedelta(seconds=60))
    opts = chorus.Options(failure_policy="abort" if mode == "abort" else "shrink", heartbeat_timeout_ms=1000)
    dist.init_process_group("chorus", store=store, rank=rank, world_size=n, timeout=timedelta(seconds=20), pg_options=opts)
    for it in range(12 if mode != "p2p" else 0):
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
    if mode == "p2p":
        p2p_rounds(rank, n)
    if rank == 0:
        store.set("ft_policy_done", b"1")
    else:
        store.wait(["ft_policy_done"])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
