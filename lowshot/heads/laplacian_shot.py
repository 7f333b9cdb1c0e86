"""LaplacianShot: nearest-prototype unaries plus a kNN Laplacian over the queries, by bound updates."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowshot.heads.base import HEADS
from lowshot.heads._rows import Rows, rectify_prototypes
from lowshot.heads._transductive import TransductiveHead
from lowshot.heads.maths import sq_norms


@HEADS.register("laplacian_shot")
class LaplacianShot(TransductiveHead):
    """Laplacian-regularised few-shot learning (Ziko, Dolz, Granger & Ben Ayed, "Laplacian
    Regularized Few-Shot Learning", ICML 2020, https://arxiv.org/abs/2006.15486). Transductive.

    Minimises Σ_q y_qᵀ a_q − λ Σ_{q,p} w_qp y_qᵀ y_p over soft assignments y of the queries, with
    a_q the squared distances to the class prototypes and w the k-nearest-neighbour graph of the
    queries, by the paper's bound updates y_q ← softmax(−a_q + λ Σ_p w_qp y_p), started from
    softmax(−a_q). Returns the assignments y.

    Hyper-parameters: `lam` = λ = 0.7 and `knn` = 3 (the library's, easyfsl, tuned on miniImageNet
    5-way 5-shot; the paper's code defaults to λ = 1 and tunes it on validation episodes). `knn`
    counts the query itself, as the paper's code does (`NearestNeighbors(n_neighbors=knn)`, then the
    first neighbour, the point itself, dropped) and as easyfsl does: w_qp = 1 for the knn − 1 nearest
    other queries. `iterations` = 20 bound updates at most; an episode stops after the first update
    (from the third on) that moves its bound by at most 1e-6 of its value, as the paper's code does,
    each episode of a batch on its own. `rectify` = True: prototypes rectified as BD-CSPN's paper
    (shifted queries pseudo-labelled, weights softmax(`eps` · cos) within a class; the paper's code
    uses a variant, docs/heads.md) (False: support means); `eps` chosen on setup 1 (docs/heads.md);
    `features` = "cl2n" (the paper's: centre on the base classes' mean train feature, then L2).
    At λ = 0 it is the nearest (rectified) prototype.
    """

    name = "laplacian_shot"
    episode_bytes = 1 << 24  # the bound updates loop over the batch: amortise them over many episodes

    def __init__(self, lam: float = 0.7, knn: int = 3, iterations: int = 20, rectify: bool = True,
                 eps: float = 10.0, features: str = "cl2n"):
        self.lam, self.knn, self.iterations = lam, knn, iterations
        self.rectify, self.eps, self.features = rectify, eps, features

    def transduce(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int,
                  centre) -> torch.Tensor:
        """Soft assignments (E, Q, k) of queries (E, Q, d) given support (E, N, d) with labels (N,)."""
        support, query = self.prepare(support, centre), self.prepare(query, centre)
        if self.rectify:
            protos = rectify_prototypes(support, labels, query, k, self.eps)
        else:
            onehot = F.one_hot(labels, k).to(support.x).t()
            protos = support.weighted(onehot / onehot.sum(1, keepdim=True))
        unary = (query.sq[:, None] - 2 * query.dots(protos) + sq_norms(protos)[..., None]).clamp_min(0)  # (E, k, Q)
        return bound_updates(unary, self._neighbours(query), self.lam, self.iterations).transpose(1, 2)

    def _neighbours(self, rows: Rows, step: int = 64) -> torch.Tensor:
        """Indices (E, Q, knn − 1) of each row's knn − 1 nearest other rows, `step` episodes at a time."""
        e, q = rows.sq.shape
        m, out = max(0, min(self.knn - 1, q - 1)), []
        for i in range(0, e, step):
            part = rows.episodes(i, i + step)
            dist = part.sq[:, None] - 2 * part.gram()  # ‖r_p − r_q‖² − ‖r_q‖²: the same ranking over p
            dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))
            out.append(dist.topk(m, -1, largest=False).indices)
        return torch.cat(out)


def neighbour_sum(y: torch.Tensor, near: torch.Tensor) -> torch.Tensor:
    """Σ_{p ∈ N(q)} y_p of shape (E, k, Q) for assignments y (E, k, Q) and neighbour indices near (E, Q, m)."""
    e, q, m = near.shape
    picked = y.gather(2, near.reshape(e, 1, q * m).expand(-1, y.shape[1], -1))
    return picked.view(e, -1, q, m).sum(3)


def bound_updates(unary: torch.Tensor, near: torch.Tensor, lam: float, iterations: int) -> torch.Tensor:
    """LaplacianShot's bound updates (E, k, Q) from unaries (E, k, Q) and the kNN graph near (E, Q, m).

    Each episode stops on its own after the first update i ≥ 2 (counting from 0) whose bound
    Σ y log y + yᵀa − λ Σ_q y_qᵀ Σ_{p ∈ N(q)} y_p moved by at most 1e-6 of its previous value (the
    paper's code); the bound is summed in float64, where that test is above rounding noise.
    """
    y = torch.softmax(-unary, 1)
    pair, old = neighbour_sum(y, near), torch.full((len(y),), float("inf"), dtype=torch.float64, device=y.device)
    running = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for i in range(iterations):
        new = torch.softmax(-unary + lam * pair, 1)
        pair = neighbour_sum(new, near)
        bound = (new * (torch.log(new.clamp_min(1e-20)) + unary - lam * pair)).double().sum((1, 2))
        y = torch.where(running[:, None, None], new, y)
        stop = running & ((bound - old).abs() <= 1e-6 * old.abs()) if i > 1 else torch.zeros_like(running)
        old, running = torch.where(running, bound, old), running & ~stop
        if not running.any():
            break
    return y
