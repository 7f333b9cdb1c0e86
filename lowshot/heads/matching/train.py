"""Training of the matching network on base-class features (run by the stage `lowshot train-matching`).

H&G's `matching_network.py` training (reference §9): episodes of m base classes with 1..max_shots
support rows each and one query per class, SGD on the query NLL. `fit` returns what the stage
saves as `<run>/heads/matching.pt`. Reduced defaults fit a 2-core CPU (H&G's ImageNet values in
brackets): 2,000 episodes [60,000] of 50 classes [all 389].
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lowshot.errors import InputError
from lowshot.heads.base import BaseRows
from lowshot.heads.matching.model import MatchingNet
from lowshot.heads.maths import generator, group_rows
from lowshot.io.fingerprint import NOT_IDENTITY
from lowshot.runtime import progress, single_thread

DEFAULT_EPISODES, DEFAULT_CLASSES_PER_EPISODE = 2000, 50


@dataclass
class MatchingTrainConfig:
    """Episodic training of the matching network (`lowshot train-matching`); None = reduced default."""

    run: str = field(default="runs/demo", metadata=NOT_IDENTITY)
    features_dir: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: <run>/features
    splits: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: label_splits/<dataset>.json
    out: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: <run>/heads/matching.pt
    episodes: Optional[int] = None  # default: 2,000 (H&G: 60,000)
    classes_per_episode: Optional[int] = None  # default: min(#base, 50) (H&G: all 389)
    max_shots: int = 10  # per-class support size uniform in 1..max_shots
    K: int = 5  # full-context embedding steps
    lr: float = 0.1
    wd: float = 0.001
    lr_step: Optional[int] = None  # lr ÷ 10 every lr_step episodes; default: a third of the episodes
    seed: int = 0
    device: str = field(default="auto", metadata=NOT_IDENTITY)
    force: bool = field(default=False, metadata=NOT_IDENTITY)


def schedule(cfg: MatchingTrainConfig, num_base: int) -> Dict[str, int]:
    """Episodes, classes per episode and lr step, with the reduced defaults filled in."""
    episodes = DEFAULT_EPISODES if cfg.episodes is None else cfg.episodes
    classes = min(cfg.classes_per_episode or DEFAULT_CLASSES_PER_EPISODE, num_base)
    return {"episodes": episodes, "classes_per_episode": classes, "lr_step": cfg.lr_step or max(1, -(-episodes // 3))}




def sample_episode(rows: torch.Tensor, valid: torch.Tensor, m: int, max_shots: int, gen: torch.Generator):
    """One H&G episode: m classes without replacement, 1..max_shots support rows each, one query each.

    Args:
        rows: (C, W) train row ids of each base class; valid: bool (C, W) marking the real ones.
    Returns:
        support rows (S,) grouped by class, their episode labels (S,) in 0..m−1, query rows (m,).
        The query is drawn independently of the support, so it may be one of them (as in H&G).
    """
    pick = torch.randperm(len(rows), generator=gen)[:m]
    counts = valid[pick].sum(1)
    shots = torch.minimum(torch.randint(1, max_shots + 1, (m,), generator=gen), counts)
    keys = torch.rand(m, rows.shape[1], generator=gen).masked_fill(~valid[pick], 2.0)
    shuffled = rows[pick].gather(1, torch.argsort(keys, dim=1))  # each class's rows in random order
    support = shuffled[torch.arange(rows.shape[1]) < shots[:, None]]
    queries = rows[pick, (torch.rand(m, generator=gen) * counts).long()]
    return support, torch.arange(m).repeat_interleave(shots), queries


def class_rows(labels: torch.Tensor):
    """Row ids (C, W) of each class in `labels` (N,) and the bool (C, W) marking the real ones, on the CPU."""
    rows, valid, _ = group_rows(torch.arange(len(labels))[:, None], labels.cpu(), torch.unique(labels.cpu()))
    return rows[..., 0], valid


def sgd_on_episodes(model: nn.Module, episode_logp: Callable[[torch.Generator], torch.Tensor], sched: Dict[str, int],
                    cfg, name: str) -> List[Dict[str, float]]:
    """SGD (momentum 0.9, dampening 0.9, wd; lr ÷ 10 every lr_step episodes) on the NLL of one query per class.

    `episode_logp(gen)` draws one episode of m = classes_per_episode classes from `gen` and returns the
    queries' log-probabilities (m, m), query i being of class i. Returns the mean loss and query
    accuracy of each tenth of the episodes; a non-finite loss is a one-line `InputError`.
    """
    m, every = sched["classes_per_episode"], max(1, sched["episodes"] // 10)
    gen = generator(cfg.seed, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, dampening=0.9, weight_decay=cfg.wd)
    target, total, hits, log = torch.arange(m, device=next(model.parameters()).device), 0.0, 0, []
    bar = progress(range(sched["episodes"]), desc=f"{name} episodes", leave=False)
    for ep in bar:
        opt.param_groups[0]["lr"] = cfg.lr * 0.1 ** (ep // sched["lr_step"])
        logp = episode_logp(gen)
        loss = F.nll_loss(logp, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, hits = total + loss.item(), hits + int((logp.argmax(1) == target).sum())
        if (ep + 1) % every == 0:
            if not math.isfinite(total):
                raise InputError(cfg.run, f"{name} training diverged at episode {ep + 1}; lower --set lr")
            log.append({"episode": ep + 1, "loss": total / every, "query_acc": hits / (every * m)})
            bar.write(f"episode {ep + 1}/{sched['episodes']} lr {opt.param_groups[0]['lr']:g} "
                       f"loss {total / every:.4f} query acc {hits / (every * m):.3f}")
            total, hits = 0.0, 0
    return log


def train_episodes(model: MatchingNet, feats, labels, sched: Dict[str, int],
                   cfg: MatchingTrainConfig) -> List[Dict[str, float]]:
    """H&G's episodes: m classes, 1..max_shots support rows each, one query per class (`sgd_on_episodes`)."""
    rows, valid = class_rows(labels)
    m = sched["classes_per_episode"]

    def episode_logp(gen: torch.Generator) -> torch.Tensor:
        support, support_labels, queries = (t.to(feats.device) for t in sample_episode(rows, valid, m, cfg.max_shots, gen))
        return model(feats[support], support_labels, feats[queries], m)

    return sgd_on_episodes(model, episode_logp, sched, cfg, "matching network")


