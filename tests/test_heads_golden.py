"""Golden checks of the heads against closed forms and on synthetic cells with known answers."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import head_params, mixture, one_thread, with_model  # noqa: F401 (fixture)

from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.heads._kmeans import cluster_classes, kmeans
from lowshot.heads.maths import sq_distances
from lowshot.metrics import cell_metrics


def accs(name: str, cell, **params):
    """H&G's six accuracies of one head on one synthetic cell (with its trained model, if it needs one)."""
    xtr, ytr, xte, yte, task = cell
    head = HEADS.create(name, **params).fit(xtr, ytr, with_model(name, task, xtr.shape[1]))
    return cell_metrics(head.scores(xte), yte, task.base_classes, task.novel_classes)["accs"]


def test_imprinted_rows_are_the_closed_form():
    xtr, ytr, xte, _, task = mixture(shots=3)
    head = HEADS.create("imprint").fit(xtr, ytr, task)
    for c in task.novel_classes:
        shots = xtr[ytr == c]
        row = F.normalize(F.normalize(shots, dim=1).mean(0), dim=0)
        assert torch.allclose(head.weight_[c], row, atol=1e-6)
    base = torch.as_tensor(task.base_classes)
    assert torch.allclose(head.weight_[base], F.normalize(task.classifier_weight[base], dim=1))
    cos = F.normalize(xte, dim=1) @ head.weight_.t()
    assert torch.allclose(head.scores(xte)[:, :20], 10.0 * cos[:, :20], atol=1e-5)


def test_protonet_equals_its_linear_form_up_to_a_row_constant():
    xtr, ytr, xte, _, task = mixture(shots=4)
    scores = HEADS.create("protonet").fit(xtr, ytr, task).scores(xte)
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(task.num_classes)])
    linear = 2 * xte @ means.t() - means.pow(2).sum(1)
    assert torch.allclose(scores - linear, -xte.pow(2).sum(1, keepdim=True).expand_as(linear), atol=1e-3)
    assert torch.equal(scores.argmax(1), linear.argmax(1))


def test_cosine_ncm_is_invariant_to_feature_scale():
    xtr, ytr, xte, _, task = mixture(shots=2)
    a = HEADS.create("cosine_ncm").fit(xtr, ytr, task).scores(xte)
    b = HEADS.create("cosine_ncm").fit(7.3 * xtr, ytr, task).scores(7.3 * xte)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", HEADS.names())
def test_separable_classes_are_learned_from_five_shots(name):
    top1_novel = accs(name, mixture(shots=5), **head_params(name, 32))[0]
    assert top1_novel > 0.95


@pytest.mark.parametrize("name", HEADS.names())
def test_random_labels_give_chance(name):
    top1_all = accs(name, mixture(shots=5, random_labels=True), **head_params(name, 32))[4]
    assert top1_all < 0.15  # chance is 1/20


@pytest.mark.parametrize("name", ["imprint", "imprint_ft", "rand_ft"])
def test_cosine_heads_say_what_to_run_first(name):
    xtr, ytr, _, _, task = mixture()
    with pytest.raises(InputError, match="lowshot train --classifier cosine"):
        HEADS.create(name).fit(xtr, ytr, dataclasses.replace(task, classifier_scale=None))


def test_raw_imprint_hurts_base_accuracy_where_norms_differ():
    # features of norm ≈ 5 against unit classifier rows: raw novel rows out-score the base rows
    cell = mixture(shots=5, sep=5.0)
    imprint, raw = accs("imprint", cell), accs("raw_imprint", cell)
    assert imprint[2] > 0.95 and raw[2] < imprint[2] - 0.5


def test_weighted_sampling_replicates_shots_and_downweights_base():
    # 2 base classes of 40 and 20 rows, 1 novel class of 3 shots: ν = ⌊30 / 3⌋ = 10, base weight 1/2²
    y = torch.tensor([0] * 40 + [1] * 20 + [2] * 3)
    base = torch.tensor([True, True, False])
    probs, weight = HEADS.create("imprint_ft", weighted=True)._sampling(y, base, 2)
    assert probs[-1] / probs[0] == pytest.approx(10.0) and float(probs.sum()) == pytest.approx(1.0)
    assert weight[:60].eq(0.25).all() and weight[60:].eq(1.0).all()
    probs, weight = HEADS.create("imprint_ft")._sampling(y, base, 2)  # class-balanced
    assert [float(probs[y == c].sum()) for c in range(3)] == pytest.approx([1 / 3] * 3)


