"""Gaussian jitter around the shots (plug-in `jitter`): a control for the generator interface.

new = shot + N(0, σ² I), with σ² the pooled within-class variance per dimension of the base
classes' train features, measured in `init`; no training stage. The base classes come from a
label-split JSON given as the generator file (`--set generator_file=label_splits/x.json`), else
from `label_splits/<dataset>.json` (the benchmark's own default), so novel-class rows beyond the
shots are never looked at.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from lowshot.errors import InputError
from lowshot.generators import GENERATORS, GeneratorPlugin
from lowshot.generators._common import plan_new_rows
from lowshot.io.splits import load_label_splits
from lowshot.run import splits_path


def within_class_variance(feats: np.ndarray, labels: np.ndarray, classes) -> float:
    """Pooled within-class variance per dimension: Σ ‖x − μ_y‖² / (d · (N − C)) over `classes`."""
    keep = np.isin(labels, classes)
    x, y = feats[keep].astype(np.float64), labels[keep]
    present, y = np.unique(y, return_inverse=True)
    means = np.zeros((len(present), x.shape[1]))
    np.add.at(means, y, x)
    means /= np.bincount(y)[:, None]
    dof = max(1, len(y) - len(present))
    return float(((x - means[y]) ** 2).sum() / (x.shape[1] * dof))


def _base_classes(path, train):
    if path is not None and str(path).endswith(".json") and os.path.exists(path):
        return load_label_splits(path).base_classes
    dataset = train.attrs.get("dataset")
    default = splits_path(dataset)
    if not dataset or not default.exists():
        raise InputError(train.path, f"jitter needs the base classes: {default} not found; "
                                     "pass a label split file as the generator file")
    return load_label_splits(default).base_classes


def init(path, device, train) -> dict:
    """σ from the base classes of `train` (a FeatureSet); `path` is ignored unless a split JSON."""
    return {"sigma": within_class_variance(train.feats, train.labels, _base_classes(path, train)) ** 0.5}


@torch.no_grad()
def generate(feats: torch.Tensor, labels: torch.Tensor, state: dict, max_per_label: int, seed: int):
    """Real rows first (unchanged), then M − m jittered copies of random shots per label with m < M."""
    gen = torch.Generator().manual_seed(int(seed))
    rows, new_labels = plan_new_rows(labels, max_per_label, gen)
    noise = torch.randn(len(rows), feats.shape[1], generator=gen).to(feats.device, feats.dtype)
    return torch.cat([feats, feats[rows] + state["sigma"] * noise]), torch.cat([labels, new_labels])


GENERATORS.register("jitter")(GeneratorPlugin(init, generate))
