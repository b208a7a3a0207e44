"""Shared start and end of the checking workers (_native_worker.py, _functional_worker.py): join the
chorus default group through the test's TCPStore, collect failed expectations, write the JSON report."""
import json
import os
from datetime import timedelta

import torch.distributed as dist

import chorus
import _worker_exit

rank = int(os.environ["RANK"])
ws = int(os.environ["WORLD_SIZE"])
failures: list[str] = []


def expect(cond, what):
    if not cond:
        failures.append(what)


def init():
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws + 1, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group("chorus", store=store, rank=rank, world_size=ws, timeout=timedelta(seconds=60))


def finish(**extra):
    """Destroys the group, writes the report (this rank, the backend path, failures, `extra`) and leaves
    without interpreter finalization (libtorch's exit-time abort: see _worker_exit.py)."""
    report = {"rank": rank, "path": chorus.backend_path(), "failures": failures, **extra}
    dist.destroy_process_group()
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as f:
        json.dump(report, f)
    _worker_exit.run(lambda: 0)
