"""The default `logreg` solver's maths: the softmax objective, L-BFGS, and sample rounds at ImageNet size.

F(W, b) = Σ_i row_weight_i · CE(W x_i + b, y_i) + wd/2 (‖W‖² + ‖b‖²), minimised until the largest entry
of ∇F is ≤ tol. With few rows per class: L-BFGS on every row (`minimise_softmax`, keep=None). With many
base rows per class: rounds on a sample of them, each corrected by one full gradient (`sample_rounds`),
evaluated by blocks of rows without autograd (`value_grad`). The cells of a benchmark share their base
rows, so the full value and gradient at their common starting point, the base-only solution with zero
novel rows, is computed once per process (`anchor_pass`), and a cell's first round needs no full pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK = 32768  # rows per block of `value_grad`: (BLOCK, classes) float32 scores at a time


def value_grad(x, y, row_weight, w, b, block: int = BLOCK):
    """Σ_i row_weight_i · CE(W x_i + b, y_i) and its gradients with respect to W (C, d) and b (C,),
    block by block (x (N, d), y (N,) local class indices, row_weight (N,)); no autograd graph."""
    gw, gb, value = torch.zeros_like(w), torch.zeros_like(b), w.new_zeros(())
    for start in range(0, len(x), block):
        xb, yb, rb = x[start:start + block], y[start:start + block], row_weight[start:start + block]
        p = torch.log_softmax(torch.addmm(b, xb, w.t()), 1)
        value -= (rb * p.gather(1, yb[:, None])[:, 0]).sum()
        p.exp_().mul_(rb[:, None])  # row_weight_i · (softmax_i − onehot(y_i)): d value / d scores
        p[torch.arange(len(yb), device=p.device), yb] -= rb
        gw.addmm_(p.t(), xb)
        gb += p.sum(0)
    return value, gw, gb


def penalised(vg, w, b, wd: float, centre=None):
    """(value, ∇W, ∇b) of `vg` plus wd/2 ‖θ − centre‖² (centre: (W, b), default zero)."""
    value, gw, gb = vg
    dw, db = (w, b) if centre is None else (w - centre[0], b - centre[1])
    return value + 0.5 * wd * (dw.pow(2).sum() + db.pow(2).sum()), gw + wd * dw, gb + wd * db


def data_term(x, y, row_weight, w, b):
    """Σ_i row_weight_i · CE(W x_i + b, y_i), differentiable (the plain L-BFGS path)."""
    return (row_weight * F.cross_entropy(x @ w.t() + b, y, reduction="none")).sum()


def lbfgs(vg_fn, w0, b0, tol: float, max_iter: int = 500):
    """Minimise from (w0, b0) with L-BFGS until the largest gradient entry is ≤ tol; vg_fn(W, b) returns
    (value, ∇W, ∇b)."""
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        value, w.grad, b.grad = vg_fn(w.detach(), b.detach())
        return value

    opt.step(closure)
    return w.detach(), b.detach()


def autograd_vg(fn):
    """vg_fn(W, b) -> (fn(W, b), ∇W, ∇b) by autograd, detached."""
    def vg(w, b):
        w, b = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
        value = fn(w, b)
        gw, gb = torch.autograd.grad(value, (w, b))
        return value.detach(), gw, gb
    return vg


def minimise_softmax(x, y, row_weight, w0, b0, wd: float, tol: float, keep=None, pool=None, start=None):
    """Minimise F (module docstring) from (w0, b0) until the largest entry of ∇F is ≤ tol.
    x (N, d), y (N,) local class indices, row_weight (N,).

    keep=None: L-BFGS on all rows. keep (N,) bool, a sample of the rows of `pool` (N,) bool plus every
    row outside it: `sample_rounds` first (`start`: F and ∇F at (w0, b0) when already known), and L-BFGS
    on all rows finishes from where they stop if they have not reached tol."""
    if keep is not None:
        w0, b0, converged = sample_rounds(x, y, row_weight, w0, b0, wd, tol, keep, pool, start)
        if converged:
            return w0, b0
        vg = lambda w, b: penalised(value_grad(x, y, row_weight, w, b), w, b, wd)  # noqa: E731
        return lbfgs(vg, w0, b0, tol)
    return lbfgs(autograd_vg(lambda w, b: data_term(x, y, row_weight, w, b) + _penalty(w, b, wd)), w0, b0, tol)


def _penalty(w, b, wd: float):
    """wd/2 (‖W‖² + ‖b‖²)."""
    return 0.5 * wd * (w.pow(2).sum() + b.pow(2).sum())


def _gmax(gw, gb) -> float:
    return max(gw.abs().max().item(), gb.abs().max().item())


def sample_rounds(x, y, row_weight, w0, b0, wd: float, tol: float, keep, pool, start=None, max_rounds: int = 20):
    """Rounds of a gradient-corrected sample surrogate of F (DANE: Shamir, Srebro & Zhang 2014, with
    one machine that holds the sample); returns (W, b, whether the largest entry of ∇F is ≤ tol).

    At the anchor θ̃,  S(θ) = F_keep(θ) + ⟨∇F(θ̃) − ∇F_keep(θ̃), θ⟩ + μ/2 ‖θ − θ̃‖²,  where F_keep is F
    on the kept rows (those of `pool` reweighted to the total weight of `pool`), so ∇S(θ̃) = ∇F(θ̃) and
    only the optimum of F is a fixed point. L-BFGS minimises S on the sample alone (to a tenth of the
    current gradient), then one pass over all rows gives F and ∇F at the result (none before the first
    round when `start`, F and ∇F at (w0, b0), is given). A round that raises F is redone from θ̃ with a
    larger μ (from wd, × 4; ÷ 4 after a success); one that leaves F unchanged (float32's floor) or the
    last of `max_rounds` ends the rounds."""
    full = lambda w, b: penalised(value_grad(x, y, row_weight, w, b), w, b, wd)  # noqa: E731
    scale = torch.where(pool, row_weight[pool].sum() / row_weight[pool & keep].sum(), 1.0)
    xs, ys, kept_weight = x[keep], y[keep], (row_weight * scale)[keep]
    sample = lambda w, b: penalised(value_grad(xs, ys, kept_weight, w, b), w, b, wd)  # noqa: E731
    w, b = w0, b0
    value, gw, gb = start if start is not None else full(w, b)
    mu, correction = 0.0, None
    for _ in range(max_rounds):
        gmax = _gmax(gw, gb)
        if gmax <= tol:
            return w, b, True
        if correction is None:  # a new anchor
            _, sw, sb = sample(w, b)
            correction = (gw - sw, gb - sb)

        def surrogate(w_, b_, w=w, b=b, mu=mu, c=correction):
            v, g_w, g_b = penalised(sample(w_, b_), w_, b_, mu, (w, b))
            return v + (c[0] * w_).sum() + (c[1] * b_).sum(), g_w + c[0], g_b + c[1]

        w1, b1 = lbfgs(surrogate, w, b, max(tol / 2, gmax / 10))
        value1, gw1, gb1 = full(w1, b1)
        if value1 == value:
            break
        if value1 < value:
            w, b, value, gw, gb, correction = w1, b1, value1, gw1, gb1, None
            mu = mu / 4 if mu > wd else 0.0
        else:
            mu = max(4 * mu, wd)
    return w, b, _gmax(gw, gb) <= tol


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


def anchor_pass(x, y, row_weight, w, b, extra: int):
    """Value and gradient of Σ_i row_weight_i · CE over (W, b)'s classes plus `extra` classes whose rows
    and biases are zero (a cell's novel classes at the anchor): (value, ∇W (C, d), ∇b (C,), the gradient
    of each zero row (d,), of each zero bias ()). The extra classes are one column of score log(extra)."""
    if extra == 0:
        value, gw, gb = value_grad(x, y, row_weight, w, b)
        return value, gw, gb, torch.zeros_like(w[0]), torch.zeros_like(b[0])
    wx = torch.cat([w, torch.zeros_like(w[:1])])
    bx = torch.cat([b, b.new_tensor([float(extra)]).log()])
    value, gw, gb = value_grad(x, y, row_weight, wx, bx)
    return value, gw[:-1], gb[:-1], gw[-1] / extra, gb[-1] / extra
