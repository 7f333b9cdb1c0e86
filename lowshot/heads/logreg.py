"""Logistic regression: the Hariharan & Girshick low-shot classifier (`low_shot.py`).

Linear with bias over the whole label space, trained on all base rows plus the novel shots.
H&G draw batches of 1000 split between base and novel rows by the class-count ratio
f = |base| / (|base| + |novel|), and minimise the mean cross-entropy plus weight decay with
SGD (momentum 0.9, dampening 0.9, constant lr) for `maxiters` steps (`solver="hg"`).

The default `solver="lbfgs"` minimises the expectation of that very objective,
    f · mean_base CE + (1 − f) · mean_novel CE + wd/2 · (‖W‖² + ‖b‖²),
in full batch until the largest gradient entry is ≤ `tol`, warm-started from the base-only solution that
the cells of a benchmark share. With many base rows per class (more than 4 × `sample`) it works in
rounds on a seeded sample of `sample` base rows per class plus every novel row, each round corrected by
one full gradient so that only the true optimum is a fixed point (`lowshot.heads.logreg_solver`): the
same optimum in a few full passes instead of tens; the cells of a process share, besides the base-only
solution, the full pass at their common start, so a cell's first round costs no full pass (docs/speed.md,
"At ImageNet size"). Classes with no training row are never
predicted (score −inf): under H&G's sampling their logits only ever receive negative gradients.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F

from lowshot.errors import InputError
from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads.logreg_solver import (
    anchor_pass,
    minimise_softmax,
    penalised,
    sampled_base_rows,
    value_grad,
)
from lowshot.heads.maths import mask_absent, split_base

SOLVER_PARAMS = {"lbfgs": ("wd", "tol", "sample"), "hg": ("lr", "wd", "maxiters", "batch_size")}  # what each solver reads
WARM_TOL = 10  # with sample rounds the shared base-only solution, a starting point only, stops at WARM_TOL × tol
SAMPLE = 32  # default base rows per class in the sample of `minimise_softmax`


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

    # 1: the sample rounds start from a shared anchor pass. They stop at the same optimum within `tol` as
    # before, but on a flat optimum (n = 1 at ImageNet size) where they stop moves novel top-1 by up to 0.8
    # points, so earlier results are recomputed, not mixed with these (on small data, where the rounds never
    # run, the recomputation gives the same numbers)
    revision = 1

    def __init__(self, solver: str = "lbfgs", lr: float = 0.1, wd: float = 0.001, maxiters: int = 10000,
                 batch_size: int = 1000, tol: float = 1e-4, sample: int = SAMPLE):
        self.solver = solver
        self.lr = lr
        self.wd = wd
        self.maxiters = maxiters
        self.batch_size = batch_size
        self.tol = tol
        self.sample = sample

    def get_params(self) -> Dict[str, Any]:
        """The options the chosen solver uses (they make the result identity); the others have no effect.
        `sample` appears only when it is not the default (see `revision` for the rounds' changes)."""
        params = super().get_params()
        used = SOLVER_PARAMS.get(self.solver)
        params = params if used is None else {k: v for k, v in params.items() if k == "solver" or k in used}
        return {k: v for k, v in params.items() if k != "sample" or v != SAMPLE}

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
        """The expected H&G objective over the classes present, minimised to `tol` (`minimise_softmax`)."""
        classes = self.present_.nonzero()[:, 0]
        local = torch.full((task.num_classes,), -1, dtype=torch.long, device=labels.device)
        local[classes] = torch.arange(len(classes), device=labels.device)
        weights, is_base = mixing_weights(labels, task), split_base(labels, task)[1]
        keep = sampled_base_rows(labels, is_base, self.sample, task.seed)
        w_init, b_init, start = self._start(feats, labels, task, classes, weights, is_base, keep is not None)
        w, b = minimise_softmax(feats, local[labels], weights, w_init, b_init, self.wd, self.tol, keep, is_base, start)
        weight = feats.new_zeros(task.num_classes, feats.shape[1])
        bias = feats.new_zeros(task.num_classes)
        weight[classes], bias[classes] = w, b
        return weight, bias

    def _start(self, feats, labels, task: Task, classes, weights, is_base, sampled: bool):
        """(W, b) to start from, and F, ∇F there when known: base rows from the base-only solution (shared by
        the process's cells), novel rows at zero. With L-BFGS on all rows the base-only solution weights its
        rows 1/N_base (as before sample rounds existed, so results stay bit for bit); with sample rounds it
        weights them as the cell does (f/N_base), and F, ∇F at the start come from a pass over the base rows
        that the process's cells share (`anchor_pass`) plus the cell's novel rows."""
        w = feats.new_zeros(len(classes), feats.shape[1])
        b = feats.new_zeros(len(classes))
        if not is_base.any():  # an episode: nothing to share
            return w, b, None
        scale = float(weights[is_base].sum()) if sampled else 1.0
        base_cls, wb, bb = self._base_solution(feats, labels, task, is_base, scale)
        pos = torch.searchsorted(classes, base_cls)
        w[pos], b[pos] = wb, bb
        if not sampled:
            return w, b, None
        extra = len(classes) - len(base_cls)
        key = ("logreg-anchor", self.wd, self.tol, self.sample, tuple(base_cls.tolist()), int(is_base.sum()), scale, extra)
        if key not in task.cache:
            task.cache[key] = anchor_pass(feats[is_base], torch.searchsorted(base_cls, labels[is_base]),
                                          weights[is_base], wb, bb, extra)
        value, gwb, gbb, gw_new, gb_new = task.cache[key]
        gw, gb = gw_new.expand_as(w).clone(), gb_new.expand_as(b).clone()
        gw[pos], gb[pos] = gwb, gbb
        local = torch.searchsorted(classes, labels[~is_base])
        v_new, gw_rows, gb_rows = value_grad(feats[~is_base], local, weights[~is_base], w, b)
        return w, b, penalised((value + v_new, gw + gw_rows, gb + gb_rows), w, b, self.wd)

    def _base_solution(self, feats, labels, task: Task, is_base, scale: float):
        """(base classes, W, b) minimising the base rows' part of the objective, each row weighted
        scale/N_base; computed once per process, its row sample drawn from seed 0 so that it does not
        depend on which cell computes it."""
        key = ("logreg-base", self.wd, self.tol, self.sample, tuple(task.base_classes.tolist()), int(is_base.sum()), scale)
        if key not in task.cache:
            base_cls = torch.as_tensor(task.base_classes, device=labels.device)
            local = torch.searchsorted(base_cls, labels[is_base])
            weights = torch.full((int(is_base.sum()),), scale / int(is_base.sum()), device=feats.device)
            all_rows = torch.ones_like(local, dtype=torch.bool)
            keep = sampled_base_rows(local, all_rows, self.sample, 0)
            task.cache[key] = (base_cls, *minimise_softmax(
                feats[is_base], local, weights, feats.new_zeros(len(base_cls), feats.shape[1]),
                feats.new_zeros(len(base_cls)), self.wd, self.tol * (WARM_TOL if scale != 1 else 1), keep, all_rows))
        return task.cache[key]
