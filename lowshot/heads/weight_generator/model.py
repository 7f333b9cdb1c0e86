"""Gidaris & Komodakis' cosine classifier with a few-shot weight generator (CVPR 2018, arXiv 1804.09458).

Built from what `lowshot train-weight-generator` saved (`from_saved`: one generator per number of
shots); read by the `weight_generator` head.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
from torch import nn

from lowshot.errors import InputError
from lowshot.heads.maths import check_dim, l2_normalise


class FewShotWeightGenerator(nn.Module):
    """Cosine classifier + attention-based weight generator over B base classes, d-dimensional features.

    Parameters (the paper's names): `weight_base` (B, d) base rows; `scale_cls` s and `bias` b of the
    scores s · (cos(x, w) + b); `phi_avg`, `phi_att` (d,) diagonal maps of the averaged and attended
    parts; `query` (d → d, affine, initialised near the identity), `keys` (B, d), `scale_att` γ of
    the attention. `classes` (B,) holds the global label of each base row. `attention=False` is the
    paper's feature-averaging generator, w' = φ_avg ⊙ mean ẑ (its "Avg" rows; the attention
    parameters are then unused).
    """

    def __init__(self, classes: torch.Tensor, weight_base: torch.Tensor, scale_cls: float = 10.0,
                 scale_att: float = 10.0, attention: bool = True):
        super().__init__()
        b, d = weight_base.shape
        self.register_buffer("classes", torch.as_tensor(classes, dtype=torch.long).clone())
        self.register_buffer("attention", torch.tensor(bool(attention)))
        self.weight_base = nn.Parameter(weight_base.detach().float().clone())
        self.scale_cls = nn.Parameter(torch.tensor(float(scale_cls)))
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.phi_avg = nn.Parameter(torch.ones(d))
        self.phi_att = nn.Parameter(torch.ones(d))
        self.query = nn.Linear(d, d)
        with torch.no_grad():
            self.query.weight.copy_(torch.eye(d) + 0.001 * torch.randn(d, d))
            self.query.bias.zero_()
        self.keys = nn.Parameter(torch.randn(b, d) * math.sqrt(2.0 / d))
        self.scale_att = nn.Parameter(torch.tensor(float(scale_att)))

    def novel_weights(self, shots: torch.Tensor, mask: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Generated rows (..., W, d) of W classes from their shots (..., W, S, d).

        w' = φ_avg ⊙ mean_i ẑ_i + φ_att ⊙ mean_i Σ_b softmax_b(γ cos(q(ẑ_i), k_b)) ŵ_b, with ẑ_i the
        L2-normalised shots, ŵ_b the normalised base rows and b over `base` (indices into the B rows).
        `mask` (..., W, S) bool marks the real shots (classes may have different numbers).
        """
        z = l2_normalise(shots)
        m = mask.to(z.dtype)[..., None]
        count = m.sum(-2).clamp(min=1)
        w_avg = (z * m).sum(-2) / count
        if not bool(self.attention):
            return self.phi_avg * w_avg
        q = l2_normalise(self.query(z))
        att = torch.softmax(self.scale_att * q @ l2_normalise(self.keys[base]).t(), dim=-1)  # (..., W, S, K)
        w_att = ((att @ l2_normalise(self.weight_base[base])) * m).sum(-2) / count
        return self.phi_avg * w_avg + self.phi_att * w_att

    def logits(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """s · (cos(x, w) + b) of shape (..., N, K) for features x (..., N, d) and rows (..., K, d)."""
        return self.scale_cls * (l2_normalise(x) @ l2_normalise(weights).transpose(-1, -2) + self.bias)

    def base_index(self, classes: torch.Tensor) -> torch.Tensor:
        """Row indices (K,) of the global base labels `classes` (K,), or an `InputError` for unknown ones."""
        pos = torch.searchsorted(self.classes, classes).clamp(max=len(self.classes) - 1)
        unknown = classes[self.classes[pos] != classes]
        if len(unknown):
            raise InputError(None, f"the weight generator has no base row for class {int(unknown[0])} "
                                   "(it was trained on other base classes): rerun `lowshot train-weight-generator`")
        return pos


class ShotGenerators(nn.ModuleDict):
    """The generators of one file, keyed by their number of training shots (as strings)."""

    def for_shots(self, shots: int) -> FewShotWeightGenerator:
        """The generator trained with the most shots ≤ `shots` (else the fewest)."""
        trained = sorted(int(n) for n in self.keys())
        return self[str(max([n for n in trained if n <= shots], default=trained[0]))]


def from_saved(saved: Dict[str, Any], dim: int) -> ShotGenerators:
    """The generators `lowshot train-weight-generator` saved, checked to take `dim`-dimensional features."""
    check_dim(saved, dim, "the weight generator")
    nets = {}
    for n, state in saved["generators"].items():
        nets[str(n)] = FewShotWeightGenerator(state["classes"], state["weight_base"])
        nets[str(n)].load_state_dict(state)
    return ShotGenerators(nets)
