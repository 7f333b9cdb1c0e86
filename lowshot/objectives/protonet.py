"""Prototypical networks' training objective (Snell, Swersky & Zemel, NeurIPS 2017, arXiv 1703.05175)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowshot.heads.protonet import ProtoNet
from lowshot.objectives.base import OBJECTIVES, Episodic, GroupSampler, base_positions


def protonet_loss(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Mean −log p(true class | query) of one episode.

    Args:
        support: (W, S, d) embeddings of S support images of each of W classes.
        query: (W, Q, d) embeddings of Q query images of each class (disjoint from the support).
    Returns:
        scalar: p(y = k | x) = softmax_k(−‖x − c_k‖²), c_k = mean of class k's support; the mean over
        the W·Q queries of −log p of the query's own class. The scores are the `protonet` head's
        `episode_scores` (same maths at evaluation time).
    """
    ways, queries = query.shape[:2]
    logits = ProtoNet().episode_scores(support[None], query.reshape(1, ways * queries, -1), None)[0]
    target = torch.arange(ways, device=query.device).repeat_interleave(queries)
    return F.cross_entropy(logits, target)


@OBJECTIVES.register("protonet")
class ProtoNetObjective(Episodic):
    """Episodic training: each batch is one N-way episode of base classes, `shots` support and
    `queries` query images per class (disjoint), loss `protonet_loss` (squared Euclidean distance to
    class means of the support embeddings).

    The paper trains with Adam and more ways than it tests (60-way, 5 queries on Omniglot; 20/30-way,
    15 queries on miniImageNet). Here an episode has `ways · (shots + queries)` = 128 images by default,
    the demo's batch size, under the demo's optimiser, so that the rows of the objective table differ
    only in the objective; the paper's choice of matching training and test shots is kept at 5.
    """

    def __init__(self, ways: int = 16, shots: int = 5, queries: int = 3):
        self.ways, self.shots, self.queries = ways, shots, queries
        self.images = ways * (shots + queries)

    def setup(self, feed, base_classes, dim, seed, device) -> None:
        super().setup(feed, base_classes, dim, seed, device)
        self.sampler_ = GroupSampler(base_positions(feed.labels, self.base_), len(self.base_))
        self.ways_ = min(self.ways, len(self.base_))
        self.images = self.ways_ * (self.shots + self.queries)

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        classes = torch.randperm(len(self.base_), generator=gen)[:self.ways_]
        return self.sampler_.draw(classes, self.shots + self.queries, gen)

    def loss(self, scores: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Batch laid out as `draw` returns it: feats (ways·(shots + queries), d), class by class."""
        episode = feats.float().reshape(self.ways_, self.shots + self.queries, -1)
        return protonet_loss(episode[:, :self.shots], episode[:, self.shots:])
