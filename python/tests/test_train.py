"""Training steps end to end: DDP and FSDP2 over chorus give the same losses, step for step, and the same
final parameters as over Gloo, from the same start on the same data (2 ranks, CPU; a 2-term sum is exact)."""
import pytest

from _launch import run_ranks

WORLD = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    codes, reports, logs = run_ranks("_train_worker.py", WORLD, tmp, timeout=180)
    print(f"chorus backend path: {[rep and rep.get('backend_path') for rep in reports]}")  # shown with pytest -s
    return codes, reports, logs


def check(run, mode):
    codes, reports, logs = run
    for r in range(WORLD):
        rep = reports[r]
        res = rep and rep.get("modes", {}).get(mode)
        assert res is not None, f"rank {r} exited with {codes[r]} before reporting {mode}:\n{logs[r]}"
        assert not res["failures"], f"rank {r} ({mode}, chorus backend {rep.get('backend_path')}):\n" + "\n".join(res["failures"]) + f"\n{logs[r]}"
        assert rep["backend"] == "chorus"
        losses = res["losses"]
        assert len(losses["chorus"]) == len(losses["gloo"]) == 5
        assert losses["chorus"] == losses["gloo"]
    for r in range(WORLD):
        assert codes[r] == 0, f"rank {r} exited with {codes[r]}:\n{logs[r]}"


def test_ddp_steps_match_gloo(run):
    check(run, "ddp")


def test_fsdp2_steps_match_gloo(run):
    check(run, "fsdp2")
