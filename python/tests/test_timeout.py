"""Issue 25: an explicit CHORUS_TIMEOUT_MS bounds chorus's waits under torch (which always passes its
own timeout, 30 minutes by default), and the timeout error names CHORUS_TIMEOUT_MS as the knob;
chorus.Options(timeout=) overrides the variable, and the error then names the group's timeout."""
from _launch import run_ranks


def _run(tmp_path, env):
    codes, reports, logs = run_ranks("_timeout_worker.py", 2, tmp_path, timeout=120, extra_env=env)
    for r in range(2):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
        assert reports[r]["first"] == 2.0, reports[r]
    rep = reports[0]
    assert rep["error"] is not None, f"rank 0's all_reduce succeeded without rank 1:\n{logs[0]}"
    return rep


def test_chorus_timeout_ms_bounds_waits_under_torch(tmp_path):
    rep = _run(tmp_path, {"CHORUS_TIMEOUT_MS": "2000"})
    # Well under torch's 30 minutes; at least about the 2 s deadline (generous bounds: 2 noisy cores).
    assert 1.5 <= rep["seconds"] < 60, rep
    assert "timed out" in rep["error"] and "raise CHORUS_TIMEOUT_MS" in rep["error"], rep["error"]


def test_chorus_options_timeout_overrides_the_variable(tmp_path):
    rep = _run(tmp_path, {"CHORUS_TIMEOUT_MS": "2000", "CHORUS_TEST_OPTION_TIMEOUT_S": "4"})
    assert 3.5 <= rep["seconds"] < 60, rep
    err = rep["error"]
    assert "timed out" in err and "chorus.Options(timeout=)" in err and "raise CHORUS_TIMEOUT_MS" not in err, err
