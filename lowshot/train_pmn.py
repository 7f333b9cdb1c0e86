"""Stage: meta-learn prototype matching networks and the hallucinator end to end (`lowshot train-pmn`).

Wang et al., CVPR 2018 (arXiv 1801.05401), on cached base-class features (the feature extractor
stays fixed, as in their ImageNet experiments on H&G's ResNet-10 features). Each episode simulates
the generalised benchmark inside the base classes: m base classes with 1..max_shots support rows
each (H&G's matching-network episodes, `lowshot.train_matching.sample_episode`); a fraction of them
play novel classes: they keep only 1..max_novel_shots rows and are topped up to n_aug rows by
G(seed, z), while the others keep theirs, so the label space holds "base" and "novel"
classes together; one query per class; the NLL of the queries trains the network and G
together (gradients reach G through the novel prototypes). SGD as the matching network's stage.
Writes `<run>/heads/pmn_hallucinator.pt` (plain tensors and dicts, read with `weights_only=True`),
skipped when the configuration and the base rows are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch

from lowshot.checkpoints import check_feature_dim, load_checkpoint
from lowshot.generators.pmn import HIDDEN
from lowshot.heads.pmn_hallucinator import PrototypeMatchingNet
from lowshot.run import RunFolder
from lowshot.train_matching import (MatchingTrainConfig, class_rows, episodic_stage, sample_episode,
                                    sgd_on_episodes)

MISSING = "no trained prototype matching network: run `lowshot train-pmn --run <run>` first"


@dataclass
class PMNTrainConfig(MatchingTrainConfig):
    """Episodic training of PMN + hallucinator (`lowshot train-pmn`): the matching network's options
    (here `out` defaults to <run>/heads/pmn_hallucinator.pt, and max_shots bounds the support of an
    episode's "base" classes) plus the simulated novel classes and G's."""

    novel_fraction: float = 0.5  # share of an episode's classes that play novel (the test setups: 100 of 200)
    max_novel_shots: int = 5  # an episode's "novel" class keeps 1..max_novel_shots of its rows
    n_aug: int = 10  # G tops each novel class up to n_aug rows (0: PMN without hallucinator)
    hidden: int = HIDDEN  # G's hidden width


def fake_novel(support: torch.Tensor, labels: torch.Tensor, m: int, cfg: PMNTrainConfig, gen: torch.Generator):
    """Make the last round(m · novel_fraction) classes of an episode novel: each keeps 1..max_novel_shots rows.

    Args:
        support: (S,) row ids grouped by class, labels (S,) in 0..m−1 ascending (`sample_episode`'s output).
    Returns:
        support rows, their labels, and the novel labels (k,).
    """
    k = min(m, max(0, round(m * cfg.novel_fraction)))
    novel = torch.arange(m - k, m)
    cap = torch.full((m,), len(support), dtype=torch.long)
    cap[novel] = torch.randint(1, cfg.max_novel_shots + 1, (k,), generator=gen)
    within = torch.arange(len(labels)) - torch.searchsorted(labels, labels)
    keep = within < cap[labels]
    return support[keep], labels[keep], novel


def train_episodes(model: PrototypeMatchingNet, feats: torch.Tensor, labels: torch.Tensor, sched: Dict[str, int],
                   cfg: PMNTrainConfig) -> List[Dict[str, float]]:
    """H&G's episodes with their last classes made novel (`fake_novel`), trained by `sgd_on_episodes`."""
    rows, valid = class_rows(labels)
    m = sched["classes_per_episode"]

    def episode_logp(gen: torch.Generator) -> torch.Tensor:
        support, support_labels, queries = sample_episode(rows, valid, m, cfg.max_shots, gen)
        support, support_labels, novel = fake_novel(support, support_labels, m, cfg, gen)
        return model(feats[support.to(feats.device)], support_labels.to(feats.device), feats[queries.to(feats.device)],
                     novel.to(feats.device), gen)

    return sgd_on_episodes(model, episode_logp, sched, cfg, "PMN + hallucinator")


def train_pmn(cfg: PMNTrainConfig) -> Path:
    """Train PMN + hallucinator on all base classes; returns the path of the model file (skipped if up to date)."""
    out = Path(cfg.out) if cfg.out else RunFolder(Path(cfg.run)).pmn_model
    return episodic_stage(cfg, out, "PMN + hallucinator",
                          lambda dim: PrototypeMatchingNet(dim, cfg.K, cfg.hidden, cfg.n_aug), train_episodes,
                          load_model_file, {"K": cfg.K, "hidden": cfg.hidden})


def load_model_file(path: str | Path) -> Dict:
    """The dict saved by `train_pmn` (loaded with `weights_only=True`), or a one-line `InputError`."""
    return load_checkpoint(path, MISSING, "the prototype matching network")


def load_pmn(path: str | Path, dim: int) -> PrototypeMatchingNet:
    """The trained network (with its hallucinator) in `path`, checked to take `dim`-dimensional features."""
    saved = load_model_file(path)
    check_feature_dim(path, saved, dim)
    net = PrototypeMatchingNet(int(saved["dim"]), int(saved["K"]), int(saved["hidden"]))
    net.load_state_dict(saved["state_dict"])
    return net
