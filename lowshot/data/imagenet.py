"""ImageNet in the Hariharan & Girshick layout (H&G reference §2, §15).

A meta file is one JSON object `{label_names, image_labels, image_names}` with names relative to
`root` (H&G's `train.json`, `val.json`, or base-class-only metas). H&G's `label_idx.json` fixes the
label order (it is *not* sorted by wnid) and its `splitfile_{1..5}.json` index rows of `train.json`.
When a meta file does not exist it is built from a standard tree `root/{train,val}/<wnid>/*.JPEG`
in §15's order — class-contiguous blocks in `label_names` order, files sorted by name — so that
H&G's splitfiles select the images they were made for; the splitfiles are checked against it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lowshot.data.base import DATASETS, FileDataset
from lowshot.data.files import (
    cache_root,
    class_blocks,
    class_tree,
    preset_for,
    require_dir,
    subfolders,
)
from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.io.fingerprint import digest
from lowshot.io.splits import SHOTS_PER_CLASS, load_label_splits

HG_TRAIN_ROWS = 1_281_167  # rows of H&G's train.json (the full ILSVRC-2012 train set)
META_KEYS = ("label_names", "image_labels", "image_names")


def build_meta(root: str, split: str, label_names: Optional[List[str]]) -> Dict[str, Any]:
    """The meta of `root/<split>/<wnid>/...`: classes in `label_names` order (default: sorted wnids)."""
    names = label_names or subfolders(os.path.join(root, split))
    extra = sorted(set(subfolders(os.path.join(root, split))) - set(names))
    if extra:
        raise InputError(os.path.join(root, split), f"has {len(extra)} class folders that label_names lacks, "
                                                    f"e.g. {', '.join(extra[:3])}")
    files, labels = class_tree(root, split, names)
    return {"label_names": list(names), "image_labels": labels.tolist(), "image_names": files}


def read_meta(path: str) -> Dict[str, Any]:
    """A meta JSON file, checked for its three keys and equal lengths."""
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read meta file ({e.__class__.__name__}: {e})") from None
    if not isinstance(meta, dict) or any(k not in meta for k in META_KEYS):
        raise InputError(path, f"a meta file needs the keys {', '.join(META_KEYS)}")
    if len(meta["image_names"]) != len(meta["image_labels"]):
        raise InputError(path, f"{len(meta['image_names'])} image_names but {len(meta['image_labels'])} image_labels")
    labels = np.asarray(meta["image_labels"], np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(meta["label_names"])):
        raise InputError(path, f"an image label is outside 0..{len(meta['label_names']) - 1}")
    return meta


def meta_for(path: Optional[str], root: str, split: str, label_names: Optional[List[str]]) -> Tuple[Dict[str, Any], str]:
    """The meta file at `path`, or the one built from the `root/<split>` tree into the cache (never into `root`),
    and the path it was read from."""
    if path and os.path.exists(path):
        return read_meta(path), path
    if not os.path.isdir(os.path.join(root, split)):
        raise InputError(path or root, f"meta file not found, and {os.path.join(root, split)} is no ImageNet tree "
                                       "to build it from")
    cached = path or built_meta_path(root, split, label_names)
    if os.path.exists(cached):
        return read_meta(cached), cached
    meta = build_meta(root, split, label_names)
    with atomic_path(cached) as tmp:
        tmp.write_text(json.dumps(meta, separators=(",", ":")))
    print(f"built {cached} from {os.path.join(root, split)} ({len(meta['image_names'])} images)")
    return meta, cached


def meta_file(root: str, meta_dir: Optional[str], name: str) -> Optional[str]:
    """The meta file to read or write: in `meta_dir` when given, else in `root` when it is there (H&G's own), else
    None (built into the cache)."""
    if meta_dir or os.path.isabs(name):
        return os.path.join(meta_dir or "", name)
    return os.path.join(root, name) if os.path.exists(os.path.join(root, name)) else None


def built_meta_path(root: str, split: str, label_names: Optional[List[str]]) -> str:
    """Where the meta file built from `root/<split>` is cached: named by the tree (its real path and the change
    times of its class folders, which any added or removed image changes) and the label order."""
    tree = os.path.join(os.path.realpath(root), split)
    stamp = [(e.name, e.stat().st_mtime_ns) for e in sorted(os.scandir(tree), key=lambda e: e.name) if e.is_dir()]
    key = digest(tree, os.stat(tree).st_mtime_ns, stamp, label_names)
    return os.path.join(cache_root(), "imagenet-meta", f"{split}-{key}.json")


def check_names(path: str, names: List[str], reference: List[str], reference_path: str) -> None:
    """Raise if a meta file's `label_names` differ from the reference list (label_idx.json or the train meta)."""
    if list(names) == list(reference):
        return
    k = next((i for i, (a, b) in enumerate(zip(names, reference)) if a != b), min(len(names), len(reference)))
    here = names[k] if k < len(names) else "(none)"
    there = reference[k] if k < len(reference) else "(none)"
    raise InputError(path, f"class names disagree with {reference_path}: label {k} is {here!r} here, {there!r} there")


def load_splitfiles(folder: str, train_labels: np.ndarray, label_names: List[str], train_meta: str) -> List[np.ndarray]:
    """H&G's `splitfile_{1..5}.json`, each checked row by row against the class blocks of the train meta (§15)."""
    try:
        blocks = class_blocks(train_labels, len(label_names))
    except ValueError as e:
        raise InputError(train_meta, f"{e}: H&G's splitfiles need class-contiguous rows") from None
    if len(label_names) == 1000 and len(train_labels) != HG_TRAIN_ROWS:
        raise InputError(train_meta, f"has {len(train_labels)} rows, H&G's train.json {HG_TRAIN_ROWS}: this tree is not "
                                     "the one the splitfiles were made for")
    shots = []
    for k in range(1, 6):
        path = os.path.join(folder, f"splitfile_{k}.json")
        rows = _read_rows(path, len(label_names))
        lo, hi = blocks[:-1, None], blocks[1:, None]
        bad = np.argwhere((rows < lo) | (rows >= hi))
        if len(bad):
            c, j = map(int, bad[0])
            raise InputError(path, f"row {c} ({label_names[c]}) picks image {rows[c, j]}, outside that class's rows "
                                   f"{lo[c, 0]}..{hi[c, 0] - 1} of {train_meta} ({hi[c, 0] - lo[c, 0]} images): the tree "
                                   "does not match the one the splitfiles were made for")
        shots.append(rows)
    return shots


def _read_rows(path: str, num_classes: int) -> np.ndarray:
    try:
        with open(path) as f:
            rows = np.asarray(json.load(f), np.int64)
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as e:
        raise InputError(path, f"cannot read splitfile ({e.__class__.__name__})") from None
    if rows.ndim != 2 or rows.shape[0] != num_classes or rows.shape[1] < SHOTS_PER_CLASS:
        raise InputError(path, f"needs {num_classes} rows of {SHOTS_PER_CLASS} indices, has shape {rows.shape}")
    return rows[:, :SHOTS_PER_CLASS]


@DATASETS.register("imagenet")
def imagenet(root: str, train_meta: str = "train.json", test_meta: str = "val.json", label_idx: Optional[str] = None,
             splitfiles: Optional[str] = None, meta_dir: Optional[str] = None, transforms: str = "auto") -> FileDataset:
    """ImageNet from H&G meta files (built from the tree when missing); see the module docstring.

    Args:
        root: the folder image names are relative to.
        train_meta, test_meta: meta file names inside `meta_dir` (default: `root`), or paths; when none exists,
            it is built from the tree into lowshot's cache folder (nothing is written into `root`).
        label_idx: H&G's `label_idx.json`: fixes the label order and becomes the label split.
        splitfiles: folder of H&G's `splitfile_{1..5}.json`: become the shot files.
    """
    require_dir(root)
    splits = load_label_splits(label_idx) if label_idx else None
    paths = [meta_file(root, meta_dir, name) for name in (train_meta, test_meta)]
    train, paths[0] = meta_for(paths[0], root, "train", splits.label_names if splits else None)
    names = splits.label_names if splits else train["label_names"]
    if splits:
        check_names(paths[0], train["label_names"], names, label_idx)
    test, paths[1] = meta_for(paths[1], root, "val", names)
    check_names(paths[1], test["label_names"], names, label_idx or paths[0])
    train_labels, test_labels = (np.asarray(m["image_labels"], np.int64) for m in (train, test))
    shots = load_splitfiles(splitfiles, train_labels, names, paths[0]) if splitfiles else None
    preset, size = preset_for(transforms, root, train["image_names"])
    return FileDataset("imagenet", root, list(train["image_names"]), train_labels, list(test["image_names"]),
                       test_labels, list(names), preset, {"root": root, "sources": dict(zip(("train", "test"), paths))},
                       splits, shots, image_size=size)
