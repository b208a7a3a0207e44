"""Fault tolerance in a DDP training loop through torch (issue 22): 4 ranks (CHORUS_FT_DDP_RANKS overrides)
train a 4 MiB model with DDP over chorus on CPU, gradient buckets all-reduced in place at 1.02 MiB, 2 MiB
and exactly 1 MiB (the fault-tolerance save limit, CHORUS_FT_SAVE_LIMIT), a 16-byte all_gather of the loss
per step right after that last bucket, and one rank (1) late by 30 ms before that all_gather. Once the victim reports step 8, the test waits a random
moment and kill -9s it; the survivors redo the step whose collectives saw the failure and go on over
the survivors; then a replacement joins (CHORUS_JOIN=1), catches up to the survivors' step boundary,
gets the weights by a broadcast, every rank builds a new DDP, and training goes on over all ranks until
15 more steps passed. The protocol is described in _ft_ddp_worker.py.

Checked from the per-rank JSON reports: every survivor saw the same outcome (result digest,
contributors, failed ranks, or the same error) for every collective and made the same decisions
(valid, redone, sync); the replacement's collectives match the survivors' one for one; the victim is
reported once; after the rejoin collectives run over all ranks again and nothing fails; the loss
continues from where it was (no restart) and keeps decreasing; all ranks end with identical parameters.
The TCPStore lives in this test process, so any rank may die."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_ft_ddp_worker.py")
N = int(os.environ.get("CHORUS_FT_DDP_RANKS", "4"))
SLOW_RANK = 1
KILL_AT_STEP = 8
AFTER = 15
MIB = 1 << 20


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class _Ranks:
    """Worker processes by key, each with a log and a JSON report under tmp_path; killed on exit."""

    def __init__(self, tmp_path, base):
        self.tmp, self.base, self.procs, self.files = tmp_path, base, {}, []

    def log(self, key):
        return self.tmp / f"{key}.log"

    def report_path(self, key):
        return self.tmp / f"{key}.json"

    def spawn(self, rank, key, **extra):
        f = open(self.log(key), "w")
        self.files.append(f)
        env = dict(self.base, RANK=str(rank), LOCAL_RANK=str(rank), CHORUS_TEST_REPORT=str(self.report_path(key)), **extra)
        self.procs[key] = subprocess.Popen([sys.executable, WORKER], env=env, stdout=f, stderr=subprocess.STDOUT)

    def lines(self, key):
        return _read(self.log(key)).splitlines()

    def tail(self, key, k=40):
        return f"--- {key}\n" + "\n".join(self.lines(key)[-k:])

    def wait_for(self, cond, what, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            for key, p in self.procs.items():
                if p.poll() is not None:
                    pytest.fail(f"{key} exited with {p.returncode} while waiting for {what}:\n{self.tail(key)}")
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(self.tail(k, 10) for k in self.procs))

    def kill(self, key):
        os.kill(self.procs[key].pid, signal.SIGKILL)
        return self.procs.pop(key).wait()

    def wait_all(self, seconds):
        """Every process must exit 0 within `seconds`; the first to exit otherwise fails the test at once."""
        deadline = time.time() + seconds
        while any(p.poll() is None for p in self.procs.values()):
            for key, p in self.procs.items():
                if p.poll() not in (None, 0):
                    pytest.fail(f"{key} exited with {p.returncode}:\n{self.tail(key, 40)}\n" + "\n".join(self.tail(k, 10) for k in self.procs if k != key))
            if time.time() > deadline:
                pytest.fail(f"hung:\n" + "\n".join(self.tail(k, 15) for k, p in self.procs.items() if p.poll() is None))
            time.sleep(0.05)
        for key, p in self.procs.items():
            assert p.returncode == 0, f"{key} exited with {p.returncode}:\n{self.tail(key, 40)}"

    def report(self, key):
        return json.loads(_read(self.report_path(key)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in self.files:
            f.close()


def _attempt(a):
    """An attempt without what only this rank knows (its local loss)."""
    return {k: v for k, v in a.items() if k != "local_loss"}


def _op_map(attempts):
    """Collective number -> outcome, for attempts whose collectives are all recorded (DDP's own
    broadcasts, in an instance's first two steps, are not)."""
    m = {}
    for a in attempts:
        if a["issued"] == len(a["ops"]):
            for i, op in enumerate(a["ops"]):
                m[a["ops_start"] + i] = dict(op)
    return m


@pytest.mark.parametrize("victim", [0, 2])
def test_ddp_kill_and_rejoin(victim, tmp_path):
    assert victim != SLOW_RANK  # the shape: one rank late, another one dies
    t0 = time.time()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    store = dist.TCPStore("127.0.0.1", 0, N + 2, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False)
    base = dict(os.environ, WORLD_SIZE=str(N), MASTER_ADDR="127.0.0.1", CHORUS_TEST_STORE_PORT=str(store.port),
                CHORUS_TIMEOUT_MS="30000", PYTHONUNBUFFERED="1", FT_REJOINS="1", FT_AFTER=str(AFTER),
                FT_SLOW_RANK=str(SLOW_RANK), FT_SLOW_MS="30", FT_MAX_SECONDS="120")
    base.pop("CHORUS_JOIN", None)
    survivors = [r for r in range(N) if r != victim]
    with _Ranks(tmp_path, base) as w:
        for r in range(N):
            w.spawn(r, r)
        w.wait_for(lambda: any(l.startswith(f"step {KILL_AT_STEP} ") for l in w.lines(victim)), f"the victim's step {KILL_AT_STEP}", 120)
        delay = rng.uniform(0, 0.12)  # a step takes 40-80 ms: anywhere in the next steps
        time.sleep(delay)
        assert w.kill(victim) == -signal.SIGKILL
        t_kill = time.time()
        w.wait_for(lambda: all(any(l.startswith("failure seen") for l in w.lines(r)) for r in survivors),
                   "every survivor to see the failure", 30)
        w.spawn(victim, "joiner", CHORUS_JOIN="1")
        w.wait_all(120)
        reps = {r: w.report(r) for r in survivors}
        joiner = w.report("joiner")
        when = f"seed {seed}, kill {delay * 1000:.0f} ms after step {KILL_AT_STEP}"
        info = f"{when}; logs:\n" + "\n".join(w.tail(k, 12) for k in survivors + ["joiner"])

    # 1. The survivors agree on every attempt: its collectives' outcomes (digest of the result,
    # contributors, failed ranks, or the error), valid or redone, the global loss, syncs.
    ref = [_attempt(a) for a in reps[survivors[0]]["attempts"]]
    for r in survivors[1:]:
        mine = [_attempt(a) for a in reps[r]["attempts"]]
        for i, (a, b) in enumerate(zip(ref, mine)):
            assert a == b, f"survivors {survivors[0]} and {r} differ at attempt {i}:\n{json.dumps(a)}\n{json.dumps(b)}\n{info}"
        assert len(ref) == len(mine), f"survivors {survivors[0]} and {r} made {len(ref)} and {len(mine)} attempts\n{info}"

    ops = [(a, i, op) for a in ref for i, op in enumerate(a["ops"])]
    everyone, alive = list(range(N)), survivors
    syncs = [k for k, a in enumerate(ref) if a["kind"] == "sync"]
    assert len(syncs) == 1, f"expected one sync (the replacement's), got {len(syncs)}\n{info}"
    sync = ref[syncs[0]]
    assert sync["members"] == everyone and sync["src"] != victim and sync["issued"] == 2, sync
    assert all("error" not in op and op["failed"] == [] for op in sync["ops"]), sync

    # 2. The victim is reported once, the collective it died in completed over the survivors or
    # failed alike everywhere (checked by 1); before: all ranks, then the survivors, after the
    # replacement's admission all ranks again, and no collective fails from the admission on.
    admitted = joiner["start_ops"]
    failed_reports = [(a["ops_start"] + i, op) for a, i, op in ops if op.get("failed")]
    errors = [(a["ops_start"] + i, op) for a, i, op in ops if "error" in op]
    assert all(op["failed"] == [victim] for _, op in failed_reports), failed_reports
    assert len(failed_reports) <= 1, f"the victim was reported more than once: {failed_reports}\n{info}"
    assert len(failed_reports) + len(errors) >= 1, f"no collective reported the failure\n{info}"
    assert len(errors) <= 1, f"more than one collective failed: {errors}\n{info}"
    assert all(k < admitted for k, _ in errors), f"a collective failed after the replacement was admitted at {admitted}: {errors}\n{info}"
    seq = [(a["ops_start"] + i, op.get("contributors")) for a, i, op in ops if "error" not in op]
    first_shrunk = next(k for k, (_, c) in enumerate(seq) if c != everyone)
    assert all(c == everyone for _, c in seq[:first_shrunk])
    regrown = next(k for k in range(first_shrunk, len(seq)) if seq[k][1] == everyone)
    assert all(c == alive for _, c in seq[first_shrunk:regrown]), f"collectives between the failure and the join: {seq[first_shrunk:regrown]}"
    assert all(c == everyone for _, c in seq[regrown:]), "a collective after the join ran without every rank"
    assert seq[regrown][0] == admitted, f"the first collective over all ranks again is {seq[regrown][0]}, the replacement was admitted at {admitted}"

    # 3. Steps: every step is valid exactly once, in order; a redone step redoes the same step. Every
    # train attempt issued the same collectives once DDP's buckets were final, and those are in place
    # at, above and below the save limit.
    train = [a for a in ref if a["kind"] == "train"]
    valid = [a for a in train if a["valid"]]
    assert [a["step"] for a in valid] == list(range(len(valid))), [a["step"] for a in valid]
    assert any(not a["valid"] for a in train), "no step was redone"
    assert ref[-1]["step"] == reps[survivors[0]]["final_step"] - 1
    plan = reps[survivors[0]]["plan"]
    sizes = [numel * 4 for kind, dtype, numel, _ in plan["ops"] if dtype == "float32"]
    assert min(sizes) >= MIB and max(sizes) > MIB and sizes[-1] == MIB, f"bucket bytes {sizes}: the last one (before the all_gather) must be the save limit, none below"
    for a in train:
        if a["issued"] == len(a["ops"]) and len(a["ops"]) == len(plan["ops"]):
            assert [[o["kind"], o["dtype"], o["numel"], o["op"]] for o in a["ops"]] == plan["ops"]
    steady = [a for a in train if a["instance"] == 0 and a["ops_start"] >= plan["start"]]
    assert all(a["issued"] == len(plan["ops"]) for a in steady), "a step of the running DDP issued other collectives than its plan"

    # 4. The replacement: its catch-up collectives are the rest of the survivors' step they were
    # admitted in, outcome for outcome; from its first step on, its attempts are the survivors'.
    cu = joiner["catch_up"]
    assert cu["ops_start"] == admitted
    smap, jmap = _op_map(reps[survivors[0]]["attempts"]), {}
    for i, op in enumerate(cu["ops"]):
        jmap[admitted + i] = dict(op)
    jmap.update(_op_map(joiner["attempts"]))
    for k, op in sorted(jmap.items()):
        assert smap.get(k) == op, f"collective {k}: the replacement saw {op}, the survivors {smap.get(k)}\n{info}"
    jatt = [_attempt(a) for a in joiner["attempts"]]
    jsync = next(k for k, a in enumerate(jatt) if a["kind"] == "sync")
    assert all(a["kind"] == "mirror" for a in jatt[:jsync])
    assert jatt[jsync:] == ref[syncs[0]:], f"the replacement's attempts from the sync on differ from the survivors'\n{info}"
    assert len(jatt[jsync:]) >= AFTER

    # 5. The loss goes on: the first step after the rejoin continues from the survivors' weights (no
    # restart), every rank got the same global loss each step (by 1 and 4), and it keeps falling.
    # (Per-step losses are noisy, different batches: compare means of 5.)
    mean = lambda xs: sum(xs) / len(xs)
    losses = [a["loss"] for a in valid]
    after = [a["loss"] for a in valid if a["ops_start"] > sync["ops_start"]]
    before_sync = [a["loss"] for a in valid if a["ops_start"] < sync["ops_start"]][-5:]
    before_kill = losses[KILL_AT_STEP - 4:KILL_AT_STEP + 1]
    assert after[0] < 0.8 * losses[0], f"the loss after the rejoin ({after[0]}) is back near the start ({losses[0]})"
    assert after[0] < 1.5 * mean(before_sync), f"the loss after the rejoin ({after[0]}) jumped from {before_sync}"
    assert mean(after[-5:]) < 1.15 * mean(before_sync), f"the loss got worse after the rejoin: {before_sync} -> {after}"
    assert mean(after[-5:]) < mean(before_kill), (before_kill, after[-5:])

    # 6. Every rank, the replacement too, ends with identical parameters.
    finals = list(reps.values()) + [joiner]
    for rep in finals:
        c = rep["checksums"]
        assert all(c[2 * r:2 * r + 2] == c[0:2] for r in range(N)), f"rank {rep['rank']}: the ranks' parameter checksums differ: {c}"
        assert rep["active"] == everyone and rep["final_step"] == finals[0]["final_step"]
    assert len({rep["param_digest"] for rep in finals}) == 1, [rep["param_digest"] for rep in finals]
    redone = sum(not a["valid"] for a in train)
    print(f"{N} ranks, victim {victim}, {when}: {len(ref)} attempts ({redone} redone), "
          f"failure {failed_reports or errors}, admitted at collective {admitted} (mark {cu['marker']}, {cu['done']} done: position {cu['pos']} of {cu['plan_len']}), "
          f"loss {losses[0]:.3f} -> {losses[KILL_AT_STEP]:.3f} (kill) -> {after[0]:.3f} (rejoin) -> {losses[-1]:.3f}; "
          f"{time.time() - t0:.1f} s ({time.time() - t_kill:.1f} s after the kill)")
