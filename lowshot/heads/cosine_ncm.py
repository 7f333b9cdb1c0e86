"""SimpleShot's CL2N nearest class mean: centre on the base mean, L2-normalise, cosine to class means."""
from __future__ import annotations

import torch

from lowshot.errors import InputError
from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads.maths import base_centre, class_means, dots, l2_normalise, mask_absent, sq_norms, unit_shot_means

CENTRES = ("base", "support", "none")


@HEADS.register("cosine_ncm")
class CosineNCM(Head):
    """Cosine nearest class mean (Wang, Chao, Weinberger & van der Maaten, "SimpleShot: Revisiting
    Nearest-Neighbor Classification for Few-Shot Learning", 2019, arXiv 1911.04623).

    Features are centred and L2-normalised (SimpleShot's CL2N); each class of the setup is the
    re-normalised mean of its normalised rows and the score is the cosine. It needs no classifier,
    so it works with any representation ("all-imprint"). `centre="base"` (the default, SimpleShot's
    rule) subtracts the mean of the base classes' training features: the base rows of the training
    set, or `task.base_mean` in an episode, whose support holds no base class. `centre="support"`
    subtracts the mean of the rows the head is fitted on (in an episode, the support set; its
    effect on the demo's episodes is in docs/heads.md); `centre="none"` does not centre.
    Trap: SimpleShot ranks by the Euclidean distance to the un-normalised mean of the normalised
    shots; the cosine to the re-normalised mean ranks the same at one shot, not beyond.
    """

    episodic = True
    episode_ms = 0.012  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)

    def __init__(self, centre: str = "base"):
        self.centre = centre

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "CosineNCM":
        feats = feats.float()
        self.centre_ = self._centre(feats[None], labels, task)[0]
        means, counts = class_means(l2_normalise(feats - self.centre_), labels, task.num_classes)
        self.means_, self.present_ = l2_normalise(means), counts > 0
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Cosines (N, C) in [−1, 1]; −inf for classes without rows."""
        self._check_fitted("means_")
        z = l2_normalise(feats.to(self.means_.device).float() - self.centre_)
        return mask_absent(z @ self.means_.t(), self.present_)

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Cosines (E, Q, W) of a batch of episodes: support (E, W, S, d), query (E, Q, d).

        cos(x − c, m) = (x·m − c·m) / ‖x − c‖ with ‖x − c‖² = ‖x‖² − 2x·c + ‖c‖²: one product of the
        queries with [m; c], without writing out the centred queries.
        """
        centre, means = self._episode_means(support, task)
        qd = dots(torch.cat([means, centre], 1), query)  # (E, W + 1, Q)
        norm = (sq_norms(query) - 2 * qd[:, -1] + sq_norms(centre)).clamp_min(0).sqrt().clamp_min(1e-12)
        return ((qd[:, :-1] - dots(means, centre)) / norm[:, None]).transpose(1, 2)

    def episode_predictions(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Nearest class (E, Q): the arg-max of x·m − c·m, which drops 1 / ‖x − c‖ (the same for every class)."""
        centre, means = self._episode_means(support, task)
        return torch.baddbmm(-dots(means, centre), means, query.transpose(1, 2)).max(1).indices

    def _episode_means(self, support: torch.Tensor, task: Task):
        """Each episode's centre (E, 1, d) and unit class means (E, W, d) of its centred, normalised support."""
        centre = self._centre(support.flatten(1, 2), None, task)[:, None]
        return centre, unit_shot_means(support, centre)

    def _centre(self, rows: torch.Tensor, labels, task: Task) -> torch.Tensor:
        """The centre (E, d) of E training sets rows (E, N, d) with labels (N,) (None: no base rows)."""
        if self.centre not in CENTRES:
            raise InputError(None, f"unknown cosine_ncm centre {self.centre!r}; choose one of: {', '.join(CENTRES)}")
        if self.centre == "none":
            return rows.new_zeros(rows.shape[0], rows.shape[2])
        if self.centre == "support":
            return rows.mean(1)
        return base_centre(rows, labels, task, "cosine_ncm", "or set centre='support'")
