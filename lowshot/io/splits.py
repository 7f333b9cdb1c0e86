"""Label splits (H&G `label_idx.json` layout) and shot files (H&G `splitfile_{k}.json`).

Label splits: `label_names` (position k = label k), `base_classes` = `base_classes_1` ∪
`base_classes_2`, `novel_classes_1`, `novel_classes_2`, all sorted lists of ints. Setup 1
(`*_1`) is for choosing hyper-parameters, setup 2 (`*_2`) for reported numbers. The two setups
either have disjoint base classes (H&G: two halves) or the same ones (the few-shot benchmarks:
the train classes are the base classes of both setups, the val and test classes their novel ones).

Shot files: one row per class of 20 global row indices into the train feature file, inside
that class's rows; the n-shot set is the first n entries of a row (nested across n).

Files written by lowshot record the data they describe (`data`: data set, key, fingerprint of the
class and image lists; for shot files in `data.json` beside them, since H&G's shot files are bare
lists), and every stage that reads them checks it against the data or features at hand
(`check_same_data`). H&G's own files record nothing and load unchanged.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path

SPLIT_KEYS = ("base_classes", "base_classes_1", "base_classes_2", "novel_classes_1", "novel_classes_2")
SHOTS_PER_CLASS = 20


@dataclass
class LabelSplits:
    """Which classes are base and novel in each of the two setups."""

    label_names: List[str]
    base_classes_1: List[int]
    base_classes_2: List[int]
    novel_classes_1: List[int]
    novel_classes_2: List[int]
    data: Optional[Dict[str, Any]] = None  # the data the file describes (`DataIdentity.record`), if recorded

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def base_classes(self) -> List[int]:
        return sorted(set(self.base_classes_1) | set(self.base_classes_2))

    def setup(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(base classes, novel classes) of setup k ∈ {1, 2} as int64 arrays."""
        if k not in (1, 2):
            raise InputError(None, f"setup must be 1 or 2, not {k}")
        base = self.base_classes_1 if k == 1 else self.base_classes_2
        novel = self.novel_classes_1 if k == 1 else self.novel_classes_2
        return np.asarray(base, np.int64), np.asarray(novel, np.int64)

    def to_json(self) -> dict:
        return {"label_names": self.label_names, "base_classes": self.base_classes,
                **{k: getattr(self, k) for k in SPLIT_KEYS[1:]}, **({"data": self.data} if self.data else {})}


def make_label_splits(label_names: Sequence[str], seed: int = 0) -> LabelSplits:
    """Seeded split: half the classes are base, half novel; each half split again into setups 1 and 2."""
    perm = np.random.default_rng([seed, 0x5B117]).permutation(len(label_names))
    base, novel = np.array_split(perm, 2)
    b1, b2 = np.array_split(base, 2)
    n1, n2 = np.array_split(novel, 2)
    return LabelSplits(list(label_names), *(sorted(map(int, x)) for x in (b1, b2, n1, n2)))


def write_label_splits(path: str | os.PathLike, splits: LabelSplits) -> None:
    """Write one key per line (compact lists), so regenerating gives the same bytes."""
    obj = splits.to_json()
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in obj.items())
    with atomic_path(path) as tmp:
        tmp.write_text("{\n" + body + "\n}\n")


def load_label_splits(path: str | os.PathLike) -> LabelSplits:
    """Read and validate a label split file (an H&G `label_idx.json` loads unchanged)."""
    obj = _read_json(path)
    missing = [k for k in ("label_names",) + SPLIT_KEYS[1:] if k not in obj]
    if missing:
        raise InputError(path, f"label split file lacks {', '.join(missing)}")
    splits = LabelSplits(list(obj["label_names"]), *(sorted(int(c) for c in obj[k]) for k in SPLIT_KEYS[1:]),
                         data=obj.get("data"))
    _check_label_splits(path, splits)
    if "base_classes" in obj and sorted(int(c) for c in obj["base_classes"]) != splits.base_classes:
        raise InputError(path, "base_classes is not the union of base_classes_1 and base_classes_2")
    return splits


