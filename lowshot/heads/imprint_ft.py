"""Fine-tuning the last layer of a cosine classifier on cached features: imprint_ft and rand_ft."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads.imprint import imprinted_weight
from lowshot.heads.maths import (
    cosine_scale,
    generator,
    l2_normalise,
    mask_absent,
    split_base,
)


@HEADS.register("imprint_ft")
class ImprintFT(Head):
    """Imprinting + fine-tuning of the last layer (Qi, Brown & Lowe, CVPR 2018, arXiv 1712.07136).

    Starts from the imprinted classifier (the cosine classifier's base rows, imprinted novel
    rows) and trains every row of the setup's classes and the scale s with cross-entropy on
    the cached base rows and the shots: rows normalised inside the forward pass, class-balanced
    minibatches (a class drawn uniformly, then one of its rows), SGD with momentum, weight
    decay on the rows but not on s, a fixed number of steps (nothing is selected on test
    images). Only the last layer moves, unlike Qi et al.'s full-network FT: call it "FT-last".

    `weighted=True` uses BmLMz/Few-Shot_Imprinted-Weights's loss instead: the shots of a novel
    class are replicated ν = ⌊mean base-class count / n⌋ times, rows are drawn uniformly, and
    each row's cross-entropy is weighted 1 (novel) or 1/B² (base, B = number of base classes),
    summed (divided by the batch size, which only rescales lr). Nearly all the loss is then
    novel: it buys novel recall with base accuracy, which drops well below the unweighted run.
    """

    episodic = False
    random_init = False

    def __init__(self, steps: int = 200, batch_size: int = 512, lr: float = 0.01, momentum: float = 0.9,
                 wd: float = 5e-4, weighted: bool = False):
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.wd = wd
        self.weighted = weighted

    def check_inputs(self, task: Task) -> None:
        cosine_scale(task, "rand_ft" if self.random_init else "imprint_ft")

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "ImprintFT":
        name = "rand_ft" if self.random_init else "imprint_ft"
        scale = cosine_scale(task, name)
        weight, self.present_ = imprinted_weight(feats, labels, task, name)
        classes = self.present_.nonzero()[:, 0]
        base = split_base(labels, task)[0]
        gen = generator(task.seed, feats.device)
        w0 = weight[classes]
        if self.random_init:
            novel = ~torch.isin(classes, base)
            w0[novel] = l2_normalise(torch.randn(int(novel.sum()), w0.shape[1], generator=gen, device=w0.device))
        y = torch.searchsorted(classes, labels)
        probs, row_weight = self._sampling(y, torch.isin(classes, base), len(base))
        w, self.scale_ = self._train(l2_normalise(feats.float()), y, w0, scale, probs, row_weight, gen)
        self.weight_ = weight.new_zeros(weight.shape)
        self.weight_[classes] = l2_normalise(w)
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """s · cos of shape (N, C); −inf for classes neither base of the setup nor with shots."""
        self._check_fitted("weight_")
        s = self.scale_ * l2_normalise(feats.to(self.weight_.device).float()) @ self.weight_.t()
        return mask_absent(s, self.present_)

    def _sampling(self, y: torch.Tensor, base_class: torch.Tensor, num_base: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Row sampling probabilities (N,) and per-row loss weights (N,); y indexes the trained classes."""
        counts = torch.bincount(y, minlength=len(base_class)).float()
        if not self.weighted:  # class-balanced: every class with rows equally often
            return 1.0 / (counts[y] * int((counts > 0).sum())), torch.ones_like(counts[y])
        base_counts = counts[base_class & (counts > 0)]
        mean_base = float(base_counts.mean()) if len(base_counts) else 1.0
        replicas = torch.where(base_class, 1.0, (mean_base / counts.clamp(min=1)).floor().clamp(min=1))
        class_weight = torch.where(base_class, 1.0 / max(num_base, 1) ** 2, 1.0)
        return replicas[y] / replicas[y].sum(), class_weight[y]

    def _train(self, z, y, w0, scale: float, probs, row_weight, gen) -> Tuple[torch.Tensor, float]:
        """SGD on the rows w (K, d) and the scale s; returns (w, s)."""
        w = w0.clone().requires_grad_(True)
        s = torch.tensor(scale, device=z.device, requires_grad=True)
        opt = torch.optim.SGD([{"params": [w], "weight_decay": self.wd}, {"params": [s], "weight_decay": 0.0}],
                              lr=self.lr, momentum=self.momentum)
        picks = torch.multinomial(probs, self.steps * self.batch_size, replacement=True, generator=gen)
        for idx in picks.view(self.steps, self.batch_size):
            logits = s * z[idx] @ l2_normalise(w).t()
            loss = (row_weight[idx] * F.cross_entropy(logits, y[idx], reduction="none")).sum() / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return w.detach(), float(s.detach())


@HEADS.register("rand_ft")
class RandFT(ImprintFT):
    """Rand + FT (Qi, Brown & Lowe, CVPR 2018): `imprint_ft` with novel rows started at random unit vectors.

    Shows what imprinting adds as an initialisation; the same fixed schedule and options.
    """

    random_init = True
