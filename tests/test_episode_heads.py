"""Transductive episode heads (bd_cspn, laplacian_shot, tim, pt_map, transductive_ft) against hand
computations, and the unbalanced-query episodes that measure their balance assumption."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import one_thread  # noqa: F401 (autouse fixture)
from test_episodes import NOVEL, run  # noqa: F401 (fixture)

from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.heads._rows import prepared
from lowshot.heads.maths import power_transform, sinkhorn
from lowshot.protocols.episodes import (
    EpisodesConfig,
    dirichlet_counts,
    draw_queries,
    episodes,
)

TRANSDUCTIVE = ["bd_cspn", "laplacian_shot", "pt_map", "tim", "transductive_ft"]


def episode(e: int = 3, w: int = 4, s: int = 2, q: int = 6, d: int = 8, seed: int = 0):
    """E episodes of non-negative features: support (E, W, S, d), query (E, W·Q, d), and a Task."""
    g = torch.Generator().manual_seed(seed)
    mu = 3 * torch.rand(e, w, 1, d, generator=g)
    support = (mu + 0.3 * torch.randn(e, w, s, d, generator=g)).abs()
    query = (mu + 0.3 * torch.randn(e, w, q, d, generator=g)).abs().reshape(e, w * q, d)
    return support, query, Task(w, np.zeros(0, np.int64), np.arange(w), base_mean=torch.rand(d, generator=g))


def test_sinkhorn_plans_have_the_asked_marginals():
    kernel = torch.rand(3, 4, 12, generator=torch.Generator().manual_seed(0)) + 0.01  # (E, classes, queries)
    plan = sinkhorn(kernel, 3.0)
    assert torch.allclose(plan.sum(1), torch.ones(3, 12), atol=1e-4)
    assert torch.allclose(plan.sum(2), torch.full((3, 4), 3.0), atol=1e-4)
    one = sinkhorn(kernel[1:2], 3.0)  # a problem alone stops where it stops in the batch
    assert torch.equal(one[0], plan[1])


def test_pt_map_soft_labels_are_balanced_plans():
    support, query, task = episode()
    plan = HEADS.create("pt_map").episode_scores(support, query, task)
    assert torch.allclose(plan.sum(2), torch.ones(3, 24), atol=1e-4)
    assert torch.allclose(plan.sum(1), torch.full((3, 4), 6.0), atol=1e-3)


def test_power_features_are_the_papers_transform():
    x = torch.tensor([[0.0, 4.0, 9.0]])
    root = torch.tensor([[1e-3, 2.0, 3.0]])
    assert torch.allclose(power_transform(x), root, atol=1e-6)
    assert torch.allclose(prepared(x[None], "power").values()[0], F.normalize(root, dim=1), atol=1e-6)
    assert torch.allclose(power_transform(-x[:, 1:]), -root[:, 1:], atol=1e-6)  # odd extension, non-ReLU features


@pytest.mark.parametrize("eps", [1.0, 10.0])
def test_bd_cspn_rectified_prototype_by_hand(eps):
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one shot of each of 2 classes
    q = torch.tensor([[[2.0, 1.0], [1.0, 3.0], [3.0, 0.0]]])
    head = HEADS.create("bd_cspn", features="none", eps=eps)
    got = head.episode_scores(s[:, :, None], q, Task(2, np.zeros(0, np.int64), np.arange(2)))
    shifted = q[0] + s[0].mean(0) - q[0].mean(0)  # shift = (0.5, 0.5) − (2, 4/3)
    protos = []
    for c in range(2):
        cos = lambda x: float(F.cosine_similarity(x, s[0, c], dim=0))  # noqa: E731
        mine = [s[0, c]] + [x for x in shifted if max(range(2), key=lambda k: F.cosine_similarity(x, s[0, k], 0)) == c]
        w = torch.tensor([np.exp(eps * cos(x)) for x in mine])
        protos.append(sum(wi * x for wi, x in zip(w / w.sum(), mine)))
    expected = F.normalize(q[0], dim=1) @ F.normalize(torch.stack(protos), dim=1).t()
    assert torch.allclose(got[0], expected, atol=1e-5)


@pytest.mark.parametrize("rectify", [False, True])
def test_laplacian_shot_without_the_laplacian_is_the_nearest_prototype(rectify):
    support, query, task = episode()
    lap = HEADS.create("laplacian_shot", lam=0.0, rectify=rectify).episode_scores(support, query, task)
    bd = HEADS.create("bd_cspn", features="cl2n").episode_scores(support, query, task)
    z = F.normalize(query - task.base_mean, dim=-1)
    means = F.normalize(support - task.base_mean, dim=-1).mean(2)
    nearest = bd.argmax(-1) if rectify else torch.cdist(z, means).argmin(-1)
    assert torch.equal(lap.argmax(-1), nearest)
    if not rectify:
        assert torch.allclose(lap, torch.softmax(-torch.cdist(z, means) ** 2, -1), atol=1e-5)


def test_laplacian_term_pulls_a_query_to_its_neighbours_class():
    s = torch.tensor([[[[0.0, 0.0]], [[4.0, 0.0]]]])  # class means at x = 0 and x = 4
    q = torch.tensor([[[1.9, 0.0], [3.0, 0.0], [3.2, 0.0], [0.0, 0.2], [0.2, 0.0]]])
    task = Task(2, np.zeros(0, np.int64), np.arange(2))
    alone = HEADS.create("laplacian_shot", lam=0.0, knn=3, rectify=False, features="none")
    joint = HEADS.create("laplacian_shot", lam=3.0, knn=3, rectify=False, features="none")  # 2 neighbours
    assert alone.episode_scores(s, q, task)[0, 0].argmax() == 0  # nearer the mean at 0 ...
    assert joint.episode_scores(s, q, task)[0, 0].argmax() == 1  # ... but its neighbours are class 1


def test_tim_without_iterations_is_the_support_initialised_classifier():
    support, query, task = episode()
    got = HEADS.create("tim", iterations=0).episode_scores(support, query, task)
    z, means = F.normalize(query, dim=-1), F.normalize(support, dim=-1).mean(2)
    assert torch.allclose(got, -7.5 * torch.cdist(z, means) ** 2, atol=1e-4)
    ft = HEADS.create("transductive_ft", iterations=0).episode_scores(support, query, task)
    assert torch.allclose(ft, z @ F.normalize(means, dim=-1).transpose(1, 2), atol=1e-5)


@pytest.mark.parametrize("name", ["tim", "transductive_ft"])
def test_fine_tuning_lowers_the_query_entropy(name):
    support, query, task = episode(seed=1)
    params = {"tim": {"iterations": 30, "lr": 1e-2}, "transductive_ft": {"iterations": 30, "lr": 1e-2}}[name]
    before = HEADS.create(name, iterations=0).episode_scores(support, query, task)
    after = HEADS.create(name, **params).episode_scores(support, query, task)
    ent = lambda s: -(s.softmax(-1) * s.log_softmax(-1)).sum(-1).mean()  # noqa: E731
    assert ent(after) < ent(before)


@pytest.mark.parametrize("name", ["laplacian_shot"])
def test_centring_on_the_base_mean_needs_one(name):
    support, query, task = episode()
    task.base_mean = None
    with pytest.raises(InputError, match="train.hdf5"):
        HEADS.create(name).episode_scores(support, query, task)
    HEADS.create(name, features="l2").episode_scores(support, query, task)


def test_dirichlet_counts_sum_respect_the_cap_and_vary():
    counts = dirichlet_counts(5, 75, 40, 2.0, 200, seed=3)
    assert counts.shape == (200, 5) and (counts.sum(1) == 75).all() and (counts <= 40).all()
    assert counts.float().std(1, unbiased=False).mean() > 5  # far from 15 each
    assert torch.equal(counts, dirichlet_counts(5, 75, 40, 2.0, 200, seed=3))
    with pytest.raises(InputError):
        dirichlet_counts(5, 75, 10, 2.0, 3, seed=0)


def test_unbalanced_queries_keep_the_support_and_label_each_query(run):  # noqa: F811
    labels = np.repeat(np.arange(40), 40)
    cfg = EpisodesConfig(queries=7, episodes=30, query_dirichlet=1.0)
    sup, qry, truth = draw_queries(cfg, labels, NOVEL, 5, 3)
    assert qry.shape == truth.shape == (30, 35)
    assert torch.equal(torch.as_tensor(labels)[qry], torch.as_tensor(labels)[sup[:, :, 0]].gather(1, truth))
    bal = draw_queries(EpisodesConfig(queries=7, episodes=30), labels, NOVEL, 5, 3)
    assert torch.equal(sup, bal[0]) and not torch.equal(truth, bal[2])
    assert len(set(qry[0].tolist()) | set(sup[0].flatten().tolist())) == 35 + 15  # disjoint rows


def test_transductive_rows_are_marked(run):  # noqa: F811
    cfg = EpisodesConfig(run=str(run), splits=str(run / "splits.json"), out_dir=str(run / "ep_t"), device="cpu",
                         episodes_dir=str(run / "episode_files"), heads=["protonet", "bd_cspn"], ways=[5], shots=[1], episodes=20, query_dirichlet=2.0)
    text = episodes(cfg)
    assert "| bd_cspn | transductive |" in text and "| protonet | inductive |" in text and "Dirichlet(2)" in text
    with open(run / "ep_t" / "episodes.csv") as f:
        marks = {r["head"]: r["transductive"] for r in csv.DictReader(f)}
    assert marks == {"protonet": "False", "bd_cspn": "True"}


def test_laplacian_knn_counts_the_query_itself_as_the_papers_code():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]]])  # one episode of 4 queries
    head = HEADS.create("laplacian_shot", knn=3, features="none")
    near = head._neighbours(prepared(x, "none"))
    assert [sorted(r) for r in near[0].tolist()] == [[1, 2], [0, 2], [0, 1], [1, 2]]  # knn − 1 = 2 others each


@pytest.mark.parametrize("knn, label", [(3, 1), (4, 0)])
def test_laplacian_two_neighbours_against_three(knn, label):
    s = torch.tensor([[[[0.0, 0.0]], [[4.0, 0.0]]]])  # class means at x = 0 and x = 4
    q = torch.tensor([[[1.9, 0.0], [3.0, 0.0], [3.2, 0.0], [0.2, 0.0], [0.0, 0.2]]])
    head = HEADS.create("laplacian_shot", lam=0.6, knn=knn, rectify=False, features="none")
    # query 0 is nearer class 0; its 2 nearest others are class 1 (pulled over), its 3rd is class 0 (not)
    assert head.episode_scores(s, q, Task(2, np.zeros(0, np.int64), np.arange(2)))[0, 0].argmax() == label


def laplacian_alone(s, q, head):
    """The paper's code, one episode (s (W, S, d), q (Q, d), raw features, support means): (y, updates run)."""
    unary = torch.cdist(q, s.mean(1)).pow(2)
    near = torch.cdist(q, q).topk(head.knn, largest=False).indices[:, 1:]
    kernel = torch.zeros(len(q), len(q)).scatter_(1, near, 1.0)
    y, old = torch.softmax(-unary, 1), float("inf")
    for i in range(head.iterations):
        y = torch.softmax(-unary + head.lam * kernel @ y, 1)
        bound = (y * torch.log(y.clamp_min(1e-20)) + unary * y - head.lam * (kernel @ y) * y).double().sum().item()
        if i > 1 and abs(bound - old) <= 1e-6 * abs(old):
            return y, i + 1
        old = bound
    return y, head.iterations


