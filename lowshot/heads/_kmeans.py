"""Batched k-means (k-means++ seeding, Lloyd iterations) and per-class clustering.

Shared by the RepMet and Magnet heads; generic enough for any caller that needs k centroids
of many small point sets at once (e.g. a feature generator's per-class clusters).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from lowshot.heads.maths import (
    fingerprint,
    generator,
    group_rows,
    split_base,
    sq_distances,
)


def kmeans(x: torch.Tensor, k: int, iters: int = 20, gen: Optional[torch.Generator] = None,
           mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """k centroids of x, for one point set or a batch of them.

    Args:
        x: (n, d) points, or (B, n, d) padded batch of point sets.
        k: number of centroids.
        iters: maximum Lloyd iterations (stops early once assignments settle).
        gen: seeded generator on x's device (k-means++ draws).
        mask: bool (n,) or (B, n): which rows are real points (padding is ignored).
    Returns:
        (k, d) or (B, k, d) centroids. A set with fewer than k distinct points repeats some of
        them; the repeats own no point (see `nearest`).
    """
    single = x.dim() == 2
    x = x[None] if single else x
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.reshape(x.shape[:2])
    centres, assign = _plusplus(x, mask, k, gen), None
    for _ in range(iters):
        new = nearest(x, centres)[0]
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        onehot = F.one_hot(assign, k).to(x.dtype) * mask[..., None]
        counts = onehot.sum(1)[..., None]
        centres = torch.where(counts > 0, onehot.transpose(1, 2) @ x / counts.clamp(min=1), centres)
    return centres[0] if single else centres


def nearest(x: torch.Tensor, centres: torch.Tensor, valid: Optional[torch.Tensor] = None):
    """Index (B, n) and squared distance (B, n) of the nearest centre (B, k, d) to each x (B, n, d)."""
    d2 = sq_distances(x, centres)
    if valid is not None:
        d2 = d2.masked_fill(~valid[:, None, :], float("inf"))
    best, idx = d2.min(-1)
    return idx, best


def _plusplus(x: torch.Tensor, mask: torch.Tensor, k: int, gen) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007), batched: (B, n, d) -> (B, k, d)."""
    live = mask.to(x.dtype)
    live = torch.where(mask.any(1, keepdim=True), live, torch.ones_like(live))  # an empty set draws padding
    pick = torch.multinomial(live, 1, generator=gen)
    centres = [torch.gather(x, 1, pick[..., None].expand(-1, -1, x.shape[2]))]
    d2 = sq_distances(x, centres[0])[..., 0]
    for _ in range(1, k):
        pick = torch.multinomial(d2 * live + 1e-12 * live, 1, generator=gen)
        centres.append(torch.gather(x, 1, pick[..., None].expand(-1, -1, x.shape[2])))
        d2 = torch.minimum(d2, sq_distances(x, centres[-1])[..., 0])
    return torch.cat(centres, 1)


def cluster_classes(x: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, k: int, iters: int,
                    gen: Optional[torch.Generator], max_elems: int = 1 << 26) -> Tuple[torch.Tensor, ...]:
    """Per-class clusters: the rows themselves when a class has ≤ k rows, else k-means centroids.

    Args:
        x: (N, d) rows; labels: (N,) labels in `classes`; classes: (C,) sorted class ids.
        k, iters, gen: as in `kmeans`.
        max_elems: classes are clustered in chunks whose padded tensor has at most this many entries.
    Returns:
        centres (C, k, d); valid bool (C, k) (centres that own rows); sq_err (C,) the sum over a
        class's rows of the squared distance to its nearest valid centre.
    """
    if not len(classes):
        return x.new_zeros(0, k, x.shape[1]), torch.zeros(0, k, dtype=torch.bool, device=x.device), x.new_zeros(0)
    out = []
    counts = torch.bincount(torch.searchsorted(classes, labels), minlength=len(classes))
    per_class = max(int(counts.max()), k) * x.shape[1] if len(labels) else 1
    step = max(1, max_elems // per_class)
    for lo in range(0, len(classes), step):
        part = classes[lo:lo + step]
        rows = torch.isin(labels, part)
        out.append(_cluster_chunk(x[rows], labels[rows], part, k, iters, gen))
    return tuple(torch.cat(t) for t in zip(*out))


def _cluster_chunk(x, labels, classes, k: int, iters: int, gen):
    grouped, mask, counts = group_rows(x, labels, classes, width=k)
    centres, big = grouped[:, :k].clone(), counts > k
    if big.any():  # k-means only where a class has more than k rows
        centres[big] = kmeans(grouped[big], k, iters, gen, mask[big])
    idx = nearest(grouped, centres)[0]
    owned = (F.one_hot(idx, k) * mask[..., None]).sum(1) > 0
    valid = torch.where(big[:, None], owned, mask[:, :k])
    sq_err = nearest(grouped, centres, valid)[1].masked_fill(~mask, 0).sum(1)
    return centres, valid, sq_err


def setup_clusters(feats: torch.Tensor, labels: torch.Tensor, task, k: int, iters: int, tag: str):
    """Clusters of every class with training rows, for the RepMet and Magnet heads.

    Base classes are clustered once per process (seed 0, memoised in `task.cache` under a key
    of everything they depend on) so that the cells of a benchmark share them; the other
    classes' clusters use `task.seed`.

    Returns:
        classes (P,) sorted; centres (P, k, d); valid (P, k); the base rows' summed squared
        distance to their nearest centre; the number of base rows.
    """
    base, is_base = split_base(labels, task)
    rows, rlabels = feats[is_base], labels[is_base]
    key = (tag, k, iters, tuple(base.tolist()), fingerprint(rows, rlabels))
    if key not in task.cache:
        cls = torch.unique(rlabels)
        task.cache[key] = (cls, *cluster_classes(rows, rlabels, cls, k, iters, generator(0, feats.device)))
    bcls, bcent, bvalid, berr = task.cache[key]
    ncls = torch.unique(labels[~is_base])
    ncent, nvalid, _ = cluster_classes(feats[~is_base], labels[~is_base], ncls, k, iters,
                                       generator(task.seed, feats.device))
    classes = torch.cat([bcls, ncls])
    order = torch.argsort(classes)
    return (classes[order], torch.cat([bcent, ncent])[order], torch.cat([bvalid, nvalid])[order],
            float(berr.sum()), len(rows))
