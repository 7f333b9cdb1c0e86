"""The benchmark at ImageNet's size: synthetic features in the H&G layout, the logreg grid, memory and time.

Writes (block by block, with a progress bar) a class-structured synthetic feature set of
ImageNet-1k's size into OUT (never inside the repository): 1,281,167 train rows (895 classes of
1,300 rows, 105 of 732–1,299, class-contiguous as H&G's train.json), 50,000 test rows (50 per
class), 1,000 classes split as H&G's label_idx.json (193 + 196 base, 300 + 311 novel), five shot
files; d = 512 (or --dim 2048). Features are ReLU outputs of class means (differing in a
32-dimensional subspace) plus Gaussian noise (see `class_rows`), so accuracy is neither chance
nor 100 %. Then, each in a fresh process so that its peak resident
memory (ru_maxrss) is its own:

  grid     the `logreg` cells through `lowshot.stages.benchmark` (the CLI's code path), then a few cells
           of the other feature-only heads; time per cell and peak memory;
  compare  default solver and `--solver hg` on the same cells, in one process: time per cell,
           speed ratio, accuracy difference;
  mining   the analogy miner's rate on (389 classes × 100 centroids)-shaped work, projected to
           the whole of ImageNet's mining on this CPU.

    python benchmarks/imagenet_scale.py --out /tmp/inet-scale                  # everything, d = 512
    python benchmarks/imagenet_scale.py --out /tmp/inet-scale --rows-scale 0.05 --n 1,5 --expid 1   # smoke test
    python benchmarks/imagenet_scale.py --out /tmp/inet-2048 --dim 2048 --expid 1 --phases write,grid
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN_ROWS, TEST_PER_CLASS, CLASSES = 1_281_167, 50, 1000
HG_SPLIT = (193, 196, 300, 311)  # base_classes_1, base_classes_2, novel_classes_1, novel_classes_2
PHASES = ("write", "grid", "compare", "mining")
CLASS_RANK = 32  # the class means of the synthetic features differ inside a subspace of this dimension


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def class_sizes(scale: float, seed: int) -> np.ndarray:
    """ImageNet-1k's train class sizes: 895 of 1,300, 105 of 732–1,299 summing to 1,281,167; × `scale`."""
    rng = np.random.default_rng([seed, 1])
    rest = rng.integers(732, 1300, size=105)
    while rest.sum() != TRAIN_ROWS - 895 * 1300:  # nudge one class at a time, staying inside 732..1299
        i = rng.integers(105)
        rest[i] = np.clip(rest[i] + np.sign(TRAIN_ROWS - 895 * 1300 - rest.sum()), 732, 1299)
    sizes = np.concatenate([np.full(895, 1300), rest])[rng.permutation(CLASSES)]
    return np.maximum(25, np.round(sizes * scale)).astype(np.int64) if scale != 1 else sizes


def class_rows(c: int, count: int, means: "Means", args, split: int) -> np.ndarray:
    """`count` rows (count, d) float32 of class c, seeded per (class, split).

    ReLU(mean_c + noise · B^T z + (spread / sqrt(d)) · ε), z ~ N(0, I_32), ε ~ N(0, I_d): noise
    inside the class subspace B makes the classes overlap; the rest of the spread, in every
    dimension, blurs class means from a few shots (a classifier trained on the base rows learns B).
    """
    rng = np.random.default_rng([args.seed, c, split])
    x = rng.standard_normal((count, means.rows.shape[1]), dtype=np.float32)
    x *= args.spread / np.sqrt(means.rows.shape[1])
    x += means.rows[c]
    x += (args.noise * rng.standard_normal((count, CLASS_RANK), dtype=np.float32)) @ means.basis
    return np.maximum(x, 0, out=x)


@dataclass
class Means:
    """Class means (1000, d) float32 and the orthonormal (32, d) basis of the subspace they differ in."""

    rows: np.ndarray
    basis: np.ndarray


def class_means(dim: int, separation: float, seed: int) -> Means:
    """A shared non-negative profile plus a class part of norm ≈ `separation` inside a random
    32-dimensional subspace (learned features concentrate class information in few directions);
    the same difficulty for every d."""
    rng = np.random.default_rng([seed, 2])
    basis = np.linalg.qr(rng.standard_normal((dim, CLASS_RANK)))[0].T.astype(np.float32)
    parts = rng.standard_normal((CLASSES, CLASS_RANK)) * separation / np.sqrt(CLASS_RANK)
    return Means((np.abs(rng.standard_normal(dim)) + parts @ basis).astype(np.float32), basis)


