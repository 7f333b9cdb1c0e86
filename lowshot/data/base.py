"""The data registry and the types its entries share (`lowshot.data` re-exports them)."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from lowshot.errors import InputError
from lowshot.io.fingerprint import digest
from lowshot.io.splits import LabelSplits
from lowshot.registry import Registry

DATASETS = Registry("dataset")


class DataIdentity:
    """What split files, shot files, checkpoints and feature files record of the data they were made from.

    `fingerprint` digests the class list and the image list (labels in row order, and the file names of a
    data set on disk), not the pixels: a split or shot file stays valid for the same classes and rows
    whatever the images' bytes (glyphs rendered by another matplotlib), and not for another tree. `key`
    names the data set's files (`label_splits/<key>.json`, `experiment_cfgs/<key>/`): the data set's name
    for data that comes with lowshot, `<name>-<first 8 digits>` for data read from a folder, so two trees
    of one kind in one working folder never share files.
    """

    @functools.cached_property
    def fingerprint(self) -> str:
        files = (getattr(self, "train_files", None), getattr(self, "test_files", None))
        return digest(list(self.label_names), np.asarray(self.train_labels, np.int64),
                      np.asarray(self.test_labels, np.int64), *files)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.fingerprint[:8]}" if self.meta.get("root") else self.name

    def record(self) -> Dict[str, Any]:
        """The data record that files made from this data carry."""
        return {"dataset": self.name, "key": self.key, "fingerprint": self.fingerprint,
                "classes": self.num_classes, "train_images": len(self.train_labels)}


@dataclass
class ImageDataset(DataIdentity):
    """Images of every class in memory, split into a train part and a test part.

    Attributes:
        name: data set name (used for `label_splits/<name>.json`).
        train_images: uint8 array of shape (N, C, H, W), rows grouped by class, classes ascending.
        train_labels: int64 array of shape (N,).
        test_images: uint8 array of shape (M, C, H, W), same ordering rule.
        test_labels: int64 array of shape (M,).
        label_names: position k is the name of label k.
        meta: provenance (generator version, library versions, seed, ...).
        default_splits: the data set's own label split, written by `lowshot data` instead of a seeded one.
        default_shots: the data set's own shot files for experiments 1..5, each num_classes rows of 20 row
            indices (an empty row for a class without 20 train images: a few-shot benchmark's novel class).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: List[str]
    meta: Dict[str, Any] = field(default_factory=dict)
    default_splits: Optional[LabelSplits] = None
    default_shots: Optional[List[np.ndarray]] = None

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])


@dataclass
class FileDataset(DataIdentity):
    """Images of every class as files under `root`, decoded only when read (see `lowshot.data.stream`).

    Attributes:
        name: data set name.
        root: folder the file names are relative to.
        train_files, test_files: image paths relative to `root`, rows grouped by class, classes ascending.
        train_labels, test_labels: int64 arrays of shape (N,) and (M,).
        label_names: position k is the name of label k.
        transforms: name of the augmentation preset (`lowshot.data.transforms.TRANSFORMS`).
        image_size: the side images are read at by default (None: the preset's own).
        meta, default_splits, default_shots: as in `ImageDataset`.
    """

    name: str
    root: str
    train_files: List[str]
    train_labels: np.ndarray
    test_files: List[str]
    test_labels: np.ndarray
    label_names: List[str]
    transforms: str = "hg"
    meta: Dict[str, Any] = field(default_factory=dict)
    default_splits: Optional[LabelSplits] = None
    default_shots: Optional[List[np.ndarray]] = None
    image_size: Optional[int] = None  # the side images are read at by default (None: the preset's)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def channels(self) -> int:
        return 3  # every image is converted to RGB when read

    def verify(self) -> None:
        """Raise `InputError` naming the file that lists a missing image (`meta["sources"][part]`, else the root)."""
        for part, names in (("train", self.train_files), ("test", self.test_files)):
            missing = [n for n in names if not os.path.isfile(os.path.join(self.root, n))]
            if missing:
                source = self.meta.get("sources", {}).get(part) or self.root
                raise InputError(source, f"names {len(missing)} of {len(names)} {part} images that do not exist "
                                         f"under {self.root}, e.g. {', '.join(missing[:3])}")


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float in [-1, 1], the input every in-memory backbone is trained on."""
    return images.float().div_(127.5).sub_(1.0)
