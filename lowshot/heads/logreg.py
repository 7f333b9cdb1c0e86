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
one full gradient so that only the true optimum is a fixed point (`minimise_softmax`): the same optimum
in a few full passes instead of tens (docs/speed.md, "At ImageNet size"). Classes with no training row are never
predicted (score −inf): under H&G's sampling their logits only ever receive negative gradients.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F

from lowshot.errors import InputError
from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads.maths import mask_absent, split_base

SOLVER_PARAMS = {"lbfgs": ("wd", "tol", "sample"), "hg": ("lr", "wd", "maxiters", "batch_size")}  # what each solver reads
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
        `sample` appears only when it is not the default: results made before it existed keep their
        identity (the same optimum within `tol`; on data with at most 4 × 32 base rows per class the very
        same computation)."""
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
        w_init, b_init = self._warm_start(feats, labels, task, classes)
        is_base = split_base(labels, task)[1]
        keep = sampled_base_rows(labels, is_base, self.sample, task.seed)
        w, b = minimise_softmax(feats, local[labels], mixing_weights(labels, task), w_init, b_init, self.wd, self.tol,
                                keep, is_base)
        weight = feats.new_zeros(task.num_classes, feats.shape[1])
        bias = feats.new_zeros(task.num_classes)
        weight[classes], bias[classes] = w, b
        return weight, bias

    def _warm_start(self, feats, labels, task: Task, classes: torch.Tensor):
        """Base rows from the base-only solution (computed once per process; its row sample is drawn from
        seed 0, so that it does not depend on which cell computes it), novel rows at zero."""
        is_base = split_base(labels, task)[1]
        if not is_base.any():  # an episode: nothing to share
            return feats.new_zeros(len(classes), feats.shape[1]), feats.new_zeros(len(classes))
        key = ("logreg-base", self.wd, self.tol, self.sample, tuple(task.base_classes.tolist()), int(is_base.sum()))
        if key not in task.cache:
            base_cls = torch.as_tensor(task.base_classes, device=labels.device)
            local = torch.searchsorted(base_cls, labels[is_base])
            weights = torch.full((int(is_base.sum()),), 1.0 / int(is_base.sum()), device=feats.device)
            all_rows = torch.ones_like(local, dtype=torch.bool)
            keep = sampled_base_rows(local, all_rows, self.sample, 0)
            task.cache[key] = (base_cls, *minimise_softmax(
                feats[is_base], local, weights, feats.new_zeros(len(base_cls), feats.shape[1]),
                feats.new_zeros(len(base_cls)), self.wd, self.tol, keep, all_rows))
        base_cls, wb, bb = task.cache[key]
        w = feats.new_zeros(len(classes), feats.shape[1])
        b = feats.new_zeros(len(classes))
        pos = torch.searchsorted(classes, base_cls)
        w[pos], b[pos] = wb, bb
        return w, b


def sampled_base_rows(labels: torch.Tensor, is_base: torch.Tensor, per_class: int, seed: int):
    """Bool (N,): every non-base row and `per_class` base rows of each base class, drawn from `seed`;
    None when that would keep a quarter of the base rows or more (the sample would save little)."""
    counts = torch.bincount(labels[is_base])
    if per_class <= 0 or 4 * counts.clamp(max=per_class).sum() >= counts.sum():
        return None
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen).to(labels.device)
    order = order[torch.argsort(labels[order], stable=True)]  # grouped by class, random within a class
    grouped = labels[order]
    first = torch.searchsorted(grouped, grouped)  # index of each class's first row in `order`
    rank = torch.arange(len(labels), device=labels.device) - first
    keep = ~is_base
    keep[order[rank < per_class]] = True
    return keep


def _data_term(x, y, row_weight, w, b):
    """Σ_i row_weight_i · CE(W x_i + b, y_i)."""
    return (row_weight * F.cross_entropy(x @ w.t() + b, y, reduction="none")).sum()


def _lbfgs(objective, w0, b0, tol: float, max_iter: int = 500):
    """Minimise objective(W, b) from (w0, b0) with L-BFGS until the largest gradient entry is ≤ tol."""
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = objective(w, b)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def minimise_softmax(x, y, row_weight, w0, b0, wd: float, tol: float, keep=None, pool=None):
    """Minimise F(W, b) = Σ_i row_weight_i · CE(W x_i + b, y_i) + wd/2 (‖W‖² + ‖b‖²) from (w0, b0)
    until the largest entry of ∇F is ≤ tol. x (N, d), y (N,) local class indices, row_weight (N,).

    keep=None: L-BFGS on all rows. keep (N,) bool, a sample of the rows of `pool` (N,) bool plus every
    row outside it: `sample_rounds` first, and L-BFGS on all rows finishes from where they stop if they
    have not reached tol."""
    if keep is not None:
        w0, b0, converged = sample_rounds(x, y, row_weight, w0, b0, wd, tol, keep, pool)
        if converged:
            return w0, b0
    return _lbfgs(lambda w, b: _data_term(x, y, row_weight, w, b) + _penalty(w, b, wd), w0, b0, tol)


def sample_rounds(x, y, row_weight, w0, b0, wd: float, tol: float, keep, pool, max_rounds: int = 20):
    """Rounds of a gradient-corrected sample surrogate of F (DANE: Shamir, Srebro & Zhang 2014, with
    one machine that holds the sample); returns (W, b, whether the largest entry of ∇F is ≤ tol).

    At the anchor θ̃,  S(θ) = F_keep(θ) + ⟨∇F(θ̃) − ∇F_keep(θ̃), θ⟩ + μ/2 ‖θ − θ̃‖²,  where F_keep is F
    on the kept rows (those of `pool` reweighted to the total weight of `pool`), so ∇S(θ̃) = ∇F(θ̃) and
    only the optimum of F is a fixed point. L-BFGS minimises S on the sample alone (to a tenth of the
    current gradient), then one pass over all rows gives F and ∇F at the result: a round costs one full
    pass, where L-BFGS on all rows spends one per evaluation. A round that raises F is redone from θ̃
    with a larger μ (from wd, × 4; ÷ 4 after a success); one that leaves F unchanged (float32's floor)
    or the last of `max_rounds` ends the rounds.
    """
    full = lambda w, b: _data_term(x, y, row_weight, w, b) + _penalty(w, b, wd)  # noqa: E731
    scale = torch.where(pool, row_weight[pool].sum() / row_weight[pool & keep].sum(), 1.0)
    xs, ys, kept_weight = x[keep], y[keep], (row_weight * scale)[keep]
    sample = lambda w, b: _data_term(xs, ys, kept_weight, w, b) + _penalty(w, b, wd)  # noqa: E731
    w, b = w0, b0
    value, gw, gb = _value_and_grad(full, w, b)
    mu, correction = 0.0, None
    for _ in range(max_rounds):
        gmax = max(gw.abs().max().item(), gb.abs().max().item())
        if gmax <= tol:
            return w, b, True
        if correction is None:  # a new anchor
            _, sw, sb = _value_and_grad(sample, w, b)
            correction = (gw - sw, gb - sb)
        surrogate = lambda w_, b_, w=w, b=b, mu=mu, c=correction: (  # noqa: E731
            sample(w_, b_) + (c[0] * w_).sum() + (c[1] * b_).sum() + _penalty(w_ - w, b_ - b, mu))
        w1, b1 = _lbfgs(surrogate, w, b, max(tol / 2, gmax / 10))
        value1, gw1, gb1 = _value_and_grad(full, w1, b1)
        if value1 == value:
            break
        if value1 < value:
            w, b, value, gw, gb, correction = w1, b1, value1, gw1, gb1, None
            mu = mu / 4 if mu > wd else 0.0
        else:
            mu = max(4 * mu, wd)
    return w, b, max(gw.abs().max().item(), gb.abs().max().item()) <= tol


def _penalty(w, b, wd: float):
    """wd/2 (‖W‖² + ‖b‖²)."""
    return 0.5 * wd * (w.pow(2).sum() + b.pow(2).sum())


def _value_and_grad(fn, w, b):
    """fn(W, b) and its gradients at (w, b), detached."""
    w = w.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    value = fn(w, b)
    gw, gb = torch.autograd.grad(value, (w, b))
    return value.detach(), gw, gb
