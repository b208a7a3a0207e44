#!/usr/bin/env python3
"""Plots a chorus-gpu-bench CSV (--csv): busbw and time against size, chorus and NCCL, one panel pair
per operation. Usage: plot_gpu.py results/gpu_h200x2.csv results/gpu_h200x2.png (needs matplotlib)."""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = defaultdict(list)
with open(sys.argv[1]) as fh:
    for r in csv.DictReader(fh):
        rows[r["op"]].append(r)
ops = list(rows)
fig, axes = plt.subplots(2, len(ops), figsize=(4.2 * len(ops), 7.5), squeeze=False)
for i, op in enumerate(ops):
    rs = rows[op]
    size = [int(r["bytes"]) for r in rs]
    for lib, style in (("chorus", "-o"), ("nccl", "--s")):
        axes[0][i].plot(size, [float(r[f"{lib}_busbw"]) for r in rs], style, ms=3, label=lib)
        axes[1][i].plot(size, [float(r[f"{lib}_us"]) for r in rs], style, ms=3, label=lib)
    axes[0][i].set_title(f"{op} ({rs[0]['world']} x GPU, {rs[0]['dtype']})")
    axes[0][i].set_ylabel("busbw (GB/s)")
    axes[1][i].set_ylabel("time (us)")
    axes[1][i].set_yscale("log")
    for ax in (axes[0][i], axes[1][i]):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
print("wrote", sys.argv[2])
