"""Low-shot heads: one registry; every head follows the same fit/scores contract.

A head is built from keyword hyper-parameters only (`HEADS.create(name, **params)`), then
`fit(feats, labels, task)` on the training set of one benchmark cell (all base rows of the
setup plus the novel shots, real and generated) and `scores(feats)` on test features.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch

from lowshot.registry import Registry

HEADS = Registry("head")


@dataclass
class Task:
    """What a head may know about a cell besides its training rows.

    Attributes:
        num_classes: size C of the label space; `scores` returns (N, C).
        base_classes: int64 array of the setup's base classes.
        novel_classes: int64 array of the setup's novel classes.
        classifier_weight: (C, d) rows of the representation's classifier, if the feature file has them.
        classifier_scale: the cosine classifier's s, if the representation used one.
        run_dir: the run folder (heads with a training stage read their model from it).
        seed: seed for any randomness in `fit`.
        device: where to compute.
        cache: per-process memo shared by the cells of one benchmark (e.g. a base-only solution).
        base_mean: (d,) mean of the setup's base-class TRAIN features, for heads that centre on it
            when the training rows hold no base class (an episode); None in a benchmark cell.
    """

    num_classes: int
    base_classes: np.ndarray
    novel_classes: np.ndarray
    classifier_weight: Optional[torch.Tensor] = None
    classifier_scale: Optional[float] = None
    run_dir: Optional[str] = None
    seed: int = 0
    device: torch.device = torch.device("cpu")
    cache: Dict[str, Any] = field(default_factory=dict)
    base_mean: Optional[torch.Tensor] = None


class Head:
    """Base class: `get_params()` returns the `__init__` keyword arguments (sklearn style)."""

    def get_params(self) -> Dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "Head":
        """Learn from feats of shape (N, d) and int64 labels of shape (N,); returns self."""
        raise NotImplementedError

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Scores of shape (N, task.num_classes); higher is more likely; −inf for impossible classes."""
        raise NotImplementedError

    def input_digests(self, task: Task) -> Dict[str, str]:
        """Fingerprints of the files other than the features that the head reads (a trained model), which
        join a cell's identity; an `InputError` when one is missing. Default: none."""
        return {}

    def check_inputs(self, task: Task) -> None:
        """Raise a one-line `InputError` when the head cannot run on these inputs (a classifier or a
        trained model it needs is missing). `lowshot benchmark` asks every head before its first cell."""
        self.input_digests(task)

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise RuntimeError(f"{type(self).__name__}.scores called before fit")


from lowshot.heads import logreg  # noqa: E402,F401
from lowshot.heads import cosine_ncm, imprint, imprint_ft, magnet, matching, protonet, raw_imprint, repmet  # noqa: E402,F401
from lowshot.heads import bd_cspn, laplacian_shot, pt_map, tim, transductive_ft  # noqa: E402,F401
from lowshot.heads import weight_generator  # noqa: E402,F401
from lowshot.heads import pmn_hallucinator  # noqa: E402,F401
