"""CUB-200-2011 in its native layout, the data set of the imprinting paper (Qi, Brown & Lowe, CVPR 2018).

`root` holds `images.txt` (id, path under `images/`), `image_class_labels.txt` (id, class id from 1),
`train_test_split.txt` (id, 1 = train) and `classes.txt` (class id, name). Rows are grouped by
class, then by image id. The default split is Qi et al.'s (heads-and-protocols.md §1.4): the first
half of the classes (1–100) are base, the second half (101–200) novel, all in setup 2 — the
200-way evaluation — and setup 1 is empty (the paper has no validation classes); `split="random"`
gives the seeded H&G-style split with a validation setup instead.
"""
from __future__ import annotations

import os

import numpy as np

from lowshot.data.base import DATASETS, FileDataset
from lowshot.data.fewshot import check_classes, holdout_meta, parts, split_classes
from lowshot.data.files import read_table, require_dir
from lowshot.errors import InputError
from lowshot.io.splits import LabelSplits

SPLITS = ("qi", "random", "chen")


def _column(root: str, name: str, ids: np.ndarray) -> np.ndarray:
    """The int value column of `root/name` for the given image ids (every id must be listed)."""
    path = os.path.join(root, name)
    try:
        table = dict((int(a), int(b)) for a, b in read_table(path, 2))
    except ValueError:
        raise InputError(path, "expected lines of two integers: <image id> <value>") from None
    missing = [int(i) for i in ids if int(i) not in table]
    if missing:
        raise InputError(path, f"lacks {len(missing)} image ids of images.txt, e.g. {missing[:3]}")
    return np.asarray([table[int(i)] for i in ids], np.int64)


def qi_splits(label_names) -> LabelSplits:
    """Qi et al.: first half of the classes base, second half novel, both in setup 2 (setup 1 empty)."""
    half = len(label_names) // 2
    return LabelSplits(list(label_names), [], list(range(half)), [], list(range(half, len(label_names))))


def chen_parts(root: str, names, labels: np.ndarray, shot_pool: int, base_test: int, seed: int):
    """(train rows, test rows, label split, default shots) of Chen et al.'s split over every image."""
    lists = split_classes("cub_chen2019")
    check_classes(os.path.join(root, "classes.txt"), names, sorted(sum(lists, [])), "CUB-200-2011 classes")
    return parts(labels, names, lists, shot_pool, base_test, seed, source=root)


@DATASETS.register("cub")
def cub(root: str, split: str = "qi", transforms: str = "hg", shot_pool: int = 0, base_test: int = 0,
        seed: int = 0) -> FileDataset:
    """CUB-200-2011 from `root` (the `CUB_200_2011` folder); see the module docstring.

    `shot_pool`, `base_test` and `seed` (images held out per novel / base class, `lowshot.data.fewshot`)
    apply to `split="chen"` only.
    """
    require_dir(root)
    if split not in SPLITS:
        raise InputError(root, f"unknown CUB split {split!r}; choose one of: {', '.join(SPLITS)}")
    if split != "chen" and (shot_pool or base_test):
        raise InputError(root, "shot_pool and base_test apply to the few-shot split (split: chen) only")
    images = read_table(os.path.join(root, "images.txt"), 2)
    ids = np.asarray([int(i) for i, _ in images], np.int64)
    paths = ["images/" + p.strip() for _, p in images]
    labels = _column(root, "image_class_labels.txt", ids) - 1
    classes = read_table(os.path.join(root, "classes.txt"), 2)
    names = [name.strip() for _, name in sorted(classes, key=lambda r: int(r[0]))]
    if labels.min() < 0 or labels.max() >= len(names):
        raise InputError(os.path.join(root, "image_class_labels.txt"), f"a class id is outside 1..{len(names)}")
    order = np.lexsort((ids, labels))
    meta = {"root": root, "split": split, "sources": dict.fromkeys(("train", "test"), os.path.join(root, "images.txt"))}
    if split == "chen":
        train, test, splits, shots = chen_parts(root, names, labels[order], shot_pool, base_test, seed)
        train, test = order[train], order[test]
        meta.update(holdout_meta(shot_pool, base_test, seed))
    else:
        is_train = _column(root, "train_test_split.txt", ids) == 1
        train, test = order[is_train[order]], order[~is_train[order]]
        splits, shots = (qi_splits(names) if split == "qi" else None), None
    return FileDataset("cub", root, [paths[i] for i in train], labels[train], [paths[i] for i in test], labels[test],
                       names, transforms, meta, splits, shots)
