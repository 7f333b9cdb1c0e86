"""Training of Gidaris & Komodakis' few-shot weight generator on base-class features (stage `lowshot train-weight-generator`).

Their stage 2 (CVPR 2018, arXiv 1804.09458; their `FewShot.py` and ImageNet configs), on cached
features, the feature extractor frozen: each episode draws M "fake novel" classes from the base
classes (ImageNet: 250 of 389; here round(B · 250/389) of B), n shots and 6 test rows from each,
and 3 · M test rows from the remaining base classes; the novel rows are generated from the shots
by attending over the remaining base rows, and the cross-entropy of the test rows over
remaining base + fake novel classes trains the generator together with the base rows, the scale
and the bias. Features pass a dropout of 0.5 (their `DumbFeat`). SGD (momentum 0.9, Nesterov,
weight decay 5e-4), lr 0.01 then 0.001 for the last third (their 4 + 2 epochs). One generator per
n, as the paper trains one per number of shots. Reduced default for a 2-core CPU: 1,000 episodes
per generator [ImageNet: 6 × 4,000]. `fit` returns what the stage saves as `<run>/heads/weight_generator.pt`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lowshot.errors import InputError
from lowshot.heads.base import BaseRows
from lowshot.heads.maths import class_means, generator, group_rows, l2_normalise
from lowshot.heads.weight_generator.model import FewShotWeightGenerator
from lowshot.io.fingerprint import NOT_IDENTITY
from lowshot.runtime import progress, single_thread

IMAGENET_NOVEL_FRACTION = 250 / 389  # fake novel classes per episode in the paper's ImageNet stage 2


@dataclass
class WeightGeneratorTrainConfig:
    """Stage 2 of Gidaris & Komodakis on cached features (`lowshot train-weight-generator`)."""

    run: str = field(default="runs/demo", metadata=NOT_IDENTITY)
    features_dir: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: <run>/features
    splits: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: label_splits/<dataset>.json
    out: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: <run>/heads/weight_generator.pt
    shots: List[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])  # one generator per n
    episodes: int = 1000  # per generator (paper, ImageNet: 24,000)
    novel_per_episode: Optional[int] = None  # default: round(B · 250/389)
    test_per_novel: int = 6  # their nTestNovel / nKnovel
    base_test_per_novel: int = 3  # their nTestBase / nKnovel
    lr: float = 0.01
    momentum: float = 0.9
    wd: float = 5e-4
    dropout: float = 0.5
    scale_att: float = 30.0  # γ's initial value (their ImageNet configs; 10 on miniImageNet)
    attention: bool = True  # False: their feature-averaging generator ("Avg"), no attention over base rows
    seed: int = 0
    device: str = field(default="auto", metadata=NOT_IDENTITY)
    force: bool = field(default=False, metadata=NOT_IDENTITY)


@dataclass
class StartRows:
    """The base classes' train rows and the classifier to start from."""

    feats: torch.Tensor  # (N, d)
    labels: torch.Tensor  # (N,)
    classes: torch.Tensor  # (B,) sorted global labels
    weight: torch.Tensor  # (B, d) initial base rows
    scale: float


def start_rows(base: BaseRows) -> StartRows:
    """Base-class train rows and the representation's cosine classifier rows (stage 1) for them.

    Without a stored classifier (features of an external model) the base rows start at the
    normalised class means and s at 10, which the run prints.
    """
    feats, labels = base.feats.float(), base.labels.long()
    classes = torch.unique(labels)
    if base.classifier_weight is None:
        print("no classifier in the feature file: base rows start at the normalised class means, s at 10", flush=True)
        weight, scale = l2_normalise(class_means(feats, torch.searchsorted(classes, labels), len(classes))[0]), 10.0
    else:
        weight = base.classifier_weight[classes].float()
        scale = float(base.classifier_scale) if base.classifier_scale is not None else 10.0
    return StartRows(feats, labels, classes, weight, scale)


def sample_episode(rows: torch.Tensor, valid: torch.Tensor, m: int, shots: int, cfg: WeightGeneratorTrainConfig,
                   gen: torch.Generator):
    """One stage-2 episode over B base classes, as indices.

    Args:
        rows: (B, W) train row ids of each base class; valid: bool (B, W) marking the real ones.
    Returns:
        support (m, shots) rows of the fake novel classes; test (T,) rows; their targets (T,) in
        0..K−1 with K = B − m: the remaining base classes first (ascending), then the fake novel
        ones; base (K,) indices of the remaining base classes. A fake novel class's test rows are
        disjoint from its shots; base test rows: a class drawn uniformly, then one of its rows.
    """
    counts, need = valid.sum(1), shots + cfg.test_per_novel
    eligible = (counts >= need).nonzero()[:, 0]
    novel = eligible[torch.randperm(len(eligible), generator=gen)[:m]]
    base = torch.ones(len(rows), dtype=torch.bool).index_fill_(0, novel, False).nonzero()[:, 0]
    keys = torch.rand(m, rows.shape[1], generator=gen).masked_fill(~valid[novel], 2.0)
    picked = rows[novel].gather(1, keys.argsort(1)[:, :need])
    nb = cfg.base_test_per_novel * m
    which = torch.randint(len(base), (nb,), generator=gen)
    base_rows = rows[base[which], (torch.rand(nb, generator=gen) * counts[base[which]]).long()]
    test = torch.cat([base_rows, picked[:, shots:].flatten()])
    target = torch.cat([which, len(base) + torch.arange(m).repeat_interleave(cfg.test_per_novel)])
    return picked[:, :shots], test, target, base


