"""Every collective through chorus vs Gloo, element for element, on 2, 3 and 4 ranks."""
import pytest

from _launch import run_ranks


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_collectives_match_gloo(world_size, tmp_path):
    codes, reports, logs = run_ranks("_parity_worker.py", world_size, tmp_path)
    for r in range(world_size):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
    failures = [f"rank {rep['rank']}: {f}" for rep in reports for f in rep["failures"]]
    assert not failures, "\n".join(failures[:60])
    assert reports[0]["cases"] > 500
