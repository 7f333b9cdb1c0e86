"""The FSCIL learners registry and the types its entries share (`lowshot.protocols.fscil.learners` re-exports them).

A learner is an incremental classifier over cached features: `start(base)` learns the base
session, each `add(session)` adds that session's new classes from its few rows, and `scores(x)`
scores test features against every class seen so far. It sees tensors, never a file. What it may
keep between sessions is its own business (rows, prototypes, stored features); the docs of each
learner say what it keeps, because FSCIL's rule is that a session's data is gone after it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

import torch

from lowshot.heads.maths import class_means, l2_normalise
from lowshot.registry import Registry

LEARNERS = Registry("fscil learner")


@dataclass
class BaseSession:
    """The base session: every training row of the base classes, and what the representation knows.

    Attributes:
        feats: (N, d) float32 features; labels: (N,) int64 class ids (the protocol's), all in `classes`.
        classes: the B base class ids, ascending.
        classifier_weight: (C, d) rows of the representation's classifier indexed by class id, or None.
        classifier_scale: the cosine classifier's s, or None.
        seed: seed for any randomness; device: where to compute.
        cache: a per-representation memo shared by every learner and trial (e.g. a base-only solution).
    """

    feats: torch.Tensor
    labels: torch.Tensor
    classes: List[int]
    classifier_weight: Optional[torch.Tensor] = None
    classifier_scale: Optional[float] = None
    seed: int = 0
    device: torch.device = torch.device("cpu")
    cache: Dict[Any, Any] = field(default_factory=dict)


@dataclass
class Session:
    """One incremental session: its new classes and their few training rows.

    Attributes:
        feats: (n, d) float32 features (real shots, then generated rows when a generator tops them up).
        labels: (n,) int64 class ids, all in `classes`.
        classes: the new class ids, ascending, none seen before.
        index: the session's number (2 = the first incremental session; the base session is 1).
        seed: seed for any randomness.
    """

    feats: torch.Tensor
    labels: torch.Tensor
    classes: List[int]
    index: int
    seed: int = 0


class Learner:
    """Base class. `classes_` lists the class ids seen so far in the order of their columns in `scores`.

    `frozen_old` (class or instance attribute): `add` never changes the scores of earlier classes;
    `needs_classifier`: `start` needs the representation's cosine classifier (rows and scale).
    """

    frozen_old: ClassVar[bool] = False
    needs_classifier: ClassVar[bool] = False

    def get_params(self) -> Dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def start(self, base: BaseSession) -> "Learner":
        raise NotImplementedError

    def add(self, session: Session) -> "Learner":
        raise NotImplementedError

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Scores of shape (N, len(classes_)); higher is more likely."""
        raise NotImplementedError

    def _check_started(self) -> None:
        if not hasattr(self, "classes_"):
            raise RuntimeError(f"{type(self).__name__}: call start(base) first")


def local_labels(labels: torch.Tensor, classes: List[int]) -> torch.Tensor:
    """Positions (n,) of `labels` (n,) in the ascending id list `classes`."""
    return torch.searchsorted(torch.as_tensor(classes, device=labels.device), labels)


def columns(labels: torch.Tensor, classes: List[int]) -> torch.Tensor:
    """The column (n,) of each of `labels` (n,) in a learner's `classes_` (any order)."""
    lookup = torch.full((max(classes) + 1,), -1, dtype=torch.long)
    lookup[torch.as_tensor(classes)] = torch.arange(len(classes))
    return lookup.to(labels.device)[labels]


def mean_rows(feats: torch.Tensor, labels: torch.Tensor, classes: List[int], normalise_rows: bool) -> torch.Tensor:
    """Unit rows (len(classes), d): normalise(mean x) per class, or normalise(mean normalise(x)) with
    `normalise_rows` (imprinting, Qi et al. 2018). `classes` ascending, every one with rows."""
    x = l2_normalise(feats.float()) if normalise_rows else feats.float()
    return l2_normalise(class_means(x, local_labels(labels, classes), len(classes))[0])


class CosineRows(Learner):
    """A cosine classifier grown one session at a time: unit rows `weight_` (K, d) in the order of
    `classes_`, scores s · cos(x, w_k) with s = `scale_`."""

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        self._check_started()
        return self.scale_ * l2_normalise(feats.to(self.weight_.device).float()) @ self.weight_.t()

    def _grow(self, rows: torch.Tensor, classes: List[int]) -> None:
        self.weight_ = torch.cat([self.weight_, rows.to(self.weight_)])
        self.classes_ = self.classes_ + list(classes)
