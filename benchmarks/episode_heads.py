"""Transductive episode heads: batched episodes against one episode at a time, on the demo features.

For each head and 5-way 1- and 5-shot configuration (the `lowshot episodes` draws of setup 2):
time `lowshot episodes`' batched scoring of all episodes (chunks of 100, one `episode_scores` call
each) and the same method run one episode at a time (`fit` on the support, `scores` on that
episode's queries: the one-episode path a per-episode library such as easyfsl takes) on the first
`--loop` episodes. Prints the time per episode of both, their ratio, and the largest difference of
per-episode accuracy between the two on the looped episodes (0 = identical). One compute thread,
for both. Needs the demo's features (`make train features`); about 15 minutes on 2 CPU cores:

    .venv/bin/python benchmarks/episode_heads.py [--episodes 600] [--loop 20]
"""
import argparse
import time

import numpy as np
import torch

from lowshot.heads import HEADS, Task
from lowshot.protocols.episodes import (
    EpisodesConfig,
    _load,
    draw_episodes,
    episode_accuracies,
)

HEADS_TIMED = ["bd_cspn", "laplacian_shot", "pt_map", "tim", "transductive_ft"]


def one_at_a_time(name: str, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
    """Accuracy (E,) of a head fitted and scored episode by episode: support (E, W, S, d), query (E, W, Q, d)."""
    e, w, s, d = support.shape
    labels, truth = torch.arange(w).repeat_interleave(s), torch.arange(w).repeat_interleave(query.shape[2])
    accs = [(HEADS.create(name).fit(support[i].reshape(-1, d), labels, task).scores(query[i].reshape(-1, d))
             .argmax(-1) == truth).float().mean() for i in range(e)]
    return torch.stack(accs)


def timed(fn, *args):
    """(fn(*args), seconds)."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def row(name: str, shots: int, feats: torch.Tensor, draws, task: Task, loop: int) -> str:
    """One markdown row: ms per episode batched and looped, ratio, accuracy and the largest accuracy gap."""
    sup, qry = draws
    support, query = feats[sup], feats[qry]
    one_at_a_time(name, support[:1], query[:1], task)  # warm-up: first-call costs go to neither side
    batched, t_b = timed(episode_accuracies, name, {}, support, query, task)
    looped, t_l = timed(one_at_a_time, name, support[:loop], query[:loop], task)
    per_b, per_l = 1e3 * t_b / len(sup), 1e3 * t_l / loop
    gap = (batched[:loop] - looped).abs().max().item()
    return (f"| {name} | 5-way {shots}-shot | {per_b:.2f} | {per_l:.2f} | {per_l / per_b:.0f}× | "
            f"{100 * batched.mean():.2f} | {100 * gap:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--loop", type=int, default=20, help="episodes run one at a time")
    parser.add_argument("--heads", nargs="*", default=HEADS_TIMED)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = EpisodesConfig(run=args.run, device="cpu", episodes=args.episodes)
    test, novel, base_mean = _load(cfg)
    feats = torch.from_numpy(np.ascontiguousarray(test.feats))
    print("| head | configuration | batched ms/episode | one at a time ms/episode | speed-up | accuracy % "
          "| largest per-episode accuracy gap (points) |\n|---|---|---|---|---|---|---|")
    for shots in (1, 5):
        draws = draw_episodes(test.labels, novel, 5, shots, cfg.queries, cfg.episodes, cfg.seed)
        task = Task(5, np.zeros(0, np.int64), np.arange(5), base_mean=base_mean)
        for name in args.heads:
            print(row(name, shots, feats, draws, task, args.loop), flush=True)


if __name__ == "__main__":
    main()
