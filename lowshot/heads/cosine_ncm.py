"""SimpleShot's CL2N nearest class mean: centre on the base mean, L2-normalise, cosine to class means."""
from __future__ import annotations

import torch

from lowshot.heads import Head, Task, register_head
from lowshot.heads._common import class_means, l2_normalise, mask_absent, split_base


@register_head("cosine_ncm")
class CosineNCM(Head):
    """Cosine nearest class mean (Wang, Chao, Weinberger & van der Maaten, "SimpleShot", 2019, arXiv 1911.04623).

    Features are centred on the mean of the base rows and L2-normalised; each class of the
    setup is the re-normalised mean of its normalised rows and the score is the cosine. It
    needs no classifier, so it works with any representation ("all-imprint"). Without base
    rows (an episode) the centre is the mean of the training rows instead.
    """

    episodic = True

    def __init__(self, centre: bool = True):
        self.centre = centre

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "CosineNCM":
        feats = feats.float()
        is_base = split_base(labels, task)[1]
        rows = feats[is_base] if is_base.any() else feats
        self.centre_ = rows.mean(0) if self.centre else feats.new_zeros(feats.shape[1])
        means, counts = class_means(l2_normalise(feats - self.centre_), labels, task.num_classes)
        self.means_, self.present_ = l2_normalise(means), counts > 0
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Cosines (N, C) in [−1, 1]; −inf for classes without rows."""
        self._check_fitted("means_")
        z = l2_normalise(feats.to(self.means_.device).float() - self.centre_)
        return mask_absent(z @ self.means_.t(), self.present_)

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Scores (E, Q, W) of a batch of episodes: support (E, W, S, d), query (E, Q, d)."""
        centre = support.mean((1, 2), keepdim=True) if self.centre else torch.zeros_like(support[:, :1, :1])
        means = l2_normalise(l2_normalise(support - centre).mean(2))
        return l2_normalise(query - centre[:, 0]) @ means.transpose(1, 2)
