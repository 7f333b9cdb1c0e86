"""Augmentation presets for images read from disk (`torchvision.transforms.v2`).

A preset maps a PIL image to a uint8 tensor of shape (3, S, S) inside a DataLoader worker; the
float conversion and the mean/std normalisation run on the device (`Preset.normalise`), so workers
ship a quarter of the bytes. A data set names its default preset (`FileDataset.transforms`);
training overrides it with `--set transforms=NAME --set image_size=S`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from torchvision.transforms import v2

from lowshot.registry import Registry

TRANSFORMS = Registry("transform")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """Train and evaluation transforms (PIL image -> uint8 (3, S, S)) and the normalisation constants."""

    train: Callable
    eval: Callable
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, S, S) -> float32 (x / 255 − mean) / std, on x's device."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.float().div_(255).sub_(mean).div_(std)


def _eval(image_size: int) -> Callable:
    """H&G evaluation: short side to 256/224 × S (bilinear), centre crop S."""
    return v2.Compose([v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size),
                       v2.PILToTensor()])


@TRANSFORMS.register("hg")
def hg(image_size: int = 224) -> Preset:
    """H&G §4 training: random resized crop (area 8–100 %, aspect 3/4–4/3), colour jitter 0.4, flip."""
    train = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True),
                        v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
                        v2.RandomHorizontalFlip(), v2.PILToTensor()])
    return Preset(train, _eval(image_size))


@TRANSFORMS.register("crop")
def crop(image_size: int = 84) -> Preset:
    """Small images (CIFAR-style): resize, random crop with S/8 zero padding, flip."""
    train = v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
                        v2.RandomCrop(image_size, padding=image_size // 8), v2.RandomHorizontalFlip(),
                        v2.PILToTensor()])
    return Preset(train, v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
                                     v2.PILToTensor()]))
