"""Stage: train Gidaris & Komodakis' few-shot weight generator on base-class features (`lowshot train-weight-generator`).

Their stage 2 (CVPR 2018, arXiv 1804.09458; their `FewShot.py` and ImageNet configs), on cached
features, the feature extractor frozen: each episode draws M "fake novel" classes from the base
classes (ImageNet: 250 of 389; here round(B · 250/389) of B), n shots and 6 test rows from each,
and 3 · M test rows from the remaining base classes; the novel rows are generated from the shots
by attending over the remaining base rows, and the cross-entropy of the test rows over
remaining base + fake novel classes trains the generator together with the base rows, the scale
and the bias. Features pass a dropout of 0.5 (their `DumbFeat`). SGD (momentum 0.9, Nesterov,
weight decay 5e-4), lr 0.01 then 0.001 for the last third (their 4 + 2 epochs). One generator per
n, as the paper trains one per number of shots. Reduced default for a 2-core CPU: 1,000 episodes
per generator [ImageNet: 6 × 4,000]. Writes `<run>/heads/weight_generator.pt` (plain tensors and
dicts, read with `weights_only=True`), skipped when the configuration and the base rows are unchanged.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lowshot.checkpoints import check_feature_dim, load_checkpoint, model_up_to_date, stage_config
from lowshot.config import pick_device, versions
from lowshot.errors import InputError
from lowshot.heads._common import class_means, generator, group_rows, l2_normalise
from lowshot.heads.matching import one_thread
from lowshot.heads.weight_generator import FewShotWeightGenerator
from lowshot.io.atomic import save_torch
from lowshot.run import RunFolder, base_train_rows

MISSING = "no trained weight generator: run `lowshot train-weight-generator --run <run>` first"
IMAGENET_NOVEL_FRACTION = 250 / 389  # fake novel classes per episode in the paper's ImageNet stage 2


@dataclass
class WeightGeneratorTrainConfig:
    """Stage 2 of Gidaris & Komodakis on cached features (`lowshot train-weight-generator`)."""

    run: str = "runs/demo"
    features_dir: Optional[str] = None  # default: <run>/features
    splits: Optional[str] = None  # default: label_splits/<dataset>.json
    out: Optional[str] = None  # default: <run>/heads/weight_generator.pt
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
    device: str = "auto"
    force: bool = False


@dataclass
class BaseRows:
    """The base classes' train rows: feats (N, d), labels (N,), the classifier to start from, provenance."""

    feats: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor  # (B,) sorted global labels
    weight: torch.Tensor  # (B, d) initial base rows
    scale: float
    path: str
    digest: str


def load_base(cfg: WeightGeneratorTrainConfig) -> BaseRows:
    """Base-class train rows and the representation's cosine classifier rows (stage 1) for them.

    Without a stored classifier (features of an external model) the base rows start at the
    normalised class means and s at 10, which the run prints.
    """
    feats, labels, train = base_train_rows(cfg.run, cfg.features_dir, cfg.splits)
    feats, labels = torch.from_numpy(feats).float(), torch.from_numpy(labels).long()
    classes = torch.unique(labels)
    digest = hashlib.sha1(feats.numpy().tobytes() + labels.numpy().tobytes())
    if train.classifier_weight is None:
        print("no classifier in the feature file: base rows start at the normalised class means, s at 10", flush=True)
        weight, scale = l2_normalise(class_means(feats, torch.searchsorted(classes, labels), len(classes))[0]), 10.0
    else:
        weight = torch.from_numpy(np.ascontiguousarray(train.classifier_weight[classes.numpy()])).float()
        scale = float(train.classifier_scale) if train.classifier_scale is not None else 10.0
        digest.update(weight.numpy().tobytes() + str(scale).encode())
    return BaseRows(feats, labels, classes, weight, scale, train.path, digest.hexdigest()[:16])


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


