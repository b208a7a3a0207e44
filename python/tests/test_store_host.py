"""Losing the store's host through torch (issue 24): with `env://`, as under mp.spawn, rank 0's
process hosts torch's TCPStore, and `kill -9` of rank 0 in an all_reduce loop takes it down.
With membership replicas (CHORUS_MEMBERSHIP_REPLICAS=1) every survivor sees the group shrink at the
same collective and goes on, and a replacement for rank 0 (which hosts a new, empty TCPStore) finds
the group through the survivors' replicas (CHORUS_JOIN_VIA) and rejoins; without replicas, every
survivor fails alike, with an error that names the lost store and what to do, not a hang and not a
hint at MASTER_ADDR/MASTER_PORT."""
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_store_host_worker.py")
N = 4


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, env, logs, files):
    """Starts N ranks (rank 0 hosting the TCPStore) and waits until each ran 50 collectives."""
    procs = [subprocess.Popen([sys.executable, WORKER], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=files[r], stderr=subprocess.STDOUT) for r in range(N)]
    deadline = time.time() + 120
    while not all("iter 50" in p.read_text() for p in logs[:N]):
        assert time.time() < deadline, "the loop never started:\n" + "\n".join(p.read_text()[-2000:] for p in logs[:N])
        assert all(p.poll() is None for p in procs), "a rank exited early:\n" + "\n".join(p.read_text()[-2000:] for p in logs[:N])
        time.sleep(0.05)
    return procs


def _env(**extra):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(N), CHORUS_TIMEOUT_MS="30000", **extra)
    env.pop("CHORUS_STORE_ADDR", None)
    return env


def _cleanup(procs, files):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for f in files:
        f.close()


def _kill_the_store_host(tmp_path, replicas):
    """Starts N ranks, kills rank 0 once every rank ran 50 collectives, and returns each survivor's
    (exit code, output)."""
    env = _env(CHORUS_MEMBERSHIP_REPLICAS="1" if replicas else "0")
    logs = [tmp_path / f"rank{r}.log" for r in range(N)]
    files = [open(p, "w") for p in logs]
    procs = []
    try:
        procs = _start(tmp_path, env, logs, files)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        return [(procs[r].wait(timeout=90), logs[r].read_text()) for r in range(1, N)]
    finally:
        _cleanup(procs, files)


def test_with_replicas_the_survivors_go_on_after_the_store_host_dies(tmp_path):
    shrunk = set()
    for r, (code, out) in enumerate(_kill_the_store_host(tmp_path, replicas=True), start=1):
        # (torch's store client warns, with a stack, on every call to the dead store: keep our lines)
        lines = [l for l in out.splitlines() if l.startswith(("iter ", "shrunk ", "done ", "failed: "))]
        assert code == 0, f"survivor {r} exited {code}:\n" + "\n".join(lines[-5:])
        marks = [l for l in lines if l.startswith("shrunk to ")]
        assert len(marks) == 1 and marks[0].startswith(f"shrunk to {N - 1} at "), f"survivor {r}: {marks}"
        shrunk.add(marks[0])
        assert lines[-1] == f"done {N - 1}", f"survivor {r} ended with {lines[-1]!r}"
    assert len(shrunk) == 1, f"the survivors saw the group shrink at different collectives: {shrunk}"


def test_without_replicas_losing_the_store_host_is_named_on_every_survivor(tmp_path):
    for r, (code, out) in enumerate(_kill_the_store_host(tmp_path, replicas=False), start=1):
        failed = [l for l in out.splitlines() if l.startswith("failed: ")]
        assert code == 3 and failed, f"survivor {r} exited {code} without a failed collective:\n{out[-3000:]}"
        assert "rank 0's process" in failed[0] and "stopped answering" in failed[0], f"survivor {r} does not name the lost store host:\n{failed[0]}"
        assert "check that every rank uses the same MASTER_ADDR" not in failed[0], f"survivor {r} blames the configuration:\n{failed[0]}"


def test_a_replacement_for_the_store_host_joins_through_the_replicas(tmp_path):
    env = _env(CHORUS_MEMBERSHIP_REPLICAS="1", UNTIL="rejoin")
    logs = [tmp_path / f"rank{r}.log" for r in range(N)] + [tmp_path / "replacement.log"]
    files = [open(p, "w") for p in logs]
    procs = []
    try:
        procs = _start(tmp_path, env, logs, files)
        via = [l.split()[1] for p in logs[1:N] for l in p.read_text().splitlines() if l.startswith("replica ")]
        assert len(via) == N - 1 and all(":" in a for a in via), via
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        procs.append(subprocess.Popen([sys.executable, WORKER], env=dict(env, RANK="0", LOCAL_RANK="0", CHORUS_JOIN="1", CHORUS_JOIN_VIA=",".join(via)), stdout=files[N], stderr=subprocess.STDOUT))
        codes = {r: procs[r].wait(timeout=120) for r in list(range(1, N)) + [N]}
    finally:
        _cleanup(procs, files)
    marks = {}
    for r in list(range(1, N)) + [N]:
        who = "the replacement" if r == N else f"survivor {r}"
        lines = [l for l in logs[r].read_text().splitlines() if l.startswith(("iter ", "shrunk ", "whole ", "done ", "failed: "))]
        assert codes[r] == 0, f"{who} exited {codes[r]}:\n" + logs[r].read_text()[-3000:]
        assert lines[-1] == f"done {N}", f"{who} ended with {lines[-1]!r}"
        whole = [l for l in lines if l.startswith("whole again at ")]
        assert len(whole) == 1, f"{who}: {whole}"
        marks[r] = whole[0]
        if r < N:
            shrunk = [l for l in lines if l.startswith("shrunk to ")]
            assert len(shrunk) == 1 and shrunk[0].startswith(f"shrunk to {N - 1} at "), f"{who}: {shrunk}"
    assert len(set(marks.values())) == 1, f"the ranks saw the replacement arrive at different collectives: {marks}"