def test_laplacian_episodes_stop_on_their_own_as_alone():
    support, query, task = episode(e=6, q=5, seed=2)
    head = HEADS.create("laplacian_shot", lam=1.5, rectify=False, features="none")
    batched = head.episode_scores(support, query, task)
    alone = [laplacian_alone(support[e], query[e], head) for e in range(6)]
    assert len({n for _, n in alone}) > 1  # the episodes stop after different numbers of updates
    assert torch.allclose(batched, torch.stack([y for y, _ in alone]), atol=1e-5)


def adam_alone(name, s, q, head, steps):
    """TIM or transductive fine-tuning on one episode (l2 features) with autograd and torch.optim.Adam."""
    s, q = F.normalize(s, dim=-1), F.normalize(q, dim=-1)
    flat, labels = s.flatten(0, 1), torch.arange(s.shape[0]).repeat_interleave(s.shape[1])
    if name == "tim":
        w = s.mean(1).clone().requires_grad_(True)
        params, logits = [w], lambda x: -0.5 * head.temperature * torch.cdist(x, w).pow(2)
    else:
        w, b = F.normalize(s.mean(1), dim=-1).requires_grad_(True), torch.zeros(s.shape[0], requires_grad=True)
        params, logits = [w, b], lambda x: (x @ w.t() + b) / head.temperature
    opt = torch.optim.Adam(params, lr=head.lr)
    for _ in range(steps):
        p = logits(q).softmax(1)
        cond = -(p * torch.log(p + 1e-12)).sum(1).mean()
        if name == "tim":
            marginal = -(p.mean(0) * torch.log(p.mean(0))).sum()
            loss = head.ce_weight * F.cross_entropy(logits(flat), labels) - marginal + head.cond_weight * cond
        else:
            loss = F.cross_entropy(logits(flat), labels) + head.entropy_weight * cond
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logits(q).detach()


@pytest.mark.parametrize("name", ["tim", "transductive_ft"])
def test_written_out_gradients_follow_autograd_adam(name):
    support, query, task = episode(e=3, seed=4)
    head = HEADS.create(name, iterations=25, lr=1e-2)
    batched = head.episode_scores(support, query, task)
    alone = torch.stack([adam_alone(name, support[e], query[e], head, 25) for e in range(3)])
    assert torch.allclose(batched, alone, atol=2e-3 * alone.abs().max())
    assert torch.equal(batched.argmax(-1), alone.argmax(-1))


@pytest.mark.parametrize("eps", [1.0, 30.0])
def test_laplacian_rectifies_with_its_eps(eps):
    support, query, task = episode()
    lap = HEADS.create("laplacian_shot", lam=0.0, eps=eps).episode_scores(support, query, task)
    bd = HEADS.create("bd_cspn", features="cl2n", eps=eps).episode_scores(support, query, task)
    assert torch.equal(lap.argmax(-1), bd.argmax(-1))
    other = HEADS.create("bd_cspn", features="cl2n", eps=31 - eps).episode_scores(support, query, task)
    assert not torch.equal(bd, other)
