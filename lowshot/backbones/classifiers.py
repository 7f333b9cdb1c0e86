"""Classifiers on pooled features: `linear` (no bias, H&G) and `cosine` (Qi et al. 2018)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lowshot.backbones.base import CLASSIFIERS


@CLASSIFIERS.register("linear")
class LinearClassifier(nn.Module):
    """scores = W φ, W of shape (C, d), no bias (H&G `ResNetFeat`)."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, num_features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's default
        self.scale: Optional[nn.Parameter] = None

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.weight.t()


@CLASSIFIERS.register("cosine")
class CosineClassifier(nn.Module):
    """scores = s · cos(φ, w_c): features and rows L2-normalised inside the forward pass.

    Qi, Brown & Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018
    (arXiv 1712.07136). s is learned, initialised at 10, and excluded from weight decay.
    """

    def __init__(self, num_features: int, num_classes: int, init_scale: float = 10.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, num_features) / num_features ** 0.5)
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(feats, dim=1) @ F.normalize(self.weight, dim=1).t()
