"""The frozen classifier that the analogy generator's cross-entropy term goes through.

H&G train G with CE(classifier(B̂), class of B) + λ · MSE(B̂, B) (reference §8.5), the classifier
being the ConvNet's last layer (linear, no bias) or, when none is given, a linear layer with bias
trained on the base-class features (§8.2). The CE term must see the *norm* of what G makes: a
cosine classifier's loss is blind to it and fights the regression (issue 8: through the demo's
cosine classifier G stayed at the copy-the-seed MSE and generation cost 3 to 10 points of novel
top-1). Two kinds, chosen by `GenerateConfig.classifier`:

* `fit` (default): lowshot's own `logreg` head (linear with bias, full-batch L-BFGS, weight
  decay `wd`) fitted on the base-class train rows: the classifier family that the benchmark's
  logistic regression then trains on real and generated rows.
* `representation`: the feature file's classifier rows (H&G's preferred choice), only when they
  are a plain linear layer; a cosine classifier is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
import torch

from lowshot.heads import HEADS, Task

KINDS = ("fit", "representation")


@dataclass
class LossClassifier:
    """Scores over the base classes only: column j is base class `classes[j]`.

    Attributes:
        weight: (num_base, d); bias: (num_base,).
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, d) -> scores (B, num_base)."""
        return feats @ self.weight.t() + self.bias


def fit_base_logreg(feats: torch.Tensor, labels: torch.Tensor, classes: Sequence[int],
                    wd: float) -> Dict[str, torch.Tensor]:
    """Multinomial logistic regression with bias on the base rows (the `logreg` head, L-BFGS).

    Args:
        feats: (N, d) base-class rows; labels: (N,) their global classes, all in `classes`.
        classes: the sorted base classes.
        wd: weight decay on weight and bias.

    Returns:
        {"weight": (num_base, d), "bias": (num_base,)}, rows in the order of `classes`.
    """
    base = np.asarray(classes, dtype=np.int64)
    task = Task(int(base.max()) + 1, base, np.zeros(0, dtype=np.int64), device=feats.device)
    head = HEADS.create("logreg", wd=wd).fit(feats, labels, task)
    return {"weight": head.weight_[base].contiguous(), "bias": head.bias_[base].contiguous()}


def representation_classifier(weight: torch.Tensor, classes: Sequence[int]) -> Dict[str, torch.Tensor]:
    """The base rows of the representation's own linear classifier, which has no bias (zero bias).

    Args:
        weight: (C, d) linear classifier rows (`lowshot.stages.generate` refuses cosine ones).
        classes: the sorted base classes.
    """
    rows = weight[torch.as_tensor(list(classes), device=weight.device)]
    return {"weight": rows.contiguous(), "bias": rows.new_zeros(len(rows))}
