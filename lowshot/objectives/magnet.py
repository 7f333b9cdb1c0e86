"""The Magnet loss as a training objective (Rippel, Paluri, Dollár & Bourdev, "Metric Learning with
Adaptive Density Discrimination", ICLR 2016, arXiv 1511.05939)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lowshot.heads._kmeans import cluster_classes
from lowshot.heads.maths import generator, sq_distances
from lowshot.objectives.base import OBJECTIVES, Episodic, GroupSampler, base_positions


def magnet_loss(r: torch.Tensor, cluster_class: torch.Tensor, alpha: float):
    """The Magnet loss of a batch of M clusters × D examples (the paper's eq. 4).

    Args:
        r: (M·D, d) embeddings, cluster by cluster (rows m·D … m·D + D − 1 belong to cluster m).
        cluster_class: (M,) class of each cluster.
        alpha: the margin α.
    Returns:
        (mean loss, per-example losses (M·D,)). With μ_m the batch mean of cluster m and
        σ² = Σ_n ‖r_n − μ(r_n)‖² / (N − 1) (N = M·D), example n's loss is
        max(0, ‖r_n − μ(r_n)‖² / 2σ² + α + log Σ_{m: class(m) ≠ class(n)} exp(−‖r_n − μ_m‖² / 2σ²)).
        σ² is the paper's: a total variance, not squared again as in pytorch.repmet.
    """
    m = len(cluster_class)
    own = torch.arange(m, device=r.device).repeat_interleave(len(r) // m)
    d2 = sq_distances(r, r.view(m, -1, r.shape[1]).mean(1))  # (N, M)
    intra = d2.gather(1, own[:, None])[:, 0]
    var = intra.sum() / (len(r) - 1)
    other = cluster_class[None, :] != cluster_class[own][:, None]
    log_den = torch.logsumexp((-d2 / (2 * var)).masked_fill(~other, float("-inf")), dim=1)
    losses = F.relu(intra / (2 * var) + alpha + log_den)
    return losses.mean(), losses


@torch.no_grad()
def embed(model, feed, batch_size: int = 512) -> torch.Tensor:
    """Pooled features (N, d), float32, of every row of `feed` (evaluation mode, no augmentation)."""
    was = model.training
    model.eval()
    out = torch.cat([model(x)[1].float() for x, _ in feed.batches(np.arange(len(feed)), batch_size)])
    model.train(was)
    return out


@OBJECTIVES.register("magnet")
class MagnetObjective(Episodic):
    """Magnet-loss training: each base class is `k` clusters of its training images' embeddings.

    At the start of every epoch the whole training set is re-embedded (the paper's "index refresh")
    and clustered per class (k-means, the heads' `cluster_classes`); each image belongs to its nearest
    cluster of its class. A batch is a neighbourhood: a seed cluster drawn with probability
    proportional to its latest loss (1 for a cluster not yet seen since the refresh), its `clusters`
    − 1 nearest clusters of other classes (centre distance) and `per_cluster` images of each; loss
    `magnet_loss`. Defaults: K = 4 clusters per class, M = 32 clusters × D = 4 images = 128 images, the
    demo's batch (pytorch.repmet's configuration is M = 12, D = 4, K = 1), α = 1. The paper refreshes
    the index periodically; here once per epoch, with the demo's optimiser, from a random
    initialisation, and a cluster's seed weight is its loss in
    the last batch that held it (the paper tracks each example's recent losses).
    """

    def __init__(self, k: int = 4, clusters: int = 32, per_cluster: int = 4, alpha: float = 1.0, iters: int = 20):
        self.k, self.clusters, self.per_cluster, self.alpha, self.iters = k, clusters, per_cluster, alpha, iters
        self.images = clusters * per_cluster

    def start_epoch(self, model, feed, epoch: int) -> None:
        emb = embed(model, feed)
        labels = base_positions(feed.labels.to(emb.device), self.base_)
        classes = torch.arange(len(self.base_), device=emb.device)
        gen = generator(self.seed_ * 100_003 + epoch, emb.device)
        centres, valid, _ = cluster_classes(emb, labels, classes, self.k, self.iters, gen)
        self.centres_ = centres.flatten(0, 1)
        self.cluster_class_ = classes.repeat_interleave(self.k)
        mine = (self.cluster_class_[None, :] == labels[:, None]) & valid.flatten()[None, :]
        assign = sq_distances(emb, self.centres_).masked_fill(~mine, float("inf")).argmin(1)
        self.sampler_ = GroupSampler(assign.cpu(), len(self.centres_))
        self.live_ = self.sampler_.counts > 0
        self.cluster_loss_ = torch.ones(len(self.centres_))

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        weight = self.cluster_loss_.clamp_min(1e-6) * self.live_
        seed = torch.multinomial(weight, 1, generator=gen)
        d2 = sq_distances(self.centres_[seed.to(self.centres_.device)], self.centres_)[0].cpu()
        impostor = self.live_ & (self.cluster_class_.cpu() != self.cluster_class_[seed].cpu())
        near = d2.masked_fill(~impostor, float("inf")).argsort()[:min(self.clusters - 1, int(impostor.sum()))]
        self.batch_clusters_ = torch.cat([seed, near])
        return self.sampler_.draw(self.batch_clusters_, self.per_cluster, gen)

    def loss(self, scores: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Batch laid out as `draw` returns it; records each cluster's mean loss for the seed draws."""
        chosen = self.batch_clusters_
        mean, losses = magnet_loss(feats.float(), self.cluster_class_[chosen.to(feats.device)], self.alpha)
        self.cluster_loss_[chosen] = losses.detach().view(len(chosen), -1).mean(1).cpu()
        return mean
