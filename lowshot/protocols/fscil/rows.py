"""Session entries to feature rows: one representation's features, relabelled with the protocol's classes.

Rows of a run's `train.hdf5` and `test.hdf5` are pooled (train rows first). A session file whose
entries are rows (`row`) needs nothing else. A published one names images (`train_index`, `path`,
`file_name`): the data set the features were extracted from is loaded (its file list, or for
CIFAR-100 its rows' original positions) and must list the feature files' rows exactly, label by
label; each entry then maps to the row of its image, and its class must agree. Anything that does
not match is one `InputError` line before any learner runs: features of another data set (or another
copy, in another order) cannot be silently mismatched to the published lists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from lowshot.errors import InputError
from lowshot.io.features import FeatureSet
from lowshot.io.fingerprint import digest
from lowshot.protocols.fscil.sessions import entry_labels, session_classes

MISMATCH = ("do not match the rows of data set {name!r} ({why}): extract features from the data set the session "
            "file names (`lowshot features`), or pass its copy with --root / --set dataset_args=...")


@dataclass
class Pools:
    """Every row a protocol may use, with the protocol's class ids.

    Attributes:
        feats: (P, d) float32, the train file's rows then the test file's.
        labels: (P,) int64 protocol class id of each row, −1 outside the protocol.
        is_train, is_test: (P,) bool, which rows are training and test images of the protocol.
        feature_label: (K,) int64, the feature files' label of each protocol class (−1 if none).
        entry_row: a session entry -> its row in `feats` (an `InputError` when absent).
        key: digest of what decides the rows (the mapping), for the cells' identity.
    """

    feats: np.ndarray
    labels: np.ndarray
    is_train: np.ndarray
    is_test: np.ndarray
    feature_label: np.ndarray
    entry_row: Callable[[Any], int]
    key: str = ""
    notes: Dict[str, Any] = field(default_factory=dict)


def pooled(train: FeatureSet, test: FeatureSet) -> np.ndarray:
    """(N + M, d) float32: the train rows, then the test rows."""
    return np.concatenate([np.asarray(train.feats, np.float32), np.asarray(test.feats, np.float32)])


def build_pools(obj: Dict[str, Any], train: FeatureSet, test: FeatureSet, data=None) -> Pools:
    """The pools of session file `obj` on these features; `data` is the data set they were extracted from
    (needed unless the entries are rows)."""
    kind = obj["entries"]
    if kind == "row":
        return _row_pools(obj, train, test)
    if data is None:
        raise InputError(None, f"session file {obj.get('name')!r} names images ({kind}): it needs the data set")
    if kind == "file_name":
        return _name_pools(obj, train, test, data)
    _same_rows(train, test, data)
    n = len(train.labels)
    if kind == "train_index":
        index = data.meta.get("train_index") if isinstance(getattr(data, "meta", None), dict) else None
        if index is None:
            raise InputError(train.path, MISMATCH.format(name=data.name, why="it keeps no original training order"))
        where = np.full(int(np.max(index)) + 1, -1, np.int64)
        where[np.asarray(index)] = np.arange(n)
        lookup: Callable[[Any], int] = lambda e: int(where[int(e)]) if 0 <= int(e) < len(where) else -1
    else:
        files = {_under_images(f): i for i, f in enumerate(data.train_files)}
        lookup = lambda e: files.get(str(e), -1)
    labels = np.concatenate([train.labels, test.labels]).astype(np.int64)
    return _finish(obj, train, test, labels, lookup, {"data": data.name, "rows": n + len(test.labels)})


def _row_pools(obj, train: FeatureSet, test: FeatureSet) -> Pools:
    n = len(train.labels)
    lookup = lambda e: int(e) if 0 <= int(e) < n else -1
    return _finish(obj, train, test, np.concatenate([train.labels, test.labels]).astype(np.int64), lookup, {})


def _finish(obj, train: FeatureSet, test: FeatureSet, labels: np.ndarray, lookup, notes) -> Pools:
    """Pools with the protocol's ids equal to the feature labels (CIFAR-100, CUB, glyph rows)."""
    n, k = len(train.labels), int(obj.get("num_classes") or labels.max() + 1)
    if labels.max() >= k:
        raise InputError(train.path, f"has label {labels.max()}; the session file has {k} classes")
    protocol = np.isin(labels, np.concatenate([np.asarray(c) for c in session_classes(obj)]))
    is_train = protocol & (np.arange(len(labels)) < n)
    pools = Pools(pooled(train, test), np.where(protocol, labels, -1), is_train, protocol & ~is_train,
                  np.arange(k), _checked(lookup, train.path), notes=notes)
    pools.key = digest(obj["entries"], notes, labels)
    return pools


def _checked(lookup: Callable[[Any], int], path) -> Callable[[Any], int]:
    def row(entry):
        r = lookup(entry)
        if r < 0:
            raise InputError(path, f"has no row for the session entry {entry!r}: " + MISMATCH.format(
                name="the session file", why="an image it lists is missing"))
        return r
    return row


