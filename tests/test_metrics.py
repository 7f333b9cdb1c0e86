"""The six H&G accuracies and the Wang/Gidaris metrics on a case computed by hand."""
import math

import pytest
import torch

from lowshot.metrics import _prior_hits, _ranks, _restricted_hits, cell_metrics


def test_accs_order_and_values_by_hand():
    # classes: base {0, 1}, novel {2, 3}; six classes in the label space (4, 5 unused)
    scores = torch.tensor([
        [9., 1, 0, 0, 0, 0],   # y=0 base: top-1 hit
        [9., 1, 0, 0, 0, 0],   # y=1 base: top-1 miss, top-5 hit
        [0., 0, 1, 9, 0, 0],   # y=2 novel: top-1 miss (predicts novel 3), top-5 hit
        [0., 0, 0, 9, 0, 0],   # y=3 novel: hit
    ])
    labels = torch.tensor([0, 1, 2, 3])
    m = cell_metrics(scores, labels, [0, 1], [2, 3])
    assert m["accs"] == [0.5, 1.0, 0.5, 1.0, 0.5, 1.0]
    # predictions 0, 0, 3, 3: two novel predictions, one correct
    assert m["novel_precision"] == 0.5
    assert m["harmonic_mean_top1"] == pytest.approx(0.5)


def test_restricted_label_space_metrics():
    # a novel image whose true class ranks 6th overall but 1st among novel classes
    scores = torch.tensor([[9., 8, 7, 6, 5, 1, 0]])
    m = cell_metrics(scores, torch.tensor([5]), [0, 1, 2, 3, 4], [5, 6])
    assert m["accs"][1] == 0.0          # H&G top-5 over the whole label space
    assert m["wang_novel_top5"] == 1.0  # label space restricted to novel classes
    assert m["wang_all_prior_top5"] == 1.0  # novel prior 0.8 lifts it into the top 5


def test_per_class_accuracy_and_base_novel_confusion_by_hand():
    # base {3, 1}, novel {2}; class 0 and 4 are outside the setup (label space of 5)
    scores = torch.tensor([
        [0., 9, 0, 0, 0],  # y=1 -> 1 (base→base, hit)
        [0., 0, 9, 0, 0],  # y=1 -> 2 (base→novel)
        [0., 0, 0, 9, 0],  # y=3 -> 3 (base→base, hit)
        [0., 0, 9, 0, 0],  # y=2 -> 2 (novel→novel, hit)
        [0., 0, 0, 9, 0],  # y=2 -> 3 (novel→base)
        [0., 0, 0, 0, 9],  # y=2 -> 4 (novel→other)
    ])
    labels = torch.tensor([1, 1, 3, 2, 2, 2])
    m = cell_metrics(scores, labels, [3, 1], [2])
    # aligned with the setup's sorted classes [1, 2, 3]
    assert m["per_class_top1"] == [0.5, pytest.approx(1 / 3, abs=1e-4), 1.0]
    assert m["per_class_count"] == [2, 3, 1]
    assert m["base_novel_confusion"] == [[2, 1, 0], [1, 1, 1]]


def test_per_class_of_a_class_without_test_images_is_none():
    m = cell_metrics(torch.tensor([[9., 0, 0]]), torch.tensor([0]), [0, 1], [2])
    assert m["per_class_top1"] == [1.0, None, None]
    assert m["per_class_count"] == [1, 0, 0]


def test_top5_and_restricted_hits_are_those_of_a_sort_and_ties_go_to_the_lower_class():
    torch.manual_seed(0)
    scores, labels = torch.randn(300, 40), torch.randint(0, 40, (300,))
    in_top5 = (scores.topk(5, dim=1).indices == labels[:, None]).any(1)
    assert torch.equal(_ranks(scores, labels) < 5, in_top5)
    novel = torch.tensor([31, 3, 17, 8, 25, 12, 39])
    masked = torch.full_like(scores, float("-inf"))
    masked[:, novel] = scores[:, novel]
    inside = torch.isin(labels, novel)
    want = (masked.topk(5, dim=1).indices == labels[:, None]).any(1) & inside
    assert torch.equal(_restricted_hits(scores, labels, novel, 5), want)
    # the prior's re-weighting, written out: log-softmax, then each side renormalised to its mass
    base = torch.tensor([c for c in range(40) if c not in novel.tolist()][:20])
    logp = torch.log_softmax(scores[:, torch.cat([base, novel])], 1)
    nb = len(base)
    weighted = torch.full_like(scores, float("-inf"))
    weighted[:, base] = logp[:, :nb] - logp[:, :nb].logsumexp(1, keepdim=True) + math.log(0.2)
    weighted[:, novel] = logp[:, nb:] - logp[:, nb:].logsumexp(1, keepdim=True) + math.log(0.8)
    inside = torch.isin(labels, torch.cat([base, novel]))
    want = (weighted.topk(5, dim=1).indices == labels[:, None]).any(1) & inside
    assert torch.equal(_prior_hits(scores, labels, base, novel, 0.8, 5), want)
    # seven equal scores: classes 0..4 are the top 5, class 5 is not
    tied = torch.ones(2, 7)
    assert (_ranks(tied, torch.tensor([4, 5])) < 5).tolist() == [True, False]
