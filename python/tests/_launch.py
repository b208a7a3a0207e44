"""Starts N ranks of a worker script with a TCPStore hosted by the test process."""
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))


def run_ranks(script: str, world_size: int, tmp_path, timeout: float = 240, extra_env=None):
    store = dist.TCPStore("127.0.0.1", 0, world_size + 1, is_master=True, timeout=timedelta(seconds=120), wait_for_workers=False)
    procs, reports = [], []
    for r in range(world_size):
        rep = tmp_path / f"report{r}.json"
        log = open(tmp_path / f"rank{r}.log", "w")
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world_size), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   CHORUS_TEST_STORE_PORT=str(store.port), CHORUS_TEST_REPORT=str(rep), **(extra_env or {}))
        procs.append((subprocess.Popen([sys.executable, os.path.join(HERE, script)], env=env, stdout=log, stderr=subprocess.STDOUT), log))
        reports.append(rep)
    deadline = time.time() + timeout
    codes = []
    for p, log in procs:
        try:
            codes.append(p.wait(timeout=max(1, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
            codes.append("timeout")
        log.close()
    logs = {r: (tmp_path / f"rank{r}.log").read_text()[-3000:] for r in range(world_size)}
    out = []
    for r, rep in enumerate(reports):
        out.append(json.loads(rep.read_text()) if rep.exists() else None)
    return codes, out, logs
