"""Stage 0: make a data set available and write its benchmark definition files.

Writes `label_splits/<key>.json` and `experiment_cfgs/<key>/splitfile_{1..5}.json` (+ `data.json`)
when they do not exist: the data set's own files (H&G's `label_idx.json` and splitfiles, CUB's Qi
split, the few-shot benchmarks' published class lists) where it has them, else deterministic
seeded ones: half the classes base, half novel, each half cut again into setup 1 (validation) and
setup 2 (test) (`lowshot.io.splits.make_label_splits`). `<key>` is the data set's name for the
embedded glyphs and `<name>-<fingerprint>` for data read from a folder (`DataIdentity`), and every
file records the data it describes, so two data sets of one kind never share or silently reuse
files. The seeded files of the embedded data set are committed because they define the benchmark.
`--verify` decodes every image first and lists all that fail.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from lowshot.data import DATASETS
from lowshot.data.stream import undecodable
from lowshot.errors import InputError
from lowshot.io.splits import (
    SHOTS_PER_CLASS,
    LabelSplits,
    check_same_data,
    load_label_splits,
    make_label_splits,
    make_shots,
    shots_data,
    write_label_splits,
    write_shots,
    write_shots_data,
)
from lowshot.runtime import available_cpus

NUM_EXPERIMENTS = 5


@dataclass
class DataConfig:
    """`lowshot data`: which data set, with which loader arguments; where its definition files go."""

    dataset: str = "glyphs"
    dataset_args: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # of the seeded split and shot files
    splits_dir: str = "label_splits"
    shots_root: str = "experiment_cfgs"
    force: bool = False  # rewrite split and shot files that exist
    verify: bool = False  # decode every image first and list all that fail


def check_class_sizes(data, splits: LabelSplits, source: Optional[str]) -> None:
    """Every class needs 20 train images for its shot-file row; name the first class that has fewer."""
    counts = np.bincount(data.train_labels, minlength=data.num_classes)
    novel = set(splits.novel_classes_1) | set(splits.novel_classes_2)
    small = sorted((c for c in range(data.num_classes) if counts[c] < SHOTS_PER_CLASS), key=lambda c: (c not in novel, c))
    if small:
        c = small[0]
        kind = "novel class" if c in novel else "class"
        raise InputError(source, f"{kind} {data.label_names[c]!r} (label {c}) has {counts[c]} training images; "
                                 f"the shot files need {SHOTS_PER_CLASS}")


def prepare_data(cfg: DataConfig) -> List[Path]:
    """Load the data set (checking that its files exist), then write missing split and shot files."""
    data = DATASETS.create(cfg.dataset, **cfg.dataset_args)
    if hasattr(data, "verify"):
        data.verify()
    if cfg.verify:
        verify_images(data)
    splits_path = Path(cfg.splits_dir) / f"{data.key}.json"
    shots = Path(cfg.shots_root) / data.key
    shot_paths = [shots / f"splitfile_{k}.json" for k in range(1, NUM_EXPERIMENTS + 1)]
    new_splits = cfg.force or not splits_path.exists()
    splits = label_splits(splits_path, data, cfg.seed, new_splits)
    new_shots = [p for p in shot_paths if cfg.force or not p.exists()]
    if not cfg.force and not new_shots:
        check_same_data(shots / "data.json", shots_data(shots), data.fingerprint, f"data set {data.key}")
    if data.default_shots is None and new_shots:
        check_class_sizes(data, splits, data.meta.get("root"))  # before anything is written
    if new_splits:
        write_label_splits(splits_path, splits)
    for k, path in enumerate(shot_paths, start=1):
        if path in new_shots:
            write_shots(path, data.default_shots[k - 1] if data.default_shots
                        else make_shots(data.train_labels, data.num_classes, cfg.seed, k))
    if new_shots:
        write_shots_data(shots, data.record())
    print(f"{data.key}: {data.num_classes} classes, {len(data.train_labels)} train / {len(data.test_labels)} test images")
    return ([splits_path] if new_splits else []) + new_shots


def verify_images(data) -> None:
    """Decode every image of a data set on disk (in parallel); one `InputError` after listing all that fail."""
    if not hasattr(data, "train_files"):
        return  # in memory: decoded when loaded
    names = data.train_files + data.test_files
    bad = undecodable(data.root, names, available_cpus())
    for line in bad:
        print(line, file=sys.stderr)
    if bad:
        raise InputError(data.root, f"{len(bad)} of {len(names)} images cannot be decoded (listed above): "
                                    "remove or replace them, then run `lowshot data` again")
    print(f"{data.key}: all {len(names)} images decode")


def label_splits(path: Path, data, seed: int, new: bool) -> LabelSplits:
    """The label split in `path`, checked to describe `data`; or (`new`) the data set's own, else a seeded one."""
    if not new:
        splits = load_label_splits(path)
        check_same_data(path, splits.data, data.fingerprint, f"data set {data.key}")
        return splits
    splits = data.default_splits or make_label_splits(data.label_names, seed)
    if data.default_splits is None:
        warn_small_setups(splits, data.key)
    splits.data = data.record()
    return splits


def warn_small_setups(splits: LabelSplits, key: str) -> None:
    """A warning when the test setup of a seeded split has fewer than 5 base or novel classes (5-way needs 5)."""
    base, novel = splits.setup(2)
    if min(len(base), len(novel)) < 5:
        print(f"warning: {key}: setup 2 (the test setup) has {len(base)} base and {len(novel)} novel classes: "
              "5-way episodes and a meaningful grid need at least 5 of each (use more classes)", file=sys.stderr)
