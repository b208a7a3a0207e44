"""Issue 25: CHORUS_TIMEOUT_MS bounds chorus's waits under torch. Rank 1 skips an all_reduce (and
stays alive, beating); rank 0 must get a timeout error at CHORUS_TIMEOUT_MS, not at torch's
timeout, naming the knob that set the deadline. Both ranks then end."""
import json
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus  # registers the backend


def main() -> int:
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws, is_master=False, timeout=timedelta(seconds=60))
    # Start the group's creation together: its rendezvous is bounded by CHORUS_TIMEOUT_MS too.
    store.add("timeout/arrived", 1)
    while store.add("timeout/arrived", 0) < ws:
        time.sleep(0.01)
    # torch's default timeout (30 minutes), or chorus.Options(timeout=) when the test asks for it.
    option_s = os.environ.get("CHORUS_TEST_OPTION_TIMEOUT_S")
    opts = chorus.Options(timeout=timedelta(seconds=float(option_s))) if option_s else None
    dist.init_process_group("chorus", store=store, rank=rank, world_size=ws, pg_options=opts)
    t = torch.ones(1024)
    dist.all_reduce(t)  # both ranks: the group works
    report = {"rank": rank, "first": t[0].item()}
    if rank == 0:
        t0 = time.monotonic()
        try:
            dist.all_reduce(t)
            report["error"] = None
        except Exception as e:  # the backend's error, as torch raises it
            report["error"] = str(e)
        report["seconds"] = time.monotonic() - t0
        store.set("timeout/rank0_done", "1")
    else:
        # Skips the collective, alive, until rank 0 has its answer.
        store.wait(["timeout/rank0_done"], timedelta(seconds=120))
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as fh:
        json.dump(report, fh)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    import _worker_exit

    _worker_exit.run(main)
