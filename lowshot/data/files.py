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


SMALL_IMAGES = 96  # images at most this many pixels on their short side are "small": read at their own size


def typical_side(root: str, names: Sequence[str], sample: int = 16) -> int:
    """The median short side (pixels) of up to `sample` images spread over `names` (headers only, no decoding)."""
    from PIL import Image

    picks = [names[i] for i in np.linspace(0, len(names) - 1, min(sample, len(names))).astype(int)]
    sides = []
    for name in picks:
        try:
            with Image.open(os.path.join(root, name)) as im:
                sides.append(min(im.size))
        except OSError:
            continue  # a bad file is reported by the stage that reads it (or `lowshot data --verify`)
    return int(np.median(sides)) if sides else 224


def preset_for(transforms: str, root: str, names: Sequence[str]) -> Tuple[str, Optional[int]]:
    """(preset, image size) of a data set on disk: `auto` reads small images (≤ 96 px, e.g. 28-84 px) at their own
    size with the `crop` preset, larger ones with H&G's `hg` preset at 224 px; a named preset keeps its default."""
    if transforms != "auto":
        return transforms, None
    side = typical_side(root, names)
    return ("crop", side) if side <= SMALL_IMAGES else ("hg", None)
