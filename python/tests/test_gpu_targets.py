"""benches/gpu_targets.py: the issue-5 target check over a chorus-gpu-bench CSV (no GPU needed)."""
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benches" / "gpu_targets.py"
FIELDS = "op,bytes,count,dtype,world,chorus_us,chorus_algbw,chorus_busbw,nccl_us,nccl_algbw,nccl_busbw,check".split(",")
OPS = ("all_reduce", "broadcast", "all_gather", "reduce_scatter", "all_to_all")
SIZES = [8, 1 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 1 << 30]


def run(path, *args):
    p = subprocess.run([sys.executable, str(SCRIPT), str(path), *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def write_csv(path, time_ratio, busbw_ratio, check="ok", ops=OPS):
    """Every op at SIZES; chorus's time is time_ratio x NCCL's, its busbw busbw_ratio x NCCL's."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        for op in ops:
            for b in SIZES:
                nccl_us, nccl_bw = 9.0 if b <= 64 << 10 else 1000.0, 300.0
                w.writerow(dict(op=op, bytes=b, count=b // 4, dtype="float32", world=2,
                                chorus_us=nccl_us * time_ratio, chorus_algbw=0, chorus_busbw=nccl_bw * busbw_ratio,
                                nccl_us=nccl_us, nccl_algbw=0, nccl_busbw=nccl_bw, check=check))


def test_the_recorded_two_gpu_run_reports_what_it_missed():
    rc, out = run(ROOT / "benches" / "results" / "gpu_h200x2.csv")
    assert rc == 1, out
    assert "NOT MET  all_reduce busbw >= 1.1x NCCL at >= 64 MB: 4/5 sizes, worst 1.09x at 1G" in out, out
    assert "NOT MET  all_reduce time <= 0.6x NCCL at <= 64 KB" in out, out
    for op in ("broadcast", "all_gather", "reduce_scatter", "all_to_all"):
        assert f"met      {op} busbw >= NCCL at >= 16 MB" in out, out


def test_a_run_meeting_every_target_passes(tmp_path):
    write_csv(tmp_path / "ok.csv", time_ratio=0.5, busbw_ratio=1.2)
    rc, out = run(tmp_path / "ok.csv")
    assert rc == 0 and "all targets met" in out and "NOT MET" not in out, out


def test_a_wrong_result_fails_even_when_fast(tmp_path):
    write_csv(tmp_path / "diff.csv", time_ratio=0.5, busbw_ratio=1.2, check="DIFF")
    rc, out = run(tmp_path / "diff.csv")
    assert rc == 1 and "rows differ" in out, out


def test_the_bounds_are_inclusive_and_checked_per_size(tmp_path):
    write_csv(tmp_path / "edge.csv", time_ratio=0.6, busbw_ratio=1.1)
    assert run(tmp_path / "edge.csv")[0] == 0
    write_csv(tmp_path / "slow.csv", time_ratio=0.61, busbw_ratio=1.1)
    rc, out = run(tmp_path / "slow.csv")
    assert rc == 1 and "NOT MET  all_reduce time <= 0.6x NCCL at <= 64 KB: 0/3 sizes" in out, out


def test_a_missing_op_is_an_error_not_a_pass(tmp_path):
    write_csv(tmp_path / "partial.csv", time_ratio=0.5, busbw_ratio=1.2, ops=("all_reduce",))
    rc, out = run(tmp_path / "partial.csv")
    assert rc == 2 and "no broadcast rows" in out, out


def test_one_rank_has_no_busbw_to_compare_and_says_so(tmp_path):
    write_csv(tmp_path / "one.csv", time_ratio=0.5, busbw_ratio=1.2)
    rows = (tmp_path / "one.csv").read_text().splitlines()
    zeroed = [rows[0]] + [",".join(f[:10] + ["0", f[11]]) for f in (r.split(",") for r in rows[1:])]
    (tmp_path / "one.csv").write_text("\n".join(zeroed) + "\n")
    rc, out = run(tmp_path / "one.csv")
    assert rc == 2 and "no all_reduce rows with a nonzero NCCL busbw" in out, out