def write_split(path: Path, sizes: np.ndarray, means: Means, args, split: int) -> None:
    """One feature file, class by class, through lowshot's block writer."""
    from tqdm import tqdm

    from lowshot.io.features import FeatureSet, feature_writer
    labels = np.repeat(np.arange(CLASSES), sizes)
    header = FeatureSet(np.zeros((0, args.dim), np.float32), labels,
                        {"dataset": "imagenet_scale", "split": ("train", "test")[split], "seed": args.seed})
    with feature_writer(path, header) as write:
        for c in tqdm(range(CLASSES), desc=f"write {path.name}", unit="class", disable=None):
            write(class_rows(c, int(sizes[c]), means, args, split))


def write_data(args) -> None:
    """Features, label split and shot files under args.out (skipped when the manifest matches)."""
    from lowshot.io.splits import (
        LabelSplits,
        make_shots,
        write_label_splits,
        write_shots,
    )
    out = Path(args.out)
    manifest = {k: getattr(args, k) for k in ("dim", "rows_scale", "seed", "separation", "noise", "spread")}
    if (out / "manifest.json").exists() and json.loads((out / "manifest.json").read_text()) == manifest:
        print(f"write: {out} already holds this data set ({manifest})")
        return
    start = time.perf_counter()
    sizes = class_sizes(args.rows_scale, args.seed)
    means = class_means(args.dim, args.separation, args.seed)
    write_split(out / "features" / "train.hdf5", sizes, means, args, 0)
    write_split(out / "features" / "test.hdf5", np.full(CLASSES, TEST_PER_CLASS), means, args, 1)
    perm = np.random.default_rng([args.seed, 3]).permutation(CLASSES)
    cuts = np.split(perm, np.cumsum(HG_SPLIT)[:-1])
    write_label_splits(out / "label_splits.json",
                       LabelSplits([f"c{i:04d}" for i in range(CLASSES)], *(sorted(map(int, c)) for c in cuts)))
    labels = np.repeat(np.arange(CLASSES), sizes)
    for k in range(1, 6):
        write_shots(out / "shots" / f"splitfile_{k}.json", make_shots(labels, CLASSES, args.seed, k))
    (out / "manifest.json").write_text(json.dumps(manifest) + "\n")
    gb = (sizes.sum() + CLASSES * TEST_PER_CLASS) * args.dim * 4 / 1e9
    print(f"write: {sizes.sum():,} train + {CLASSES * TEST_PER_CLASS:,} test rows, d = {args.dim}, {gb:.1f} GB "
          f"in {time.perf_counter() - start:.0f} s; peak memory {peak_rss_gib():.2f} GiB")


def config(args, head: str, params: dict, ns, expids, tag: str):
    """A `BenchmarkConfig` over the synthetic set, results under OUT/results/<tag>."""
    from lowshot.stages.benchmark import BenchmarkConfig
    out = Path(args.out)
    return BenchmarkConfig(run=str(out), heads=[head], head_params={head: params}, ns=list(ns), expids=list(expids),
                           features_dir=str(out / "features"), splits=str(out / "label_splits.json"),
                           shots_dir=str(out / "shots"), out_dir=str(out / "results" / tag), device="cpu",
                           force=True)


def timed_cells(cfg) -> list:
    """Run the grid of `cfg`; (n, expid, seconds, accs %) per cell, seconds = the cell's own wall time."""
    from lowshot.io.results import read_results
    from lowshot.stages.benchmark import benchmark
    start = time.perf_counter()
    benchmark(cfg)
    total = time.perf_counter() - start
    rows = sorted(read_results(cfg.out_dir), key=lambda r: (r["n"], r["expid"]))
    cells = [(r["n"], r["expid"], r["wall_time_s"], 100 * np.array(r["accs"])) for r in rows]
    print(f"  {len(cells)} cells in {total:.0f} s, of which {total - sum(c[2] for c in cells):.0f} s reading "
          f"rows, digests and shot files; peak memory so far {peak_rss_gib():.2f} GiB", flush=True)
    return cells


def print_cells(name: str, cells: list) -> None:
    """Per-cell time and accuracies, then the means."""
    print(f"  {name:<8} {'n':>3} {'exp':>3} {'s/cell':>8}   novel top-1/top-5   base top-1   all top-1")
    for n, e, sec, a in cells:
        print(f"  {name:<8} {n:>3} {e:>3} {sec:8.1f}   {a[0]:7.2f} {a[1]:7.2f}   {a[2]:10.2f}   {a[4]:9.2f}")
    acc = np.mean([c[3] for c in cells], 0)
    print(f"  {name:<8} mean {np.mean([c[2] for c in cells]):10.1f} s   {acc[0]:7.2f} {acc[1]:7.2f}   "
          f"{acc[2]:10.2f}   {acc[4]:9.2f}", flush=True)


