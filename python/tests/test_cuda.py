"""CUDA tensors through chorus against NCCL (the same inputs, element for element), one process per GPU,
and, with the ranks sharing one GPU (where NCCL refuses to run), against results computed on the CPU.

The NCCL comparison needs at least two CUDA GPUs, the shared-GPU one a CUDA GPU; elsewhere they report
as skipped, never as passed. Run on the GPU machine with NCCL_NVLS_ENABLE=0.
"""
import os

import pytest
import torch

from _launch import run_ranks


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs (chorus is compared with NCCL, one rank per GPU)")
def test_cuda_collectives_match_nccl(tmp_path):
    _suite(tmp_path, torch.cuda.device_count(), "nccl")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_collectives_on_one_shared_gpu_match_the_cpu(tmp_path):
    """Two ranks on GPU 0 (the GPU kernel path between processes on one device), every result
    against the CPU reference: the torch-level GPU suite on a machine with one GPU."""
    _suite(tmp_path, 2, "cpu", CUDA_VISIBLE_DEVICES=_first_visible_gpu())


def _first_visible_gpu() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[0] if visible else "0"


def _suite(tmp_path, world_size, reference, **env):
    codes, reports, logs = run_ranks("_cuda_worker.py", world_size, tmp_path, timeout=400,
                                     extra_env=dict(CHORUS_TEST_REFERENCE=reference, **env))
    for r in range(world_size):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
    failures = [f"rank {rep['rank']}: {f}" for rep in reports for f in rep["failures"]]
    assert not failures, "\n".join(failures[:60])
    assert reports[0]["cases"] > 150


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("hosts", ["h0,h0,h1,h1", "h0,h1,h0"])
def test_cuda_collectives_across_simulated_hosts_match_the_cpu(tmp_path, hosts):
    """Issue 26, item 2: ranks sharing GPU 0 as several hosts (CHORUS_HOST_ID): all_reduce and
    broadcast run the kernels within each host and the host transports across (even and uneven
    hosts; an average over uneven hosts takes the host path), all_gather the host path; every result
    against the CPU."""
    n = len(hosts.split(","))
    codes, reports, logs = run_ranks("_hybrid_worker.py", n, tmp_path, timeout=400,
                                     extra_env=dict(CHORUS_TEST_HOSTS=hosts, CUDA_VISIBLE_DEVICES=_first_visible_gpu(),
                                                    CHORUS_LOG="warn,chorus_backend::api::hybrid=debug"))
    for r in range(n):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
    failures = [f"rank {rep['rank']}: {f}" for rep in reports for f in rep["fails"]]
    assert not failures, "\n".join(failures[:40])
    # The kernels-within, rails-across path ran (not the host path for everything).
    full_logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(n)]
    assert all("hybrid all_reduce" in l and "hybrid broadcast" in l for l in full_logs), logs[0]
