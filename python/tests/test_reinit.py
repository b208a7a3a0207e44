"""Issue 25: destroying the default group and creating it again in the same processes (same store,
same name) works every time, not only when the ranks happen to keep in step."""
import socket

import pytest

from _launch import run_ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["store", "env"])
def test_destroy_and_reinit_20_times(mode, tmp_path):
    ws, rounds = 4, 20
    env = {"CHORUS_TEST_REINIT": mode, "CHORUS_TEST_ROUNDS": str(rounds), "MASTER_PORT": str(_free_port())}
    codes, reports, logs = run_ranks("_reinit_worker.py", ws, tmp_path, timeout=180, extra_env=env)
    for r in range(ws):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
        assert reports[r]["failures"] == [], reports[r]["failures"]
        assert len(reports[r]["seconds"]) == rounds, reports[r]
