"""TIM: a prototype classifier tuned to maximise the mutual information between queries and labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowshot.heads.base import HEADS
from lowshot.heads._transductive import TransductiveHead
from lowshot.heads.maths import adam_descent, entropy_gradient, one_hot_means, sq_norms


@HEADS.register("tim")
class TIM(TransductiveHead):
    """Transductive information maximisation, TIM-GD (Boudiaf, Ziko, Rony, Dolz, Piantanida & Ben
    Ayed, "Transductive Information Maximization For Few-Shot Learning", NeurIPS 2020,
    https://arxiv.org/abs/2008.11297). Transductive.

    Class weights w_k start at the support means; p(k | x) = softmax_k(−τ/2 · ‖x − w_k‖²). The
    weights minimise λ · CE(support) − (H(Y_Q) − α · H(Y_Q | X_Q)): support cross-entropy, minus the
    entropy of the mean query prediction (pushes towards a uniform class marginal), plus the mean
    entropy of the query predictions (pushes towards confident ones), by full-batch Adam.

    Hyper-parameters (the paper's released TIM-GD code, mboudiaf/TIM src/tim.py): τ = `temperature` = 15,
    λ = `ce_weight` = 0.1, `marginal_weight` = 1, α = `cond_weight` = 0.1, `lr` = 1e-4, `iterations` =
    1000 Adam steps (its evaluation scripts' `tim.iter=1000`; src/tim.py's own default is 150);
    `features` = "l2" (its src/eval.py L2-normalises the features). Returns the logits.
    Assumes balanced queries: the marginal-entropy term favours equal class frequencies in the query
    batch (docs/protocols.md measures the loss on Dirichlet-unbalanced queries). The library (easyfsl
    ≥ 1.4, easyfsl/methods/tim.py) differs: 50 steps at lr 1e-4, weights 1 / 1 / 0.1 and τ = 10 on
    cosine logits (its releases before 1.4: 100 steps at lr 1e-3, no τ). The gradient is written out
    and the steps are torch's Adam: the same path as autograd + `torch.optim.Adam`, batched.
    """

    episode_ms = 23.0  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)

    name = "tim"
    episode_bytes = 1 << 26  # every Adam step loops over the batch: share the steps by many episodes

    def __init__(self, temperature: float = 15.0, ce_weight: float = 0.1, marginal_weight: float = 1.0,
                 cond_weight: float = 0.1, iterations: int = 1000, lr: float = 1e-4, features: str = "l2"):
        self.temperature, self.ce_weight, self.marginal_weight = temperature, ce_weight, marginal_weight
        self.cond_weight, self.iterations, self.lr, self.features = cond_weight, iterations, lr, features

    def transduce(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int,
                  centre) -> torch.Tensor:
        """Logits (E, Q, k) of queries (E, Q, d) after tuning weights from support (E, N, d), labels (N,).

        The loss is summed over episodes (each one's gradient is its own) and its gradient is written
        out (`_gradient`); the steps are `torch.optim.Adam`'s.
        """
        rows = self.prepare(torch.cat([support, query], 1), centre).values()  # (E, N + Q, d)
        sq = sq_norms(rows)
        weights = one_hot_means(rows[:, :len(labels)], labels, k)
        target = F.one_hot(labels, k).to(rows).t()  # (k, N)
        adam_descent([weights], lambda: [self._gradient(rows, sq, weights, target)], self.iterations, self.lr)
        return self._logits(rows, sq, weights)[..., len(labels):].transpose(1, 2)

    def _logits(self, rows: torch.Tensor, sq: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """−τ/2 · ‖x − w_k‖² of shape (E, k, R) for rows x (E, R, d) with squared norms sq (E, R), weights (E, k, d)."""
        cross_term = weights @ rows.transpose(1, 2)
        return -0.5 * self.temperature * (sq[:, None] - 2 * cross_term + sq_norms(weights)[..., None])

    def _gradient(self, rows, sq, weights, target) -> torch.Tensor:
        """∂loss/∂weights (E, k, d) at `weights`; rows (E, N + Q, d), target (k, N) the support's one-hot labels.

        With p = softmax(logits) over classes: ∂CE/∂z = (p − y)/N on support rows; on query rows
        ∂H(Y_Q | X_Q)/∂z = −p(log p + H(p))/Q and ∂H(Y_Q)/∂z = −p(log p̄ − ⟨p, log p̄⟩)/Q (p̄ the mean
        query prediction); ∂z_ik/∂w_k = τ(x_i − w_k).
        """
        n = target.shape[1]
        z = self._logits(rows, sq, weights)
        p, log_p = torch.softmax(z, 1), torch.log_softmax(z, 1)
        pq, q = p[..., n:], z.shape[2] - n
        log_mean = torch.log(pq.mean(2, keepdim=True))
        g = torch.cat([self.ce_weight / n * (p[..., :n] - target),
                       self.marginal_weight / q * pq * (log_mean - (pq * log_mean).sum(1, keepdim=True))
                       + self.cond_weight / q * entropy_gradient(pq, log_p[..., n:], dim=1)], 2)
        return self.temperature * (g @ rows - g.sum(2, keepdim=True) * weights)