def fit_episodic(base: BaseRows, cfg, device: torch.device, name: str, build: Callable[[int], nn.Module],
                 train: Callable) -> Dict[str, Any]:
    """Build `build(dim)` (seeded), train it with `train(model, feats, labels, sched, cfg)` (returns the log), one
    CPU thread (sequential LSTM steps); returns the weights, dimension, schedule and log to save."""
    sched = schedule(cfg, len(torch.unique(base.labels)))
    torch.manual_seed(cfg.seed)
    model = build(base.feats.shape[1]).to(device)
    print(f"training {name}: {sched['episodes']} episodes of {sched['classes_per_episode']} classes", flush=True)
    start = time.perf_counter()
    with single_thread(device):
        log = train(model, base.feats.to(device), base.labels.to(device), sched, cfg)
    print(f"{name} training: {time.perf_counter() - start:.1f} s", flush=True)
    return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "dim": base.feats.shape[1],
            "schedule": sched, "log": log}


def fit(base: BaseRows, cfg: MatchingTrainConfig, device: torch.device) -> Dict[str, Any]:
    """Train the matching network on all base classes; returns what `model.from_saved` reads back."""
    return {**fit_episodic(base, cfg, device, "the matching network", lambda dim: MatchingNet(dim, cfg.K),
                           train_episodes), "K": cfg.K}