def _check_label_splits(path, s: LabelSplits) -> None:
    base, novel = set(s.base_classes), set(s.novel_classes_1) | set(s.novel_classes_2)
    if base & novel:
        raise InputError(path, f"base and novel classes overlap: {sorted(base & novel)[:5]}")
    b1, b2 = set(s.base_classes_1), set(s.base_classes_2)
    if set(s.novel_classes_1) & set(s.novel_classes_2) or (b1 & b2 and b1 != b2):
        raise InputError(path, "setups 1 and 2 share classes (their base classes may only be all the same or disjoint)")
    every = base | novel
    if every and (min(every) < 0 or max(every) >= s.num_classes):
        raise InputError(path, f"a class index is outside 0..{s.num_classes - 1}")


def make_shots(train_labels: np.ndarray, num_classes: int, seed: int, experiment: int) -> np.ndarray:
    """Draw the (num_classes, 20) shot indices of one experiment: a seeded permutation per class."""
    shots = np.zeros((num_classes, SHOTS_PER_CLASS), np.int64)
    for c in range(num_classes):
        rows = np.flatnonzero(train_labels == c)
        if len(rows) < SHOTS_PER_CLASS:
            raise InputError(None, f"class {c} has {len(rows)} train images, fewer than {SHOTS_PER_CLASS}")
        shots[c] = np.random.default_rng([seed, experiment, c]).permutation(rows)[:SHOTS_PER_CLASS]
    return shots


def write_shots(path: str | os.PathLike, shots: np.ndarray) -> None:
    """Write a shot file as an H&G JSON list of rows, one row per line."""
    rows = ",\n".join(json.dumps([int(i) for i in row], separators=(",", ":")) for row in shots)
    with atomic_path(path) as tmp:
        tmp.write_text("[\n" + rows + "\n]\n")


def load_shots(path: str | os.PathLike, train_labels: np.ndarray, classes: np.ndarray, n: int) -> np.ndarray:
    """First n shot indices of each of `classes`, checked against the train labels.

    Returns:
        int64 array of shape (len(classes) * n,), sorted ascending (as the H&G harness does).
    """
    rows = _read_json(path)
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
        raise InputError(path, "a shot file must be a JSON list of per-class index lists")
    if max(classes, default=-1) >= len(rows):
        raise InputError(path, f"has {len(rows)} rows but class {max(classes)} is needed")
    for c in classes:
        if not rows[c]:
            raise InputError(path, f"class {c} has no shots: its data set keeps every image of it as a test image "
                                   "(a few-shot benchmark's default); hold a shot pool out (`shot_pool`) to run this")
        if len(rows[c]) < n:
            raise InputError(path, f"class {c} has {len(rows[c])} shots, fewer than n = {n}")
    idx = np.array([rows[c][:n] for c in classes], np.int64)
    repeated = [int(c) for c, row in zip(classes, idx) if len(np.unique(row)) < n]
    if repeated:
        raise InputError(path, f"class {repeated[0]} repeats an image among its first {n} shots "
                               f"({len(repeated)} classes do): an n-shot set needs n distinct images")
    idx = idx.reshape(-1)
    owner = np.repeat(np.asarray(classes, np.int64), n)
    bad = (idx < 0) | (idx >= len(train_labels))
    bad[~bad] = train_labels[idx[~bad]] != owner[~bad]
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(path, f"shot index {idx[i]} of class {owner[i]} is outside that class's train rows")
    return np.sort(idx)


def _read_json(path):
    if not os.path.exists(path):
        raise InputError(path, "file not found (run `lowshot data` first)")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON ({e})") from None


SHOTS_DATA = "data.json"  # beside the shot files: the data they describe


def write_shots_data(folder: str | os.PathLike, record: Dict[str, Any]) -> None:
    """Record beside a folder of shot files which data they index."""
    with atomic_path(Path(folder) / SHOTS_DATA) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def shots_data(folder: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The data record beside a folder of shot files (None for H&G's, which have none)."""
    path = Path(folder) / SHOTS_DATA
    return _read_json(path) if path.exists() else None


def check_same_data(path, recorded: Optional[Dict[str, Any]], fingerprint: Optional[str], what: str) -> None:
    """One `InputError` naming `path` when the file records other data than the `fingerprint` of `what` (no check
    when either side records nothing: H&G's files, features of other code)."""
    if not recorded or not fingerprint or recorded.get("fingerprint") == fingerprint:
        return
    raise InputError(path, f"was written for other data ({recorded.get('dataset')} with {recorded.get('classes')} "
                           f"classes and {recorded.get('train_images')} train images, fingerprint "
                           f"{recorded.get('fingerprint')}) than {what} (fingerprint {fingerprint}): run `lowshot data` "
                           "on this data, which writes its own files, or pass the files made for it")
