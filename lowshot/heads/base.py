"""The heads registry and the types its entries share (`lowshot.heads` re-exports them)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional

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
        model: the trained model of a head with an `artefact` (built by its `build_model`).
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
    model: Any = None
    seed: int = 0
    device: torch.device = torch.device("cpu")
    cache: Dict[str, Any] = field(default_factory=dict)
    base_mean: Optional[torch.Tensor] = None


@dataclass
class BaseRows:
    """What a model trained on cached features learns from: the base classes' train rows.

    Attributes:
        feats: (N, d) float32 features; labels: (N,) int64 global labels of base classes.
        classifier_weight: (C, d) rows of the representation's classifier (all classes), if the file has them.
        classifier_scale: the cosine classifier's s, if the representation used one.
    """

    feats: torch.Tensor
    labels: torch.Tensor
    classifier_weight: Optional[torch.Tensor] = None
    classifier_scale: Optional[float] = None


class Head:
    """Base class: `get_params()` returns the `__init__` keyword arguments (sklearn style).

    `artefact` (class attribute): the run-folder artefact of a trained model the head needs, or None;
    `build_model(saved, dim)` then builds that model from the dict its stage saved.

    Episodes (`lowshot episodes`): a head with `episodic = True` may define `episode_scores(support
    (E, W, S, d), query (E, Q, d), task) -> (E, Q, W)`, scoring E episodes at once exactly as `fit` +
    `scores` would one at a time (tests/test_episodes.py checks it for every episodic head), and
    `episode_predictions(...) -> (E, Q)`, its arg-max when that is cheaper; `episode_bytes` bounds the
    features of the episodes it is given at once (default `protocols.episodes.CHUNK_BYTES`).

    `revision`: 0 until a change of the code moves the head's numbers at the same options; a benchmark
    result records it, and results of another revision are recomputed, never reused.
    """

    artefact: ClassVar[Optional[str]] = None
    build_model: ClassVar[Optional[Callable[[Dict[str, Any], int], Any]]] = None
    episode_ms: ClassVar[Optional[float]] = None  # an episodic head's measured cost per 5-way 1-shot episode
    revision: ClassVar[int] = 0  # raised when a change of the head's code moves its numbers (enters results' identity)

    def get_params(self) -> Dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "Head":
        """Learn from feats of shape (N, d) and int64 labels of shape (N,); returns self."""
        raise NotImplementedError

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Scores of shape (N, task.num_classes); higher is more likely; −inf for impossible classes."""
        raise NotImplementedError

    def check_inputs(self, task: Task) -> None:
        """Raise a one-line `InputError` when the head cannot run on these inputs (e.g. a classifier it
        needs is missing). `lowshot benchmark` asks every head before its first cell. Default: it can."""

    def trained_model(self, task: Task) -> Any:
        """The trained model the benchmark handed over (`task.model`); a `RuntimeError` if there is none."""
        if task.model is None:
            raise RuntimeError(f"{type(self).__name__} needs its trained model ({self.artefact}) in task.model")
        return task.model

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise RuntimeError(f"{type(self).__name__}.scores called before fit")
