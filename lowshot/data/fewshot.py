"""What the few-shot benchmarks share: their shipped class lists, and how their images become parts.

A few-shot benchmark splits classes, not images: its train classes are lowshot's base classes (of
both setups), its val classes setup 1's novel classes and its test classes setup 2's. As published,
a representation trains on every image of the train classes and an episode draws from every image of
a val or test class (Snell et al. 2017; Chen et al. 2019). So by default every image of a base class
is a train image and every image of a novel class a test image. The generalised (base + novel)
protocols need two more sets, which a layout has (Gidaris & Komodakis' held-out base images) or which
are held out, seeded, per class:

- `base_test` images of each base class become its test images (they leave the training set);
- `shot_pool` images of each novel class become its train images, the pool the shot files of the
  generalised grid (`lowshot benchmark`) draw from (they leave the episodes' pool).

The class lists live in `lowshot/data/splits/<name>.json`, each with its source (repository,
path, commit); docs/datasets/ says where each came from.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowshot.errors import InputError
from lowshot.io.splits import SHOTS_PER_CLASS, LabelSplits

SPLITS_DIR = Path(__file__).parent / "splits"
SPLIT_NAMES = ("train", "val", "test")


@functools.lru_cache(maxsize=None)
def class_lists(name: str) -> Dict[str, Any]:
    """The shipped class lists of benchmark `name` (`lowshot/data/splits/<name>.json`): `splits` (train, val,
    test lists) and the benchmark's extra facts (`images`, `categories`, ...)."""
    with open(SPLITS_DIR / f"{name}.json", encoding="utf-8") as f:
        return json.load(f)


def split_classes(name: str) -> Tuple[List[str], List[str], List[str]]:
    """(train, val, test) class lists of benchmark `name`."""
    splits = class_lists(name)["splits"]
    return tuple(list(splits[k]) for k in SPLIT_NAMES)


def fewshot_splits(label_names: Sequence[str], train: Sequence[str], val: Sequence[str],
                   test: Sequence[str]) -> LabelSplits:
    """The label split of a few-shot benchmark: train classes = base of both setups, val = setup 1's novel
    classes, test = setup 2's (names looked up in `label_names`)."""
    index = {n: k for k, n in enumerate(label_names)}
    train_ids = sorted(index[n] for n in train)
    return LabelSplits(list(label_names), train_ids, list(train_ids), sorted(index[n] for n in val),
                       sorted(index[n] for n in test))


def check_classes(source, found: Sequence[str], expected: Sequence[str], what: str) -> None:
    """One `InputError` naming `source` when the classes `found` are not exactly the `expected` ones."""
    missing = [c for c in expected if c not in set(found)]
    extra = sorted(set(found) - set(expected))
    if missing:
        raise InputError(source, f"lacks {len(missing)} of the {len(expected)} {what}, e.g. {', '.join(missing[:3])}")
    if extra:
        raise InputError(source, f"has {len(extra)} classes that are not among the {len(expected)} {what}, "
                                 f"e.g. {', '.join(extra[:3])}")


def _held_rows(rows: np.ndarray, k: int, seed: int, label: int) -> np.ndarray:
    """k of `rows` (seeded by seed and the class), as a sorted array."""
    return np.sort(np.random.default_rng([seed, 0xF5, label]).permutation(rows)[:k])


def check_holdouts(source, shot_pool: int, base_test: int) -> None:
    """`shot_pool` must be 0 or a shot file's 20 images; neither may be negative."""
    if base_test < 0 or shot_pool < 0:
        raise InputError(source, "shot_pool and base_test count images per class and cannot be negative")
    if 0 < shot_pool < SHOTS_PER_CLASS:
        raise InputError(source, f"shot_pool {shot_pool}: a shot file row holds {SHOTS_PER_CLASS} images, so the "
                                 f"pool is 0 (no generalised grid) or at least {SHOTS_PER_CLASS}")


def split_rows(labels: np.ndarray, base: Sequence[int], shot_pool: int = 0, base_test: int = 0, seed: int = 0,
               held_out: Optional[np.ndarray] = None, source=None) -> Tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test) of a benchmark's images, each grouped by class ascending, stable within one.

    Args:
        labels: int64 array of shape (N,), the label of every image.
        base: the base classes; every other class is novel.
        shot_pool, base_test: images held out per novel / base class (seeded; see the module docstring).
        held_out: bool array of shape (N,): the base images the layout keeps for testing (Gidaris' pickles);
            then no base image is drawn.
    """
    check_holdouts(source, shot_pool, base_test)
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    is_base = np.isin(classes, np.asarray(base, np.int64))
    to_test = np.zeros(len(labels), bool)
    to_test[order] = ~np.repeat(is_base, counts)  # the default: base images train, novel images test
    if held_out is not None:
        to_test |= held_out
    for c, start, count, b in zip(classes, starts, counts, is_base):
        k = 0 if b and held_out is not None else base_test if b else shot_pool
        if not k:
            continue
        if k >= count:
            raise InputError(source, f"{'base_test' if b else 'shot_pool'} {k} leaves no images of class {int(c)}, "
                                     f"which has {count}")
        to_test[_held_rows(order[start:start + count], k, seed, int(c))] = b
    return order[~to_test[order]], order[to_test[order]]


def default_shots(train_labels: np.ndarray, num_classes: int, seed: int) -> Optional[List[List[List[int]]]]:
    """None when every class has a shot file's 20 train images (`lowshot data` then draws its seeded files);
    else the five shot tables with an empty row for each class that has fewer (a novel class without a shot
    pool: the grid then names it instead of drawing from nothing). `train_labels` must be grouped by class."""
    starts = np.searchsorted(train_labels, np.arange(num_classes + 1))
    counts = np.diff(starts)
    if counts.min(initial=SHOTS_PER_CLASS) >= SHOTS_PER_CLASS:
        return None
    tables = []
    for k in range(1, 6):  # the draws of `make_shots`, for the classes that have 20 images
        rows: List[List[int]] = [[] for _ in range(num_classes)]
        for c in np.flatnonzero(counts >= SHOTS_PER_CLASS):
            members = np.arange(starts[c], starts[c + 1])
            rows[c] = np.random.default_rng([seed, k, int(c)]).permutation(members)[:SHOTS_PER_CLASS].tolist()
        tables.append(rows)
    return tables


def parts(labels: np.ndarray, label_names: Sequence[str], lists: Sequence[Sequence[str]], shot_pool: int,
          base_test: int, seed: int, held_out: Optional[np.ndarray] = None, source=None):
    """(train rows, test rows, label split, default shots) of a benchmark whose (train, val, test) class lists
    are `lists`; see `split_rows` and `default_shots`."""
    splits = fewshot_splits(label_names, *lists)
    train, test = split_rows(labels, splits.base_classes_2, shot_pool, base_test, seed, held_out, source)
    return train, test, splits, default_shots(labels[train], len(label_names), seed)


def holdout_meta(shot_pool: int, base_test: int, seed: int, **extra: Any) -> Dict[str, Any]:
    """The provenance a few-shot data set records in `meta`."""
    return {"shot_pool": shot_pool, "base_test": base_test, "seed": seed, **extra}
