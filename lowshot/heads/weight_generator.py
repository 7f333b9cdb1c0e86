"""Dynamic few-shot learning without forgetting (Gidaris & Komodakis, CVPR 2018, arXiv 1804.09458).

A cosine classifier whose base rows are kept, plus a few-shot classification-weight generator
that writes a novel class's row from its shots: feature averaging plus attention over the base
rows. The generator (and the base rows, scale and bias with it) is trained by the
`lowshot train-weight-generator` stage (`lowshot/train_weight_generator.py`) on cached base-class
features with simulated novel classes (the paper's stage 2; the feature extractor stays frozen).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from lowshot.errors import InputError
from lowshot.heads import HEADS, Head, Task
from lowshot.heads._common import (group_rows, l2_normalise, mask_absent, memoised_model, model_file_digest,
                                    split_base, trained_model_path)


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

    def base_index(self, classes: torch.Tensor, where: Optional[str] = None) -> torch.Tensor:
        """Row indices (K,) of the global base labels `classes` (K,), or an `InputError` for unknown ones."""
        pos = torch.searchsorted(self.classes, classes).clamp(max=len(self.classes) - 1)
        unknown = classes[self.classes[pos] != classes]
        if len(unknown):
            raise InputError(where, f"the weight generator has no base row for class {int(unknown[0])} "
                                    "(it was trained on other base classes): rerun `lowshot train-weight-generator`")
        return pos


@HEADS.register("weight_generator")
class WeightGenerator(Head):
    """Few-shot weight generation without forgetting (Gidaris & Komodakis, CVPR 2018, arXiv 1804.09458).

    Base classes of the setup keep the generator's base rows (trained in stage 2 from the
    representation's cosine classifier); each novel class's row is generated from its training
    rows (real shots and any hallucinated ones) by feature averaging + attention over every base
    row the model has (both setups' base classes: their evaluation attends over all 389 ImageNet
    base classes); score = s · (cos(x, w) + b), −inf outside the setup's base and novel classes.
    Needs `lowshot train-weight-generator` (`model`, default <run>/heads/weight_generator.pt),
    which trains one generator per number of shots; a cell uses the one trained with the most
    shots not above its smallest novel class (else the fewest). In an episode the support rows
    are the shots.
    """

    episodic = True

    def __init__(self, model: Optional[str] = None):
        self.model = model

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "WeightGenerator":
        base, is_base = split_base(labels, task)
        novel_classes = torch.unique(labels[~is_base])
        shots, mask, counts = group_rows(feats[~is_base].float(), labels[~is_base], novel_classes)
        self.net_ = self._load(task, feats.shape[1], int(counts.min()) if len(counts) else 1)
        every = torch.arange(len(self.net_.classes), device=self.net_.classes.device)
        weight = feats.new_zeros(task.num_classes, feats.shape[1], dtype=torch.float32)
        with torch.no_grad():
            weight[base] = self.net_.weight_base[self.net_.base_index(base.to(every.device), self.model)]
            if len(novel_classes):  # attention over every base row, as in their evaluation
                weight[novel_classes] = self.net_.novel_weights(shots, mask, every)
        self.weight_, self.present_ = weight, torch.zeros(task.num_classes, dtype=torch.bool, device=feats.device)
        self.present_[base], self.present_[novel_classes] = True, True
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """s · (cos + b) of shape (N, C); −inf for classes neither base of the setup nor with training rows."""
        self._check_fitted("weight_")
        with torch.no_grad():
            s = self.net_.logits(feats.to(self.weight_.device).float(), self.weight_)
        return mask_absent(s, self.present_)

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Scores (E, Q, W) of a batch of episodes: support (E, W, S, d), query (E, Q, d)."""
        net = self._load(task, support.shape[-1], support.shape[2])
        every = torch.arange(len(net.classes), device=net.classes.device)
        with torch.no_grad():
            rows = net.novel_weights(support.float(), support.new_ones(support.shape[:-1], dtype=torch.bool), every)
            return net.logits(query.float(), rows)

    def input_digests(self, task: Task) -> Dict[str, str]:
        """Fingerprint of the generator file, which `lowshot benchmark` adds to a cell's identity: a cell
        computed with another (e.g. retrained) generator is recomputed, not skipped."""
        from lowshot.train_weight_generator import MISSING
        return {"weight_generator": model_file_digest(task, self._path(task), MISSING)}

    def _path(self, task: Task) -> Path:
        return trained_model_path(task, self.model, "weight_generator_model")

    def _load(self, task: Task, dim: int, shots: int) -> FewShotWeightGenerator:
        """The generator trained for `shots` shots, read once per process (memoised in `task.cache`)."""
        from lowshot.train_weight_generator import load_generator
        path = self._path(task)
        return memoised_model(task, ("weight_generator", str(path), str(task.device), shots),
                              lambda: load_generator(path, dim, shots))
