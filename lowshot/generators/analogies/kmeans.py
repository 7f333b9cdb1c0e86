"""Per-class k-means with the Hariharan & Girshick rule, batched over classes.

H&G cluster each base class's train features with a re-implementation of Lua torch
`unsup.kmeans` (reference §8.3): centroids start as i.i.d. standard-normal vectors scaled to
unit norm (not data points); each Lloyd pass assigns every row to argmax_j (c_j·x − ½‖c_j‖²),
moves every non-empty centroid to the mean of its rows, adds the pass's counts to a running
total per centroid, and re-seeds every centroid whose running total is still 0 to a uniformly
drawn row of its class. A centroid that empties later keeps its stale position.

Here many classes run at once: the rows of a group of classes are padded into one
(G, N_max, d) tensor, so a pass is two batched matrix products (scores, then one-hot
memberships times rows) and no Python loop over classes. All random draws come from one
seeded CPU generator and are made for every class up front, so the result does not depend
on the device or on how classes are grouped.
"""
from __future__ import annotations

from typing import Iterator, List, Sequence

import numpy as np
import torch


def kmeans_per_class(feats: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], k: int,
                     iters: int = 20, seed: int = 0, max_block_mb: float = 512.0) -> torch.Tensor:
    """Cluster the rows of each class in `classes` into k centroids.

    Args:
        feats: float tensor of shape (N, d), on the device the work should run on.
        labels: int tensor of shape (N,); every class in `classes` must have at least one row.
        classes: the classes to cluster, in output order.
        k: centroids per class.
        iters: Lloyd passes (H&G: 20).
        seed: seeds the initial centroids and the re-seeding draws.
        max_block_mb: bound on the padded rows, scores and memberships of one group of classes
            (each at most this many MB of float32).

    Returns:
        float32 tensor of shape (len(classes), k, d), on the device of `feats`.
    """
    classes = [int(c) for c in classes]
    d, device = feats.shape[1], feats.device
    gen = torch.Generator().manual_seed(seed)
    init = torch.nn.functional.normalize(torch.randn(len(classes), k, d, generator=gen), dim=-1)
    reseed_u = torch.rand(iters, len(classes), k, generator=gen, dtype=torch.float64)
    rows = _rows_by_class(labels, classes)
    out = torch.empty(len(classes), k, d, dtype=torch.float32, device=device)
    for group in _groups([len(r) for r in rows], max(d, k), max_block_mb):
        x, valid = _padded([feats[rows[g]].float() for g in group])
        out[group] = _lloyd(x, valid, init[group].to(device), reseed_u[:, group].to(device), iters)
    return out


def _rows_by_class(labels: torch.Tensor, classes: List[int]) -> List[torch.Tensor]:
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    wanted = torch.as_tensor(classes, dtype=sorted_labels.dtype, device=labels.device)
    start = torch.searchsorted(sorted_labels, wanted).tolist()
    stop = torch.searchsorted(sorted_labels, wanted, right=True).tolist()
    empty = [c for c, a, b in zip(classes, start, stop) if a == b]
    if empty:
        raise ValueError(f"classes without rows cannot be clustered: {empty[:5]}")
    return [order[a:b] for a, b in zip(start, stop)]


def _groups(sizes: List[int], width: int, max_block_mb: float) -> Iterator[List[int]]:
    """Consecutive class groups whose padded (G, N_max, width) float32 blocks stay under the bound."""
    limit = max_block_mb * 2**20 / (4 * width)
    group: List[int] = []
    widest = 0
    for i, n in enumerate(sizes):
        if group and (len(group) + 1) * max(widest, n) > limit:
            yield group
            group, widest = [], 0
        group.append(i)
        widest = max(widest, n)
    if group:
        yield group


def _padded(blocks: List[torch.Tensor]):
    """(G, N_max, d) zero-padded rows and a (G, N_max) bool mask of the real ones."""
    x = torch.nn.utils.rnn.pad_sequence(blocks, batch_first=True)
    counts = torch.as_tensor([len(b) for b in blocks], device=x.device)
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < counts[:, None]
    return x, valid


def _lloyd(x: torch.Tensor, valid: torch.Tensor, cent: torch.Tensor, reseed_u: torch.Tensor,
           iters: int) -> torch.Tensor:
    """H&G Lloyd passes on one padded group: x (G, N, d), valid (G, N), cent (G, k, d)."""
    k = cent.shape[1]
    n_rows = valid.sum(1, keepdim=True)
    slots = torch.arange(k, device=x.device)[None, :, None]
    total = torch.zeros(cent.shape[:2], device=x.device)
    for it in range(iters):
        scores = torch.bmm(x, cent.transpose(1, 2)) - 0.5 * cent.pow(2).sum(-1)[:, None, :]
        member = ((scores.argmax(-1)[:, None, :] == slots) & valid[:, None, :]).to(x.dtype)  # (G, k, N)
        counts = member.sum(-1)
        total += counts
        means = torch.bmm(member, x) / counts.clamp(min=1)[..., None]
        cent = torch.where((counts > 0)[..., None], means, cent)
        pick = (reseed_u[it] * n_rows).long().clamp(max=x.shape[1] - 1)  # (G, k): a random row per centroid
        seeds = torch.gather(x, 1, pick[..., None].expand(-1, -1, x.shape[2]))
        cent = torch.where((total == 0)[..., None], seeds, cent)
    return cent


def default_clusters_per_class(rows_per_class: Sequence[int]) -> int:
    """k = min(100, max(2, median rows per class // 5)): H&G's 100 on ImageNet (732–1300 rows),
    14 for the demo's ~70 rows, so that every centroid averages ≥ 5 rows."""
    median = int(np.median(np.asarray(rows_per_class))) if len(rows_per_class) else 0
    return min(100, max(2, median // 5))
