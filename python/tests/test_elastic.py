"""Growing under torch (issue 20): the elastic training example runs as written — a job of 4 slots
started by ranks 0 and 1, joined by ranks 2 and 3 while it trains, rank 1 killed and started again —
and every process ends with the same model, bit for bit, over all four ranks."""
import os
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "elastic_training.py")


def test_elastic_training_example(tmp_path):
    env = dict(os.environ, ELASTIC_LOG_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, EXAMPLE], env=env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.iterdir()))
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{logs}"
    assert "every rank ends with the same model" in r.stdout
