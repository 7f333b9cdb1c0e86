"""Meta-learning of prototype matching networks and the hallucinator, end to end (stage `lowshot train-pmn`).

Wang et al., CVPR 2018 (arXiv 1801.05401), on cached base-class features (the feature extractor
stays fixed, as in their ImageNet experiments on H&G's ResNet-10 features). Each episode simulates
the generalised benchmark inside the base classes: m base classes with 1..max_shots support rows
each (H&G's matching-network episodes, `lowshot.heads.matching.train.sample_episode`); a fraction of them
play novel classes: they keep only 1..max_novel_shots rows and are topped up to n_aug rows by
G(seed, z), while the others keep theirs, so the label space holds "base" and "novel"
classes together; one query per class; the NLL of the queries trains the network and G
together (gradients reach G through the novel prototypes). SGD as the matching network's stage.
`fit` returns what the stage saves as `<run>/heads/pmn_hallucinator.pt`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from lowshot.heads.base import BaseRows
from lowshot.heads.matching.train import (
    MatchingTrainConfig,
    class_rows,
    fit_episodic,
    sample_episode,
    sgd_on_episodes,
)
from lowshot.heads.pmn_hallucinator.model import HIDDEN, PrototypeMatchingNet


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


def fit(base: BaseRows, cfg: PMNTrainConfig, device: torch.device) -> Dict[str, Any]:
    """Train PMN + hallucinator on all base classes; returns what `model.from_saved` reads back."""
    return {**fit_episodic(base, cfg, device, "PMN + hallucinator",
                           lambda dim: PrototypeMatchingNet(dim, cfg.K, cfg.hidden, cfg.n_aug), train_episodes),
            "K": cfg.K, "hidden": cfg.hidden}