def train_generator(data: BaseRows, shots: int, m: int, cfg: WeightGeneratorTrainConfig,
                    device: torch.device) -> Dict:
    """Train one generator for `shots` shots; returns its state dict (CPU) and its last tenth's mean loss/accuracy."""
    torch.manual_seed(int(np.random.SeedSequence([cfg.seed, shots]).generate_state(1)[0]))
    model = FewShotWeightGenerator(data.classes, data.weight, data.scale, cfg.scale_att, cfg.attention).to(device)
    pos = torch.searchsorted(data.classes, data.labels)
    rows, valid, _ = group_rows(torch.arange(len(pos))[:, None], pos, torch.arange(len(data.classes)))
    feats, gen = data.feats.to(device), generator(cfg.seed * 1000 + shots, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.wd)
    drop_at, tail, total, hits, seen = -(-2 * cfg.episodes // 3), max(1, cfg.episodes // 10), 0.0, 0, 0
    for ep in range(cfg.episodes):
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


def novel_per_episode(cfg: WeightGeneratorTrainConfig, data: BaseRows) -> int:
    """M fake novel classes per episode, checked against the classes that have enough rows for every n."""
    m = cfg.novel_per_episode or max(1, round(len(data.classes) * IMAGENET_NOVEL_FRACTION))
    counts = torch.bincount(torch.searchsorted(data.classes, data.labels))
    short = int((counts >= max(cfg.shots) + cfg.test_per_novel).sum())
    if m >= len(data.classes) or short < m:
        raise InputError(data.path, f"{m} fake novel classes per episode need {m} base classes with ≥ "
                                    f"{max(cfg.shots) + cfg.test_per_novel} rows and at least one more base class; "
                                    f"{short} of {len(data.classes)} have them (--set novel_per_episode=...)")
    return m


def train_weight_generator(cfg: WeightGeneratorTrainConfig) -> Path:
    """Train one generator per n in `cfg.shots`; returns the path of `weight_generator.pt` (skipped if up to date)."""
    out = Path(cfg.out) if cfg.out else RunFolder(Path(cfg.run)).weight_generator_model
    data = load_base(cfg)
    saved = stage_config(cfg)
    if not cfg.force and model_up_to_date(out, saved, data.digest, load_model_file):
        return out
    m, device = novel_per_episode(cfg, data), pick_device(cfg.device)
    print(f"training {len(cfg.shots)} weight generators: {cfg.episodes} episodes each, {m} fake novel "
          f"of {len(data.classes)} base classes", flush=True)
    start = time.perf_counter()
    with one_thread(device):  # small products: OpenMP barriers cost more than they gain on a shared CPU
        trained = {str(n): train_generator(data, n, m, cfg, device) for n in sorted(set(cfg.shots))}
    print(f"weight generator training: {time.perf_counter() - start:.1f} s", flush=True)
    save_torch(out, {"generators": {n: t["state_dict"] for n, t in trained.items()},
                     "log": [t["log"] for t in trained.values()], "dim": int(data.feats.shape[1]),
                     "novel_per_episode": m, "config": saved, "features": data.path,
                     "features_digest": data.digest, "versions": versions()})
    return out


def load_model_file(path: str | Path) -> Dict:
    """The dict saved by `train_weight_generator` (loaded with `weights_only=True`), or a one-line `InputError`."""
    return load_checkpoint(path, MISSING, "the weight generator")


def load_generator(path: str | Path, dim: int, shots: int) -> FewShotWeightGenerator:
    """The generator in `path` trained with the most shots ≤ `shots` (else the fewest), checked to take `dim` features."""
    saved = load_model_file(path)
    check_feature_dim(path, saved, dim)
    trained = sorted(int(n) for n in saved["generators"])
    pick = max([n for n in trained if n <= shots], default=trained[0])
    state = saved["generators"][str(pick)]
    net = FewShotWeightGenerator(state["classes"], state["weight_base"])
    net.load_state_dict(state)
    return net
