"""Prototypical networks as a head: nearest class mean under squared Euclidean distance."""
from __future__ import annotations

import torch

from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads.maths import chunked, class_means, dots, mask_absent, sq_distances, sq_norms


@HEADS.register("protonet")
class ProtoNet(Head):
    """Nearest class mean, squared Euclidean (Snell, Swersky & Zemel, NeurIPS 2017, arXiv 1703.05175).

    Every class of the setup is its prototype c_k, the mean of its training rows (all base rows
    for a base class, the shots for a novel one); the score is −‖x − c_k‖², so a softmax of the
    scores is ProtoNets' p(y | x). Equivalently a linear classifier w_k = 2c_k, b_k = −‖c_k‖²
    (plus a per-row constant). Trap: no normalisation, so feature norms matter.
    """

    episodic = True
    episode_ms = 0.011  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)

    def __init__(self):
        pass

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "ProtoNet":
        self.means_, counts = class_means(feats.float(), labels, task.num_classes)
        self.present_ = counts > 0
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """−d² of shape (N, C) to every prototype; −inf for classes without rows."""
        self._check_fitted("means_")
        s = chunked(lambda x: -sq_distances(x.float(), self.means_), feats.to(self.means_.device))
        return mask_absent(s, self.present_)

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """−d² (E, Q, W) of a batch of episodes: support (E, W, S, d), query (E, Q, d)."""
        means = support.mean(2)
        d2 = sq_norms(query)[:, None] - 2 * dots(means, query) + sq_norms(means)[..., None]
        return -d2.clamp_min(0).transpose(1, 2)

    def episode_predictions(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Nearest prototype (E, Q): the arg-max of 2x·c − ‖c‖², which drops −‖x‖² (the same for every class)."""
        means = support.mean(2)
        return torch.baddbmm(-sq_norms(means)[..., None], means, query.transpose(1, 2), alpha=2).max(1).indices
