"""Logistic regression: the fast solver reaches the optimum of the H&G objective."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowshot.heads import HEADS, Task, logreg_solver
from lowshot.heads.logreg import mixing_weights
from lowshot.heads.logreg_solver import (
    anchor_pass,
    minimise_softmax,
    sample_rounds,
    sampled_base_rows,
    value_grad,
)
from tests.conftest import gaussian_features


def _task(num_classes=12):
    return Task(num_classes, np.arange(6), np.arange(6, 12))


def _cell(n=2, seed=0):
    feats, labels = gaussian_features(per_class=30, dim=8, sep=2.0, seed=seed)
    keep = (labels < 6) | (np.arange(len(labels)) % 30 < n)
    return torch.from_numpy(feats[keep]), torch.from_numpy(labels[keep])


def test_mixing_weights_follow_the_class_count_ratio():
    feats, labels = _cell(n=2)
    w = mixing_weights(labels, _task())
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    assert torch.isclose(w[labels < 6].sum(), torch.tensor(0.5))  # 6 base / (6 + 6) classes


def test_lbfgs_solution_is_stationary():
    feats, labels = _cell()
    head = HEADS.create("logreg", wd=0.01, tol=1e-7).fit(feats, labels, _task())
    w = head.weight_.clone().requires_grad_(True)
    b = head.bias_.clone().requires_grad_(True)
    ce = F.cross_entropy(feats @ w.t() + b, labels, reduction="none")
    loss = (mixing_weights(labels, _task()) * ce).sum() + 0.005 * (w.pow(2).sum() + b.pow(2).sum())
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_hg_solver_approaches_the_same_optimum():
    feats, labels = _cell()
    task = _task()
    fast = HEADS.create("logreg", wd=0.01).fit(feats, labels, task)
    hg = HEADS.create("logreg", solver="hg", wd=0.01, lr=1.0, maxiters=3000, batch_size=100).fit(feats, labels, task)
    test, test_labels = map(torch.from_numpy, gaussian_features(per_class=30, dim=8, sep=2.0, noise_seed=5))
    agree = (fast.scores(test).argmax(1) == hg.scores(test).argmax(1)).float().mean()
    assert agree > 0.97


def test_classes_without_data_are_never_predicted():
    feats, labels = _cell()
    scores = HEADS.create("logreg").fit(feats, labels, Task(14, np.arange(6), np.arange(6, 12))).scores(feats)
    assert torch.isinf(scores[:, 12:]).all() and torch.isfinite(scores[:, :12]).all()


def _full_gradient_max(head, feats, labels, task, wd):
    """Largest entry of the gradient of the expected H&G objective at the head's (present-class) solution."""
    present = head.present_.nonzero()[:, 0]
    w = head.weight_[present].clone().requires_grad_(True)
    b = head.bias_[present].clone().requires_grad_(True)
    local = torch.searchsorted(present, labels)
    ce = F.cross_entropy(feats @ w.t() + b, local, reduction="none")
    loss = (mixing_weights(labels, task) * ce).sum() + 0.5 * wd * (w.pow(2).sum() + b.pow(2).sum())
    loss.backward()
    return max(w.grad.abs().max().item(), b.grad.abs().max().item())


def test_sampled_rows_hold_every_novel_row_and_per_class_base_rows():
    _, labels = _cell(n=2)
    is_base = labels < 6
    keep = sampled_base_rows(labels, is_base, 4, seed=3)
    assert keep[~is_base].all()
    assert torch.bincount(labels[keep & is_base], minlength=6).tolist() == [4] * 6
    assert torch.equal(keep, sampled_base_rows(labels, is_base, 4, seed=3))
    assert not torch.equal(keep, sampled_base_rows(labels, is_base, 4, seed=4))
    assert sampled_base_rows(labels, is_base, 8, seed=3) is None  # 48 of 180 base rows: over a quarter
    assert sampled_base_rows(labels, torch.zeros_like(is_base), 4, seed=3) is None  # an episode: no base rows


