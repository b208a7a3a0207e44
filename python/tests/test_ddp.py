"""DDP over chorus trains to the same parameters as DDP over Gloo (2 ranks: sums are exact)."""
from _launch import run_ranks


def test_ddp_matches_gloo(tmp_path):
    codes, reports, logs = run_ranks("_ddp_worker.py", 2, tmp_path)
    for r in range(2):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
    failures = [f"rank {rep['rank']}: {f}" for rep in reports for f in rep["failures"]]
    assert not failures, "\n".join(failures)
