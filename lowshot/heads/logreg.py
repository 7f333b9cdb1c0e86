"""Logistic regression: the Hariharan & Girshick low-shot classifier (`low_shot.py`).

Linear with bias over the whole label space, trained on all base rows plus the novel shots.
H&G draw batches of 1000 split between base and novel rows by the class-count ratio
f = |base| / (|base| + |novel|), and minimise the mean cross-entropy plus weight decay with
SGD (momentum 0.9, dampening 0.9, constant lr) for `maxiters` steps (`solver="hg"`).

The default `solver="lbfgs"` minimises the expectation of that very objective,
    f · mean_base CE + (1 − f) · mean_novel CE + wd/2 · (‖W‖² + ‖b‖²),
in full batch with L-BFGS, warm-started from the base-only solution that the cells of a
benchmark share. With `coarse` = k > 1 it first solves the same objective on a seeded 1/k sample of
the base rows (all novel rows kept, tolerance × 10) and starts the full solve from there: the same
optimum (within `tol`) in fewer passes over the base rows (README "At ImageNet size"); 0 = off. Classes with no training row are never predicted (score −inf): under H&G's
sampling their logits only ever receive negative gradients.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F

from lowshot.errors import InputError
from lowshot.heads import HEADS, Head, Task
from lowshot.heads._common import mask_absent, split_base

SOLVER_PARAMS = {"lbfgs": ("wd", "tol", "coarse"), "hg": ("lr", "wd", "maxiters", "batch_size")}  # what each solver reads


def mixing_weights(labels: torch.Tensor, task: Task) -> torch.Tensor:
    """Per-row weights (N,) summing to 1: f split evenly over base rows, 1 − f over novel rows."""
    is_base = split_base(labels, task)[1]
    nb, nn_ = len(task.base_classes), len(task.novel_classes)
    f = nb / (nb + nn_) if is_base.any() and (~is_base).any() else float(is_base.any())
    w = torch.where(is_base, f / is_base.sum().clamp(min=1), (1 - f) / (~is_base).sum().clamp(min=1))
    return w.to(torch.float32)


@HEADS.register("logreg")
class LogReg(Head):
    """Multinomial logistic regression on cached features (H&G 2017, arXiv 1606.02819, §3.4)."""

    def __init__(self, solver: str = "lbfgs", lr: float = 0.1, wd: float = 0.001, maxiters: int = 10000,
                 batch_size: int = 1000, tol: float = 1e-4, coarse: int = 0):
        self.solver = solver
        self.lr = lr
        self.wd = wd
        self.maxiters = maxiters
        self.batch_size = batch_size
        self.tol = tol
        self.coarse = coarse

    def get_params(self) -> Dict[str, Any]:
        """The options the chosen solver uses (they make the result identity); the others have no effect.
        `coarse` appears only when on, so results computed before it existed keep their identity."""
        params = super().get_params()
        used = SOLVER_PARAMS.get(self.solver)
        params = params if used is None else {k: v for k, v in params.items() if k == "solver" or k in used}
        return {k: v for k, v in params.items() if k != "coarse" or v}

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "LogReg":
        if self.solver not in SOLVER_PARAMS:
            raise InputError(None, f"unknown logreg solver {self.solver!r}; choose one of: hg, lbfgs")
        self.present_ = torch.bincount(labels, minlength=task.num_classes) > 0
        if self.solver == "hg":
            self.weight_, self.bias_ = self._fit_hg(feats, labels, task)
        else:
            self.weight_, self.bias_ = self._fit_lbfgs(feats, labels, task)
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        self._check_fitted("weight_")
        s = feats.to(self.weight_.device) @ self.weight_.t() + self.bias_
        return s if self.solver == "hg" else mask_absent(s, self.present_)

    def _fit_hg(self, feats, labels, task: Task):
        """H&G's SGD schedule, exactly: 1000-way linear layer with bias, class-ratio batch mixing."""
        gen = torch.Generator().manual_seed(task.seed)
        layer = torch.nn.Linear(feats.shape[1], task.num_classes)
        with torch.no_grad():  # nn.Linear's default init, drawn from the seeded generator
            bound = feats.shape[1] ** -0.5
            layer.weight.uniform_(-bound, bound, generator=gen)
            layer.bias.uniform_(-bound, bound, generator=gen)
        layer.to(feats.device)
        is_base = split_base(labels, task)[1]
        base_rows, novel_rows = is_base.nonzero()[:, 0].cpu(), (~is_base).nonzero()[:, 0].cpu()
        f = len(task.base_classes) / (len(task.base_classes) + len(task.novel_classes))
        num_base = round(self.batch_size * f) if len(novel_rows) else self.batch_size
        opt = torch.optim.SGD(layer.parameters(), lr=self.lr, momentum=0.9, dampening=0.9, weight_decay=self.wd)
        for _ in range(self.maxiters):
            pick = base_rows[torch.randperm(len(base_rows), generator=gen)[:num_base]]
            if len(novel_rows):
                more = novel_rows[torch.randint(len(novel_rows), (self.batch_size - num_base,), generator=gen)]
                pick = torch.cat([pick, more])
            loss = F.cross_entropy(layer(feats[pick.to(feats.device)]), labels[pick.to(labels.device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return layer.weight.detach(), layer.bias.detach()

    def _fit_lbfgs(self, feats, labels, task: Task):
        """Full-batch L-BFGS on the expected H&G objective over the classes present."""
        classes = self.present_.nonzero()[:, 0]
        local = torch.full((task.num_classes,), -1, dtype=torch.long, device=labels.device)
        local[classes] = torch.arange(len(classes), device=labels.device)
        w_init, b_init = self._warm_start(feats, labels, task, classes)
        if self.coarse > 1:
            keep = coarse_rows(labels, task, self.coarse)
            w_init, b_init = _lbfgs_softmax(feats[keep], local[labels[keep]], mixing_weights(labels[keep], task),
                                            w_init, b_init, self.wd, 10 * self.tol)
        w, b = _lbfgs_softmax(feats, local[labels], mixing_weights(labels, task), w_init, b_init, self.wd, self.tol)
        weight = feats.new_zeros(task.num_classes, feats.shape[1])
        bias = feats.new_zeros(task.num_classes)
        weight[classes], bias[classes] = w, b
        return weight, bias

    def _warm_start(self, feats, labels, task: Task, classes: torch.Tensor):
        """Base rows from the base-only solution (computed once per process), novel rows at zero."""
        is_base = split_base(labels, task)[1]
        if not is_base.any():  # an episode: nothing to share
            return feats.new_zeros(len(classes), feats.shape[1]), feats.new_zeros(len(classes))
        key = ("logreg-base", self.wd, self.tol, tuple(task.base_classes.tolist()), int(is_base.sum()))
        if key not in task.cache:
            base_cls = torch.as_tensor(task.base_classes, device=labels.device)
            local = torch.searchsorted(base_cls, labels[is_base])
            weights = torch.full((int(is_base.sum()),), 1.0 / int(is_base.sum()), device=feats.device)
            zeros_w = feats.new_zeros(len(base_cls), feats.shape[1])
            task.cache[key] = (base_cls, *_lbfgs_softmax(feats[is_base], local, weights, zeros_w,
                                                         feats.new_zeros(len(base_cls)), self.wd, self.tol))
        base_cls, wb, bb = task.cache[key]
        w = feats.new_zeros(len(classes), feats.shape[1])
        b = feats.new_zeros(len(classes))
        pos = torch.searchsorted(classes, base_cls)
        w[pos], b[pos] = wb, bb
        return w, b


def coarse_rows(labels: torch.Tensor, task: Task, k: int) -> torch.Tensor:
    """Bool (N,): every novel row and a 1/k sample of the base rows, drawn from `task.seed`.

    Only a starting point depends on the sample: the full solve that follows decides the result."""
    is_base = split_base(labels, task)[1]
    draw = torch.rand(len(labels), generator=torch.Generator().manual_seed(task.seed)).to(labels.device) < 1.0 / k
    return ~is_base | draw


def _lbfgs_softmax(x, y, row_weight, w0, b0, wd: float, tol: float, max_iter: int = 500):
    """Minimise Σ_i row_weight_i · CE(W x_i + b, y_i) + wd/2 (‖W‖² + ‖b‖²) from (w0, b0)."""
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        ce = F.cross_entropy(x @ w.t() + b, y, reduction="none")
        loss = (row_weight * ce).sum() + 0.5 * wd * (w.pow(2).sum() + b.pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()
