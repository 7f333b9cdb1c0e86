"""Maths shared by several heads: normalisation, class means, distances, grouping, cache keys."""
from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F

from lowshot.errors import InputError

COSINE_HINT = ("needs a representation trained with the cosine classifier: "
               "run `lowshot train --classifier cosine` then `lowshot features`")
NO_CLASSIFIER = ("needs the representation's trained classifier, and the feature file has no classifier_weight "
                 "(features of a timm or torchvision model, or of other code, have none; `lowshot features` on a "
                 "lowshot checkpoint writes it): use a head that needs none, e.g. cosine_ncm (every class "
                 "imprinted from its examples), protonet or logreg")


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows of x scaled to unit L2 norm (zero rows stay zero)."""
    return F.normalize(x, dim=-1)


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class means (C, d) and counts (C,) of feats (N, d); absent classes get a zero mean."""
    counts = torch.bincount(labels, minlength=num_classes).to(feats.dtype)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, labels, feats)
    return sums / counts.clamp(min=1)[:, None], counts


def sq_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (..., N, K) between x (..., N, d) and centres (..., K, d), via the linear form."""
    cross = x @ centres.transpose(-1, -2)
    return (x.pow(2).sum(-1, keepdim=True) - 2 * cross + centres.pow(2).sum(-1).unsqueeze(-2)).clamp_min(0)


def mask_absent(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Scores with −inf in the columns of classes that had no training data (present: bool (C,))."""
    return scores.masked_fill(~present.to(scores.device), float("-inf"))


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch.Generator on `device`, seeded."""
    return torch.Generator(device=device).manual_seed(int(seed))


def split_base(labels: torch.Tensor, task) -> Tuple[torch.Tensor, torch.Tensor]:
    """(base classes of the setup as a long tensor, bool (N,) mask of the rows with a base label)."""
    base = torch.as_tensor(task.base_classes, dtype=torch.long, device=labels.device)
    return base, torch.isin(labels, base)


def cosine_scale(task, head: str) -> float:
    """The representation's cosine-classifier scale s, or an `InputError` saying what to run first."""
    if task.classifier_scale is None:
        raise InputError(None, f"head '{head}' {COSINE_HINT if task.classifier_weight is not None else NO_CLASSIFIER}")
    return float(task.classifier_scale)


def base_rows(task, head: str, device: torch.device) -> torch.Tensor:
    """The representation's classifier rows (C, d), or an `InputError` if the feature file has none."""
    if task.classifier_weight is None:
        raise InputError(None, f"head '{head}' {NO_CLASSIFIER}")
    return task.classifier_weight.to(device=device, dtype=torch.float32)


def group_rows(x: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, width: int = 0):
    """Rows of x grouped by class, zero-padded.

    Args:
        x: (N, d) rows; labels: (N,) labels, all in `classes`; classes: (C,) sorted class ids.
        width: minimal padded width.
    Returns:
        (C, m, d) rows, bool (C, m) mask of real rows, (C,) counts; m = max(largest count, width).
    """
    pos = torch.searchsorted(classes, labels)
    order = torch.argsort(pos, stable=True)
    pos = pos[order]
    counts = torch.bincount(pos, minlength=len(classes))
    within = torch.arange(len(pos), device=x.device) - (torch.cumsum(counts, 0) - counts)[pos]
    m = max(int(counts.max()) if len(pos) else 0, width)
    out = x.new_zeros(len(classes), m, x.shape[1])
    mask = torch.zeros(len(classes), m, dtype=torch.bool, device=x.device)
    out[pos, within], mask[pos, within] = x[order], True
    return out, mask, counts


def fingerprint(*tensors: torch.Tensor) -> tuple:
    """A cheap content key for `task.cache`: shapes and float64 sums of row sums and row norms."""
    key = []
    for t in tensors:
        t = t.detach().float()
        t = t.flatten(1) if t.dim() > 1 else t[:, None]
        norms = torch.linalg.vector_norm(t, dim=-1)
        key += [tuple(t.shape), float(t.sum(-1).double().sum()), float(norms.double().sum())]
    return tuple(key)


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """fn applied to x in chunks of `rows` rows (bounds the memory of (N, K) distance matrices)."""
    return torch.cat([fn(x[i:i + rows]) for i in range(0, len(x), rows)]) if len(x) else fn(x)
