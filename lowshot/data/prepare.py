"""Stage 0: make a data set available and write its benchmark definition files.

Writes `label_splits/<name>.json` and `experiment_cfgs/<name>/splitfile_{1..5}.json` when they
do not exist. Both are small, deterministic functions of the seed, and are committed for the
embedded data set because they define the benchmark.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from lowshot.data import load_dataset
from lowshot.io.splits import make_label_splits, make_shots, write_label_splits, write_shots

NUM_EXPERIMENTS = 5


def prepare_data(dataset: str, dataset_args: Optional[Dict[str, Any]] = None, seed: int = 0,
                 splits_dir: str = "label_splits", shots_root: str = "experiment_cfgs",
                 force: bool = False) -> List[Path]:
    """Load (generating if needed) the data set, then write missing split and shot files."""
    data = load_dataset(dataset, **(dataset_args or {}))
    splits_path = Path(splits_dir) / f"{dataset}.json"
    written = []
    if force or not splits_path.exists():
        write_label_splits(splits_path, make_label_splits(data.label_names, seed))
        written.append(splits_path)
    for k in range(1, NUM_EXPERIMENTS + 1):
        path = Path(shots_root) / dataset / f"splitfile_{k}.json"
        if force or not path.exists():
            write_shots(path, make_shots(data.train_labels, data.num_classes, seed, k))
            written.append(path)
    print(f"{dataset}: {data.num_classes} classes, {len(data.train_labels)} train / {len(data.test_labels)} test images")
    return written
