"""A backbone plus a classifier: `forward(x) -> (scores, features)` as in H&G's `ResNetFeat`."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from lowshot.backbones.base import BACKBONES, CLASSIFIERS


class Model(nn.Module):
    """Trunk + classifier. `features` are the pooled penultimate activations (B, num_features)."""

    def __init__(self, trunk: nn.Module, classifier: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = self.trunk.forward_features(x)
        return self.classifier(feats), feats


def build_model(backbone: str, classifier: str, num_classes: int, in_channels: int,
                width: float = 1.0, stem: str = "imagenet") -> Model:
    """Build a registered backbone with a registered classifier on top."""
    trunk = BACKBONES.create(backbone, width=width, in_channels=in_channels, stem=stem)
    return Model(trunk, CLASSIFIERS.create(classifier, num_features=trunk.num_features, num_classes=num_classes))
