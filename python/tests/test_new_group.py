import pytest

from _launch import run_ranks


@pytest.mark.parametrize("world_size", [3, 4])
def test_new_group_both_modes(world_size, tmp_path):
    codes, reports, logs = run_ranks("_new_group_worker.py", world_size, tmp_path)
    for r in range(world_size):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
        assert reports[r]["failures"] == [], reports[r]["failures"]
