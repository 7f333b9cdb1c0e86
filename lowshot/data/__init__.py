"""Data sets: a registry of loaders returning `ImageDataset` (images in memory, uint8)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np
import torch

from lowshot.registry import Registry

DATASETS = Registry("dataset")
register_dataset = DATASETS.register


@dataclass
class ImageDataset:
    """Images of every class, split into a train part and a test part.

    Attributes:
        name: data set name (used for `label_splits/<name>.json`).
        train_images: uint8 array of shape (N, C, H, W), rows grouped by class, classes ascending.
        train_labels: int64 array of shape (N,).
        test_images: uint8 array of shape (M, C, H, W), same ordering rule.
        test_labels: int64 array of shape (M,).
        label_names: position k is the name of label k.
        meta: provenance (generator version, library versions, seed, ...).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: List[str]
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float in [-1, 1], the input every backbone here is trained on."""
    return images.float().div_(127.5).sub_(1.0)


def load_dataset(name: str, **kwargs: Any) -> ImageDataset:
    """Build the named data set; kwargs that are None take the loader's defaults."""
    return DATASETS.create(name, **kwargs)


from lowshot.data import glyphs  # noqa: E402,F401  (registers "glyphs")
