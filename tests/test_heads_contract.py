"""Contract checks generated from the head registry (sklearn's `parametrize_with_checks`, for tensors)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from synthetic import head_params, mixture, one_thread, with_model  # noqa: F401 (fixture)

from lowshot.heads import HEADS

DIM = 16


def cell(seed: int = 0):
    """Interleaved base/novel labels and two classes with no data at all."""
    return mixture(shots=3, d=DIM, base=6, novel=5, per_base=12, per_test=4, seed=seed, extra=2, interleave=True)


@pytest.fixture(params=HEADS.names())
def name(request):
    return request.param


@pytest.fixture
def make(name):
    """A fresh head of the parametrised name, with small-budget parameters."""
    return lambda: HEADS.create(name, **head_params(name, DIM))


@pytest.fixture
def cell_of(name):
    """`cell(seed)` whose task carries the head's trained model, if it needs one."""
    def make_cell(seed: int = 0):
        *rows, task = cell(seed)
        return (*rows, with_model(name, task, DIM))
    return make_cell


def test_fit_returns_self_and_scores_shape(make, cell_of):
    xtr, ytr, xte, _, task = cell_of()
    head = make()
    assert head.fit(xtr, ytr, task) is head
    assert head.scores(xte).shape == (len(xte), task.num_classes)


def test_scores_finite_for_present_classes_and_neg_inf_for_absent(make, cell_of):
    xtr, ytr, xte, _, task = cell_of()
    scores = make().fit(xtr, ytr, task).scores(xte)
    present = torch.zeros(task.num_classes, dtype=torch.bool)
    present[torch.as_tensor(task.base_classes)] = True
    present[ytr] = True
    assert torch.isfinite(scores[:, present]).all()
    assert torch.isneginf(scores[:, ~present]).all()


def test_scores_before_fit_raises(name):
    with pytest.raises(RuntimeError, match="before fit"):
        HEADS.create(name).scores(torch.zeros(3, 16))


def test_same_seed_same_scores(make, cell_of):
    xtr, ytr, xte, _, task = cell_of()
    a = make().fit(xtr, ytr, dataclasses.replace(task, cache={})).scores(xte)
    b = make().fit(xtr, ytr, dataclasses.replace(task, cache={})).scores(xte)
    assert torch.equal(a, b)


def test_inputs_not_mutated(make, cell_of):
    xtr, ytr, xte, _, task = cell_of()
    before = [t.clone() for t in (xtr, ytr, xte, task.classifier_weight)]
    make().fit(xtr, ytr, task).scores(xte)
    for old, new in zip(before, (xtr, ytr, xte, task.classifier_weight)):
        assert torch.equal(old, new)


def test_params_round_trip(name, make):
    params = make().get_params()
    assert HEADS.create(name, **params).get_params() == params
