"""Small helpers shared by the on-disk data set loaders: folders, image listings, class blocks."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from lowshot.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


def require_dir(path: str, what: str = "data set root") -> str:
    """`path` if it is a folder, else one `InputError` naming it."""
    if not path or not os.path.isdir(path):
        raise InputError(path, f"{what} not found (pass an existing folder with --root)")
    return path


def subfolders(path: str) -> List[str]:
    """Names of the folders inside `path`, sorted (hidden ones skipped)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def images_in(path: str) -> List[str]:
    """Names of the image files inside `path` (by suffix, any case), sorted by name."""
    return sorted(e.name for e in os.scandir(path)
                  if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith("."))


def class_tree(root: str, split: str, classes: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    """Files of `root/split/<class>/` for each class in order: names relative to `root` and int64 labels.

    Rows are class-contiguous in the order of `classes`, files sorted by name (the H&G meta order).
    """
    names, labels = [], []
    for label, cls in enumerate(classes):
        folder = os.path.join(root, split, cls)
        if not os.path.isdir(folder):
            raise InputError(folder, f"class folder missing: the {split} tree has no folder for class {cls!r}")
        files = images_in(folder)
        names += [f"{split}/{cls}/{f}" for f in files]
        labels += [label] * len(files)
    return names, np.asarray(labels, np.int64)


def class_blocks(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Start row of each class block, shape (num_classes + 1,); raises ValueError if rows are not grouped."""
    if len(labels) and np.any(np.diff(labels) < 0):
        raise ValueError("rows are not grouped by class in ascending label order")
    return np.searchsorted(labels, np.arange(num_classes + 1))


def read_table(path: str, columns: int) -> List[List[str]]:
    """Whitespace-separated rows of a text table with at least `columns` fields (CUB's `*.txt` files)."""
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    rows = [line.split(None, columns - 1) for line in open(path, encoding="utf-8").read().splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) < columns), None)
    if bad is not None:
        raise InputError(path, f"line {bad + 1} has fewer than {columns} fields")
    return rows


def cache_root(cache_dir: Optional[str] = None) -> str:
    """The cache folder: `cache_dir`, `$LOWSHOT_CACHE`, `$XDG_CACHE_HOME/lowshot` or ~/.cache/lowshot."""
    root = cache_dir or os.environ.get("LOWSHOT_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "lowshot")
    return os.path.expanduser(root)
