"""Maths shared by several heads: normalisation, class means, distances."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows of x scaled to unit L2 norm (zero rows stay zero)."""
    return F.normalize(x, dim=-1)


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class means (C, d) and counts (C,) of feats (N, d); absent classes get a zero mean."""
    counts = torch.bincount(labels, minlength=num_classes).to(feats.dtype)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, labels, feats)
    return sums / counts.clamp(min=1)[:, None], counts


def sq_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N, K) between x (N, d) and centres (K, d), via the linear form."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centres.t() + centres.pow(2).sum(1)).clamp_min(0)


def mask_absent(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Scores with −inf in the columns of classes that had no training data (present: bool (C,))."""
    return scores.masked_fill(~present.to(scores.device), float("-inf"))
