"""Metrics of one cell from test scores: H&G's six accuracies plus Wang/Gidaris and precision.

H&G (`accs`, in this order): top-1/top-5 over novel test images, base test images and all of
them (image-weighted), with top-5 over the whole label space and top-1 its first entry.
Wang et al. 2018 / Gidaris & Komodakis 2018: novel top-5 with the label space restricted to
the setup's novel classes; all top-5 restricted to the setup's base ∪ novel classes; and the
same "with prior", after re-weighting the softmax so that novel classes hold `prior` of the mass.
Per class (kept small: one number per class of the setup, never a confusion matrix): top-1
accuracy and test count per class, and where the errors go between base and novel classes.
Calibration of the head's probabilities, p = softmax of its scores over the label space (for a head
whose scores are log-probabilities, p is its own probabilities): expected calibration error over
`BINS` equal-width bins of the top-1 probability (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017), negative log-likelihood, Brier score Σ_c (p_c − 1[c = y])² (Brier 1950); the
same ECE and the mean top-1 probability minus accuracy over the images predicted as a base class and
as a novel class; all-class top-1 as the novel prior is swept over `PRIORS`; and, when asked, ECE,
NLL and Brier of softmax(scores / T) for every T of `TEMPERATURES`, so that the report can apply a
temperature chosen on setup 1.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch


def _ranks(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(N,) rank of each row's score in column pos (N,) among its row of scores (N, C): 0 = best, ties broken by
    column, so the label is among the k best iff its rank < k (one comparison pass, no sort)."""
    own = scores.gather(1, pos[:, None])
    rank = (scores > own).sum(1, dtype=torch.int32)  # int32: torch's default int64 sum of bools is 3.5× slower
    tied = ((scores == own).sum(1, dtype=torch.int32) > 1).nonzero()[:, 0]
    if len(tied):
        earlier = torch.arange(scores.shape[1]) < pos[tied, None]
        rank[tied] += ((scores[tied] == own[tied]) & earlier).sum(1, dtype=torch.int32)
    return rank


def _columns(classes: torch.Tensor, labels: torch.Tensor):
    """The label space restricted to `classes`: the classes sorted (columns in class order, so ties still break by
    class index), each label's column among them (N,), and whether the label is one of them (N,)."""
    classes = classes.sort().values
    pos = torch.searchsorted(classes, labels).clamp_max(len(classes) - 1)
    return classes, pos, classes[pos] == labels