def _under_images(path: str) -> str:
    """A data set's file path relative to its `images/` folder (CUB lists paths under it)."""
    parts = path.replace(os.sep, "/").split("/")
    return "/".join(parts[parts.index("images") + 1:]) if "images" in parts else "/".join(parts)


def _same_rows(train: FeatureSet, test: FeatureSet, data) -> None:
    """The feature files hold the data set's training and test images, in its order (labels compared)."""
    for fs, labels, part in ((train, data.train_labels, "training"), (test, data.test_labels, "test")):
        if len(fs.labels) != len(labels) or not np.array_equal(fs.labels, labels):
            why = f"its {len(fs.labels)} rows against {len(labels)} {part} images, or their labels differ"
            raise InputError(fs.path, MISMATCH.format(name=data.name, why=why))


def _name_pools(obj, train: FeatureSet, test: FeatureSet, data) -> Pools:
    """miniImageNet: rows found by file name in the data set's train and test lists (both feature files),
    train/test given by the session file's `split`; protocol id = position of the wnid in `class_names`."""
    files = list(data.train_files) + list(data.test_files)
    if len(data.train_files) != len(train.labels) or len(data.test_files) != len(test.labels):
        raise InputError(train.path, MISMATCH.format(name=data.name, why="row counts differ from its file lists"))
    names = [os.path.basename(f) for f in files]
    ids = {w: i for i, w in enumerate(obj["class_names"])}
    labels = np.asarray([ids.get(n[:-12], -1) for n in names], np.int64)
    test_names = {f"{w}{n:08d}.jpg" for w, ns in obj["split"].items() for n in ns}
    is_test = np.asarray([n in test_names for n in names]) & (labels >= 0)
    is_train = (labels >= 0) & ~is_test
    if digest(sorted(n for n, t in zip(names, is_train) if t)) != obj["train_digest"] or is_test.sum() != len(test_names):
        raise InputError(train.path, MISMATCH.format(
            name=data.name, why="its images are not exactly the 60,000 of the published 50,000/10,000 split"))
    where = {n: i for i, n in enumerate(names)}
    feature_label = _feature_labels(labels, np.concatenate([train.labels, test.labels]), len(ids), train.path)
    pools = Pools(pooled(train, test), labels, is_train, is_test, feature_label,
                  _checked(lambda e: where.get(str(e), -1), train.path), notes={"data": data.name})
    pools.key = digest("file_name", obj["train_digest"], names, labels)
    return pools


def _feature_labels(labels: np.ndarray, feature: np.ndarray, k: int, path) -> np.ndarray:
    """The one feature label of each protocol class; an `InputError` if a class's rows carry several."""
    out = np.full(k, -1, np.int64)
    for c in range(k):
        have = np.unique(feature[labels == c])
        if len(have) > 1:
            raise InputError(path, f"the images of class {c} carry several labels {have[:3].tolist()}")
        out[c] = have[0] if len(have) else -1
    return out


def session_rows(obj: Dict[str, Any], pools: Pools, path: Optional[str] = None) -> List[np.ndarray]:
    """The pool rows of each session's training images, base first: every training image of the base
    classes for `"train": "all"` (checked against `train_count`), else the entries, each checked to be a
    training image of the class the session file gives it."""
    out = []
    for t, s in enumerate(obj["sessions"], 1):
        if s.get("train") == "all":
            rows = np.flatnonzero(pools.is_train & np.isin(pools.labels, s["classes"]))
            if "train_count" in s and len(rows) != int(s["train_count"]):
                raise InputError(path, f"session {t}: {len(rows)} training images of its classes in the features, "
                                       f"the session file says {s['train_count']}")
            out.append(rows)
            continue
        rows = np.asarray([pools.entry_row(e) for e in s["train"]], np.int64)
        want = entry_labels(obj, s)
        if want is not None and not np.array_equal(pools.labels[rows], np.asarray(want)):
            raise InputError(path, f"session {t}: an entry's image has another class in the features than in the "
                                   "session file (the feature rows are not those of this data set)")
        if not pools.is_train[rows].all():
            raise InputError(path, f"session {t}: an entry is not a training image of the protocol")
        out.append(rows)
    return out


def evaluation_rows(obj: Dict[str, Any], pools: Pools, path: Optional[str] = None) -> List[np.ndarray]:
    """The pool rows testing each session: the test images of every class seen so far, checked against
    the file's cumulative `test_counts` when it has them."""
    seen: List[int] = []
    out = []
    for c in session_classes(obj):
        seen += c
        out.append(np.flatnonzero(pools.is_test & np.isin(pools.labels, seen)))
    counts = [len(r) for r in out]
    if "test_counts" in obj and counts != [int(c) for c in obj["test_counts"]]:
        raise InputError(path, f"test images per session {counts} differ from the session file's {obj['test_counts']}")
    return out
