"""Episodic N-way K-shot evaluation: episode draws, batched = looped scores, intervals, skips."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from synthetic import FAST, one_thread, trained  # noqa: F401 (autouse fixture)

from lowshot.heads import HEADS, Task
from lowshot.io.features import FeatureSet, write_features
from lowshot.io.splits import LabelSplits, write_label_splits
from lowshot.protocols.episodes import (
    EpisodesConfig,
    _load,
    draw_episodes,
    episode_accuracies,
    episodes,
)

NOVEL = np.arange(10, 30)  # setup 2's novel classes


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with test features of 40 classes × 40 rows (d = 16), a cosine scale and a split file."""
    root = tmp_path_factory.mktemp("run")
    g = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), 40)
    mu = g.normal(size=(40, 16))
    feats = (mu[labels] + 1.6 * g.normal(size=(len(labels), 16))).astype(np.float32)
    fs = FeatureSet(feats, labels, {"dataset": "synth", "split": "test"}, None, 10.0)
    write_features(root / "features" / "test.hdf5", fs)
    names = [f"c{i}" for i in range(40)]
    write_label_splits(root / "splits.json", LabelSplits(names, list(range(30, 35)), list(range(35, 40)),
                                                         list(range(0, 10)), NOVEL.tolist()))
    return root


def config(run, **kw) -> EpisodesConfig:
    return EpisodesConfig(run=str(run), splits=str(run / "splits.json"), out_dir=str(run / "ep"), device="cpu",
                          episodes_dir=str(run / "episode_files"), **kw)


def test_draws_are_disjoint_seeded_and_within_novel_classes():
    labels = np.repeat(np.arange(40), 40)
    sup, qry = draw_episodes(labels, NOVEL, 5, 3, 7, 50, seed=1)
    assert sup.shape == (50, 5, 3) and qry.shape == (50, 5, 7)
    rows = torch.cat([sup, qry], -1)
    cls = torch.as_tensor(labels)[rows]
    assert (cls == cls[..., :1]).all() and np.isin(cls.numpy(), NOVEL).all()
    assert all(len(set(r.tolist())) == 50 for r in rows.reshape(50, -1))  # support ∩ query = ∅, no repeats
    assert all(len(set(c.tolist())) == 5 for c in cls[..., 0])  # distinct ways
    again = draw_episodes(labels, NOVEL, 5, 3, 7, 50, seed=1)
    assert torch.equal(sup, again[0]) and torch.equal(qry, again[1])


EPISODIC = [n for n in HEADS.names() if getattr(HEADS.get(n), "episodic", False)]


def test_every_episodic_head_is_batched():
    assert {n for n in EPISODIC if not hasattr(HEADS.get(n), "episode_scores")} == set()


@pytest.mark.parametrize("shots", [3, 7])  # 7 > repmet's k: its k-means path
@pytest.mark.parametrize("name", EPISODIC)
def test_batched_episode_scores_equal_fit_then_scores(name, shots):
    g = torch.Generator().manual_seed(shots)
    support, query = torch.randn(4, 5, shots, 8, generator=g).abs(), torch.randn(4, 5, 2, 8, generator=g).abs()
    task = Task(5, np.zeros(0, np.int64), np.arange(5), None, 10.0, base_mean=torch.randn(8, generator=g),
                model=trained(name, 8))
    labels = torch.arange(5).repeat_interleave(shots)
    params = {"pmn_hallucinator": {"n_aug": 5}}.get(name, FAST.get(name, {}))  # n_aug > 3 shots: G adds rows
    batched = HEADS.create(name, **params).episode_scores(support, query.reshape(4, 10, 8), task)
    looped = torch.stack([HEADS.create(name, **params).fit(support[e].reshape(-1, 8), labels, task)
                          .scores(query[e].reshape(10, 8)) for e in range(4)])
    acc = episode_accuracies(name, params, support, query, task)
    if name == "repmet" and shots > 3:  # k-means draws differ between a batch and one episode: same shape, finite
        assert looped.shape == batched.shape and torch.isfinite(batched).all()
        return
    assert torch.allclose(batched, looped, atol=1e-4)
    assert torch.equal(acc, (looped.argmax(-1) == torch.arange(5).repeat_interleave(2)).float().mean(-1))


