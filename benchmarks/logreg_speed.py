"""Default logreg solver (full-batch L-BFGS) against H&G's SGD schedule on the demo features.

Runs the same grid twice in one process, into temporary result folders, and prints the time
ratio and the accuracy differences averaged over the grid. Needs `make demo` features first:

    .venv/bin/python benchmarks/logreg_speed.py                 # whole 25-cell grid (≈15 min)
    .venv/bin/python benchmarks/logreg_speed.py --n 1,5 --expid 1   # a quick look
"""
import argparse
import tempfile
import time

import numpy as np

from lowshot.io.results import ACC_NAMES, read_results
from lowshot.stages.benchmark import BenchmarkConfig, benchmark


def run(solver: str, args, out_dir: str) -> float:
    params = {"solver": solver, "maxiters": args.maxiters, "batch_size": 1000}
    cfg = BenchmarkConfig(run=args.run, heads=["logreg"], head_params={"logreg": params}, ns=args.n,
                          expids=args.expid, out_dir=out_dir, device=args.device)
    start = time.perf_counter()
    benchmark(cfg)
    return time.perf_counter() - start


def grid_means(out_dir: str) -> np.ndarray:
    """(cells, 6) accuracies in %, ordered by (n, expid)."""
    rows = sorted(read_results(out_dir), key=lambda r: (r["n"], r["expid"]))
    return 100 * np.array([r["accs"] for r in rows])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 5, 10, 20])
    p.add_argument("--expid", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3, 4, 5])
    p.add_argument("--maxiters", type=int, default=10000)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as fast_dir, tempfile.TemporaryDirectory() as hg_dir:
        run("lbfgs", args, fast_dir)  # warm-up (first model in a process is slow), then time it
        for f in __import__("pathlib").Path(fast_dir).glob("*.json"):
            f.unlink()
        t_fast = run("lbfgs", args, fast_dir)
        t_hg = run("hg", args, hg_dir)
        fast, hg = grid_means(fast_dir), grid_means(hg_dir)
    cells = len(fast)
    print(f"cells: {cells}   hg: {t_hg:.1f} s ({t_hg / cells:.2f} s/cell)   lbfgs: {t_fast:.1f} s "
          f"({t_fast / cells:.2f} s/cell)   speed-up: {t_hg / t_fast:.1f}x")
    print("mean over the grid (%):   " + "  ".join(f"{n:>10}" for n in ACC_NAMES))
    print("  hg                      " + "  ".join(f"{v:10.2f}" for v in hg.mean(0)))
    print("  lbfgs                   " + "  ".join(f"{v:10.2f}" for v in fast.mean(0)))
    print("  lbfgs - hg              " + "  ".join(f"{v:+10.2f}" for v in (fast - hg).mean(0)))


if __name__ == "__main__":
    main()
