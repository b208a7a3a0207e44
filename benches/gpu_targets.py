#!/usr/bin/env python3
"""Checks a chorus-gpu-bench CSV (--csv) against the GPU targets of issue 5, size by size, and
prints one line per target with the worst ratio and whether it was met.

Targets (chorus against NCCL, measured side by side in the same run):
  all_reduce busbw >= 1.1x NCCL at every size >= 64 MB;
  all_reduce time <= 0.6x NCCL at every size <= 64 KB (also shown against a reference NCCL time,
    --nccl-small-us, ANCHORS.md's figure for these machines);
  broadcast, all_gather, reduce_scatter, all_to_all busbw >= NCCL at every size >= 16 MB.

Usage: gpu_targets.py results/gpu_h200x2.csv [--nccl-small-us 9.0]
Exit status: 0 when every target is met, 1 when one is not, 2 when the CSV lacks a needed row.
"""
import argparse
import csv
import sys

KB, MB = 1 << 10, 1 << 20

# (name, op, size filter, column, comparison, bound)
TARGETS = [
    ("all_reduce busbw >= 1.1x NCCL at >= 64 MB", "all_reduce", lambda b: b >= 64 * MB, "busbw", ">=", 1.1),
    ("all_reduce time <= 0.6x NCCL at <= 64 KB", "all_reduce", lambda b: b <= 64 * KB, "us", "<=", 0.6),
] + [
    (f"{op} busbw >= NCCL at >= 16 MB", op, lambda b: b >= 16 * MB, "busbw", ">=", 1.0)
    for op in ("broadcast", "all_gather", "reduce_scatter", "all_to_all")
]


def size_name(b):
    for unit, n in (("G", 1 << 30), ("M", MB), ("K", KB)):
        if b >= n and b % n == 0:
            return f"{b // n}{unit}"
    return str(b)


def check(rows, nccl_small_us):
    """Returns (lines, all_met); raises KeyError naming an op with no rows in range."""
    lines, all_met = [], True
    for name, op, in_range, col, cmp, bound in TARGETS:
        # A zero NCCL figure (busbw of one rank, or rounded away at tiny sizes) gives no ratio.
        sel = [r for r in rows if r["op"] == op and in_range(int(r["bytes"])) and float(r[f"nccl_{col}"]) > 0]
        if not sel:
            raise KeyError(f"no {op} rows with a nonzero NCCL {col} in the range of '{name}'")
        ratios = [(int(r["bytes"]), float(r[f"chorus_{col}"]) / float(r[f"nccl_{col}"])) for r in sel]
        ok = [(ratio >= bound) if cmp == ">=" else (ratio <= bound) for _, ratio in ratios]
        worst_bytes, worst = (min if cmp == ">=" else max)(ratios, key=lambda x: x[1])
        met = all(ok)
        all_met &= met
        line = (f"{'met' if met else 'NOT MET':7}  {name}: {sum(ok)}/{len(ok)} sizes, worst {worst:.2f}x "
                f"at {size_name(worst_bytes)}")
        if col == "us" and nccl_small_us:
            slowest = max(float(r["chorus_us"]) for r in sel)
            line += (f"; chorus {min(float(r['chorus_us']) for r in sel):.2f}-{slowest:.2f} us = "
                     f"{slowest / nccl_small_us:.2f}x the reference NCCL {nccl_small_us} us")
        lines.append(line)
    return lines, all_met


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--nccl-small-us", type=float, default=9.0,
                    help="reference NCCL small all_reduce time (ANCHORS.md: about 9 us on 2x H200)")
    args = ap.parse_args(argv)
    with open(args.csv) as fh:
        rows = list(csv.DictReader(fh))
    worlds = sorted({r["world"] for r in rows})
    wrong = [f"{r['op']} {r['bytes']}" for r in rows if r.get("check", "ok") not in ("ok", "-", "")]
    print(f"{args.csv}: {len(rows)} rows, world {','.join(worlds)}")
    try:
        lines, all_met = check(rows, args.nccl_small_us)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    if wrong:
        print(f"NOT MET  every result checked: {len(wrong)} rows differ ({', '.join(wrong[:5])})")
        all_met = False
    print("all targets met" if all_met else "some targets not met")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
