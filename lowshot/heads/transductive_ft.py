"""Transductive fine-tuning: a support-initialised cosine-feature classifier tuned with query entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowshot.heads.base import HEADS
from lowshot.heads._transductive import TransductiveHead
from lowshot.heads.maths import adam_minimise, entropy, l2_normalise, one_hot_means


@HEADS.register("transductive_ft")
class TransductiveFT(TransductiveHead):
    """Transductive fine-tuning (Dhillon, Chaudhari, Ravichandran & Soatto, "A Baseline for Few-Shot
    Image Classification", ICLR 2020, https://arxiv.org/abs/1909.02729). Transductive.

    A linear classifier (W, b) on the features, with the paper's support-based initialisation
    (w_k = the normalised mean of class k's support rows, b = 0), is fine-tuned by full-batch Adam
    on the support cross-entropy plus `entropy_weight` × the mean entropy of the query predictions.

    Hyper-parameters (the paper's): `iterations` = 25 (its 25 epochs; one full batch per epoch
    here), `lr` = 5e-5, `entropy_weight` = 1, `temperature` = 1 (logits = (x·w_k + b_k) / T);
    `features` = "l2" (the paper normalises features). Departure: the paper also fine-tunes the
    backbone; a head sees cached features only, so only W and b move, and with the paper's learning
    rate they move little (the README measures how little). Returns the logits.
    """

    name = "transductive_ft"

    def __init__(self, iterations: int = 25, lr: float = 5e-5, entropy_weight: float = 1.0,
                 temperature: float = 1.0, features: str = "l2"):
        self.iterations, self.lr, self.entropy_weight = iterations, lr, entropy_weight
        self.temperature, self.features = temperature, features

    def transduce(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int,
                  centre) -> torch.Tensor:
        """Logits (E, Q, k) of queries (E, Q, d) after fine-tuning on support (E, N, d), labels (N,)."""
        support, query = self.prepare(support, centre), self.prepare(query, centre)
        weights = l2_normalise(one_hot_means(support, labels, k)).requires_grad_(True)
        bias = support.new_zeros(len(support), 1, k, requires_grad=True)

        def logits(x: torch.Tensor) -> torch.Tensor:
            return (x @ weights.transpose(1, 2) + bias) / self.temperature

        def loss() -> torch.Tensor:  # summed over episodes: each one's gradient is its own
            ce = F.cross_entropy(logits(support).flatten(0, 1), labels.repeat(len(support)),
                                 reduction="sum") / len(labels)
            return ce + self.entropy_weight * entropy(torch.softmax(logits(query), -1)).mean(1).sum()

        adam_minimise([weights, bias], loss, self.iterations, self.lr)
        with torch.no_grad():
            return logits(query)
