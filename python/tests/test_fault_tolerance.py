"""Fault tolerance through torch.distributed: 4 ranks loop dist.all_reduce; the test kill -9s one rank
mid-loop, the survivors keep going with identical results over the same contributors and report the
same failed rank once; then a replacement process joins (CHORUS_JOIN=1) and the loop continues over all
4 ranks. The TCPStore lives in this test process, so killing any rank (rank 0 included) keeps it up.
The CUDA variant does the same on CUDA tensors (one rank per GPU, CHORUS_CUDA_PATH=host: GPU tensors
take the host path, which carries the fault-tolerance contract) with as many ranks as GPUs (at most 8,
at least 2; CHORUS_FT_CUDA_RANKS overrides); it is skipped without a GPU."""
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_ft_worker.py")
N = 4


def _lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _iters(lines):
    return [l for l in lines if l.startswith("iter ")]


def _wait_for(cond, what, timeout, procs, logs):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        for r, p in procs.items():
            if p.poll() not in (None, 0):
                pytest.fail(f"rank {r} exited with {p.returncode} while waiting for {what}:\n" + "\n".join(_lines(logs[r])[-30:]))
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(f"--- rank {r}\n" + "\n".join(_lines(l)[-10:]) for r, l in logs.items()))


def _list_after(line, label):
    m = re.search(re.escape(label) + r"\[([^\]]*)\]", line)
    return [int(x) for x in m.group(1).split(",") if x.strip()] if m else None


class _Workers:
    """The worker processes of one test, by key: logs under `tmp_path`; on exit every process still
    running is killed and every log closed."""

    def __init__(self, tmp_path, base):
        self.tmp_path, self.base, self.procs, self.logs, self.files = tmp_path, base, {}, {}, []

    def spawn(self, rank, key, **extra):
        self.logs[key] = self.tmp_path / f"{key}.log"
        f = open(self.logs[key], "w")
        self.files.append(f)
        env = dict(self.base, RANK=str(rank), LOCAL_RANK=str(rank), **extra)
        self.procs[key] = subprocess.Popen([sys.executable, WORKER], env=env, stdout=f, stderr=subprocess.STDOUT)

    def wait_for(self, cond, what, timeout):
        _wait_for(cond, what, timeout, self.procs, self.logs)

    def kill(self, key):
        """kill -9 of `key`; returns its exit status."""
        os.kill(self.procs[key].pid, signal.SIGKILL)
        return self.procs.pop(key).wait()

    def wait_all(self, seconds):
        """Every process must exit 0 within `seconds` (together)."""
        deadline = time.time() + seconds
        for key, p in self.procs.items():
            try:
                code = p.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{key} hung:\n" + "\n".join(_lines(self.logs[key])[-20:]))
            assert code == 0, f"{key} exited with {code}:\n" + "\n".join(_lines(self.logs[key])[-30:])

    def lines(self, key):
        return _lines(self.logs[key])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in self.files:
            f.close()


@pytest.mark.parametrize("victim", [0, 2])
def test_kill_and_rejoin(victim, tmp_path):
    _kill_and_rejoin(victim, N, "cpu", tmp_path)


def _cuda_ranks():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return int(os.environ.get("CHORUS_FT_CUDA_RANKS", min(max(n, 2), 8))), n


