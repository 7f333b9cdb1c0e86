"""Gaussian jitter around the shots (plug-in `jitter`): a control for the generator interface.

new = shot + N(0, σ² I), with σ² the pooled within-class variance per dimension of the base
classes' train features (of both setups, the classes the representation was trained on), measured
in `init`; no training stage, so novel-class rows beyond the shots are never looked at.
"""
from __future__ import annotations

import numpy as np
import torch

from lowshot.generators.base import GENERATORS, GeneratorPlugin
from lowshot.heads.maths import plan_new_rows


def within_class_variance(feats: np.ndarray, labels: np.ndarray, classes) -> float:
    """Pooled within-class variance per dimension: Σ ‖x − μ_y‖² / (d · (N − C)) over `classes`."""
    keep = np.isin(labels, classes)
    x, y = feats[keep].astype(np.float64), labels[keep]
    present, y = np.unique(y, return_inverse=True)
    means = np.zeros((len(present), x.shape[1]))
    np.add.at(means, y, x)
    means /= np.bincount(y)[:, None]
    dof = max(1, len(y) - len(present))
    return float(((x - means[y]) ** 2).sum() / (x.shape[1] * dof))


def init(saved, dim: int, base_rows) -> dict:
    """σ from the base classes' train rows (`base_rows()` returns their features (N, d) and labels (N,))."""
    feats, labels = base_rows()
    return {"sigma": within_class_variance(feats, labels, np.unique(labels)) ** 0.5}


@torch.no_grad()
def generate(feats: torch.Tensor, labels: torch.Tensor, state: dict, max_per_label: int, seed: int):
    """Real rows first (unchanged), then M − m jittered copies of random shots per label with m < M."""
    gen = torch.Generator().manual_seed(int(seed))
    rows, new_labels = plan_new_rows(labels, max_per_label, gen)
    noise = torch.randn(len(rows), feats.shape[1], generator=gen).to(feats.device, feats.dtype)
    return torch.cat([feats, feats[rows] + state["sigma"] * noise]), torch.cat([labels, new_labels])


GENERATORS.register("jitter")(GeneratorPlugin(None, init, generate))
