"""Elastic data-parallel training with chorus under torch: the job grows while it trains.

    python python/examples/elastic_training.py        # launches itself; exits 0 when all went well

A job of WORLD = 4 slots starts with ranks 0 and 1 only (``chorus.Options(initial_members=[0, 1])``,
or ``CHORUS_INITIAL_MEMBERS=0,1``): torch sees world size 4 throughout, collectives run over the active
ranks (``chorus.get_active_ranks()``), and ``ReduceOp.AVG`` divides by how many contributed. While
they train, this launcher starts rank 2, then rank 3 (``chorus.join_group``: each fills its empty slot;
the members admit it between two collectives), then kills rank 1 with SIGKILL (the group shrinks) and
starts rank 1 again (it grows back); at the end ranks 1-3 make a subgroup. Every process prints its final model and the ranks of its last
collective; the launcher checks that they all agree.

The loop a worker runs (the pattern to copy):

* Each step is one collective: an all_reduce SUM of ``[gradient..., need-model flag of each slot]``,
  marked with ``chorus.mark(2 * step)`` so that a process joining mid-run learns from
  ``chorus.get_resume_point()`` which step the members are at.
* A joiner sets its flag in its first step. Every member sees the flag in the same result: that step's
  update is dropped, and the lowest-ranked contributor without the flag broadcasts the model (marked
  ``2 * step + 1``). Then everyone trains on together.
* Otherwise the gradient sum is divided by the contributors (``chorus.get_contributors(work)``).
* The loop ends when the launcher says so (a key in the store): a rank that sees it raises a flag in
  the same all_reduce, so every rank stops after the same step.
"""
import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

WORLD = 4
INITIAL = [0, 1]
MAX_STEPS = 100_000
DIM = 8


def data(rank: int, step: int):
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(16, DIM, generator=g)
    true_w = torch.arange(1, DIM + 1, dtype=torch.float32) / DIM
    return x, x @ true_w


def worker():
    import chorus

    rank = int(os.environ["RANK"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=60))
    opts = chorus.Options(initial_members=INITIAL)
    if os.environ.get("CHORUS_JOIN") == "1":
        chorus.join_group(store, rank, WORLD, options=opts)
    else:
        dist.init_process_group("chorus", store=store, rank=rank, world_size=WORLD, pg_options=opts)
    assert dist.get_world_size() == WORLD, "the world is the slots"
    resume = chorus.get_resume_point()
    first = 0 if resume is None else resume[0] // 2 + 1
    have_model = resume is None
    w = torch.zeros(DIM)
    print(f"rank {rank} starts at step {first}, active {chorus.get_active_ranks()}", flush=True)
    contributors = []
    for step in range(first, MAX_STEPS):
        time.sleep(0.004)  # the forward/backward of a real model
        x, y = data(rank, step)
        buf = torch.zeros(DIM + WORLD + 1)
        if have_model:
            buf[:DIM] = 2 * x.T @ (x @ w - y) / len(y)
        else:
            buf[DIM + rank] = 1.0  # "I need the model"
        if store.check(["finish"]):
            buf[-1] = 1.0  # "the launcher says we are done"
        chorus.mark(2 * step)
        work = dist.all_reduce(buf, async_op=True)
        work.wait()
        contributors = chorus.get_contributors(work)
        needy = [r for r in range(WORLD) if buf[DIM + r] > 0]
        if needy:
            src = min(r for r in contributors if r not in needy)
            chorus.mark(2 * step + 1)
            dist.broadcast(w, src)
            have_model = True
            print(f"rank {rank} step {step}: rank(s) {needy} joined, model from rank {src}", flush=True)
            continue
        w -= 0.05 * buf[:DIM] / len(contributors)
        if step % 50 == 0:
            print(f"rank {rank} step {step} over {contributors}", flush=True)
        if buf[-1] > 0:
            break
    # A subgroup made now can hold ranks that joined (named by its ranks, so that processes that
    # joined late agree with the others on its name).
    if rank in (1, 2, 3):
        sub = dist.new_group([1, 2, 3], use_local_synchronization=True)
        t = torch.tensor([float(rank)])
        dist.all_reduce(t, group=sub)
        assert t.item() == 6.0, f"subgroup of ranks 1-3: {t}"
    x, y = data(rank, MAX_STEPS)
    loss = float(((x @ w - y) ** 2).mean())
    # Bit for bit: every rank applied the same updates from the same all_reduce results.
    digest = hashlib.sha256(w.numpy().tobytes()).hexdigest()[:16]
    print(f"done rank {rank} contributors {contributors} loss {loss:.6f} model {digest}", flush=True)
    dist.destroy_process_group()


def launcher():
    here = os.path.abspath(__file__)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=120), wait_for_workers=False)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), CHORUS_TIMEOUT_MS="60000")
    for k in ("CHORUS_JOIN", "RANK", "CHORUS_INITIAL_MEMBERS"):
        env.pop(k, None)
    logs = {}

    def start(rank, join=False, tag=""):
        name = f"rank{rank}{tag}"
        logs[name] = open(os.path.join(os.environ.get("ELASTIC_LOG_DIR", "/tmp"), f"chorus-elastic-{os.getpid()}-{name}.log"), "w+")
        e = dict(env, RANK=str(rank), **({"CHORUS_JOIN": "1"} if join else {}))
        return subprocess.Popen([sys.executable, here], env=e, stdout=logs[name], stderr=subprocess.STDOUT)

    def text(name):
        logs[name].flush()
        with open(logs[name].name) as f:
            return f.read()

    def wait_for(name, what, timeout=60):
        deadline = time.time() + timeout
        while what not in text(name):
            if time.time() > deadline:
                raise SystemExit(f"{name} never printed {what!r}:\n{text(name)[-3000:]}")
            time.sleep(0.02)

    procs = {"rank0": start(0), "rank1": start(1)}
    try:
        wait_for("rank0", "step 50 over [0, 1]")
        procs["rank2"] = start(2, join=True)
        wait_for("rank0", "rank(s) [2] joined")
        procs["rank3"] = start(3, join=True)
        wait_for("rank0", "rank(s) [3] joined")
        procs["rank1"].send_signal(signal.SIGKILL)
        procs["rank1"].wait()
        procs["rank1 again"] = start(1, join=True, tag=" again")
        wait_for("rank0", "rank(s) [1] joined")
        store.set("finish", "1")
        finals = {}
        for name, p in procs.items():
            if name == "rank1":
                continue
            if p.wait(timeout=120) != 0:
                raise SystemExit(f"{name} failed:\n{text(name)[-3000:]}")
            finals[name] = [l for l in text(name).splitlines() if l.startswith("done")][-1]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    models = {f.split(" model ")[1] for f in finals.values()}
    assert len(models) == 1, f"the ranks disagree: {finals}"
    assert all("contributors [0, 1, 2, 3]" in f for f in finals.values()), finals
    loss = float(next(iter(finals.values())).split(" loss ")[1].split()[0])
    assert loss < 0.01, f"the model did not fit: {finals}"
    print("\n".join(finals.values()))
    print("elastic training: grew 2 -> 3 -> 4, lost rank 1, got it back; every rank ends with the same model")


if __name__ == "__main__":
    worker() if "RANK" in os.environ else launcher()
