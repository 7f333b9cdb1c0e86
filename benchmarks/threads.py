"""Intra-op threads, idle and beside a busy process: what lowshot's thread defaults are chosen from.

Each measurement runs in a fresh process (OpenMP's settings are read when torch loads), alone ("idle") or
beside one busy Python process per other core ("loaded": what a shared machine looks like), and prints
throughput and the ratio against one thread in the same state:

  train    training steps of the demo's network (ResNet-10 width 0.5, small stem, 128 glyph-sized images)
  logreg   one `logreg` grid cell (fit + scores) on a run's cached features (default: runs/demo, n = 1)

for 1 and 2 threads, with OpenMP's default (spinning) and passive wait policies.

    python benchmarks/threads.py                       # both, idle and loaded
    python benchmarks/threads.py --work train --states loaded
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = """
import sys, time, torch
from lowshot.backbones import build_model
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
m = build_model("resnet10", "cosine", 200, 1, 0.5, "small")
opt = torch.optim.SGD(m.parameters(), lr=0.1)
x, y = torch.randn(128, 1, 32, 32), torch.randint(0, 200, (128,))
def step():
    loss = torch.nn.functional.cross_entropy(m(x)[0], y); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3): step()
start = time.perf_counter()
for _ in range(15): step()
print(15 * 128 / (time.perf_counter() - start))
"""

LOGREG = """
import sys, time, torch
from lowshot.stages.benchmark import BenchmarkConfig, load_context, run_cell
torch.set_num_threads(int(sys.argv[1]))
ctx = load_context(BenchmarkConfig(run=sys.argv[2], heads=["logreg"], device="cpu", force=True,
                                   out_dir=sys.argv[3]))
start = time.perf_counter()
run_cell(ctx, "logreg", 1, 1)
print(time.perf_counter() - start)
"""


@contextmanager
def busy(processes: int):
    """`processes` busy Python loops beside the measurement (none: idle)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(0.5 if procs else 0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def measure(code: str, threads: int, wait: str, *args: str) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": wait} if wait != "default" else {
        k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code, str(threads), *args], env=env, capture_output=True,
                         text=True, cwd=REPO, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="train,logreg")
    parser.add_argument("--states", default="idle,loaded")
    parser.add_argument("--run", default="runs/demo", help="the run whose features the logreg cell reads")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    rows = []
    for state in args.states.split(","):
        with busy(cpus - 1 if state == "loaded" else 0):
            for work in args.work.split(","):
                code, extra, unit = ((TRAIN, (), "images/s") if work == "train" else
                                     (LOGREG, (args.run, "/tmp/lowshot-threads-cell"), "s per cell"))
                base = measure(code, 1, "default", *extra)
                for threads, wait in ((1, "default"), (2, "default"), (2, "PASSIVE")):
                    value = base if (threads, wait) == (1, "default") else measure(code, threads, wait, *extra)
                    speed = value / base if unit == "images/s" else base / value
                    rows.append({"work": work, "state": state, "threads": threads, "wait": wait,
                                 unit: round(value, 2), "speed vs 1 thread": round(speed, 2)})
                    print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
