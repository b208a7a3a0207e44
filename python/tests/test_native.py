"""The native torch backend: in use by default, built once per torch build, and the Python fallback."""
import os
import subprocess
import sys
import textwrap

import pytest

import chorus
from _launch import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
FORCED_PYTHON = os.environ.get("CHORUS_TORCH_BACKEND") == "python"


def _python(code: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(FORCED_PYTHON, reason="CHORUS_TORCH_BACKEND=python selects the fallback")
def test_native_backend_is_the_default():
    assert chorus.backend_path() == "native", chorus.fallback_reason()
    assert chorus.fallback_reason() is None


@pytest.mark.skipif(FORCED_PYTHON, reason="CHORUS_TORCH_BACKEND=python selects the fallback")
def test_collectives_run_in_the_native_backend(tmp_path):
    # The worker checks that torch routes the default group's CPU and CUDA calls to the C++ backend
    # object (not a Python ProcessGroup), that plain calls return complete works, and the results.
    codes, reports, logs = run_ranks("_native_worker.py", 2, tmp_path, timeout=180)
    for r in range(2):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
        assert reports[r]["path"] == "native"
        assert reports[r]["backend_type"] == "ChorusBackend"
        assert not reports[r]["failures"], reports[r]["failures"]


def test_python_fallback_smoke(tmp_path):
    codes, reports, logs = run_ranks("_native_worker.py", 2, tmp_path, timeout=180, extra_env={"CHORUS_TORCH_BACKEND": "python"})
    for r in range(2):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
        assert reports[r]["path"] == "python"
        assert not reports[r]["failures"], reports[r]["failures"]


@pytest.mark.skipif(FORCED_PYTHON, reason="CHORUS_TORCH_BACKEND=python selects the fallback")
def test_no_compiler_warns_once_and_falls_back(tmp_path):
    # A fresh cache and no compiler on PATH: one warning, the Python backend, working collectives.
    env = dict(os.environ, CHORUS_TORCH_EXT_DIR=str(tmp_path / "ext"), PATH="/nonexistent", CXX="")
    env.pop("CHORUS_TORCH_BACKEND", None)
    p = _python("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import chorus
        import torch, torch.distributed as dist
        msgs = [str(w.message) for w in caught if "native torch backend" in str(w.message)]
        assert len(msgs) == 1, msgs
        assert chorus.backend_path() == "python"
        assert "compiler" in chorus.fallback_reason(), chorus.fallback_reason()
        dist.init_process_group("chorus", store=dist.HashStore(), rank=0, world_size=1)
        t = torch.arange(5.0)
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        dist.destroy_process_group()
        print("ok")
    """, env)
    assert p.returncode == 0 and "ok" in p.stdout, p.stdout + p.stderr


@pytest.mark.skipif(FORCED_PYTHON, reason="CHORUS_TORCH_BACKEND=python selects the fallback")
def test_ranks_starting_together_build_once(tmp_path):
    # Two processes import chorus at once with an empty cache: one compiles, the other waits for the
    # lock and loads that build. Both end on the native path.
    env = dict(os.environ, CHORUS_TORCH_EXT_DIR=str(tmp_path / "ext"))
    env.pop("CHORUS_TORCH_BACKEND", None)
    env.pop("CHORUS_QUIET_BUILD", None)  # the build announces itself: the count below reads it
    code = "import chorus; print('path', chorus.backend_path(), chorus.fallback_reason())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "path native" in out, out + err
    builds = sum(err.count("building the native torch backend") for _, err in outs)
    assert builds == 1, [err for _, err in outs]
    # A later import loads the cached module without building.
    p = _python(code, env)
    assert "path native" in p.stdout and "building" not in p.stderr, p.stdout + p.stderr


@pytest.mark.parametrize("world_size", [2, 4])
def test_device_mesh_functional_collectives_and_compile(world_size, tmp_path):
    codes, reports, logs = run_ranks("_functional_worker.py", world_size, tmp_path, timeout=300)
    for r in range(world_size):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
        assert not reports[r]["failures"], reports[r]["failures"]
