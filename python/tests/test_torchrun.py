"""`python -m torch.distributed.run --standalone --nproc-per-node 2 script.py` with the chorus backend."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_torchrun_standalone():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", os.path.join(HERE, "_torchrun_script.py")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "torchrun rank 0 of 2: OK" in out and "torchrun rank 1 of 2: OK" in out, out[-4000:]
