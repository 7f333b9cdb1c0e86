"""Imprinted weights: a novel class's row is the normalised mean of its normalised shots."""
from __future__ import annotations

from typing import Tuple

import torch

from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads.maths import (
    base_rows,
    class_means,
    cosine_scale,
    dots,
    l2_normalise,
    mask_absent,
    split_base,
    sq_norms,
    unit_shot_means,
)


def imprinted_weight(feats: torch.Tensor, labels: torch.Tensor, task: Task, head: str) -> Tuple[torch.Tensor, ...]:
    """Unit rows (C, d) and bool present (C,): base rows from the classifier, others imprinted from shots.

    Base classes of the setup take the representation's classifier rows (normalised); every other
    class with training rows gets normalise(mean_i normalise(x_i)); the rest stay zero and absent.
    """
    base, is_base = split_base(labels, task)
    means, counts = class_means(l2_normalise(feats[~is_base].float()), labels[~is_base], task.num_classes)
    weight, present = l2_normalise(means), counts > 0
    if len(base):
        weight[base] = l2_normalise(base_rows(task, head, feats.device)[base])
        present[base] = True
    return weight, present


@HEADS.register("imprint")
class Imprint(Head):
    """Imprinting (Qi, Brown & Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018, arXiv 1712.07136).

    On a cosine-classifier representation, base classes keep their unit-norm trained rows and a
    novel class's row is normalise(mean of the L2-normalised shots) (normalise twice). Score =
    s · cos(x, w_c) with the representation's scale s, so base and novel rows are comparable.
    Trap: on a linear-classifier representation the rows are not on one scale, hence the error.
    """

    episodic = True
    episode_ms = 0.011  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)

    def __init__(self):
        pass

    def check_inputs(self, task: Task) -> None:
        cosine_scale(task, "imprint")

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "Imprint":
        self.scale_ = cosine_scale(task, "imprint")
        self.weight_, self.present_ = imprinted_weight(feats, labels, task, "imprint")
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """s · cos of shape (N, C); −inf for classes neither base of the setup nor with shots."""
        self._check_fitted("weight_")
        s = self.scale_ * l2_normalise(feats.to(self.weight_.device).float()) @ self.weight_.t()
        return mask_absent(s, self.present_)

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """s · cos (E, Q, W) of a batch of episodes: support (E, W, S, d), query (E, Q, d)."""
        rows = unit_shot_means(support)
        norm = sq_norms(query).sqrt().clamp_min(1e-12)[:, None]
        return (cosine_scale(task, "imprint") * dots(rows, query) / norm).transpose(1, 2)

    def episode_predictions(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Arg-max (E, Q) of s · x·w, which drops 1 / ‖x‖ (the same for every class)."""
        rows = cosine_scale(task, "imprint") * unit_shot_means(support)
        return dots(rows, query).max(1).indices