@pytest.mark.parametrize("sample", [1, 4])
def test_sampled_solve_reaches_the_optimum_of_all_rows(sample):
    """Rounds on a 4-row-per-class sample, and on a 1-row one (rounds that fail and are damped, then the
    L-BFGS finish on all rows), land on the optimum that L-BFGS on every row finds."""
    feats, labels = _cell(n=1)
    task = _task()
    test, _ = map(torch.from_numpy, gaussian_features(per_class=30, dim=8, sep=2.0, noise_seed=5))
    plain = HEADS.create("logreg", wd=0.01, tol=1e-6, sample=0).fit(feats, labels, task)
    sampled = HEADS.create("logreg", wd=0.01, tol=1e-6, sample=sample).fit(feats, labels, task)
    assert _full_gradient_max(sampled, feats, labels, task, 0.01) < 1e-4  # float32's floor, as for plain L-BFGS
    assert (sampled.weight_ - plain.weight_).abs().max() < 1e-3 and (sampled.bias_ - plain.bias_).abs().max() < 1e-3
    assert (sampled.scores(test) - plain.scores(test)).abs().max() < 1e-2


def test_sample_rounds_reach_tol_on_their_own_in_few_full_passes(monkeypatch):
    """The corrected-sample rounds alone (no L-BFGS finish) reach tol from zero, with a fraction of the
    passes over all rows that L-BFGS on every row makes: a wrong correction or weighting would stall
    them. 6 base classes of 200 rows (sample: 32 of each), 6 novel classes of 1."""
    feats, labels = gaussian_features(per_class=200, dim=8, sep=2.0)
    keep_cell = (labels < 6) | (np.arange(len(labels)) % 200 < 1)
    x, y = torch.from_numpy(feats[keep_cell]), torch.from_numpy(labels[keep_cell])
    weights, is_base = mixing_weights(y, _task()), y < 6
    zeros_w, zeros_b = torch.zeros(12, 8), torch.zeros(12)
    full_passes = []
    for name in ("value_grad", "data_term"):  # the sampled path's evaluations, the plain path's
        term = getattr(logreg_solver, name)
        monkeypatch.setattr(logreg_solver, name, lambda rows, *rest, term=term: full_passes.append(len(rows) == len(x))
                            or term(rows, *rest))
    minimise_softmax(x, y, weights, zeros_w, zeros_b, 0.01, 1e-4)
    plain, full_passes[:] = sum(full_passes), []
    keep = sampled_base_rows(y, is_base, 32, seed=0)
    w, b, converged = sample_rounds(x, y, weights, zeros_w, zeros_b, 0.01, 1e-4, keep, is_base)
    assert converged and 3 * sum(full_passes) <= 2 * plain, (sum(full_passes), plain)
    head = HEADS.create("logreg", wd=0.01, sample=0)
    head.present_, head.weight_, head.bias_ = torch.ones(12, dtype=torch.bool), w, b
    assert _full_gradient_max(head, x, y, _task(), 0.01) <= 1e-4


def _autograd_value_grad(x, y, row_weight, w, b):
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    value = (row_weight * F.cross_entropy(x @ w.t() + b, y, reduction="none")).sum()
    return (value.detach(), *torch.autograd.grad(value, (w, b)))


