"""TIM: a prototype classifier tuned to maximise the mutual information between queries and labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowshot.heads.base import HEADS
from lowshot.heads._transductive import TransductiveHead
from lowshot.heads.maths import adam_minimise, entropy, one_hot_means, sq_distances


@HEADS.register("tim")
class TIM(TransductiveHead):
    """Transductive information maximisation, TIM-GD (Boudiaf, Ziko, Rony, Dolz, Piantanida & Ben
    Ayed, "Transductive Information Maximization For Few-Shot Learning", NeurIPS 2020,
    https://arxiv.org/abs/2008.11297). Transductive.

    Class weights w_k start at the support means; p(k | x) = softmax_k(−τ/2 · ‖x − w_k‖²). The
    weights minimise λ · CE(support) − (H(Y_Q) − α · H(Y_Q | X_Q)): support cross-entropy, minus the
    entropy of the mean query prediction (pushes towards a uniform class marginal), plus the mean
    entropy of the query predictions (pushes towards confident ones), by full-batch Adam.

    Hyper-parameters (the paper's TIM-GD): τ = `temperature` = 15, λ = `ce_weight` = 0.1,
    `marginal_weight` = 1, α = `cond_weight` = 0.1, `iterations` = 1000 Adam steps, `lr` = 1e-4;
    `features` = "l2" (the paper's released code L2-normalises the features). Returns the logits.
    Assumes balanced queries: the marginal-entropy term favours equal class frequencies in the query
    batch (the README measures the loss on Dirichlet-unbalanced queries). The library (easyfsl)
    defaults to 100 steps at lr 1e-3 and weights 1 / 1 / 0.1; the paper's values are used here.
    """

    name = "tim"

    def __init__(self, temperature: float = 15.0, ce_weight: float = 0.1, marginal_weight: float = 1.0,
                 cond_weight: float = 0.1, iterations: int = 1000, lr: float = 1e-4, features: str = "l2"):
        self.temperature, self.ce_weight, self.marginal_weight = temperature, ce_weight, marginal_weight
        self.cond_weight, self.iterations, self.lr, self.features = cond_weight, iterations, lr, features

    def transduce(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int,
                  centre) -> torch.Tensor:
        """Logits (E, Q, k) of queries (E, Q, d) after tuning weights from support (E, N, d), labels (N,)."""
        support, query = self.prepare(support, centre), self.prepare(query, centre)
        weights = one_hot_means(support, labels, k).requires_grad_(True)

        def loss() -> torch.Tensor:  # summed over episodes: each one's gradient is its own
            ce = F.cross_entropy(self._logits(support, weights).flatten(0, 1), labels.repeat(len(support)),
                                 reduction="sum") / len(labels)
            p = torch.softmax(self._logits(query, weights), -1)
            info = self.marginal_weight * entropy(p.mean(1)) - self.cond_weight * entropy(p).mean(1)
            return self.ce_weight * ce - info.sum()

        adam_minimise([weights], loss, self.iterations, self.lr)
        return self._logits(query, weights.detach())

    def _logits(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """−τ/2 · squared distances (E, N, k) of rows x (E, N, d) to weights (E, k, d)."""
        return -0.5 * self.temperature * sq_distances(x, weights)
