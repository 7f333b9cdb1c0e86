"""Metrics of one cell from test scores: H&G's six accuracies plus Wang/Gidaris and precision.

H&G (`accs`, in this order): top-1/top-5 over novel test images, base test images and all of
them (image-weighted), with top-5 over the whole label space and top-1 its first entry.
Wang et al. 2018 / Gidaris & Komodakis 2018: novel top-5 with the label space restricted to
the setup's novel classes; all top-5 restricted to the setup's base ∪ novel classes; and the
same "with prior", after re-weighting the softmax so that novel classes hold `prior` of the mass.
Per class (kept small: one number per class of the setup, never a confusion matrix): top-1
accuracy and test count per class, and where the errors go between base and novel classes.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch


def _topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: the label is among the k best scores (ties broken by class index)."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(1)


def _restrict(scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(scores, float("-inf"))
    out[:, classes] = scores[:, classes]
    return out


def _with_prior(scores: torch.Tensor, base: torch.Tensor, novel: torch.Tensor, prior: float) -> torch.Tensor:
    """Log of softmax probabilities rescaled so novel classes sum to `prior`, base to 1 − prior."""
    logp = torch.log_softmax(_restrict(scores, torch.cat([base, novel])), dim=1)
    out = torch.full_like(scores, float("-inf"))
    out[:, novel] = logp[:, novel] - torch.logsumexp(logp[:, novel], 1, keepdim=True) + np.log(prior)
    out[:, base] = logp[:, base] - torch.logsumexp(logp[:, base], 1, keepdim=True) + np.log(1 - prior)
    return out


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean()) if len(x) else float("nan")


def cell_metrics(scores: torch.Tensor, labels: torch.Tensor, base_classes, novel_classes,
                 prior: float = 0.8) -> Dict[str, object]:
    """All metrics of one cell.

    Args:
        scores: (N, C) scores of the test images of the setup's classes over the whole label space.
        labels: (N,) int64 true labels.
        base_classes, novel_classes: the setup's classes.
    Returns:
        `accs` (H&G order, fractions) and named metrics (fractions).
    """
    scores, labels = scores.float().cpu(), labels.cpu()
    base = torch.as_tensor(np.asarray(base_classes), dtype=torch.long)
    novel = torch.as_tensor(np.asarray(novel_classes), dtype=torch.long)
    is_novel, is_base = torch.isin(labels, novel), torch.isin(labels, base)
    top1, top5 = _topk_hits(scores, labels, 1), _topk_hits(scores, labels, 5)
    accs: List[float] = [_mean(top1[is_novel]), _mean(top5[is_novel]), _mean(top1[is_base]),
                         _mean(top5[is_base]), _mean(top1[is_novel | is_base]), _mean(top5[is_novel | is_base])]
    pred = scores.argmax(1)
    pred_novel = torch.isin(pred, novel)
    precision = _mean((pred == labels)[pred_novel])
    hm = 2 * accs[0] * accs[2] / (accs[0] + accs[2]) if accs[0] + accs[2] > 0 else 0.0
    both = torch.cat([base, novel])
    return {
        "accs": accs,
        "novel_precision": precision,
        "harmonic_mean_top1": hm,
        "wang_novel_top5": _mean(_topk_hits(_restrict(scores, novel), labels, 5)[is_novel]),
        "wang_all_top5": _mean(_topk_hits(_restrict(scores, both), labels, 5)[is_novel | is_base]),
        "wang_all_prior_top5": _mean(_topk_hits(_with_prior(scores, base, novel, prior), labels, 5)[is_novel | is_base]),
        **per_class_metrics(pred, labels, base, novel),
    }


def _side(y: torch.Tensor, base: torch.Tensor, novel: torch.Tensor) -> torch.Tensor:
    """(N,) 0 for a base class, 1 for a novel class, 2 for any other class of labels y (N,)."""
    return torch.where(torch.isin(y, base), 0, torch.where(torch.isin(y, novel), 1, 2))


def per_class_metrics(pred: torch.Tensor, labels: torch.Tensor, base: torch.Tensor,
                      novel: torch.Tensor) -> Dict[str, list]:
    """Per-class top-1 accuracy and the base/novel confusion counts of one cell.

    Args:
        pred: (N,) predicted labels; labels: (N,) true labels, all in base ∪ novel.
        base, novel: (B,) and (K,) long tensors, the setup's classes.
    Returns:
        `per_class_top1` and `per_class_count`, lists aligned with the setup's classes sorted
        (base ∪ novel); `base_novel_confusion`, counts of test images [[base→base, base→novel,
        base→other], [novel→base, novel→novel, novel→other]] (rows: true base/novel; "other":
        a class of the label space outside the setup, possible when a head scores unseen classes).
    """
    classes = torch.cat([base, novel]).sort().values
    pos = torch.searchsorted(classes, labels)
    count = torch.bincount(pos, minlength=len(classes))
    hits = torch.bincount(pos[pred == labels], minlength=len(classes))
    acc = [round(h / c, 4) if c else None for h, c in zip(hits.tolist(), count.tolist())]
    confusion = torch.bincount(_side(labels, base, novel) * 3 + _side(pred, base, novel), minlength=9).view(3, 3)[:2]
    return {"per_class_top1": acc, "per_class_count": count.tolist(), "base_novel_confusion": confusion.tolist()}