def digest_time(args) -> None:
    """Time of a cell identity's costliest part: the content digest of the train file, block by block."""
    from lowshot.io.features import content_digest, read_features
    start = time.perf_counter()
    train = read_features(Path(args.out) / "features" / "train.hdf5", lazy=True)
    digest = content_digest(train)
    print(f"grid: train file {train.feats.shape} content digest {digest} in {time.perf_counter() - start:.1f} s "
          f"(labels + hashing in blocks); peak memory {peak_rss_gib():.2f} GiB", flush=True)


def grid(args) -> None:
    """The logreg cells (default solver), then a few cells of each other feature-only head."""
    digest_time(args)
    print(f"grid: logreg (default solver{', ' + json.dumps(args.logreg) if args.logreg else ''}), n = {args.n}, "
          f"experiments {args.expid}")
    print_cells("logreg", timed_cells(config(args, "logreg", args.logreg, args.n, args.expid, "logreg")))
    for head in args.other_heads:
        print(f"grid: {head}, n = {args.n}, experiment {args.expid[0]}")
        print_cells(head, timed_cells(config(args, head, {}, args.n, args.expid[:1], head)))
    print(f"grid: peak memory {peak_rss_gib():.2f} GiB (ru_maxrss of this process)")


def count_data_passes() -> collections.Counter:
    """Count the evaluations of logreg's data term by their number of rows (full passes, sample passes)."""
    from lowshot.heads import logreg_solver
    calls = collections.Counter()
    for name in ("value_grad", "data_term"):  # sample rounds' evaluations, plain L-BFGS's
        term = getattr(logreg_solver, name)

        def counted(x, *rest, term=term, **kw):
            calls[len(x)] += 1
            return term(x, *rest, **kw)

        setattr(logreg_solver, name, counted)
    return calls


def compare(args) -> None:
    """Default solver against H&G's schedule on the same cells in this process, interleaved (default, hg,
    default, hg, ...) so that both see the same load. hg's time is linear in its iterations: with
    --hg-maxiters below 10,000 its per-cell time at H&G's 10,000 is projected from its ms per iteration,
    and the accuracy differences are against --hg-reference (stored cells of hg at 10,000 iterations)."""
    import dataclasses

    from lowshot.io.results import read_results
    from lowshot.stages.benchmark import load_context, run_cell
    ns, expid = args.compare_n, args.expid[0]
    passes = count_data_passes()
    print(f"compare: logreg default solver ({json.dumps(args.logreg)}) vs --solver hg (maxiters {args.hg_maxiters}), "
          f"n = {ns}, experiment {expid}, interleaved in one process", flush=True)
    iters = [args.hg_maxiters] + ([0] if args.hg_maxiters < 10000 else [])  # 0: the cell's time without SGD
    cfgs = [config(args, "logreg", args.logreg, ns, [expid], "compare-default")] + [
        config(args, "logreg", {"solver": "hg", "maxiters": k}, ns, [expid], f"compare-hg-{k}") for k in iters]
    ctx = load_context(cfgs[0])
    ctxs = [ctx] + [dataclasses.replace(ctx, cfg=c, out_dir=Path(c.out_dir)) for c in cfgs[1:]]
    for n in ns:
        for c in ctxs:
            run_cell(c, "logreg", n, expid)
    fast, hg, *hg0 = ([(r["n"], r["expid"], r["wall_time_s"], 100 * np.array(r["accs"]))
                       for r in sorted(read_results(c.out_dir), key=lambda r: r["n"]) if r["n"] in ns] for c in ctxs)
    print_cells("default", fast)
    print_cells("hg", hg)
    # hg at 10,000 iterations, per cell: its time without SGD + 10,000 × its measured time per iteration
    hg10k = [b[2] + (10000 / args.hg_maxiters - 1) * (b[2] - z[2]) for b, z in zip(hg, hg0[0] if hg0 else hg)]
    t_fast, t_hg10k = np.mean([c[2] for c in fast]), np.mean(hg10k)
    per_iter = np.mean([(b[2] - z[2]) / args.hg_maxiters for b, z in zip(hg, hg0[0] if hg0 else [(0, 0, 0)] * len(hg))])
    print(f"compare: hg {1000 * per_iter:.1f} ms per SGD iteration, {t_hg10k:.1f} s/cell at 10,000 iterations"
          f"{'' if not hg0 else ' (projected: cell without SGD ' + format(np.mean([z[2] for z in hg0[0]]), '.1f') + ' s)'}"
          f", default {t_fast:.1f} s/cell: {t_hg10k / t_fast:.1f}x faster (per cell: "
          f"{', '.join(f'{h / a[2]:.1f}x' for a, h in zip(fast, hg10k))}); peak memory {peak_rss_gib():.2f} GiB",
          flush=True)
    ref = hg if args.hg_maxiters == 10000 else reference_cells(args.hg_reference, expid)
    for a in fast:
        if a[0] in ref:
            d = a[3] - ref[a[0]]
            print(f"compare: n = {a[0]:>2} default − hg at 10,000 iterations (points): novel top-1 {d[0]:+.2f}, "
                  f"top-5 {d[1]:+.2f}, base top-1 {d[2]:+.2f}, all top-1 {d[4]:+.2f}")
    print("compare: default solver's data-term evaluations, {rows: count} (the base-only solve's rows first; "
          f"the sampled ones are a few thousand): {dict(sorted(passes.items()))}")


