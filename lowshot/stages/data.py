"""Stage 0: make a data set available and write its benchmark definition files.

Writes `label_splits/<name>.json` and `experiment_cfgs/<name>/splitfile_{1..5}.json` when they
do not exist: the data set's own files (H&G's `label_idx.json` and splitfiles, CUB's Qi split)
where it has them, else deterministic seeded ones. The seeded files of the embedded data set are
committed because they define the benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from lowshot.data import DATASETS
from lowshot.errors import InputError
from lowshot.io.splits import (
    SHOTS_PER_CLASS,
    LabelSplits,
    load_label_splits,
    make_label_splits,
    make_shots,
    write_label_splits,
    write_shots,
)

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
    dataset, seed, force = cfg.dataset, cfg.seed, cfg.force
    dataset_args, splits_dir, shots_root = cfg.dataset_args, cfg.splits_dir, cfg.shots_root
    data = DATASETS.create(dataset, **(dataset_args or {}))
    source = data.meta.get("root")
    if hasattr(data, "verify"):
        data.verify()
    splits_path = Path(splits_dir) / f"{dataset}.json"
    new_splits = force or not splits_path.exists()
    splits = load_label_splits(splits_path) if not new_splits else (
        data.default_splits or make_label_splits(data.label_names, seed))
    shot_paths = [Path(shots_root) / dataset / f"splitfile_{k}.json" for k in range(1, NUM_EXPERIMENTS + 1)]
    if data.default_shots is None and any(force or not p.exists() for p in shot_paths):
        check_class_sizes(data, splits, source)  # before anything is written
    written = [splits_path] if new_splits else []
    if new_splits:
        write_label_splits(splits_path, splits)
    for k, path in enumerate(shot_paths, start=1):
        if force or not path.exists():
            write_shots(path, data.default_shots[k - 1] if data.default_shots
                        else make_shots(data.train_labels, data.num_classes, seed, k))
            written.append(path)
    print(f"{dataset}: {data.num_classes} classes, {len(data.train_labels)} train / {len(data.test_labels)} test images")
    return written
