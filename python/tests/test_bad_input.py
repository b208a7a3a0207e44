"""Issue 25 through torch: disagreeing arguments are a clear error on every rank (naming the
argument), never a signal, a hang or a silent reinterpretation, and the group works afterwards."""
from _launch import run_ranks


def test_disagreeing_dtypes_and_self_splits_fail_clearly_on_every_rank(tmp_path):
    ws = 2
    codes, reports, logs = run_ranks("_mismatch_worker.py", ws, tmp_path, timeout=240)
    for r in range(ws):
        # A negative code is a signal (the engine thread's panic used to abort the process).
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
    for r, rep in enumerate(reports):
        cases = rep["cases"]
        for name, case in cases.items():
            assert case["error"], f"rank {r}: {name} succeeded; expected an error:\n{logs[r]}"
            assert "timed out" not in case["error"], f"rank {r}: {name} only timed out: {case['error']}"
            assert case["after"] is None, f"rank {r}: the all_reduce after {name} failed: {case['after']}"
        for name in ("broadcast", "all_gather"):
            err = cases[name]["error"]
            assert "disagree on the dtype" in err, f"rank {r}: {name}: the error does not name the dtype: {err}"
            # The detecting rank names both values and both ranks; a peer names the reporter.
            other = 1 - r
            assert f"rank {other}" in err, f"rank {r}: {name}: the error does not name rank {other}: {err}"
            if "(this rank)" in err:
                assert "float32" in err and "int32" in err, f"rank {r}: {name}: both dtypes are not named: {err}"
        assert cases["broadcast"]["value"] != 1088421888, f"rank {r}: the float32 bits landed in the int32 tensor"
        err = cases["all_to_all_single"]["error"]
        if r == 0:
            assert "rank 0 sends 8 bytes to itself but receives 4 from itself" in err, err
        else:
            assert "all_to_all_v" in err and "rank 0" in err and "rejected" in err, err
