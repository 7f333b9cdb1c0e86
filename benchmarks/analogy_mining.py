"""Analogy mining: the vectorised miner against the reference per-class-pair loop.

Prints, in one process on the same random centroids: the loop's and the miner's wall times and
their ratio (target ≥ 20×), a check that both return the same quadruples, the miner's achieved
GFLOP/s against a plain 4096³ float32 matrix product (target ≥ 50 %), and the end-to-end time
of `lowshot generate` on the demo features when `runs/demo/features/train.hdf5` exists.

    python benchmarks/analogy_mining.py [--classes 50 --k 40 --dim 256 --device auto]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from lowshot.generators.analogies.mining import mine_analogies, mine_analogies_loop
from lowshot.runtime import pick_device


def timed(fn, repeats: int = 1, best: bool = False):
    """(mean, or best, wall time over `repeats` runs; last result), synchronising the GPU."""
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return (min(times) if best else sum(times) / len(times)), out


def matmul_ceiling(device, n: int = 4096) -> float:
    """GFLOP/s of one plain n × n @ n × n float32 product (best of 3, after a warm-up)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    seconds, _ = timed(lambda: a @ b, repeats=3, best=True)
    return 2 * n**3 / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--memory-mb", type=float, default=256.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--features", default="runs/demo/features/train.hdf5")
    args = parser.parse_args()
    device = pick_device(args.device)
    load = os.getloadavg()[0]
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}"
          + ("  (busy machine: timings are unreliable)" if load > 0.5 else ""))
    cent = torch.rand(args.classes, args.k, args.dim, generator=torch.Generator().manual_seed(0)).to(device)
    mine_analogies(cent[:4], args.memory_mb), mine_analogies_loop(cent[:4])  # warm-up
    ceiling = matmul_ceiling(device)
    loop_s, (ref_quads, ref_scores) = timed(lambda: mine_analogies_loop(cent))
    ceiling = max(ceiling, matmul_ceiling(device))
    mine_s, (quads, scores) = timed(lambda: mine_analogies(cent, args.memory_mb), repeats=3)
    ceiling = max(ceiling, matmul_ceiling(device))  # the best of three, so the miner's share is not flattered
    assert torch.equal(quads, ref_quads), "the miner and the reference loop disagree"
    torch.testing.assert_close(scores, ref_scores)

    c, k, d = args.classes, args.k, args.dim
    rows = c * k * (k - 1) // 2  # the miner's query and column rows (pairs a < b)
    miner_flops = 2 * rows * rows * d
    loop_flops = 2 * c * (c - 1) * k**4 * d
    print(f"centroids {c} classes × {k} × d {d}: {len(quads):,} analogies, identical to the loop: yes")
    print(f"reference loop   {loop_s:8.3f} s  ({loop_flops / loop_s / 1e9:6.1f} GFLOP/s)")
    print(f"vectorised miner {mine_s:8.3f} s  (mean of 3; {miner_flops / mine_s / 1e9:6.1f} GFLOP/s performed, "
          f"{loop_flops / mine_s / 1e9:.1f} loop-equivalent)")
    print(f"speed-up         {loop_s / mine_s:8.1f} ×  (target ≥ 20 ×; "
          f"{loop_flops / miner_flops:.1f} × from fewer FLOPs)")
    print(f"matmul ceiling   {ceiling:8.1f} GFLOP/s (4096³ float32, best of 3); miner at "
          f"{100 * miner_flops / mine_s / 1e9 / ceiling:.0f} % of it (target ≥ 50 %)")
    end_to_end(args.features, device)


def end_to_end(features: str, device) -> None:
    """Wall time of the whole `generate` stage on the demo features, from an empty output folder."""
    if not os.path.exists(features):
        print(f"end to end: skipped, {features} not found (run `make features` first)")
        return
    from lowshot.stages.generate import GenerateConfig, generate
    with tempfile.TemporaryDirectory() as out:
        cfg = GenerateConfig(features_dir=os.path.dirname(features), out_dir=out, device=str(device))
        seconds, _ = timed(lambda: generate(cfg))
    print(f"end to end: `generate` on {features}: {seconds:.1f} s (target < 120 s)")


if __name__ == "__main__":
    main()
