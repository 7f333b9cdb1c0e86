"""ResNets as defined by Hariharan & Girshick (ResNetBasic.py / ResNetFeat.py).

Differences from torchvision that are part of the definition: the bottleneck's 3×3 conv has a
bias and its projection shortcut has no BatchNorm; convs use He init in fan-out form.
Features are the global-average-pooled output of the last block (post-ReLU, non-negative).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from lowshot.backbones.base import BACKBONES
from lowshot.errors import InputError


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=bias)


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN + shortcut (identity, or 1×1 conv + BN when the shape changes)."""

    expansion_ratio = 1

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv(cin, cout, 3, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                  _conv(cout, cout, 3), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if cin == cout and stride == 1
                         else nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1-BN-ReLU, 3×3 (stride, with bias)-BN-ReLU, 1×1-BN + shortcut (1×1 conv, no BN)."""

    expansion_ratio = 4

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        mid = cout // 4
        self.body = nn.Sequential(_conv(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                                  _conv(mid, mid, 3, stride, bias=True), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                                  _conv(mid, cout, 1), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else _conv(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _stem(kind: str, cin: int, width: int) -> nn.Sequential:
    """`imagenet`: 7×7/2 + max-pool/2; `cifar`: 3×3/1; `small`: 3×3/2 (32×32 inputs)."""
    if kind == "imagenet":
        return nn.Sequential(_conv(cin, width, 7, 2), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, 2, 1))
    strides = {"cifar": 1, "small": 2}
    if kind not in strides:
        raise InputError(None, f"unknown stem {kind!r}; choose one of: imagenet, cifar, small")
    return nn.Sequential(_conv(cin, width, 3, strides[kind]), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


class ResNet(nn.Module):
    """A ResNet trunk: `forward_features(x)` of shape (B, C, H, W) -> (B, num_features)."""

    def __init__(self, block: type, depths: Sequence[int], width: float = 1.0, in_channels: int = 3,
                 stem: str = "imagenet"):
        super().__init__()
        base = max(8, int(round(64 * width)))
        outs = [base * block.expansion_ratio * 2 ** i for i in range(4)]
        self.stem = _stem(stem, in_channels, base)
        layers, cin = [], base
        for i, (depth, cout) in enumerate(zip(depths, outs)):
            for j in range(depth):
                layers.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.num_features = cin
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


@BACKBONES.register("resnet10")
def resnet10(**kw) -> ResNet:
    return ResNet(BasicBlock, (1, 1, 1, 1), **kw)


@BACKBONES.register("resnet18")
def resnet18(**kw) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)


@BACKBONES.register("resnet34")
def resnet34(**kw) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), **kw)


@BACKBONES.register("resnet50")
def resnet50(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)


@BACKBONES.register("resnet101")
def resnet101(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), **kw)


class Pixels(nn.Module):
    """Raw pixels as features (a reference row for tables): images resized to 32×32 and flattened."""

    def __init__(self, in_channels: int = 3, **_: object):
        super().__init__()
        self.num_features = in_channels * 32 * 32

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, 32).flatten(1)


BACKBONES.register("pixels")(Pixels)
