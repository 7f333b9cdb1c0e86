"""Logistic regression refitted at every session on the rows it keeps."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.protocols.fscil.learners.base import LEARNERS, BaseSession, Learner, Session, columns


@LEARNERS.register("logreg")
class LogRegLearner(Learner):
    """Multinomial logistic regression (the `logreg` head: Hariharan & Girshick, ICCV 2017, arXiv
    1606.02819, its objective minimised by L-BFGS) refitted from its kept rows after every session,
    over every class seen so far, base rows weighted against new rows by H&G's class-count ratio.

    What it keeps breaks FSCIL's no-old-data rule on purpose, as a reference: `memory=None` keeps
    every base row and every shot (joint training on all data seen, the upper bound that
    sequential methods are measured against); `memory=m` keeps m seeded rows per base class (an
    exemplar memory, as iCaRL's) and every shot. Earlier classes' scores change at every refit.
    """

    def __init__(self, memory: Optional[int] = None, wd: float = 0.001, tol: float = 1e-4):
        if memory is not None and memory < 1:
            raise InputError(None, f"logreg learner: memory={memory}; give a number of rows per base class >= 1")
        self.memory = memory
        self.wd = wd
        self.tol = tol

    def start(self, base: BaseSession) -> "LogRegLearner":
        keep = self._memory(base.labels, base.seed)
        self.feats_, self.labels_ = base.feats[keep], base.labels[keep]
        self.classes_, self.base_ = list(base.classes), list(base.classes)
        self.device_, self.cache_, self.seed_ = base.feats.device, base.cache, base.seed
        self._fit(base.seed)
        return self

    def add(self, session: Session) -> "LogRegLearner":
        self._check_started()
        self.feats_ = torch.cat([self.feats_, session.feats.to(self.feats_)])
        self.labels_ = torch.cat([self.labels_, session.labels.to(self.labels_)])
        self.classes_ = self.classes_ + list(session.classes)
        self._fit(session.seed)
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        self._check_started()
        return self.head_.scores(feats.to(self.device_))

    def _fit(self, seed: int) -> None:
        """The head over columns 0..K−1 (`classes_` order); the base columns first, so the base-only
        warm start that the head memoises in the shared cache serves every trial and session."""
        k, b = len(self.classes_), len(self.base_)
        task = Task(num_classes=k, base_classes=np.arange(b), novel_classes=np.arange(b, k), seed=seed,
                    device=self.device_, cache=self.cache_)
        y = columns(self.labels_, self.classes_)
        self.head_ = HEADS.create("logreg", wd=self.wd, tol=self.tol).fit(self.feats_, y, task)

    def _memory(self, labels: torch.Tensor, seed: int) -> torch.Tensor:
        """Indices of the base rows kept: all, or `memory` per class drawn from `seed`."""
        if self.memory is None:
            return torch.arange(len(labels), device=labels.device)
        rng = np.random.default_rng([seed, 0xE8E])
        y = labels.cpu().numpy()
        keep = [rng.permutation(np.flatnonzero(y == c))[:self.memory] for c in np.unique(y)]
        return torch.as_tensor(np.sort(np.concatenate(keep)), device=labels.device)