def reference_cells(folder, expid: int) -> dict:
    """{n: accs %} of the hg cells at 10,000 iterations stored under `folder` (none without one)."""
    if not folder:
        return {}
    from lowshot.io.results import read_results
    return {r["n"]: 100 * np.array(r["accs"]) for r in read_results(folder)
            if r["expid"] == expid and r["head_params"].get("solver") == "hg" and r["head_params"]["maxiters"] == 10000}


def mining(args) -> None:
    """Measured miner rate on a slice of ImageNet-shaped centroids, projected to 389 × 100 centroids."""
    import torch

    from lowshot.generators.analogies.mining import mine_analogies
    classes, k, d = args.mining_classes, 100, args.dim
    cent = torch.rand(classes, k, d, generator=torch.Generator().manual_seed(args.seed))
    mine_analogies(cent[:2], args.mining_memory_mb)  # warm-up
    start = time.perf_counter()
    mine_analogies(cent, args.mining_memory_mb)
    seconds = time.perf_counter() - start
    rows = lambda c: c * k * (k - 1) // 2  # noqa: E731 (difference rows a < b)
    flops = lambda c: 2 * rows(c) ** 2 * d  # noqa: E731 (one similarity per query row × column row)
    rate = flops(classes) / seconds
    full = flops(389) / rate
    print(f"mining: {classes} classes × {k} centroids, d = {d}: {seconds:.1f} s, {rate / 1e9:.0f} GFLOP/s on "
          f"{torch.get_num_threads()} threads; ImageNet's 389 × {k}: {flops(389):.2e} FLOPs -> projected "
          f"{full / 3600:.1f} h on this CPU; a GPU at 20 TFLOP/s sustained would take {flops(389) / 20e12 / 3600:.2f} "
          f"GPU-hours (assumed rate, not measured); difference matrix {rows(389) * d * 4 / 2**30:.1f} GiB + one "
          f"{args.mining_memory_mb:.0f} MB block; peak memory here {peak_rss_gib():.2f} GiB")


def child(args, phase: str) -> None:
    """Run one phase in a fresh interpreter (its own ru_maxrss), with this script's arguments."""
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--phase-only", phase], check=True)


def parse(argv=None):
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the synthetic set (outside the repository)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--rows-scale", type=float, default=1.0, help="train rows per class × this (smoke tests)")
    p.add_argument("--separation", type=float, default=8.0, help="norm of a class mean's own part")
    p.add_argument("--noise", type=float, default=1.3, help="noise per dimension inside the class subspace")
    p.add_argument("--spread", type=float, default=5.0, help="norm of the noise spread over all d dimensions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=ints, default=[1, 2, 5, 10, 20])
    p.add_argument("--expid", type=ints, default=[1, 2, 3, 4, 5])
    p.add_argument("--other-heads", type=lambda s: [h for h in s.split(",") if h], default=["protonet", "cosine_ncm"])
    p.add_argument("--logreg", type=json.loads, default={},
                   help='logreg options of the grid, e.g. \'{"tol": 1e12}\': one L-BFGS evaluation (a memory probe)')
    p.add_argument("--compare-n", type=ints, default=[1, 5])
    p.add_argument("--hg-maxiters", type=int, default=10000,
                   help="hg's iterations in compare; below 10,000 its time is projected and accuracy taken from --hg-reference")
    p.add_argument("--hg-reference", help="results folder of hg cells at 10,000 iterations on the same data")
    p.add_argument("--mining-classes", type=int, default=4)
    p.add_argument("--mining-memory-mb", type=float, default=256.0)
    p.add_argument("--phases", type=lambda s: s.split(","), default=list(PHASES))
    p.add_argument("--phase-only", choices=PHASES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if out == REPO or REPO in out.parents:
        p.error(f"--out {args.out} is inside the repository; use a folder such as /tmp/inet-scale")
    return args


def main() -> None:
    args = parse()
    if args.phase_only:
        {"write": write_data, "grid": grid, "compare": compare, "mining": mining}[args.phase_only](args)
        return
    for phase in args.phases:
        child(args, phase)


if __name__ == "__main__":
    main()