def drop(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of x (any shape) with rate p, as `F.dropout` computes it, from a `torch.rand_like` draw."""
    return x * ((torch.rand_like(x) >= p).to(x.dtype) / (1.0 - p)) if p > 0 else x


def episode_loss(model: FewShotWeightGenerator, feats: torch.Tensor, episode, dropout: float):
    """Cross-entropy (and the number right) of an episode's test rows over remaining base + fake novel classes."""
    support, test, target, base = episode
    x_s, x_t = drop(feats[support], dropout), drop(feats[test], dropout)
    novel = model.novel_weights(x_s, torch.ones(support.shape, dtype=torch.bool, device=feats.device), base)
    logits = model.logits(x_t, torch.cat([model.weight_base[base], novel]))
    return F.cross_entropy(logits, target), int((logits.argmax(1) == target).sum())


def train_generator(data: StartRows, shots: int, m: int, cfg: WeightGeneratorTrainConfig,
                    device: torch.device) -> Dict:
    """Train one generator for `shots` shots; returns its state dict (CPU) and its last tenth's mean loss/accuracy."""
    torch.manual_seed(int(np.random.SeedSequence([cfg.seed, shots]).generate_state(1)[0]))
    model = FewShotWeightGenerator(data.classes, data.weight, data.scale, cfg.scale_att, cfg.attention).to(device)
    pos = torch.searchsorted(data.classes, data.labels)
    rows, valid, _ = group_rows(torch.arange(len(pos))[:, None], pos, torch.arange(len(data.classes)))
    feats, gen = data.feats.to(device), generator(cfg.seed * 1000 + shots, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.wd)
    drop_at, tail, total, hits, seen = -(-2 * cfg.episodes // 3), max(1, cfg.episodes // 10), 0.0, 0, 0
    for ep in progress(range(cfg.episodes), desc=f"weight generator n={shots} episodes", leave=False):
        opt.param_groups[0]["lr"] = cfg.lr * (0.1 if ep >= drop_at else 1.0)
        episode = [t.to(device) for t in sample_episode(rows[..., 0], valid, m, shots, cfg, gen)]
        loss, right = episode_loss(model, feats, episode, cfg.dropout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            raise InputError(cfg.run, f"weight generator training diverged at episode {ep + 1}; lower --set lr")
        if ep >= cfg.episodes - tail:
            total, hits, seen = total + loss.item(), hits + right, seen + len(episode[2])
    log = {"shots": shots, "loss": total / tail, "test_acc": hits / max(seen, 1)}
    print(f"weight generator n={shots}: last {tail} episodes loss {log['loss']:.4f} accuracy {log['test_acc']:.3f}",
          flush=True)
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "log": log}


def novel_per_episode(cfg: WeightGeneratorTrainConfig, data: StartRows) -> int:
    """M fake novel classes per episode, checked against the classes that have enough rows for every n."""
    m = cfg.novel_per_episode or max(1, round(len(data.classes) * IMAGENET_NOVEL_FRACTION))
    counts = torch.bincount(torch.searchsorted(data.classes, data.labels))
    short = int((counts >= max(cfg.shots) + cfg.test_per_novel).sum())
    if m >= len(data.classes) or short < m:
        raise InputError(None, f"{m} fake novel classes per episode need {m} base classes with ≥ "
                                    f"{max(cfg.shots) + cfg.test_per_novel} rows and at least one more base class; "
                                    f"{short} of {len(data.classes)} have them (--set novel_per_episode=...)")
    return m


def fit(base: BaseRows, cfg: WeightGeneratorTrainConfig, device: torch.device) -> Dict[str, Any]:
    """Train one generator per n in `cfg.shots`; returns what `model.from_saved` reads back."""
    data = start_rows(base)
    m = novel_per_episode(cfg, data)
    print(f"training {len(cfg.shots)} weight generators: {cfg.episodes} episodes each, {m} fake novel "
          f"of {len(data.classes)} base classes", flush=True)
    start = time.perf_counter()
    with single_thread(device):  # small products: OpenMP barriers cost more than they gain on a shared CPU
        trained = {str(n): train_generator(data, n, m, cfg, device) for n in sorted(set(cfg.shots))}
    print(f"weight generator training: {time.perf_counter() - start:.1f} s", flush=True)
    return {"generators": {n: t["state_dict"] for n, t in trained.items()},
            "log": [t["log"] for t in trained.values()], "dim": int(data.feats.shape[1]), "novel_per_episode": m}
