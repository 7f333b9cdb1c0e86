"""Fixed episode files: round trip, reuse, rows tied to their features, paired results, the report's refusal of
results from different files, and Meta-Dataset's sampling rules."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from synthetic import one_thread  # noqa: F401 (autouse fixture)
from synthetic_cli import error_line, invoke
from test_episodes import NOVEL, config, run  # noqa: F401 (fixture)

from lowshot.errors import InputError
from lowshot.heads import Task
from lowshot.io.features import FeatureSet, read_features, write_features
from lowshot.protocols.episode_files import (
    ARRAYS,
    FORMAT,
    Episodes,
    Setting,
    check_rows,
    episode_file,
    parse_settings,
    read_episodes,
    write_episodes,
)
from lowshot.protocols.episode_report import check_one_file, read_results, report_episodes
from lowshot.protocols.episodes import (
    EpisodesConfig,
    draw_queries,
    episode_accuracies,
    episodes,
    ragged_accuracies,
)
from lowshot.protocols.metadataset import draw_metadataset
from lowshot.stats import mean_ci

LABELS = np.repeat(np.arange(40), 40)
REQUEST = {"dataset": "synth", "data": {}, "split": "test", "setup": 2, "classes_digest": "c", "labels_digest": "l"}


def drawer(calls):
    def draw(meta):
        calls.append(1)
        sup, qry, truth = draw_queries(EpisodesConfig(queries=4, episodes=12, query_dirichlet=1.0), LABELS, NOVEL, 5, 2)
        return Episodes.from_dense(sup, qry, truth, LABELS, meta)
    return draw


def test_round_trip_reuse_and_a_changed_file(tmp_path):
    calls = []
    ep = episode_file(tmp_path, Setting(5, 2, 4, 12, 1.0), 0, REQUEST, drawer(calls))
    sup, qry, truth = ep.dense()
    assert sup.shape == (12, 5, 2) and qry.shape == truth.shape == (12, 20)
    assert (torch.as_tensor(LABELS)[qry] == torch.as_tensor(LABELS)[sup[:, :, 0]].gather(1, truth)).all()
    stamp = os.stat(ep.path).st_mtime_ns
    again = episode_file(tmp_path, Setting(5, 2, 4, 12, 1.0), 0, REQUEST, drawer(calls))
    assert calls == [1] and os.stat(ep.path).st_mtime_ns == stamp  # reused, not redrawn or rewritten
    assert again.fingerprint == ep.fingerprint and all(np.array_equal(getattr(again, k), getattr(ep, k)) for k in ARRAYS)
    assert "dir1" in ep.path.name and again.meta["labels_digest"] == "l"
    other = episode_file(tmp_path, Setting(5, 2, 4, 12, 1.0), 1, REQUEST, drawer(calls))
    assert other.path != ep.path and len(calls) == 2  # another seed: another file
    with np.load(ep.path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["query"][0] += 1
    np.savez(ep.path, **arrays)
    with pytest.raises(InputError, match=f"fingerprint it records \\({ep.fingerprint}"):
        read_episodes(ep.path)


def test_rows_of_other_features_are_refused(tmp_path):
    ep = episode_file(tmp_path, Setting(5, 1, 3, 4), 0, {**REQUEST, "labels_digest": "wrong"}, drawer([]))
    with pytest.raises(InputError, match="labels digesting to"):
        check_rows(ep, LABELS, "test.hdf5")


def test_variable_episodes_round_trip_and_score_as_the_batched_path(tmp_path):
    eps = draw_metadataset(LABELS, NOVEL, 6, seed=0)
    md = Episodes.from_list(eps, {"format": FORMAT, "setting": "md-6"})
    write_episodes(tmp_path / "md.npz", md)
    back = read_episodes(tmp_path / "md.npz")
    assert back.dense() is None and back.fingerprint == md.fingerprint
    for i, (cls, s, sw, q, qw) in enumerate(eps):
        assert all(np.array_equal(a, b) for a, b in zip(back.episode(i), (s, sw, q, qw)))
    fixed = episode_file(tmp_path, Setting(5, 2, 4, 12, 1.0), 0, REQUEST, drawer([]))  # a dense file, both ways
    feats = torch.from_numpy(np.random.default_rng(0).normal(size=(len(LABELS), 8)).astype(np.float32))
    sup, qry, truth = fixed.dense()
    task = Task(5, np.zeros(0, np.int64), np.arange(5))
    for name in ("protonet", "bd_cspn"):
        assert torch.allclose(ragged_accuracies(name, {}, feats, fixed, task),
                              episode_accuracies(name, {}, feats[sup], feats[qry], task, truth), atol=1e-6)


def test_named_settings():
    assert [s.name for s in parse_settings(["standard"])] == ["5w1s15q-600", "5w5s15q-600"]
    assert [s.episodes for s in parse_settings(["standard-10000"])] == [10000, 10000]
    assert parse_settings(["5w1s15q-600-dir2"])[0].query_dirichlet == 2.0
    assert parse_settings(["md-600"])[0].sampler == "metadataset"
    with pytest.raises(InputError, match="unknown episode setting"):
        parse_settings(["five-way"])


def test_two_heads_on_one_file_are_paired(run):  # noqa: F811
    text = episodes(config(run, heads=["protonet", "bd_cspn"], settings=["5w1s5q-40"]))
    a, b = sorted(read_results(run / "ep"), key=lambda r: r["head"])[:2]
    assert (a["head"], b["head"]) == ("bd_cspn", "protonet") and a["fingerprint"] == b["fingerprint"]
    assert len(a["accs"]) == len(b["accs"]) == 40 and a["episode_file"] == b["episode_file"]
    diff = mean_ci(100 * (np.array(b["accs"]) - np.array(a["accs"])))  # protonet − bd_cspn, episode by episode
    assert "{:+.2f} ± {:.2f}".format(*diff[:2]) in text and a["fingerprint"] in text
    for word in ("Protocol: N-way K-shot", "split: test", "5-way 1-shot, 5 queries per class", "40 episodes"):
        assert word in text


def test_report_refuses_results_of_different_episode_files(run, tmp_path):  # noqa: F811
    episodes(config(run, heads=["protonet"], settings=["5w1s5q-30"]))
    fs = read_features(run / "features" / "test.hdf5")
    keep = np.arange(len(fs.labels)) != 0  # the same data set, one image fewer: other rows
    write_features(tmp_path / "r2" / "features" / "test.hdf5",
                   FeatureSet(fs.feats[keep], fs.labels[keep], fs.attrs, None, fs.classifier_scale))
    cfg = EpisodesConfig(run=str(tmp_path / "r2"), splits=str(run / "splits.json"), device="cpu", heads=["protonet"],
                         settings=["5w1s5q-30"], episodes_dir=str(run / "episode_files"))
    episodes(cfg)
    mine, theirs = (read_results(d)[0]["fingerprint"] for d in (run / "ep", tmp_path / "r2" / "episodes"))
    assert mine != theirs
    with pytest.raises(InputError) as err:
        report_episodes([str(run / "ep"), str(tmp_path / "r2" / "episodes")], str(tmp_path / "rep"))
    assert mine in str(err.value) and theirs in str(err.value) and "never pairs or averages" in str(err.value)
    line = error_line(invoke("report", run / "ep", tmp_path / "r2" / "episodes", "--out", tmp_path / "rep"))
    assert line.startswith("Error:") and mine in line and theirs in line


def test_report_pairs_two_representations_on_one_file(run, tmp_path):  # noqa: F811
    episodes(config(run, heads=["protonet"], settings=["5w1s5q-30"]))
    (tmp_path / "r3" / "features").mkdir(parents=True)
    (tmp_path / "r3" / "features" / "test.hdf5").symlink_to(run / "features" / "test.hdf5")
    episodes(EpisodesConfig(run=str(tmp_path / "r3"), splits=str(run / "splits.json"), device="cpu",
                            heads=["protonet", "cosine_ncm"], head_params={"cosine_ncm": {"centre": "support"}},
                            settings=["5w1s5q-30"], episodes_dir=str(run / "episode_files")))
    text = report_episodes([str(run / "ep"), str(tmp_path / "r3" / "episodes")], str(tmp_path / "rep"))
    assert f"| {run.name} | synth | protonet |" in text and "| r3 | synth | protonet |" in text
    table = next(t for t in text.split("**synth") if "5-way 1-shot, 5 queries per class; 30 episodes" in t)
    rows = [line.split(" | ")[4] for line in table.splitlines() if "| protonet |" in line]
    assert len(rows) == 2 and rows[0] == rows[1]  # the same features on the same episodes: the same accuracy
    paired = (tmp_path / "rep" / "episodes_paired.csv").read_text().splitlines()
    assert sum(",5w1s5q-30" in p or " 5w1s5q-30 " in p for p in paired) == 3  # 3 pairs of the 3 rows on that file
    check_one_file(read_results(run / "ep"))


def test_metadataset_rules_on_a_tiny_label_set():
    counts = np.random.default_rng(1).integers(3, 41, size=60)
    counts[[10, 11]] = [700, 650]  # two big classes: the support set size cap of 500 matters
    labels = np.repeat(np.arange(60), counts)
    classes = np.arange(10, 60)
    eps = draw_metadataset(labels, classes, 300, seed=4)
    ways, imbalanced = [], 0
    for cls, s, sw, q, qw in eps:
        w, n = len(cls), counts[cls]
        ways.append(w)
        assert 5 <= w <= 50 and len(set(cls.tolist())) == w and np.isin(cls, classes).all()
        shots, queries = np.bincount(sw, minlength=w), np.bincount(qw, minlength=w)
        assert (queries == min(10, (n // 2).min())).all()  # balanced queries, ≤ 10, ≤ half the smallest class
        assert (shots >= 1).all() and (shots <= n - queries).all()
        assert shots.sum() <= min(500, (np.minimum(100, n - queries) + 1).sum())
        assert (labels[s] == cls[sw]).all() and (labels[q] == cls[qw]).all()
        assert len(set(s.tolist()) | set(q.tolist())) == len(s) + len(q)  # disjoint, no repeats
        imbalanced += len(set(shots.tolist())) > 1
    assert min(ways) < 15 and max(ways) > 40 and imbalanced > 250
    again = draw_metadataset(labels, classes, 300, seed=4)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(eps, again))
    few = draw_metadataset(labels, np.arange(10, 17), 50, seed=0)
    assert {len(e[0]) for e in few} <= set(range(5, 8))  # ways ≤ the classes there are
    with pytest.raises(InputError, match="need 5 classes"):
        draw_metadataset(labels, np.arange(10, 14), 5, seed=0)


def test_metadataset_episodes_through_the_stage(run):  # noqa: F811
    text = episodes(config(run, heads=["protonet"], settings=["md-8"]))
    result = [r for r in read_results(run / "ep") if r["setting"] == "md-8"][0]
    assert len(result["accs"]) == 8 and "Meta-Dataset" in text and result["ways"] == "5-50"
    assert json.loads(open(result["path"]).read())["fingerprint"] == result["fingerprint"]


def test_glyph_class_lists_are_the_label_splits_setups():
    from pathlib import Path

    from lowshot.data.fewshot import class_lists, fewshot_splits, split_classes
    from lowshot.io.splits import load_label_splits
    train, val, test = split_classes("glyphs")
    assert (len(train), len(val), len(test)) == (200, 100, 100) and len(set(train + val + test)) == 400
    hg = load_label_splits(Path(__file__).parent.parent / "label_splits" / "glyphs.json")
    few = fewshot_splits(hg.label_names, train, val, test)  # train = base of both setups, val / test = novel 1 / 2
    assert (few.base_classes, few.novel_classes_1, few.novel_classes_2) == (
        hg.base_classes, hg.novel_classes_1, hg.novel_classes_2)
    assert class_lists("glyphs")["source"][0]["path"] == "label_splits/glyphs.json"