def test_blocked_value_and_gradient_equal_autograd():
    """`value_grad` by blocks of 7 rows (the last one short) against autograd on all rows at once."""
    feats, labels = gaussian_features(per_class=5, dim=8, sep=2.0)
    x, y = torch.from_numpy(feats), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(0)
    w, b, weights = torch.randn(12, 8, generator=gen), torch.randn(12, generator=gen), torch.rand(len(y), generator=gen)
    for got, want in zip(value_grad(x, y, weights, w, b, block=7), _autograd_value_grad(x, y, weights, w, b)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_anchor_pass_adds_zero_classes_exactly():
    """The base rows' value and gradient with 3 extra classes of zero weight and bias, from one column of
    score log 3, equal autograd's over all 6 + 3 columns."""
    feats, labels = gaussian_features(num_classes=6, per_class=10, dim=8, sep=2.0)
    x, y = torch.from_numpy(feats), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(1)
    w, b, weights = torch.randn(6, 8, generator=gen), torch.randn(6, generator=gen), torch.rand(len(y), generator=gen)
    value, gw, gb, g_new_w, g_new_b = anchor_pass(x, y, weights, w, b, 3)
    want = _autograd_value_grad(x, y, weights, torch.cat([w, torch.zeros(3, 8)]), torch.cat([b, torch.zeros(3)]))
    assert torch.allclose(value, want[0], rtol=1e-5)
    assert torch.allclose(gw, want[1][:6], atol=1e-6) and torch.allclose(gb, want[2][:6], atol=1e-6)
    for k in range(6, 9):
        assert torch.allclose(g_new_w, want[1][k], atol=1e-6) and torch.allclose(g_new_b, want[2][k], atol=1e-6)


def test_a_sampled_cells_start_is_the_full_objective_there():
    """With sample rounds a cell starts at the base-only solution (weighted as the cell weights its base rows)
    with zero novel rows, and takes F and ∇F there from the pass its process shares: they must equal F and
    ∇F computed on all of the cell's rows, or the first round would steer by a wrong gradient."""
    feats, labels = gaussian_features(per_class=200, dim=8, sep=2.0)
    keep = (labels < 6) | (np.arange(len(labels)) % 200 < 2)
    x, y, task = torch.from_numpy(feats[keep]), torch.from_numpy(labels[keep]), _task()
    head = HEADS.create("logreg", wd=0.01)
    head.present_ = torch.ones(12, dtype=torch.bool)
    weights, is_base = mixing_weights(y, task), y < 6
    w, b, start = head._start(x, y, task, torch.arange(12), weights, is_base, True)
    assert (w[6:] == 0).all() and (b[6:] == 0).all() and (w[:6] != 0).any()
    want = _autograd_value_grad(x, y, weights, w, b)
    want = (want[0] + 0.005 * (w.pow(2).sum() + b.pow(2).sum()), want[1] + 0.01 * w, want[2] + 0.01 * b)
    for got, ref in zip(start, want):
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    again = head._start(x, y, task, torch.arange(12), weights, is_base, True)[2]  # the cached pass: same numbers
    assert all(torch.equal(a, c) for a, c in zip(start, again))


def test_plain_path_is_lbfgs_from_the_base_only_solution_bit_for_bit():
    """With few base rows per class (the demo's 70 of them; here 30) the fit is L-BFGS with autograd on all
    rows, started from the base-only solution (its rows weighted 1/N_base): the computation that made the
    stored results, so their identity (which records no `sample`) still names the same numbers."""
    feats, labels = _cell(n=2)
    task = _task()
    head = HEADS.create("logreg", wd=0.01).fit(feats, labels, task)

    def plain(x, y, weights, w, b):
        w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, history_size=20, tolerance_grad=1e-4,
                                tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = (weights * F.cross_entropy(x @ w.t() + b, y, reduction="none")).sum()
            loss = loss + 0.005 * (w.pow(2).sum() + b.pow(2).sum())
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach(), b.detach()

    base = labels < 6
    wb, bb = plain(feats[base], labels[base], torch.full((int(base.sum()),), 1.0 / int(base.sum())),
                   torch.zeros(6, 8), torch.zeros(6))
    w, b = plain(feats, labels, mixing_weights(labels, task), torch.cat([wb, torch.zeros(6, 8)]),
                 torch.cat([bb, torch.zeros(6)]))
    assert torch.equal(head.weight_, w) and torch.equal(head.bias_, b)
