"""Logistic regression: the fast solver reaches the optimum of the H&G objective."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowshot.heads import HEADS, Task, logreg
from lowshot.heads.logreg import (
    minimise_softmax,
    mixing_weights,
    sample_rounds,
    sampled_base_rows,
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
    term = logreg._data_term
    monkeypatch.setattr(logreg, "_data_term", lambda rows, *rest: full_passes.append(len(rows) == len(x)) or term(rows, *rest))
    minimise_softmax(x, y, weights, zeros_w, zeros_b, 0.01, 1e-4)
    plain, full_passes[:] = sum(full_passes), []
    keep = sampled_base_rows(y, is_base, 32, seed=0)
    w, b, converged = sample_rounds(x, y, weights, zeros_w, zeros_b, 0.01, 1e-4, keep, is_base)
    assert converged and 3 * sum(full_passes) <= 2 * plain, (sum(full_passes), plain)
    head = HEADS.create("logreg", wd=0.01, sample=0)
    head.present_, head.weight_, head.bias_ = torch.ones(12, dtype=torch.bool), w, b
    assert _full_gradient_max(head, x, y, _task(), 0.01) <= 1e-4