def test_base_clusters_are_computed_once_per_benchmark():
    xtr, ytr, xte, _, task = mixture(shots=5)
    for name in ("repmet", "magnet"):
        HEADS.create(name).fit(xtr, ytr, task)
        keys = set(task.cache)
        shots1 = torch.cat([xtr[: 400], xtr[400::5]]), torch.cat([ytr[: 400], ytr[400::5]])
        HEADS.create(name).fit(*shots1, dataclasses.replace(task, seed=7))
        assert set(task.cache) == keys
    assert len(task.cache) == 2


def test_magnet_variance_with_one_cluster_is_the_within_class_variance():
    xtr, ytr, _, _, task = mixture(shots=5)
    head = HEADS.create("magnet", k=1).fit(xtr, ytr, task)
    base = ytr < 10
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(10)])
    expected = (xtr[base] - means[ytr[base]]).pow(2).sum() / (int(base.sum()) - 1)
    assert head.var_ == pytest.approx(float(expected), rel=1e-4)


def test_magnet_with_one_cluster_and_every_vote_is_a_softmax_over_class_means():
    xtr, ytr, xte, _, task = mixture(shots=5)
    head = HEADS.create("magnet", k=1, L=1000).fit(xtr, ytr, task)
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(task.num_classes)])
    expected = torch.log_softmax(-sq_distances(xte, means) / (2 * head.var_), dim=1)
    assert torch.allclose(head.scores(xte), expected, atol=1e-3)


@pytest.mark.parametrize("balance", [True, False])
def test_magnet_soft_vote_of_the_nearest_clusters(balance):
    xtr, ytr, xte, _, task = mixture(shots=8, sep=1.0, noise=1.0)
    head = HEADS.create("magnet", k=3, L=6, balance=balance).fit(xtr, ytr, task)
    xte = 3 * xte  # far from every cluster: large negative log-densities
    scores = head.scores(xte)
    # reference, cluster by cluster: clusters of class position p are rows 3p..3p+2 of centres_
    valid = ~head.sq_norms_.isinf()
    e = (-sq_distances(xte, head.centres_) / (2 * head.var_)).masked_fill(~valid, float("-inf")).view(len(xte), -1, 3)
    in_top = torch.zeros(len(xte), e[0].numel(), dtype=torch.bool)
    in_top.scatter_(1, e.flatten(1).topk(6).indices, True)
    log_w = -valid.view(-1, 3).sum(1).log()[:, None] if balance else torch.zeros(1, 1)
    terms = (e + log_w).masked_fill(~in_top.view_as(e), float("-inf"))
    vote, has = terms.logsumexp(2), in_top.view_as(e).any(2)
    fallback = e.amax(2) - (math.log(3) if balance else 0.0)
    expected = torch.where(has, vote, fallback) - terms.flatten(1).logsumexp(1, keepdim=True)
    assert torch.allclose(scores[:, head.classes_], expected, atol=1e-4)
    assert (expected.masked_fill(has, float("-inf")).amax(1) < expected.masked_fill(~has, float("inf")).amin(1)).all()


@pytest.mark.parametrize("reduce", ["max", "sum", "mean"])
def test_repmet_modes_are_class_means_or_shots_on_the_sphere(reduce):
    xtr, ytr, xte, _, task = mixture(shots=3, sep=1.0, noise=1.0)
    scores = HEADS.create("repmet", k=1 if reduce == "max" else 3, reduce=reduce).fit(xtr, ytr, task).scores(xte)
    z, q = F.normalize(xtr, dim=1), F.normalize(xte, dim=1)
    per_class = []
    for c in range(task.num_classes):
        rows = z[ytr == c]
        reps = F.normalize(rows.mean(0, keepdim=True), dim=1) if reduce == "max" else rows  # k = 1: one mean
        logit = -sq_distances(q, reps) / (2 * 0.5 ** 2)
        if c < 10 and reduce != "max":  # base classes: 3 k-means modes; compare novel classes only
            logit = torch.full((len(q), 1), float("nan"))
        per_class.append({"max": logit.amax(1), "sum": logit.logsumexp(1),
                          "mean": logit.logsumexp(1) - math.log(logit.shape[1])}[reduce])
    expected = torch.stack(per_class, 1)
    if reduce == "max":
        assert torch.allclose(scores, expected.log_softmax(1), atol=1e-4)
    else:  # differences between novel classes do not depend on the normaliser
        assert torch.allclose(scores[:, 10:] - scores[:, 10:11], expected[:, 10:] - expected[:, 10:11], atol=1e-4)


