"""Generalised few-shot episodes (Gidaris & Komodakis): their sampler and their three accuracies."""
import numpy as np
import pytest
import torch

from lowshot.errors import InputError
from lowshot.heads import Task
from lowshot.protocols.gfsl import GFSLConfig, draw_episodes, episode_accuracies

BASE, NOVEL = np.arange(4), np.arange(4, 10)


def make_labels():
    """Test rows: 10 of each base class, 30 of each novel class, interleaved."""
    labels = np.concatenate([np.repeat(BASE, 10), np.repeat(NOVEL, 30)])
    return np.random.default_rng(0).permutation(labels)


def test_episodes_follow_their_sampler():
    labels = make_labels()
    cfg = GFSLConfig(ways=3, queries=5, base_queries=12, episodes=50)
    episodes = draw_episodes(labels, BASE, NOVEL, cfg, 2, "test.hdf5")
    assert len(episodes) == 50 and len({tuple(e.novel) for e in episodes}) > 1
    for ep in episodes:
        assert list(ep.novel) == sorted(set(ep.novel)) and set(ep.novel) <= set(NOVEL)
        assert len(ep.support) == 3 * 2 and len(ep.novel_queries) == 3 * 5 and len(ep.base_queries) == 12
        rows = np.concatenate([ep.support, ep.novel_queries, ep.base_queries])
        assert len(set(rows)) == len(rows)  # exemplars, novel and base queries are distinct images
        assert sorted(labels[ep.support]) == sorted(np.repeat(ep.novel, 2))
        assert sorted(labels[ep.novel_queries]) == sorted(np.repeat(ep.novel, 5))
        assert set(labels[ep.base_queries]) <= set(BASE)
    again = draw_episodes(labels, BASE, NOVEL, cfg, 2, "test.hdf5")
    assert all((a.support == b.support).all() and (a.base_queries == b.base_queries).all()
               for a, b in zip(episodes, again))


class FavoursClassZero:
    """Scores every image the same: base class 0 best, then the novel classes in increasing order."""

    def fit(self, feats, labels, task):
        self.num_classes = task.num_classes
        return self

    def scores(self, feats):
        s = -torch.arange(self.num_classes, dtype=torch.float32)
        s[0] = 1.0
        return s.expand(len(feats), -1)


def test_accuracies_restrict_the_label_space_as_their_code_does():
    labels = make_labels()
    ep = draw_episodes(labels, BASE, NOVEL, GFSLConfig(ways=3, queries=5, base_queries=12, episodes=1), 1, "t")[0]
    data = {"base": torch.zeros(4, 2), "base_labels": torch.as_tensor(BASE), "test": torch.zeros(len(labels), 2),
            "test_labels": torch.as_tensor(labels), "base_classes": torch.as_tensor(BASE)}
    task = Task(10, BASE, ep.novel)
    novel, base, both = episode_accuracies(FavoursClassZero(), ep, data, task)
    zeros = int((labels[ep.base_queries] == 0).sum())
    assert novel == pytest.approx(1 / 3)  # among the 3 novel classes: the lowest novel label, one class in three
    assert base == pytest.approx(zeros / 12)  # among the base classes: class 0
    assert both == pytest.approx(zeros / 27)  # joint: class 0 wins every query


def test_base_classes_without_test_rows_are_one_line():
    labels = np.repeat(NOVEL, 30)
    with pytest.raises(InputError, match="t.hdf5: has no test rows of the setup's base classes"):
        draw_episodes(labels, BASE, NOVEL, GFSLConfig(ways=3, queries=5), 1, "t.hdf5")
    with pytest.raises(InputError, match="need 3 novel classes with ≥ 40 test rows; 0 have them"):
        draw_episodes(make_labels(), BASE, NOVEL, GFSLConfig(ways=3, queries=39), 1, "t.hdf5")
