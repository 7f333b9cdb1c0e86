"""Logistic regression: the fast solver reaches the optimum of the H&G objective."""
import numpy as np
import torch
import torch.nn.functional as F

from lowshot.heads import HEADS, Task
from lowshot.heads.logreg import mixing_weights
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


def test_coarse_start_reaches_the_same_optimum_and_is_off_by_default():
    feats, labels = _cell(n=1)
    test, _ = map(torch.from_numpy, gaussian_features(per_class=30, dim=8, sep=2.0, noise_seed=5))
    plain = HEADS.create("logreg", wd=0.01, tol=1e-6).fit(feats, labels, _task())
    coarse = HEADS.create("logreg", wd=0.01, tol=1e-6, coarse=4).fit(feats, labels, _task())
    assert (coarse.weight_ - plain.weight_).abs().max() < 5e-3 and (coarse.bias_ - plain.bias_).abs().max() < 5e-3
    assert torch.equal(coarse.scores(test).argmax(1), plain.scores(test).argmax(1))
    assert "coarse" not in HEADS.create("logreg").get_params()  # results made before the option keep their identity
    assert HEADS.create("logreg", coarse=4).get_params()["coarse"] == 4