def test_kmeans_finds_separated_blobs_in_a_batch():
    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = truth.repeat_interleave(30, 0) + 0.1 * torch.randn(90, 2, generator=g)
    batch = torch.stack([x, x + 100])
    centres = kmeans(batch, 3, 20, torch.Generator().manual_seed(1))
    for b, shift in ((0, 0.0), (1, 100.0)):
        assert sq_distances(truth + shift, centres[b]).min(1).values.max() < 0.1


def test_cluster_classes_keeps_rows_of_small_classes():
    x, y = torch.randn(7, 4), torch.tensor([0, 0, 1, 1, 1, 1, 1])
    centres, valid, _ = cluster_classes(x, y, torch.tensor([0, 1]), 3, 10, torch.Generator().manual_seed(0))
    assert torch.equal(centres[0, :2], x[:2]) and valid[0].tolist() == [True, True, False]
    assert valid[1].all()


def _magnet_cell():
    """Base class 0: clusters at (0, 0) and (4, 0); class 1 at (10, 0) and (14, 0); novel class 2: one shot
    at (2, 0). Each base cluster is two rows at (c, ±s) with s² = 7/8, so σ² = 8 s² / (8 − 1) = 1."""
    s = math.sqrt(7 / 8)
    base = [(c, y) for c in (0.0, 4.0, 10.0, 14.0) for y in (s, -s)]
    x = torch.tensor(base + [(2.0, 0.0)])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])
    return x, y, Task(3, np.array([0, 1]), np.array([2]))


def test_magnet_default_is_the_papers_vote_by_hand():
    # Rippel et al.: p(c | x) = Σ_{μ among the L nearest, class c} e^{−‖x−μ‖²/2σ²} / Σ_{μ among the L nearest} …
    x, y, task = _magnet_cell()
    head = HEADS.create("magnet", k=2, L=3).fit(x, y, task)
    assert head.var_ == pytest.approx(1.0, rel=1e-5)
    scores = head.scores(torch.tensor([[1.0, 0.0]]))[0]
    # squared distances: (0,0) 1, (2,0) 1, (4,0) 9, (10,0) 81, (14,0) 169; L = 3 keeps the first three
    votes = {0: math.exp(-1 / 2) + math.exp(-9 / 2), 2: math.exp(-1 / 2)}
    total = votes[0] + votes[2]
    assert scores[0].item() == pytest.approx(math.log(votes[0] / total), abs=1e-5)
    assert scores[2].item() == pytest.approx(math.log(votes[2] / total), abs=1e-5)
    assert scores[1].item() == pytest.approx(-81 / 2 - math.log(total), abs=1e-4)  # no vote: its best term
    assert scores.argmax().item() == 0  # two clusters in the vote beat one


def test_magnet_balanced_vote_by_hand():
    # balance=True: a class's clusters weigh 1/K_c (K_0 = 2, K_2 = 1), which flips the decision above
    x, y, task = _magnet_cell()
    scores = HEADS.create("magnet", k=2, L=3, balance=True).fit(x, y, task).scores(torch.tensor([[1.0, 0.0]]))[0]
    votes = {0: (math.exp(-1 / 2) + math.exp(-9 / 2)) / 2, 2: math.exp(-1 / 2)}
    total = votes[0] + votes[2]
    assert scores[0].item() == pytest.approx(math.log(votes[0] / total), abs=1e-5)
    assert scores[2].item() == pytest.approx(math.log(votes[2] / total), abs=1e-5)
    assert scores.argmax().item() == 2


def _repmet_cell():
    """Unit vectors: base class 0 at ±40°, class 1 at 180° ± 40° (k = 2 keeps them as representatives),
    novel class 2: one shot at 25°."""
    def unit(deg):
        return (math.cos(math.radians(deg)), math.sin(math.radians(deg)))

    x = torch.tensor([unit(40), unit(-40), unit(140), unit(220), unit(25)])
    y = torch.tensor([0, 0, 1, 1, 2])
    reps = {0: (40, -40), 1: (140, 220), 2: (25,)}
    return x, y, Task(3, np.array([0, 1]), np.array([2])), reps