@pytest.mark.parametrize("where", ["first", "middle"])
def test_kill_and_rejoin_cuda(where, tmp_path):
    n, gpus = _cuda_ranks()
    if gpus == 0:
        pytest.skip("needs a CUDA GPU (run on the GPU machine)")
    _kill_and_rejoin(0 if where == "first" else n // 2, n, "cuda", tmp_path)


def test_kill_on_the_gpu_kernel_path_aborts_then_rejoins(tmp_path):
    """The GPU kernel path: a rank is kill -9ed while every rank loops GPU all_reduces. The survivors'
    kernels are aborted by the group's failure detector (they stop waiting at once rather than at their
    60 s deadline), chorus.check_device names the dead rank, the group shrinks, GPU collectives go on
    over the survivors (all_reduce sum and avg, all_gather, reduce_scatter, all_to_all, broadcast,
    gather, scatter, each checked; a broadcast from the dead root and a send to it fail on every
    survivor), a replacement rejoins on the host
    path, and then GPU all_reduces over all ranks run again on a rebuilt communicator. Ranks share the
    GPUs when there are fewer than 3."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        pytest.skip("needs a CUDA GPU (run on the GPU machine)")
    n, victim = min(max(gpus, 3), 8), 1
    t0 = time.time()
    store = dist.TCPStore("127.0.0.1", 0, n + 2, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False)
    base = dict(os.environ, WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", CHORUS_TEST_STORE_PORT=str(store.port),
                CHORUS_TIMEOUT_MS="30000", CHORUS_CUDA_TIMEOUT_MS="60000", FT_AFTER="10", GPU_AFTER="20", GPU_SURVIVORS="10",
                PYTHONUNBUFFERED="1", FT_DEVICE="cuda-kernels")
    base.pop("CHORUS_JOIN", None)
    survivors = [r for r in range(n) if r != victim]
    with _Workers(tmp_path, base) as w:
        gpu_lines = lambda r: [l for l in w.lines(r) if l.startswith("gpu ")]
        for r in range(n):
            w.spawn(r, r)
        w.wait_for(lambda: all(len(gpu_lines(r)) >= 20 for r in range(n)), "20 GPU collectives on every rank", 120)
        w.kill(victim)
        w.wait_for(lambda: all(any(l.startswith("gpu failed") for l in w.lines(r)) for r in survivors),
                   "the survivors' GPU collectives to fail", 30)
        w.wait_for(lambda: all("gpu-survivors done" in w.lines(r) for r in survivors),
                   "the survivors' GPU collectives over the shrunk view", 120)
        w.spawn(victim, "joiner", CHORUS_JOIN="1")
        w.wait_all(90)

    outs = {r: w.lines(r) for r in survivors + ["joiner"]}
    shrunk = {r: [l for l in outs[r] if l.startswith("gpu-survivors ") and "digest" in l] for r in survivors}
    assert len(shrunk[survivors[0]]) == 10, outs[survivors[0]][-5:]
    assert all(shrunk[r] == shrunk[survivors[0]] for r in survivors), "survivors disagree on the GPU collectives over the shrunk view"
    for r in survivors:
        dead_root = next(l for l in outs[r] if l.startswith("gpu-survivors dead root"))
        assert f"rank {victim}" in dead_root and "not an active member" in dead_root, dead_root
        dead_peer = next(l for l in outs[r] if l.startswith("gpu-survivors dead peer"))
        assert f"rank {victim}" in dead_peer and "not an active member" in dead_peer, dead_peer
    waits = []
    for r in survivors:
        fail = next(l for l in outs[r] if l.startswith("gpu failed"))
        waited = float(fail.split(" after ")[1].split(" s:")[0])
        waits.append(waited)
        # Aborted, not timed out: far below the kernels' 60 s deadline (a loose bound; the abort is
        # what is checked, not its speed), and the error names the dead rank.
        assert waited < 30 and f"here rank {victim}" in fail and "aborted" in fail, fail
    after = {r: [l for l in outs[r] if l.startswith("gpu-after ")] for r in outs}
    ref = after[survivors[0]]
    assert len(ref) == 20, outs[survivors[0]][-5:]
    assert all(after[r] == ref for r in outs), "ranks disagree on the GPU collectives after the rejoin"
    assert _list_after(outs["joiner"][-1], "active ") == list(range(n)), outs["joiner"][-1]
    print(f"{n} ranks on {gpus} GPU(s), victim {victim}: the survivors' GPU ops failed {waits} s after they began; {time.time() - t0:.1f}s")


def _kill_and_rejoin(victim, N, device, tmp_path):
    t0 = time.time()
    store = dist.TCPStore("127.0.0.1", 0, N + 2, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False)
    base = dict(os.environ, WORLD_SIZE=str(N), MASTER_ADDR="127.0.0.1", CHORUS_TEST_STORE_PORT=str(store.port),
                CHORUS_TIMEOUT_MS="30000", FT_AFTER="30", PYTHONUNBUFFERED="1", FT_DEVICE=device)
    base.pop("CHORUS_JOIN", None)
    survivors = [r for r in range(N) if r != victim]
    with _Workers(tmp_path, base) as w:
        for r in range(N):
            w.spawn(r, r)
        # Every rank is inside the loop: kill the victim at a moment it does not choose.
        w.wait_for(lambda: all(len(_iters(w.lines(r))) >= 20 for r in range(N)), "20 collectives on every rank", 40)
        assert w.kill(victim) == -signal.SIGKILL
        report = f"failed [{victim}]"
        w.wait_for(lambda: all(any(report in l for l in w.lines(r)) for r in survivors), "the survivors to report the failure", 20)
        # The survivors keep going without the victim; now a replacement joins.
        w.spawn(victim, "joiner", CHORUS_JOIN="1")
        w.wait_all(40)

    outs = {r: w.lines(r) for r in survivors}
    ref = _iters(outs[survivors[0]])
    for r in survivors[1:]:
        assert _iters(outs[r]) == ref, f"survivors {survivors[0]} and {r} disagree"
        assert outs[r][-1] == outs[survivors[0]][-1]
    # The victim is reported failed by exactly one collective, identically on every survivor ...
    reports = [i for i, l in enumerate(ref) if _list_after(l, "failed ") == [victim]]
    assert len(reports) == 1, f"expected one collective reporting rank {victim} failed:\n" + "\n".join(ref)
    assert all(_list_after(l, "failed ") == [] for i, l in enumerate(ref) if i != reports[0])
    # ... collectives before the kill ran over all ranks; from the report on, over the survivors
    # until the replacement is in, then over all 4 again.
    assert _list_after(ref[0], "contributors ") == list(range(N))
    k = reports[0]
    assert _list_after(ref[k], "contributors ") == survivors
    back = next(i for i in range(k, len(ref)) if _list_after(ref[i], "contributors ") == list(range(N)))
    assert all(_list_after(l, "contributors ") == survivors for l in ref[k:back])
    assert all(_list_after(l, "contributors ") == list(range(N)) for l in ref[back:])
    assert len(ref) - back == 31, "30 collectives after the one that grew the group back"
    epochs = [int(l.rsplit(" ", 1)[1]) for l in ref]
    assert epochs == sorted(epochs) and epochs[k] > epochs[0] and epochs[back] > epochs[k]
    # The replacement's collectives are the survivors' last ones, line for line.
    jout = w.lines("joiner")
    assert jout[0].startswith(f"start rank {victim} join 1"), jout[0]
    jiters = _iters(jout)
    assert jiters == ref[back:], "the replacement's results differ from the survivors'"
    assert jout[-1] == outs[survivors[0]][-1] and _list_after(jout[-1], "active ") == list(range(N)), jout[-1]
    if device == "cuda":
        assert all(l.startswith("start") and "device cuda:" in l for l in (jout[0], outs[survivors[0]][0])), (jout[0], outs[survivors[0]][0])
    print(f"{device}, {N} ranks, victim {victim}: {len(ref)} collectives, failure reported at {k}, rejoined at {back}, {time.time() - t0:.1f}s")


def _run_policy(mode, tmp_path):
    n = 3
    store = dist.TCPStore("127.0.0.1", 0, n + 1, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False)
    procs = []
    for r in range(n):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", CHORUS_TEST_STORE_PORT=str(store.port),
                   FT_MODE=mode, CHORUS_TIMEOUT_MS="20000")
        env.pop("CHORUS_JOIN", None)
        log = tmp_path / f"{mode}{r}.log"
        procs.append((subprocess.Popen([sys.executable, os.path.join(HERE, "_ft_policy_worker.py")], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT), log))
    out = {}
    for r, (p, log) in enumerate(procs):
        try:
            code = p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
            pytest.fail(f"rank {r} hung:\n{log.read_text()[-2000:]}")
        assert code == 0, f"rank {r} exited with {code}:\n{log.read_text()[-3000:]}"
        import json
        out[r] = [json.loads(l) for l in log.read_text().splitlines() if l.startswith("{")]
    return out


def test_abort_policy(tmp_path):
    out = _run_policy("abort", tmp_path)
    assert out[0] == out[1]
    recs = out[0]
    assert [r["contributors"] for r in recs[:5]] == [[0, 1, 2]] * 5 and all(r["sum"] == 6 for r in recs[:5])
    # The collective rank 2 vanished from fails on both survivors alike (policy `abort`) ...
    assert "error" in recs[5] and "failure policy `abort`" in recs[5]["error"] and recs[5]["active"] == [0, 1], recs[5]
    # ... and later ones run over the survivors.
    assert all(r["contributors"] == [0, 1] and r["sum"] == 3 and r["failed"] == [] for r in recs[6:]), recs[6:]


def test_deactivate_ranks(tmp_path):
    out = _run_policy("deact", tmp_path)
    assert out[0] == out[1]
    recs = out[0]
    assert all(r["contributors"] == [0, 1, 2] and r["sum"] == 6 for r in recs[:5])
    assert all(r["contributors"] == [0, 1] and r["sum"] == 3 and r["epoch"] == recs[5]["epoch"] > recs[0]["epoch"] for r in recs[5:]), recs[5:]
    assert "error" in out[2][-1] and out[2][-1]["iter"] == 5, out[2]


def test_p2p_with_a_dead_peer_fails_alone(tmp_path):
    """Issue 20, first part: point-to-point with a peer that died fails for that peer only, in a
    batch_isend_irecv too, and the view drops the dead rank before the failure completes."""
    out = _run_policy("p2p", tmp_path)
    assert len(out[1]) == 3 and all(r["recv"] == {"0": "ok", "2": "ok"} for r in out[1]), out[1]
    for r in (0, 2):
        other = str(2 - r)
        recs, last = out[r][:-1], out[r][-1]
        assert len(recs) == 6, recs
        assert all(rec["recv"] == {"1": "ok", other: "ok"} and rec["send"] == {"1": "ok", other: "ok"} for rec in recs[:3]), recs[:3]
        for rec in recs[3:]:
            # The exchange between the survivors completes; the receive from rank 1 fails, naming it,
            # and by then the view no longer counts rank 1 (no collective ran to drop it).
            assert rec["recv"][other] == "ok" and rec["send"][other] == "ok", rec
            got = rec["recv"]["1"]
            assert isinstance(got, dict) and "rank 1" in got["error"] and got["failed"] == [1], rec
            assert rec["active"] == [0, 2], rec
        # The group goes on: the next collective runs over the survivors and reports rank 1 once.
        assert last == {"all_reduce": 4.0, "contributors": [0, 2], "failed": [1]}, last