def _restricted_hits(scores: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: the label is among the k best of `classes` (Wang et al.'s restricted label space); False for a
    label outside them."""
    classes, pos, inside = _columns(classes, labels)
    return (_ranks(scores.index_select(1, classes), pos) < k) & inside


def _prior_hits(scores: torch.Tensor, labels: torch.Tensor, base: torch.Tensor, novel: torch.Tensor, prior: float,
                k: int) -> torch.Tensor:
    """(N,) bool: the label is among the k best of base ∪ novel after the softmax is re-weighted so that the novel
    classes hold `prior` of its mass and the base classes 1 − prior: class c of side S scores
    s_c − log Σ_{c' ∈ S} exp(s_c') + log(mass of S) (the softmax's normaliser is common to all classes)."""
    classes, pos, inside = _columns(torch.cat([base, novel]), labels)

    def side(cls: torch.Tensor, mass: float) -> torch.Tensor:
        return np.log(mass) - scores.index_select(1, cls).logsumexp(1, keepdim=True)

    weighted = torch.where(torch.isin(classes, novel), side(novel, prior), side(base, 1 - prior))
    weighted += scores.index_select(1, classes)
    return (_ranks(weighted, pos) < k) & inside


BINS = 15
PRIORS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # novel prior mass 0.05, 0.10, ..., 0.95
TEMPERATURES = tuple(2.0 ** (k / 2) for k in range(-16, 17))  # 1/256 ... 256, factors of √2


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean()) if len(x) else float("nan")


def cell_metrics(scores: torch.Tensor, labels: torch.Tensor, base_classes, novel_classes,
                 prior: float = 0.8, temperatures: bool = False) -> Dict[str, object]:
    """All metrics of one cell.

    Args:
        scores: (N, C) scores of the test images of the setup's classes over the whole label space.
        labels: (N,) int64 true labels.
        base_classes, novel_classes: the setup's classes.
        temperatures: also `calibration_by_temperature` ([ECE, NLL, Brier] at each of `TEMPERATURES`).
    Returns:
        `accs` (H&G order, fractions) and named metrics (fractions; NLL in nats; Brier in [0, 2]).
    """
    scores, labels = scores.float().cpu(), labels.cpu()
    base = torch.as_tensor(np.asarray(base_classes), dtype=torch.long)
    novel = torch.as_tensor(np.asarray(novel_classes), dtype=torch.long)
    is_novel, is_base = torch.isin(labels, novel), torch.isin(labels, base)
    pred = scores.argmax(1)  # the first best class: a label is top-1 iff it is this (ties broken by class index)
    top1, top5 = pred == labels, _ranks(scores, labels) < min(5, scores.shape[1])
    accs: List[float] = [_mean(top1[is_novel]), _mean(top5[is_novel]), _mean(top1[is_base]),
                         _mean(top5[is_base]), _mean(top1[is_novel | is_base]), _mean(top5[is_novel | is_base])]
    pred_novel = torch.isin(pred, novel)
    precision = _mean((pred == labels)[pred_novel])
    hm = 2 * accs[0] * accs[2] / (accs[0] + accs[2]) if accs[0] + accs[2] > 0 else 0.0
    both = torch.cat([base, novel])
    return {
        "accs": accs,
        "novel_precision": precision,
        "harmonic_mean_top1": hm,
        "wang_novel_top5": _mean(_restricted_hits(scores, labels, novel, 5)[is_novel]),
        "wang_all_top5": _mean(_restricted_hits(scores, labels, both, 5)[is_novel | is_base]),
        "wang_all_prior_top5": _mean(_prior_hits(scores, labels, base, novel, prior, 5)[is_novel | is_base]),
        **per_class_metrics(pred, labels, base, novel),
        **probability_metrics(scores, labels, base, novel, temperatures, pred),
    }


def probability_metrics(scores: torch.Tensor, labels: torch.Tensor, base: torch.Tensor, novel: torch.Tensor,
                        temperatures: bool = False, pred: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Calibration, the prior sweep and (`temperatures`) the temperature curve over the test images of the
    setup's classes (those behind all-class top-1); `pred` (N,): the top-1 classes, if known."""
    keep = torch.isin(labels, torch.cat([base, novel]))
    if not keep.all():
        scores, labels, pred = scores[keep], labels[keep], None if pred is None else pred[keep]
    out: Dict[str, object] = {**calibration_metrics(scores, labels, base, novel, pred),
                              "all_top1_by_prior": prior_sweep(scores, labels, base, novel)}
    if temperatures:
        out["calibration_by_temperature"] = temperature_curve(scores, labels)
    return out


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


def expected_calibration_error(conf: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> float:
    """ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)| over `bins` equal-width bins ((b−1)/B, b/B] of the
    top-1 probability conf (N,), correct (N,) bool; NaN for N = 0."""
    if not len(conf):
        return float("nan")
    conf = conf.double()
    idx = (conf * bins).ceil().long().clamp(1, bins) - 1
    gap = torch.bincount(idx, conf, bins) - torch.bincount(idx, correct.double(), bins)
    return float(gap.abs().sum() / len(conf))


def probability_scores(scores: torch.Tensor, labels: torch.Tensor, pred: torch.Tensor) -> Dict[str, object]:
    """ECE, NLL and Brier score of p = softmax(scores) (N, C) for labels (N,) and top-1 predictions pred (N,);
    also `conf` (N,), the top-1 probability (a tensor, for the callers).

    log Σ_c exp(s_c) = s_top − log p_top, exact since p_top ≥ 1/C, so −log p_y = s_top − log p_top − s_y
    does not underflow where p_y does.
    """
    p = torch.softmax(scores, 1)
    conf = p.gather(1, pred[:, None])[:, 0]
    s_pred, s_true = scores.gather(1, pred[:, None])[:, 0], scores.gather(1, labels[:, None])[:, 0]
    nll = s_pred.double() - conf.double().log() - s_true.double()
    brier = torch.linalg.vector_norm(p, dim=1).double() ** 2 - 2 * p.gather(1, labels[:, None])[:, 0].double() + 1
    return {"ece": expected_calibration_error(conf, pred == labels), "nll": _mean(nll), "brier": _mean(brier),
            "conf": conf}


def calibration_metrics(scores: torch.Tensor, labels: torch.Tensor, base: torch.Tensor,
                        novel: torch.Tensor, pred: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Calibration of softmax(scores) (N, C) over the label space, and of base and novel predictions apart.

    Returns:
        `ece`, `nll`, `brier`; `ece_pred_base` / `ece_pred_novel`: ECE over the images whose top-1 class is
        a base / novel class; `overconf_pred_base` / `overconf_pred_novel`: mean top-1 probability minus
        accuracy over those images (> 0: over-confident).
    """
    pred = scores.argmax(1) if pred is None else pred  # the top-1 of the precision and the per-class tables
    out = probability_scores(scores, labels, pred)
    conf, correct = out.pop("conf"), pred == labels
    for side, classes in (("base", base), ("novel", novel)):
        rows = torch.isin(pred, classes)
        out[f"ece_pred_{side}"] = expected_calibration_error(conf[rows], correct[rows])
        out[f"overconf_pred_{side}"] = _mean(conf[rows].double() - correct[rows].double())
    return out


def prior_sweep(scores: torch.Tensor, labels: torch.Tensor, base: torch.Tensor, novel: torch.Tensor,
                priors=PRIORS) -> List[float]:
    """All-class top-1 (fraction) at each novel prior π of `priors`, the re-weighting of `_prior_hits`.

    With novel classes given mass π and base classes 1 − π, an image goes to its best novel class n*
    when log p(n* | novel) − log p(b* | base) > log((1 − π) / π), b* its best base class; each side's
    shares are softmax(scores) renormalised within the side, so they need no softmax over the rest.
    """
    def best_share(classes: torch.Tensor):  # log of the best class's share within the side (≥ log 1/K: no underflow)
        share, pos = torch.softmax(scores.index_select(1, classes), 1).max(1)
        return share.log().nan_to_num(nan=float("-inf")), classes[pos]  # NaN: every score of the side is −inf

    share_n, pred_n = best_share(novel)
    share_b, pred_b = best_share(base)
    margin = (share_n - share_b).nan_to_num(nan=float("-inf"))[:, None]
    threshold = torch.tensor([np.log((1 - p) / p) for p in priors], dtype=margin.dtype)
    hit = torch.where(margin > threshold, (pred_n == labels)[:, None], (pred_b == labels)[:, None])
    return [round(float(a), 6) for a in hit.double().mean(0)]


def temperature_curve(scores: torch.Tensor, labels: torch.Tensor, temperatures=TEMPERATURES) -> List[List[float]]:
    """[ECE, NLL, Brier] of softmax(scores / T) for each T of `temperatures`; columns that are −inf in every
    row (classes a head never scores) are dropped first, which changes nothing but the time."""
    live = torch.isfinite(scores).any(0)
    keep = torch.cat([torch.nonzero(live)[:, 0], labels.unique()]).unique()
    s, y = scores[:, keep], torch.searchsorted(keep, labels)
    pred = s.argmax(1)
    out = []
    for t in temperatures:
        m = probability_scores(s / t, y, pred)
        out.append([round(m["ece"], 6), round(m["nll"], 6), round(m["brier"], 6)])
    return out


def episode_calibration(scores: torch.Tensor, truth: torch.Tensor) -> Dict[str, float]:
    """ECE, NLL and Brier score of softmax(scores) over the episode's ways, pooled over every query of every
    episode: scores (E, Q, W), truth (E, Q) each query's way (NLL and Brier are then the means over episodes)."""
    s = scores.reshape(-1, scores.shape[-1]).float().cpu()
    y = truth.reshape(-1).long().cpu()
    out = probability_scores(s, y, s.argmax(1))
    out.pop("conf")
    return out