def test_repmet_default_is_the_soft_sum_by_hand():
    # Karlinsky et al.: p_ij = exp(−‖x − R_ij‖² / 2σ²), P(i | x) = Σ_j p_ij / Σ_ij p_ij; σ = 0.5
    x, y, task, reps = _repmet_cell()
    head = HEADS.create("repmet", k=2).fit(x, y, task)
    scores = head.scores(torch.tensor([[3.0, 0.0]]))[0]  # the query at 0°, any norm

    def p(deg):  # ‖x − r‖² = 2 − 2 cos θ between unit vectors
        return math.exp(-(2 - 2 * math.cos(math.radians(deg))) / (2 * 0.5 ** 2))

    soft = {i: sum(p(a) for a in angles) for i, angles in reps.items()}
    total = sum(soft.values())
    for i in range(3):
        assert scores[i].item() == pytest.approx(math.log(soft[i] / total), abs=1e-5)
    assert scores.argmax().item() == 0  # two representatives at 40° beat one at 25°
    hard = HEADS.create("repmet", k=2, reduce="max").fit(x, y, task).scores(torch.tensor([[3.0, 0.0]]))[0]
    best = {i: max(p(a) for a in angles) for i, angles in reps.items()}
    for i in range(3):
        assert hard[i].item() == pytest.approx(math.log(best[i] / sum(best.values())), abs=1e-5)
    assert hard.argmax().item() == 2


def test_cosine_ncm_centres_on_the_base_mean_by_hand():
    # SimpleShot's CL2N: subtract the base classes' mean train feature, then L2-normalise
    x = torch.tensor([[2.0, 1.0], [4.0, 1.0], [3.0, 5.0], [1.0, 0.0]])  # base 0, base 0, base 1, novel 2
    y = torch.tensor([0, 0, 1, 2])
    task = Task(3, np.array([0, 1]), np.array([2]))
    head = HEADS.create("cosine_ncm").fit(x, y, task)
    assert torch.allclose(head.centre_, torch.tensor([3.0, 7 / 3]))
    q = torch.tensor([[3.0, 1.0]])  # centred: (0, −4/3); novel shot centred: (−2, −7/3)
    novel_cos = (4 / 3 * 7 / 3) / (4 / 3 * math.hypot(2, 7 / 3))
    assert head.scores(q)[0, 2].item() == pytest.approx(novel_cos, abs=1e-6)
    support = HEADS.create("cosine_ncm", centre="support").fit(x, y, task)
    assert torch.allclose(support.centre_, x.mean(0))
    assert torch.equal(HEADS.create("cosine_ncm", centre="none").fit(x, y, task).centre_, torch.zeros(2))


def test_cosine_ncm_without_base_rows_uses_the_given_base_mean_or_says_what_it_needs():
    x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    task = Task(2, np.zeros(0, np.int64), np.arange(2), base_mean=torch.tensor([1.0, 1.0]))
    head = HEADS.create("cosine_ncm").fit(x, y, task)
    assert torch.equal(head.centre_, torch.tensor([1.0, 1.0]))
    # centred shots (0, −1) and (−1, 0); the query (3, 1) centred is (2, 0): cosines 0 and −1
    assert torch.allclose(head.scores(torch.tensor([[3.0, 1.0]])), torch.tensor([[0.0, -1.0]]), atol=1e-6)
    with pytest.raises(InputError, match="train.hdf5"):
        HEADS.create("cosine_ncm").fit(x, y, dataclasses.replace(task, base_mean=None))


def test_logreg_identity_holds_only_what_its_solver_reads():
    assert HEADS.create("logreg", lr=0.5, maxiters=7).get_params() == {"solver": "lbfgs", "wd": 0.001, "tol": 1e-4}
    assert HEADS.create("logreg", sample=0).get_params()["sample"] == 0  # only a non-default sample is recorded
    assert HEADS.create("logreg", solver="hg", tol=0.5).get_params() == {
        "solver": "hg", "lr": 0.1, "wd": 0.001, "maxiters": 10000, "batch_size": 1000}
