"""RepMet's few-shot classifier: each class is a few representatives; Gaussian modes on the sphere."""
from __future__ import annotations

import torch

from lowshot.errors import InputError
from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads._kmeans import cluster_classes, setup_clusters
from lowshot.heads._rows import Rows
from lowshot.heads.maths import chunked, generator, l2_normalise, sq_norms

REDUCTIONS = ("max", "sum", "mean")


def mode_log_posterior(logit: torch.Tensor, counts: torch.Tensor, reduce: str) -> torch.Tensor:
    """Class log-posteriors (..., P) from mode log-densities logit (..., P, k), −inf for missing modes.

    A class takes the `max`, the `sum` or the `mean` (counts (P,): its number of modes) of its
    modes' densities; the result is normalised over the classes.
    """
    if reduce == "max":
        return logit.amax(-1).log_softmax(-1)
    top = logit.amax((-2, -1), keepdim=True)
    per_class = (logit - top).exp().sum(-1).log() + top[..., 0]
    if reduce == "mean":
        per_class = per_class - counts.clamp(min=1).log()
    return per_class.log_softmax(-1)


@HEADS.register("repmet")
class RepMet(Head):
    """RepMet few-shot head (Karlinsky et al., "RepMet: Representative-based metric learning for
    classification and few-shot object detection", CVPR 2019, arXiv 1806.04728).

    On L2-normalised features, a base class is represented by k representatives (per-class
    k-means of its base rows, computed once per benchmark), a novel class by its shots (k-means
    of them when n > k). p_ij = exp(−‖x − R_ij‖² / 2σ²) with the authors' σ = 0.5 and k = 5.
    The default `reduce="sum"` is the paper's classification posterior (the "soft" rule),
    P(i | x) = Σ_j p_ij / Σ_{i′, j} p_{i′j}. `max` is the paper's hard (detection) rule max_j p_ij,
    normalised over classes; `mean` is the soft rule with equal class priors. Trap: `sum` favours
    classes with more representatives, i.e. base (k) over n < k shot novel classes (its effect on
    the demo is in docs/heads.md). The representatives are not learned (the features are fixed).
    Scores are log-posteriors.
    """

    episodic = True
    episode_ms = 0.018  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)

    def __init__(self, k: int = 5, sigma: float = 0.5, reduce: str = "sum", iters: int = 20):
        self.k = k
        self.sigma = sigma
        self.reduce = reduce
        self.iters = iters

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "RepMet":
        self._check_reduce()
        z = l2_normalise(feats.float())
        self.classes_, centres, valid, _, _ = setup_clusters(z, labels, task, self.k, self.iters, "repmet")
        self.reps_ = l2_normalise(centres).flatten(0, 1)
        self.bias_ = torch.zeros(valid.numel(), device=z.device).masked_fill(~valid.flatten(), float("-inf"))
        self.counts_, self.num_classes_ = valid.sum(-1), task.num_classes
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Log class posteriors (N, C); −inf for classes without rows."""
        self._check_fitted("reps_")

        def log_post(z: torch.Tensor) -> torch.Tensor:  # −‖z − r‖²/2σ² = (cos − 1)/σ² on the sphere
            cos = torch.addmm(self.bias_, z, self.reps_.t()).view(len(z), len(self.classes_), -1)
            return mode_log_posterior((cos - 1) / self.sigma ** 2, self.counts_, self.reduce)

        z = l2_normalise(feats.to(self.reps_.device).float())
        out = z.new_full((len(z), self.num_classes_), float("-inf"))
        out[:, self.classes_] = chunked(log_post, z)
        return out

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Scores (E, Q, W) of a batch of episodes: support (E, W, S, d), query (E, Q, d)."""
        self._check_reduce()
        reps, valid = self._episode_reps(support, task)  # (E, W, k', d), (E, W, k')
        q = Rows.of(query)  # unit queries, not written out
        d2 = q.sq[:, None] - 2 * q.dots(reps.flatten(1, 2)) + sq_norms(reps).flatten(1)[..., None]
        logit = (-d2 / (2 * self.sigma ** 2)).view(*valid.shape, -1)  # (E, W, k', Q), class-major
        logit = logit.masked_fill(~valid[..., None], float("-inf"))
        per_class = logit.amax(2) if self.reduce == "max" else logit.logsumexp(2)
        if self.reduce == "mean":
            per_class = per_class - valid.sum(-1, keepdim=True).clamp(min=1).log()
        return per_class.log_softmax(1).transpose(1, 2)

    def _episode_reps(self, support: torch.Tensor, task: Task):
        """Unit representatives (E, W, k', d) and which are real (E, W, k'): the shots when S ≤ k (no draw), else
        the k-means of each class's shots (k' = k; seeded by the task, one generator for the batch)."""
        (e, w, s, d), z = support.shape, l2_normalise(support)
        if s <= self.k:
            return z, torch.ones(e, w, s, dtype=torch.bool, device=z.device)
        groups = torch.arange(e * w, device=z.device)
        gen = generator(task.seed, z.device)
        reps, valid, _ = cluster_classes(z.reshape(-1, d), groups.repeat_interleave(s), groups, self.k, self.iters, gen)
        return l2_normalise(reps).view(e, w, -1, d), valid.view(e, w, -1)

    def _check_reduce(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise InputError(None, f"unknown repmet reduce {self.reduce!r}; choose one of: {', '.join(REDUCTIONS)}")
