"""Seconds per benchmark cell (fit + scores) of every feature-only head at the demo scale.

Synthetic Gaussian classes (not a real representation): 100 base classes × 70 rows, 100 novel
classes × n shots, 10,000 test rows, d = 256, a cosine classifier's rows and scale. Prints one
line per (head, n) with the wall time of the first cell and of a second cell (warm task.cache)
and the novel / base top-1 as a sanity check.

    python benchmarks/time_heads.py [--heads imprint,protonet] [--ns 1,5] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lowshot.heads import HEADS, Task
from lowshot.metrics import cell_metrics


def synthetic(n: int, d: int = 256, base: int = 100, novel: int = 100, per_base: int = 70, test: int = 10000,
              spread: float = 0.35, noise: float = 0.6, seed: int = 0):
    """Train rows (base rows + n shots per novel class), test rows, and a Task with a cosine classifier."""
    g = torch.Generator().manual_seed(seed)
    C = base + novel
    mu = torch.randn(C, d, generator=g) * spread + 0.5 * torch.rand(d, generator=g)  # shared offset, like ReLU feats
    ytr = torch.cat([torch.arange(base).repeat_interleave(per_base), torch.arange(base, C).repeat_interleave(n)])
    yte = torch.arange(C).repeat_interleave(test // C)
    xtr = mu[ytr] + torch.randn(len(ytr), d, generator=g) * noise
    xte = mu[yte] + torch.randn(len(yte), d, generator=g) * noise
    weight = torch.nn.functional.normalize(mu, dim=1)
    task = Task(C, np.arange(base), np.arange(base, C), weight, 10.0, seed=seed)
    return xtr, ytr, xte, yte, task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", default=",".join(h for h in HEADS.names() if h != "matching"))
    ap.add_argument("--ns", default="1,5,20")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="{}", help="JSON head kwargs applied to every head")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import json
    params = json.loads(args.params)
    for n in map(int, args.ns.split(",")):
        xtr, ytr, xte, yte, task = synthetic(n)
        for name in args.heads.split(","):
            times = []
            for _ in range(2):  # second cell: task.cache warm, as in a benchmark
                start = time.perf_counter()
                s = HEADS.create(name, **params.get(name, {})).fit(xtr, ytr, task).scores(xte)
                times.append(time.perf_counter() - start)
            m = cell_metrics(s, yte, task.base_classes, task.novel_classes)
            print(f"{name:>12} n={n:<2} first {times[0]:6.2f} s  warm {times[1]:6.2f} s  "
                  f"novel {m['accs'][0]:.3f}  base {m['accs'][2]:.3f}  all {m['accs'][4]:.3f}", flush=True)


if __name__ == "__main__":
    main()
