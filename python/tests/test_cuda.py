"""CUDA tensors through chorus against NCCL (the same inputs, element for element), one process per GPU.

Needs at least two CUDA GPUs (NCCL refuses two ranks on one GPU); elsewhere the test reports as
skipped, never as passed. Run on the GPU machine with NCCL_NVLS_ENABLE=0.
"""
import pytest
import torch

from _launch import run_ranks


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs (chorus is compared with NCCL, one rank per GPU)")
def test_cuda_collectives_match_nccl(tmp_path):
    world_size = torch.cuda.device_count()
    codes, reports, logs = run_ranks("_cuda_worker.py", world_size, tmp_path, timeout=400)
    for r in range(world_size):
        assert codes[r] == 0 and reports[r] is not None, f"rank {r} exited with {codes[r]}:\n{logs[r]}"
    failures = [f"rank {rep['rank']}: {f}" for rep in reports for f in rep["failures"]]
    assert not failures, "\n".join(failures[:60])
    assert reports[0]["cases"] > 150
