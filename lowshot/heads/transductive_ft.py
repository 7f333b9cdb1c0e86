"""Transductive fine-tuning: a support-initialised cosine-feature classifier tuned with query entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowshot.heads.base import HEADS
from lowshot.heads._transductive import TransductiveHead
from lowshot.heads.maths import adam_descent, entropy_gradient, l2_normalise, one_hot_means


@HEADS.register("transductive_ft")
class TransductiveFT(TransductiveHead):
    """Transductive fine-tuning (Dhillon, Chaudhari, Ravichandran & Soatto, "A Baseline for Few-Shot
    Image Classification", ICLR 2020, https://arxiv.org/abs/1909.02729). Transductive.

    A linear classifier (W, b) on the features, with the paper's support-based initialisation
    (w_k = the normalised mean of class k's support rows, b = 0), is fine-tuned by full-batch Adam
    on the support cross-entropy plus `entropy_weight` × the mean entropy of the query predictions.

    Hyper-parameters (the paper's, and the library's easyfsl): `iterations` = 25 (its 25 epochs; one
    full batch per epoch here), `lr` = 5e-5, `entropy_weight` = 1, `temperature` = 1 (logits =
    (x·w_k + b_k) / T; easyfsl scores by −‖x − w_k‖ instead);
    `features` = "l2" (the paper normalises features). Departure: the paper also fine-tunes the
    backbone; a head sees cached features only, so only W and b move, and with the paper's learning
    rate they move little (docs/heads.md measures how little). Returns the logits.
    """

    episode_ms = 0.67  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)

    name = "transductive_ft"
    episode_bytes = 1 << 26  # every Adam step loops over the batch: share the steps by many episodes

    def __init__(self, iterations: int = 25, lr: float = 5e-5, entropy_weight: float = 1.0,
                 temperature: float = 1.0, features: str = "l2"):
        self.iterations, self.lr, self.entropy_weight = iterations, lr, entropy_weight
        self.temperature, self.features = temperature, features

    def transduce(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int,
                  centre) -> torch.Tensor:
        """Logits (E, Q, k) of queries (E, Q, d) after fine-tuning on support (E, N, d), labels (N,).

        The loss is summed over episodes (each one's gradient is its own) and its gradient is written
        out (`_gradients`); the steps are `torch.optim.Adam`'s.
        """
        rows = self.prepare(torch.cat([support, query], 1), centre).values()  # (E, N + Q, d)
        weights = l2_normalise(one_hot_means(rows[:, :len(labels)], labels, k))
        bias = rows.new_zeros(len(rows), k, 1)
        target = F.one_hot(labels, k).to(rows).t()  # (k, N)
        adam_descent([weights, bias], lambda: self._gradients(rows, weights, bias, target), self.iterations, self.lr)
        return self._logits(rows, weights, bias)[..., len(labels):].transpose(1, 2)

    def _logits(self, rows: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(x·w_k + b_k) / T of shape (E, k, R) for rows x (E, R, d), weights (E, k, d), bias (E, k, 1)."""
        return (weights @ rows.transpose(1, 2) + bias) / self.temperature

    def _gradients(self, rows, weights, bias, target):
        """[∂loss/∂weights (E, k, d), ∂loss/∂bias (E, k, 1)]; target (k, N) the support's one-hot labels.

        With p = softmax(logits) over classes: ∂CE/∂z = (p − y)/N on support rows and the query term's
        ∂H/∂z = −p(log p + H(p))/Q on query rows; ∂z/∂w_k = x/T, ∂z/∂b_k = 1/T.
        """
        n = target.shape[1]
        z = self._logits(rows, weights, bias)
        p = torch.softmax(z, 1)
        g = torch.cat([(p[..., :n] - target) / n, self.entropy_weight / (z.shape[2] - n)
                       * entropy_gradient(p[..., n:], torch.log_softmax(z[..., n:], 1), dim=1)], 2)
        return [g @ rows / self.temperature, g.sum(2, keepdim=True) / self.temperature]
