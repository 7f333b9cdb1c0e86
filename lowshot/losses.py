"""Auxiliary losses of Hariharan & Girshick (ICCV 2017, arXiv 1606.02819), §5 of the reference.

Each is `(scores (N, C), feats (N, d), labels (N,)) -> scalar`, computed on the whole batch;
the softmax is *not* detached, so gradients flow through p as well as through ‖φ‖².
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowshot.registry import Registry

AUX_LOSSES = Registry("auxiliary loss")


@AUX_LOSSES.register("none")
def no_aux(scores: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return scores.new_zeros(())


@AUX_LOSSES.register("l2")
def l2_aux(scores: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(1 / 2N) Σ_i ‖φ_i‖²."""
    return feats.pow(2).sum() / (2 * len(feats))


def _residual(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """e_y − p, of shape (N, C): minus the gradient of CE w.r.t. the scores."""
    return F.one_hot(labels, scores.shape[1]).to(scores.dtype) - torch.softmax(scores, dim=1)


@AUX_LOSSES.register("sgm")
def sgm_aux(scores: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_i ‖e_yi − p_i‖² ‖φ_i‖²: the mean squared per-example gradient norm w.r.t. W."""
    return (_residual(scores, labels).pow(2).sum(1) * feats.pow(2).sum(1)).mean()


@AUX_LOSSES.register("batchsgm")
def batchsgm_aux(scores: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """‖(1/N) Σ_i (e_yi − p_i) φ_iᵀ‖²_F: the squared gradient norm of the batch-mean CE w.r.t. W."""
    return (_residual(scores, labels).t() @ feats / len(feats)).pow(2).sum()
