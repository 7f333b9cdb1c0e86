"""Any image tree `root/<split>/<class>/<image>`: how miniImageNet, tieredImageNet or your own data come in.

Classes are the sorted folder names of the train split (label k = k-th name); files are sorted by
name; rows are class-contiguous. The test part is `root/<test>/` with the same class folders, or,
with `test_fraction`, a seeded per-class held-out share of the train folder.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np

from lowshot.data.base import DATASETS, FileDataset
from lowshot.data.files import class_tree, preset_for, require_dir, subfolders
from lowshot.errors import InputError


def hold_out(names: List[str], labels: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) of shape (N,): per class, round(fraction × n) (at least 1) seeded test rows."""
    test = np.zeros(len(names), bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(rows))))
        test[np.random.default_rng([seed, int(c)]).permutation(rows)[:k]] = True
    return ~test, test


@DATASETS.register("folder")
def folder(root: str, train: str = "train", test: str = "test", test_fraction: Optional[float] = None,
           seed: int = 0, transforms: str = "auto") -> FileDataset:
    """An image tree; see the module docstring.

    Args:
        root: the tree's root folder.
        train, test: names of the split folders inside `root`.
        test_fraction: if given, the test images are this share of each class of `root/<train>` (seeded).
        transforms: augmentation preset (`lowshot.data.transforms`); `auto`: small images (≤ 96 px) at their own
            size with `crop`, others with `hg` at 224 px (`lowshot.data.files.preset_for`).
    """
    require_dir(root)
    classes = subfolders(require_dir(os.path.join(root, train), "train folder"))
    if not classes:
        raise InputError(os.path.join(root, train), "has no class folders")
    names, labels = class_tree(root, train, classes)
    if test_fraction is not None:
        if not 0 < test_fraction < 1:
            raise InputError(root, f"test_fraction must be between 0 and 1, not {test_fraction}")
        keep, held = hold_out(names, labels, test_fraction, seed)
        test_names, test_labels = [n for n, h in zip(names, held) if h], labels[held]
        names, labels = [n for n, k in zip(names, keep) if k], labels[keep]
    else:
        test_dir = os.path.join(root, test)
        if not os.path.isdir(test_dir):
            raise InputError(test_dir, "test folder not found (or pass test_fraction to hold out train images)")
        extra = sorted(set(subfolders(test_dir)) - set(classes))
        if extra:
            raise InputError(test_dir, f"has class folders the train folder lacks: {', '.join(extra[:3])}")
        test_names, test_labels = class_tree(root, test, classes)
    meta = {"root": root, "train": train, "test": test if test_fraction is None else None,
            "test_fraction": test_fraction, "seed": seed}
    preset, size = preset_for(transforms, root, names)
    return FileDataset("folder", root, names, labels, test_names, test_labels, classes, preset, meta, image_size=size)