def test_table_csv_and_skips(run):
    text = episodes(config(run, heads=["protonet", "imprint", "magnet"], ways=[5], shots=[1, 5], episodes=50))
    assert "| protonet |" in text and "5-way 5-shot" in text and "magnet: skipped" in text
    with open(run / "ep" / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["head"], r["shots"]) for r in rows} == {(h, s) for h in ("protonet", "imprint") for s in ("1", "5")}
    assert (run / "ep" / "episodes.md").read_text() == text


def test_imprint_is_skipped_without_a_cosine_scale(run, tmp_path):
    fs = FeatureSet(np.zeros((1600, 16), np.float32), np.repeat(np.arange(40), 40), {"dataset": "synth"})
    write_features(tmp_path / "features" / "test.hdf5", fs)
    cfg = EpisodesConfig(run=str(tmp_path), splits=str(run / "splits.json"), heads=["imprint"], ways=[5], shots=[1],
                         episodes=10, device="cpu", episodes_dir=str(tmp_path / "episode_files"))
    assert "imprint: skipped" in episodes(cfg) and "cosine" in episodes(cfg)


def test_interval_shrinks_as_one_over_root_episodes(run):
    ratios = []
    for seed in range(4):  # one ratio's spread is about ±0.2; average a few
        half = {}
        for n in (100, 400):
            episodes(config(run, heads=["protonet"], ways=[5], shots=[1], episodes=n, seed=seed))
            with open(run / "ep" / "episodes.csv") as f:
                row = next(csv.DictReader(f))
            assert 0.3 < float(row["mean_acc"]) < 0.95
            half[n] = float(row["ci95"])
        ratios.append(half[100] / half[400])
    assert 1.7 < np.mean(ratios) < 2.3


@pytest.fixture
def run_with_train(run, tmp_path):
    """The module's run plus a train.hdf5 whose setup-2 base rows (classes 35..39) have mean `shift`."""
    shift = np.linspace(-3.0, 3.0, 16).astype(np.float32)
    labels = np.repeat(np.arange(40), 4)
    feats = np.random.default_rng(1).normal(size=(160, 16)).astype(np.float32)
    base = labels >= 35
    feats[base] += shift - feats[base].mean(0)
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "test.hdf5").symlink_to(run / "features" / "test.hdf5")
    write_features(tmp_path / "features" / "train.hdf5", FeatureSet(feats, labels, {"dataset": "synth"}))
    return tmp_path, torch.from_numpy(shift)


def test_cosine_ncm_episodes_centre_on_the_base_classes_train_mean(run, run_with_train):
    root, shift = run_with_train
    cfg = EpisodesConfig(run=str(root), splits=str(run / "splits.json"), device="cpu")
    test, novel, base_mean = _load(cfg)
    assert torch.allclose(base_mean, shift, atol=1e-5)
    sup, qry = draw_episodes(test.labels, novel, 5, 2, 3, 4, seed=0)
    feats = torch.from_numpy(test.feats)
    support, query = feats[sup], feats[qry].reshape(4, 15, 16)
    task = Task(5, np.zeros(0, np.int64), np.arange(5), base_mean=base_mean)
    scores = HEADS.create("cosine_ncm").episode_scores(support, query, task)
    unit = torch.nn.functional.normalize
    means = unit(unit(support - shift, dim=-1).mean(2), dim=-1)  # by hand, with the known centre
    assert torch.allclose(scores, unit(query - shift, dim=-1) @ means.transpose(1, 2), atol=1e-5)
    centre = support.mean((1, 2), keepdim=True)  # centre="support": the support set's own mean
    means = unit(unit(support - centre, dim=-1).mean(2), dim=-1)
    expected = unit(query - centre[:, 0], dim=-1) @ means.transpose(1, 2)
    assert torch.allclose(HEADS.create("cosine_ncm", centre="support").episode_scores(support, query, task), expected,
                          atol=1e-5)


def test_cosine_ncm_is_skipped_without_train_features(run):
    text = episodes(config(run, heads=["cosine_ncm"], ways=[5], shots=[1], episodes=10))
    assert "cosine_ncm: skipped" in text and "train.hdf5" in text
    text = episodes(config(run, heads=["cosine_ncm"], ways=[5], shots=[1], episodes=10,
                           head_params={"cosine_ncm": {"centre": "support"}}))
    assert "| cosine_ncm {\"centre\": \"support\"} | inductive |" in text
