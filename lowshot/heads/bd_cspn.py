"""BD-CSPN: prototypes rectified with the query batch, then cosine to the rectified prototypes."""
from __future__ import annotations

import torch

from lowshot.heads.base import HEADS
from lowshot.heads._rows import rectify_prototypes
from lowshot.heads._transductive import TransductiveHead
from lowshot.heads.maths import l2_normalise


@HEADS.register("bd_cspn")
class BDCSPN(TransductiveHead):
    """Bias-diminishing cosine-similarity prototypical network (Liu, Song & Qin, "Prototype
    Rectification for Few-Shot Learning", ECCV 2020, https://arxiv.org/abs/1911.10713). Transductive.

    The queries are shifted so that their mean is the support's (cross-class bias); each query is
    pseudo-labelled by its nearest support mean (cosine); a class's prototype becomes the sum of its
    support rows and pseudo-labelled queries, weighted by softmax(ε · cosine to the support mean)
    over them (intra-class bias). Queries are scored by their cosine to the rectified prototypes.

    Hyper-parameters: `eps` = ε = 1, the softmax's inverse temperature, chosen on setup 1's
    validation episodes by the rule in docs/heads.md (the paper's ε is 10; easyfsl weighs by exp(cos),
    i.e. ε = 1; +2.2 ± 0.3 points over ε = 10 at 5-way 1-shot on the demo's setup 1); `features` = "l2"
    (cosine features; "none" sums the raw rows, as the paper's network gives them; "cl2n", "power" as
    in `_rows.prepared`). Follows the library (easyfsl) rather than the paper in one point: every
    pseudo-labelled query joins its class, where the paper adds the top-Z most confident ones per class.
    Assumes the support and query sets share their classes (the shift moves the query mean onto
    the support mean). Returns cosines in [−1, 1].
    """

    episode_ms = 0.04  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)

    name = "bd_cspn"

    def __init__(self, eps: float = 1.0, features: str = "l2"):
        self.eps = eps
        self.features = features

    def transduce(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int,
                  centre) -> torch.Tensor:
        """Cosines (E, Q, k) of queries (E, Q, d) to the prototypes rectified from support (E, N, d), labels (N,)."""
        support, query = self.prepare(support, centre), self.prepare(query, centre)
        protos = l2_normalise(rectify_prototypes(support, labels, query, k, self.eps))
        return (query.dots(protos) / query.sq.sqrt().clamp_min(1e-12)[:, None]).transpose(1, 2)
