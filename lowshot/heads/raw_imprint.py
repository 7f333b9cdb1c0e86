"""Unnormalised imprinting (keras-imprinting): a negative control for the scale mismatch."""
from __future__ import annotations

import torch

from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads.maths import base_rows, class_means, dots, mask_absent, split_base


@HEADS.register("raw_imprint")
class RawImprint(Head):
    """Raw mean-feature imprinting, as in yizt/keras-imprinting (2018) — a negative control.

    Base classes keep the representation's raw classifier rows; a novel class's row is the raw
    mean of its shots; no bias, no normalisation, score = x · w. Because the norm of a mean
    feature is unrelated to the norms of the trained rows, novel rows can dominate (or vanish
    from) the arg-max on base images: compare its base accuracy and novel precision with
    `imprint` (Qi et al.) to see why imprinting needs the cosine classifier.
    """

    episodic = True
    episode_ms = 0.012  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)

    def __init__(self):
        pass

    def check_inputs(self, task: Task) -> None:
        base_rows(task, "raw_imprint", task.device)

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "RawImprint":
        base, is_base = split_base(labels, task)
        self.weight_, counts = class_means(feats[~is_base].float(), labels[~is_base], task.num_classes)
        self.present_ = counts > 0
        if len(base):
            self.weight_[base] = base_rows(task, "raw_imprint", feats.device)[base]
            self.present_[base] = True
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """x · w of shape (N, C); −inf for classes neither base of the setup nor with shots."""
        self._check_fitted("weight_")
        return mask_absent(feats.to(self.weight_.device).float() @ self.weight_.t(), self.present_)

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Scores (E, Q, W) of a batch of episodes: support (E, W, S, d), query (E, Q, d)."""
        return dots(support.mean(2), query).transpose(1, 2)
