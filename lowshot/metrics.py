"""Metrics of one cell from test scores: H&G's six accuracies plus Wang/Gidaris and precision.

H&G (`accs`, in this order): top-1/top-5 over novel test images, base test images and all of
them (image-weighted), with top-5 over the whole label space and top-1 its first entry.
Wang et al. 2018 / Gidaris & Komodakis 2018: novel top-5 with the label space restricted to
the setup's novel classes; all top-5 restricted to the setup's base ∪ novel classes; and the
same "with prior", after re-weighting the softmax so that novel classes hold `prior` of the mass.
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
    }
