"""Magnet-loss inference as a head: soft vote of the L nearest class clusters."""
from __future__ import annotations

import math

import torch

from lowshot.errors import InputError
from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads._kmeans import setup_clusters
from lowshot.heads.maths import chunked


@HEADS.register("magnet")
class Magnet(Head):
    """Magnet-loss inference (Rippel, Paluri, Dollár & Bourdev, "Metric Learning with Adaptive
    Density Discrimination", ICLR 2016, arXiv 1511.05939).

    Each class is k clusters (per-class k-means of its base rows, computed once per benchmark;
    a novel class's shots, or k-means of them when n > k). σ² is the variance of the base rows
    around their own cluster centre, Σ‖r − μ(r)‖² / (N − 1), as in the paper's loss. The score
    of class c is log Σ_{μ among the L nearest clusters, class c} exp(−‖x − μ‖² / 2σ²),
    normalised over the L nearest. Classes with no cluster among the L nearest get their best
    cluster's term instead: that keeps them finite and ranked below every voted class.
    The default `balance=False` is the paper's rule: every cluster votes with weight 1, so a
    class with more clusters among the L nearest collects more mass. `balance=True` weights a
    class's clusters by 1/K_c (a mixture with equal class priors): the same rule when every class
    has k clusters, but a novel class with n < k shots is not out-voted by base classes merely for
    having fewer clusters (its effect on the demo is in docs/heads.md).
    Trap: σ² is a total (not per-dimension) variance; pytorch.repmet squares it once more.
    """

    episodic = False  # σ² needs base rows

    def __init__(self, k: int = 5, L: int = 128, iters: int = 20, balance: bool = False):
        self.k = k
        self.L = L
        self.iters = iters
        self.balance = balance

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "Magnet":
        self.classes_, centres, valid, err, n_base = setup_clusters(
            feats.float(), labels, task, self.k, self.iters, "magnet")
        if n_base < 2:
            raise InputError(None, "head 'magnet' estimates σ² on base rows, and this training set has none")
        self.var_, self.num_classes_ = max(err / (n_base - 1), 1e-12), task.num_classes
        self.centres_ = centres.flatten(0, 1)  # (P·k, d); a missing cluster is infinitely far away
        self.sq_norms_ = self.centres_.pow(2).sum(1).masked_fill(~valid.flatten(), float("inf"))
        self.num_valid_ = int(valid.sum())
        self.log_weight_ = -valid.sum(-1).log() if self.balance else torch.zeros(len(valid), device=valid.device)
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Log soft votes (N, C); −inf for classes without rows."""
        self._check_fitted("centres_")
        x = feats.to(self.centres_.device).float()
        out = x.new_full((len(x), self.num_classes_), float("-inf"))
        out[:, self.classes_] = chunked(self._log_vote, x)
        return out

    def _log_vote(self, x: torch.Tensor) -> torch.Tensor:
        """(n, P) log votes of x (n, d) for the P classes with clusters."""
        d2 = (torch.addmm(self.sq_norms_, x, self.centres_.t(), alpha=-2) + x.pow(2).sum(1, keepdim=True)).clamp_min(0)
        e = d2 * (-0.5 / self.var_)  # (n, P·k) cluster log-densities
        top, idx = e.topk(min(self.L, self.num_valid_), dim=1)
        owner = torch.div(idx, self.k, rounding_mode="floor")
        w = (top - top[:, :1] + self.log_weight_[owner]).exp()  # shifted by the best term, for stability
        votes = x.new_zeros(len(x), len(self.classes_)).scatter_add_(1, owner, w)
        log_total = votes.sum(1, keepdim=True).log() + top[:, :1]
        # a class without a vote: its best cluster's term, below every voted class (weight 1/k ≤ 1/K_c)
        fallback = e.view(len(x), len(self.classes_), -1).amax(-1) - (math.log(self.k) if self.balance else 0.0)
        return torch.where(votes > 0, votes.log() + top[:, :1], fallback) - log_total
