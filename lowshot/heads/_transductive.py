"""The fit/scores/episode_scores plumbing shared by the transductive heads.

A transductive head labels a whole query batch at once, using the batch itself. Each such head
implements one batched method, `transduce(support (E, N, d), labels (N,), query (E, Q, d), k,
centre)` -> scores (E, Q, k), where labels run over 0..k−1; this base class maps both entry points
onto it. `fit` only stores the training rows (the support) and `scores(feats)` runs the
transduction on the rows it is given, so scores of a row depend on the other rows of the batch.
"""
from __future__ import annotations

import torch

from lowshot.heads.base import Head, Task
from lowshot.heads._rows import Rows, prepared
from lowshot.heads.maths import base_centre


class TransductiveHead(Head):
    """Base class: support stored by `fit`, transduction in `scores` and `episode_scores`.

    Subclasses set `name` (the registry key, for messages), `features` (an `__init__` argument: see
    `_rows.prepared`) and implement `transduce`.
    """

    episodic = True
    transductive = True
    name = ""
    features = "l2"
    beta = 0.5  # power-transform exponent, used by features="power"

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "TransductiveHead":
        """Store the support feats (N, d) with labels (N,) (any class ids); returns self."""
        self.classes_ = torch.unique(labels)
        self.support_, self.targets_ = feats.float()[None], torch.searchsorted(self.classes_, labels)
        self.centre_ = self._centre(self.support_, labels, task)
        self.num_classes_ = task.num_classes
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Scores (N, C) of the query batch feats (N, d), transduced together; −inf for classes without rows."""
        self._check_fitted("support_")
        query = feats.to(self.support_.device).float()[None]
        got = self.transduce(self.support_, self.targets_, query, len(self.classes_), self.centre_)[0]
        out = got.new_full((len(feats), self.num_classes_), float("-inf"))
        out[:, self.classes_] = got
        return out

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Scores (E, Q, W) of E episodes at once: support (E, W, S, d), query (E, Q, d)."""
        e, w, s, d = support.shape
        rows = support.reshape(e, w * s, d).float()
        labels = torch.arange(w, device=support.device).repeat_interleave(s)
        return self.transduce(rows, labels, query.float(), w, self._centre(rows, None, task))

    def prepare(self, x: torch.Tensor, centre) -> Rows:
        """Rows x (E, N, d) preprocessed as `features` says (`Rows`: not written out); centre (E, d) or None."""
        return prepared(x, self.features, None if centre is None else centre[:, None], self.beta)

    def transduce(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int,
                  centre) -> torch.Tensor:
        """Scores (E, Q, k) of queries (E, Q, d) given support (E, N, d) with labels (N,) in 0..k−1."""
        raise NotImplementedError

    def _centre(self, rows: torch.Tensor, labels, task: Task):
        """The base-mean centre (E, d) when features="cl2n", else None."""
        return base_centre(rows, labels, task, self.name) if self.features == "cl2n" else None
