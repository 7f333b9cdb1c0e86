"""RepMet's training objective (Karlinsky et al., "RepMet: Representative-based metric learning for
classification and few-shot object detection", CVPR 2019, arXiv 1806.04728)."""
from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.nn.functional as F

from lowshot.heads.maths import l2_normalise, sq_distances
from lowshot.heads.repmet import mode_log_posterior
from lowshot.objectives.base import OBJECTIVES, Objective, base_positions


def repmet_loss(emb: torch.Tensor, target: torch.Tensor, reps: torch.Tensor, sigma: float, alpha: float):
    """RepMet's loss: cross-entropy of the soft class posterior plus the embedding hinge.

    Args:
        emb: (B, d) embeddings; target: (B,) class of each, in 0..C−1.
        reps: (C, K, d) representatives R_ij (both are L2-normalised here, as in the authors' config).
        sigma: σ of the modes; alpha: the hinge margin α.
    Returns:
        (loss, cross-entropy, hinge), scalars. With d_ij = ‖E − R_ij‖ and p_ij = exp(−d_ij² / 2σ²),
        P(i | x) = Σ_j p_ij / Σ_{i′j} p_{i′j} (the `repmet` head's soft rule); the hinge is
        max(0, min_j d_{i*j} − min_{i≠i*, j} d_ij + α) on distances, not squared distances (the paper's;
        pytorch.repmet squares them and drops the cross-entropy). Both terms are batch means.
    """
    e, r = l2_normalise(emb), l2_normalise(reps)
    c, k = reps.shape[:2]
    d2 = sq_distances(e, r.reshape(c * k, -1)).view(len(e), c, k)
    log_post = mode_log_posterior(-d2 / (2 * sigma ** 2), torch.full((c,), k, device=e.device), "sum")
    ce = F.nll_loss(log_post, target)
    dist = d2.clamp_min(1e-12).sqrt()
    mine = F.one_hot(target, c).bool()[..., None]
    closest_right = dist.masked_fill(~mine, float("inf")).amin((1, 2))
    closest_wrong = dist.masked_fill(mine, float("inf")).amin((1, 2))
    hinge = F.relu(closest_right - closest_wrong + alpha).mean()
    return ce + hinge, ce, hinge


@OBJECTIVES.register("repmet")
class RepMetObjective(Objective):
    """RepMet training: K representatives per base class, learned with the embedding (the backbone's
    pooled features, L2-normalised) on the ordinary shuffled batches; loss `repmet_loss` with the
    authors' σ = 0.5, α = 0.5 and K = 5.

    Differences from the paper, kept so that the objective table compares objectives on one
    architecture: no DML sub-net (the embedding is the backbone's pooled features, which the
    `features` stage stores), and the representatives start as random unit vectors (seeded) rather
    than k-means centres of a pre-trained network's embeddings.
    """

    def __init__(self, k: int = 5, sigma: float = 0.5, alpha: float = 0.5):
        self.k, self.sigma, self.alpha = k, sigma, alpha

    def setup(self, feed, base_classes, dim, seed, device) -> None:
        super().setup(feed, base_classes, dim, seed, device)
        gen = torch.Generator().manual_seed(seed)
        reps = l2_normalise(torch.randn(len(self.base_), self.k, dim, generator=gen))
        self.reps_ = torch.nn.Parameter(reps.to(device))

    def parameters(self) -> List[torch.nn.Parameter]:
        return [self.reps_]

    def state_dict(self) -> Dict[str, Any]:
        return {"representatives": self.reps_.detach().cpu()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        with torch.no_grad():
            self.reps_.copy_(state["representatives"])

    def loss(self, scores: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return repmet_loss(feats.float(), base_positions(labels, self.base_), self.reps_, self.sigma, self.alpha)[0]
