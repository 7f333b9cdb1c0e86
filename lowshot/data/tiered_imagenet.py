"""tieredImageNet on Ren et al.'s split (ICLR 2018): 351 / 97 / 160 classes in 20 / 6 / 8 categories.

`root` holds per-split class folders `train/<wnid>/…`, `val/<wnid>/…`, `test/<wnid>/…` (the ImageNet
images of each class; nothing is downloaded). The classes and their high-level categories ship with
lowshot (`splits/tiered_imagenet.json`, from Ren et al.'s CSV files) and the folders are checked
against them; the number of images per class is not fixed by the split (it is the class's ILSVRC-12
training images), so it is not checked. Labels: the train classes (0–350), the val classes (351–447),
the test classes (448–607), each in the order of the CSV files (grouped by category). Parts:
`lowshot.data.fewshot`. Images are read at 84 px (the `crop` preset).
"""
from __future__ import annotations

import os
from typing import List

import numpy as np

from lowshot.data.base import DATASETS, FileDataset
from lowshot.data.fewshot import SPLIT_NAMES, check_classes, holdout_meta, parts, split_classes
from lowshot.data.files import class_tree, require_dir, subfolders


@DATASETS.register("tiered_imagenet")
def tiered_imagenet(root: str, shot_pool: int = 0, base_test: int = 0, seed: int = 0,
                    transforms: str = "crop") -> FileDataset:
    """tieredImageNet from per-split class folders under `root`; see the module docstring.

    Args:
        shot_pool, base_test, seed: images held out per novel / base class for the generalised grid
            (`lowshot.data.fewshot`); 0 keeps the published parts.
        transforms: augmentation preset (`crop`: 84 px).
    """
    require_dir(root)
    lists = split_classes("tiered_imagenet")
    files: List[str] = []
    labels = []
    for split, expected in zip(SPLIT_NAMES, lists):
        folder = require_dir(os.path.join(root, split), f"{split} folder")
        check_classes(folder, subfolders(folder), expected, f"{split} classes of tieredImageNet")
        names, split_labels = class_tree(root, split, expected)
        files += names
        labels.append(split_labels + sum(len(x) for x in lists[:SPLIT_NAMES.index(split)]))
    all_labels = np.concatenate(labels)
    names = sum(lists, [])
    train, test, splits, shots = parts(all_labels, names, lists, shot_pool, base_test, seed, source=root)
    meta = {"root": root, "layout": "folders", **holdout_meta(shot_pool, base_test, seed)}
    return FileDataset("tiered_imagenet", root, [files[i] for i in train], all_labels[train],
                       [files[i] for i in test], all_labels[test], names, transforms, meta, splits, shots)
