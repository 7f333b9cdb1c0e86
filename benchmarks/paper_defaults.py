"""Each head's paper rule (its default) against the variant kept as an option, paired on the demo features.

Benchmark grid (setup 2, n = 1, 2, 5, 10, 20, the 5 experiments): `magnet` against `balance=true` and
`repmet` against `reduce=max`; result files go to runs/heads-exp/<head>_{paper,variant}/ (existing cells
are reused). Episodes (`lowshot episodes` defaults: the same 600 episodes per configuration): `cosine_ncm`
against `centre=support`, `repmet` against `reduce=max`, and SimpleShot's Euclidean ranking against
cosine_ncm's cosine. Prints mean A, mean B and the paired mean
difference A − B with its 95 % interval (Student t over experiments, or over episodes). Needs the demo's
features first (`make train features`); about 8 minutes on 2 CPU cores:

    .venv/bin/python benchmarks/paper_defaults.py
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from lowshot.heads import Task
from lowshot.io.results import read_results
from lowshot.protocols.episodes import (
    EpisodesConfig,
    _load,
    draw_episodes,
    episode_accuracies,
)
from lowshot.stages.benchmark import BenchmarkConfig, benchmark
from lowshot.stats import mean_ci

GRID = {"magnet": {"balance": True}, "repmet": {"reduce": "max"}}
EPISODES = {"cosine_ncm": {"centre": "support"}, "repmet": {"reduce": "max"}}
TOP1 = {"novel": 0, "base": 2, "all": 4}  # positions in H&G's `accs`


def grid_results(run: str, head: str, params: dict, out_dir: Path) -> dict:
    """{(n, expid): accs in %} of one head configuration over the whole grid."""
    benchmark(BenchmarkConfig(run=run, heads=[head], head_params={head: params}, out_dir=str(out_dir)))
    return {(r["n"], r["expid"]): 100 * np.array(r["accs"]) for r in read_results(out_dir)}


def _cell(a: np.ndarray, b: np.ndarray, digits: int = 1) -> str:
    diff, half, _ = mean_ci(a - b)
    return f"{a.mean():.{digits}f} | {b.mean():.{digits}f} | {diff:+.{digits}f} ± {half:.{digits}f}"


def grid_table(run: str, head: str, variant: dict, root: Path) -> str:
    """Markdown: per n, top-1 novel / base / all of the default (A) and the variant (B), and A − B."""
    a = grid_results(run, head, {}, root / f"{head}_paper")
    b = grid_results(run, head, variant, root / f"{head}_variant")
    lines = [f"{head}: default (A) against {variant} (B), paired over experiments",
             "| n | " + " | ".join(f"{m} A | {m} B | {m} A − B" for m in TOP1) + " |", "|---|" + "---|" * 9]
    for n in sorted({n for n, _ in a}):
        keys = sorted(k for k in a if k[0] == n and k in b)
        cells = [_cell(np.array([a[k][i] for k in keys]), np.array([b[k][i] for k in keys])) for i in TOP1.values()]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def episode_lines(run: str, head: str, variant: dict) -> str:
    """Per (ways, shots): accuracy of the default (A), of the variant (B), and A − B over paired episodes."""
    cfg = EpisodesConfig(run=run, device="cpu")
    test, novel, base_mean = _load(cfg)
    feats = torch.from_numpy(np.ascontiguousarray(test.feats))
    lines = [f"{head} episodes: default (A) against {variant} (B), paired over episodes"]
    for w in cfg.ways:
        for s in cfg.shots:
            sup, qry = draw_episodes(test.labels, novel, w, s, cfg.queries, cfg.episodes, cfg.seed)
            task = Task(w, np.zeros(0, np.int64), np.arange(w), None, test.classifier_scale, seed=cfg.seed,
                        base_mean=base_mean)
            a, b = (100 * episode_accuracies(head, p, feats[sup], feats[qry], task).numpy() for p in ({}, variant))
            lines.append(f"  {w}-way {s}-shot: {_cell(a, b, 2)}  ({len(a)} episodes)")
    return "\n".join(lines)


def simpleshot_metric_lines(run: str) -> str:
    """SimpleShot's own ranking (Euclidean distance to the unnormalised mean of the CL2N shots, A) against
    cosine_ncm's cosine to the renormalised mean (B), both centred on the base mean; they differ only at S > 1."""
    cfg = EpisodesConfig(run=run, device="cpu")
    test, novel, base_mean = _load(cfg)
    z = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(test.feats)) - base_mean, dim=-1)
    lines = ["SimpleShot's Euclidean rule (A) against cosine_ncm (B), paired over episodes"]
    for w in cfg.ways:
        sup, qry = draw_episodes(test.labels, novel, w, 5, cfg.queries, cfg.episodes, cfg.seed)
        means, query = z[sup].mean(2), z[qry].flatten(1, 2)
        truth = torch.arange(w).repeat_interleave(cfg.queries)
        scores = (-torch.cdist(query, means), query @ torch.nn.functional.normalize(means, dim=-1).transpose(1, 2))
        a, b = (100 * (x.argmax(-1) == truth).float().mean(-1).numpy() for x in scores)
        lines.append(f"  {w}-way 5-shot: {_cell(a, b, 2)}  ({len(a)} episodes)")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--out", default="runs/heads-exp")
    args = p.parse_args()
    for head, variant in GRID.items():
        print(grid_table(args.run, head, variant, Path(args.out)) + "\n")
    for head, variant in EPISODES.items():
        print(episode_lines(args.run, head, variant) + "\n")
    print(simpleshot_metric_lines(args.run))


if __name__ == "__main__":
    main()
