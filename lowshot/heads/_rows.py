"""The rows of many episodes, normalised (and centred) without writing a normalised copy.

L2 and SimpleShot's CL2N preprocessing replace every feature x by (x − c) / ‖x − c‖. A transductive
head needs only dot products of those rows with a few vectors, weighted sums of them, their mean and
their Gram matrix, and all of these follow from the raw rows and one factor per row. A batch of a few
hundred episodes is then read, never copied: on a CPU, writing out such a copy (tens of MB of freshly
allocated pages) costs more than the maths that follows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from lowshot.errors import InputError
from lowshot.heads.maths import FEATURES, dots, l2_normalise, power_transform, sq_norms


@dataclass
class Rows:
    """Rows r_n = (x_n − c) · f_n of E episodes, kept as x (E, N, d), c (E, 1, d) or None, f (E, N).

    Attributes:
        x: the raw rows; centre: c, or None for no centring; factor: f (1 / ‖x − c‖ for unit rows).
        sq: ‖r_n‖² (E, N); xc: x_n · c (E, N) when centred, else None.
    """

    x: torch.Tensor
    centre: Optional[torch.Tensor]
    factor: torch.Tensor
    sq: torch.Tensor
    xc: Optional[torch.Tensor] = None

    @classmethod
    def of(cls, x: torch.Tensor, centre: Optional[torch.Tensor] = None, unit: bool = True) -> "Rows":
        """Rows (x − c) / max(‖x − c‖, 1e-12) (as `F.normalize`) of x (E, N, d), c (E, 1, d); as is if not `unit`."""
        sq, xc = sq_norms(x), None
        if centre is not None:
            xc = dots(centre, x)[:, 0]
            sq = (sq - 2 * xc + sq_norms(centre)).clamp_min(0)  # ‖x − c‖², from one pass over x
        if not unit:
            return cls(x, centre, torch.ones_like(sq), sq, xc)
        factor = sq.sqrt().clamp_min(1e-12).reciprocal()
        return cls(x, centre, factor, sq * factor.square(), xc)

    def episodes(self, start: int, stop: int) -> "Rows":
        """The rows of episodes start..stop − 1."""
        return Rows(*(None if t is None else t[start:stop] for t in (self.x, self.centre, self.factor, self.sq,
                                                                     self.xc)))

    def dots(self, a: torch.Tensor) -> torch.Tensor:
        """a_k · r_n of shape (E, K, N) for a few vectors a (E, K, d)."""
        out = dots(a, self.x)
        if self.centre is not None:
            out = out - dots(a, self.centre)
        return out * self.factor[:, None]

    def weighted(self, w: torch.Tensor) -> torch.Tensor:
        """Σ_n w_kn r_n of shape (E, K, d) for weights w (E, K, N) (or (K, N), shared)."""
        w = w * self.factor[:, None]
        out = w @ self.x
        if self.centre is not None:
            out = out - w.sum(2, keepdim=True) * self.centre
        return out

    def mean(self) -> torch.Tensor:
        """The mean row (E, 1, d)."""
        n = self.x.shape[1]
        return self.weighted(self.x.new_full((1, n), 1 / n))

    def gram(self) -> torch.Tensor:
        """r_n · r_m of shape (E, N, N)."""
        g = self.x @ self.x.transpose(1, 2)
        if self.centre is not None:
            g = g - self.xc[:, :, None] - self.xc[:, None, :] + sq_norms(self.centre)[..., None]
        return g * self.factor[:, :, None] * self.factor[:, None, :]

    def values(self) -> torch.Tensor:
        """The rows written out, (E, N, d)."""
        if self.centre is None:
            return self.x * self.factor[..., None]
        return (self.x - self.centre).mul_(self.factor[..., None])


def prepared(x: torch.Tensor, how: str, centre: Optional[torch.Tensor] = None, beta: float = 0.5) -> Rows:
    """Features (E, N, d) prepared as a paper prescribes, as `Rows`.

    `l2`: unit rows; `cl2n`: minus `centre` (E, 1, d) (the base mean), then unit rows (SimpleShot);
    `power`: `power_transform` with exponent β, then unit rows (PT-MAP); `none`: as is.
    """
    if how not in FEATURES:
        raise InputError(None, f"unknown feature preprocessing {how!r}; choose one of: {', '.join(FEATURES)}")
    if how == "power":
        return Rows.of(power_transform(x, beta))
    return Rows.of(x, centre if how == "cl2n" else None, unit=how != "none")


def rectify_prototypes(support: Rows, labels: torch.Tensor, query: Rows, k: int, eps: float) -> torch.Tensor:
    """BD-CSPN's rectified prototypes (E, k, d) (Liu, Song & Qin, ECCV 2020, arXiv 1911.10713).

    Queries (E, Q rows) are shifted by mean(support) − mean(query) (bias diminishing), labelled by
    their nearest support mean (cosine), and each prototype is the sum of its class's support rows
    (E, N rows; labels (N,)) and pseudo-labelled queries weighted by softmax(ε · cos to the mean) over
    them (the paper's weights: normalised over a class's members). The shifted queries are never
    written out: their cosines and weighted sums follow from the queries' own.
    """
    onehot = F.one_hot(labels, k).to(support.x).t()  # (k, N)
    means = l2_normalise(support.weighted(onehot / onehot.sum(1, keepdim=True)))
    shift = support.mean() - query.mean()  # (E, 1, d)
    qd = query.dots(torch.cat([means, shift], 1))  # (E, k + 1, Q): m̂·q and shift·q
    norm = (query.sq + 2 * qd[:, k] + sq_norms(shift)).clamp_min(0).sqrt().clamp_min(1e-12)
    cos_q = (qd[:, :k] + dots(means, shift)) / norm[:, None]  # (E, k, Q): cosines of the shifted queries
    cos_s = support.dots(means) / support.sq.sqrt().clamp_min(1e-12)[:, None]
    w_s = torch.exp(eps * cos_s) * onehot
    w_q = torch.exp(eps * cos_q) * F.one_hot(cos_q.max(1).indices, k).to(cos_q).transpose(1, 2)
    total = w_s.sum(2, keepdim=True) + w_q.sum(2, keepdim=True)  # (E, k, 1)
    return (support.weighted(w_s) + query.weighted(w_q) + w_q.sum(2, keepdim=True) * shift) / total
