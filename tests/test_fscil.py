"""`lowshot fscil`: the published session files, the learners' contract, the metrics, the mapping of published
entries onto feature rows (tiny fake CIFAR-100, CUB and miniImageNet copies), and the command end to end."""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from image_trees import glyphs6, trees  # noqa: F401
from synthetic_cli import error_line, invoke

from lowshot.data import DATASETS
from lowshot.errors import InputError
from lowshot.heads.maths import l2_normalise
from lowshot.io.features import FeatureSet
from lowshot.io.fingerprint import digest
from lowshot.protocols.fscil import METHODS
from lowshot.protocols.fscil.learners import LEARNERS, BaseSession, Session
from lowshot.protocols.fscil.metrics import harmonic_mean, over_sessions, session_metrics
from lowshot.protocols.fscil.rows import build_pools, evaluation_rows, session_rows
from lowshot.protocols.fscil.sessions import (
    FORMAT,
    check_sessions,
    draw_sessions,
    entry_labels,
    load_sessions,
    reorder_sessions,
    session_classes,
    shipped,
)
from lowshot.protocols.fscil.tables import interval

# ---- the published session files --------------------------------------------------------------------------------

PUBLISHED = {  # name: (base classes, incremental sessions, way, shot, classes, base training images, last test count)
    "cifar100": (60, 8, 5, 5, 100, 30000, 10000),
    "mini_imagenet": (60, 8, 5, 5, 100, 30000, 10000),
    "cub200": (100, 10, 10, 5, 200, 3000, 5794),
}


def test_the_three_published_protocols_are_shipped():
    assert shipped() == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_session_files_have_the_published_counts(name):
    base, sessions, way, shot, total, base_train, last_test = PUBLISHED[name]
    obj = load_sessions(name)  # checked on load: no class in two sessions, no entry twice
    classes = session_classes(obj)
    assert len(classes) == sessions + 1 and classes[0] == list(range(base))
    for t, s in enumerate(obj["sessions"][1:], 1):
        assert classes[t] == list(range(base + way * (t - 1), base + way * t))
        labels = entry_labels(obj, s)
        assert len(s["train"]) == way * shot and sorted(labels) == sorted(classes[t] * shot)
    assert sorted(c for cs in classes for c in cs) == list(range(total))
    assert obj["sessions"][0] == {"classes": list(range(base)), "train": "all", "train_count": base_train}
    assert len(obj["test_counts"]) == sessions + 1 and obj["test_counts"][-1] == last_test
    assert obj["source"] and all(re.fullmatch(r"[0-9a-f]{40}", s["commit"]) and s["repo"] and s["path"]
                                 for s in obj["source"])


def test_mini_imagenet_split_is_100_test_images_per_class_and_no_session_entry_is_one():
    obj = load_sessions("mini_imagenet")
    assert len(obj["split"]) == 100 and all(len(set(v)) == 100 for v in obj["split"].values())
    test = {f"{w}{n:08d}.jpg" for w, ns in obj["split"].items() for n in ns}
    assert not test & {e for s in obj["sessions"][1:] for e in s["train"]}


def test_a_session_file_with_a_class_or_an_entry_twice_is_refused():
    good = {"format": FORMAT, "entries": "row", "shot": 1,
            "sessions": [{"classes": [0, 1], "train": "all"}, {"classes": [2], "train": [5], "labels": [2]}]}
    check_sessions(good)
    twice = {**good, "sessions": good["sessions"] + [{"classes": [1], "train": [6], "labels": [1]}]}
    with pytest.raises(InputError, match="seen in an earlier session"):
        check_sessions(twice)
    again = {**good, "sessions": good["sessions"] + [{"classes": [3], "train": [5], "labels": [3]}]}
    with pytest.raises(InputError, match="entry listed twice"):
        check_sessions(again)
    with pytest.raises(InputError, match="needs 1 entries"):
        check_sessions({**good, "sessions": [good["sessions"][0], {"classes": [2], "train": [5, 7], "labels": [2, 2]}]})


def test_draws_are_seeded_disjoint_and_inside_their_classes():
    labels = np.repeat(np.arange(10), 8)
    a, b = (draw_sessions(labels, [0, 1], range(2, 10), 2, 3, 4, 0, 1) for _ in range(2))
    assert a == b and a != draw_sessions(labels, [0, 1], range(2, 10), 2, 3, 4, 0, 2)
    check_sessions(a)
    for s in a["sessions"][1:]:
        assert list(labels[s["train"]]) == s["labels"] and len(s["classes"]) == 2
    with pytest.raises(InputError, match="need 10 new classes"):
        draw_sessions(labels, [0, 1], range(2, 10), 5, 3, 2, 0, 0)


def test_trial_0_keeps_the_published_order_and_later_trials_permute_whole_sessions():
    obj = load_sessions("cub200")
    assert reorder_sessions(obj, 0, 0) is obj
    other = reorder_sessions(obj, 0, 1)
    assert other["sessions"][0] == obj["sessions"][0] and other["sessions"] != obj["sessions"]
    key = lambda s: s["classes"]  # noqa: E731
    assert sorted(other["sessions"][1:], key=key) == sorted(obj["sessions"][1:], key=key)


# ---- learners ---------------------------------------------------------------------------------------------------

def _problem(seed=0, d=8):
    """Base classes 0-3 (20 rows each), sessions of classes {4, 5} and {6, 7} (3 rows each), test rows."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=g) * 3
    rows = lambda c, n: (centres[c] + torch.randn(n, d, generator=g), torch.full((n,), c))  # noqa: E731
    base = [rows(c, 20) for c in range(4)]
    weight = l2_normalise(centres + 0.5 * torch.randn(8, d, generator=g))
    b = BaseSession(torch.cat([x for x, _ in base]), torch.cat([y for _, y in base]), [0, 1, 2, 3], weight, 10.0)
    sessions = []
    for t, classes in enumerate(([4, 5], [6, 7]), 2):
        parts = [rows(c, 3) for c in classes]
        sessions.append(Session(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]), classes, t, t))
    return b, sessions, torch.randn(30, d, generator=g) * 3


@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m]["top_up"]])
def test_add_never_changes_earlier_scores_of_a_frozen_learner_and_does_of_the_others(method):
    base, (s2, s3), x = _problem()
    spec = METHODS[method]
    learner = LEARNERS.create(spec["learner"], **spec["params"]).start(base)
    assert learner.scores(x).shape == (30, 4)
    before = learner.add(s2).scores(x)
    after = learner.add(s3).scores(x)
    assert after.shape == (30, 8) and learner.classes_ == [0, 1, 2, 3, 4, 5, 6, 7]
    assert torch.isfinite(after).all()
    if learner.frozen_old:
        assert torch.equal(after[:, :6], before)
    else:
        assert not torch.allclose(after[:, :6], before)


def test_prototypes_imprinting_and_fine_tuning_from_zero_steps_against_hand_computations():
    base, (s2, _), x = _problem()
    proto = LEARNERS.create("prototype").start(base).add(s2)
    means = torch.stack([base.feats[base.labels == c].mean(0) for c in range(4)]
                        + [s2.feats[s2.labels == c].mean(0) for c in (4, 5)])
    torch.testing.assert_close(proto.scores(x), 16 * l2_normalise(x) @ l2_normalise(means).t())
    imprint = LEARNERS.create("imprint").start(base).add(s2)
    shots = torch.stack([l2_normalise(s2.feats[s2.labels == c]).mean(0) for c in (4, 5)])
    rows = torch.cat([l2_normalise(base.classifier_weight[:4]), l2_normalise(shots)])
    torch.testing.assert_close(imprint.scores(x), 10 * l2_normalise(x) @ rows.t())
    still = LEARNERS.create("imprint_ft", init="prototypes", old="free", steps=0).start(base).add(s2)
    torch.testing.assert_close(still.scores(x), proto.scores(x))


def test_a_learner_that_needs_the_cosine_classifier_says_so():
    base, _, _ = _problem()
    base.classifier_weight, base.classifier_scale = None, None
    with pytest.raises(InputError, match="cosine"):
        LEARNERS.create("imprint").start(base)


# ---- metrics ----------------------------------------------------------------------------------------------------

def test_session_metrics_and_summaries_against_hand_computations():
    scores = torch.tensor([[3., 1, 0], [0, 2, 1], [1, 0, 2], [2, 1, 0], [0, 0, 1], [1, 2, 0]])
    truth = torch.tensor([0, 1, 2, 1, 2, 2])  # predictions 0, 1, 2, 0, 2, 1: right, right, right, wrong, right, wrong
    is_base = torch.tensor([True, True, False, True, False, False])
    m = session_metrics(scores, truth, is_base)
    assert m["top1"] == pytest.approx(4 / 6) and m["base_accuracy"] == pytest.approx(2 / 3)
    assert m["new_accuracy"] == pytest.approx(2 / 3) and m["harmonic_mean"] == pytest.approx(2 / 3)
    assert harmonic_mean(0.8, 0.2) == pytest.approx(0.32) and harmonic_mean(0, 0) == 0
    assert np.isnan(session_metrics(scores, truth, torch.ones(6, dtype=torch.bool))["new_accuracy"])
    rows = [{"top1": 0.9, "base_accuracy": 0.9, "new_accuracy": float("nan"), "harmonic_mean": float("nan")},
            {"top1": 0.6, "base_accuracy": 0.7, "new_accuracy": 0.4, "harmonic_mean": 0.5},
            {"top1": 0.3, "base_accuracy": 0.5, "new_accuracy": 0.1, "harmonic_mean": 1 / 6}]
    s = over_sessions(rows)
    assert s["top1_base_session"] == 0.9 and s["top1_last_session"] == 0.3
    assert s["top1_average_over_sessions"] == pytest.approx(0.6) and s["performance_drop"] == pytest.approx(0.6)
    assert s["harmonic_mean_last_session"] == pytest.approx(1 / 6) and s["new_accuracy_last_session"] == 0.1


def test_intervals_are_over_trials_or_over_the_representations_means():
    values = np.array([0.5, 0.7, 0.6, 0.8])
    mean, ci, n = interval(values, np.array(["a"] * 4))
    assert n == 4 and mean == pytest.approx(0.65) and ci == pytest.approx(3.182446 * values.std(ddof=1) / 2, rel=1e-5)
    mean, ci, n = interval(values, np.array(["a", "a", "b", "b"]))
    assert n == 2 and mean == pytest.approx(0.65) and ci == pytest.approx(12.7062 * np.std([0.6, 0.7], ddof=1) / 2 ** 0.5,
                                                                            rel=1e-4)


# ---- published entries onto feature rows -------------------------------------------------------------------------

def _features(labels, marks, attrs=None):
    """A FeatureSet whose first column holds `marks` (which image each row is)."""
    feats = np.zeros((len(labels), 4), np.float32)
    feats[:, 0] = marks
    return FeatureSet(feats, np.asarray(labels, np.int64), attrs or {}, path="features.hdf5")


def test_cifar_train_indices_map_to_the_rows_of_those_images(trees):  # noqa: F811
    data = DATASETS.create("cifar100", root=str(trees["cifar100"] / "cifar-100-python"))
    index = data.meta["train_index"]
    train, test = _features(data.train_labels, index), _features(data.test_labels, data.meta["test_index"])
    originals = [int(i) for i in index[data.train_labels == 4][:2]]  # two class-4 images, by original position
    obj = {"format": FORMAT, "entries": "train_index", "num_classes": 6, "shot": 2,
           "sessions": [{"classes": [0, 1, 2], "train": "all"}, {"classes": [4], "train": originals, "labels": [4, 4]}],
           "test": "all"}
    check_sessions(obj)
    pools = build_pools(obj, train, test, data)
    rows = session_rows(obj, pools)
    assert list(pools.feats[rows[1], 0]) == originals and len(rows[0]) == (data.train_labels < 3).sum()
    assert [len(r) for r in evaluation_rows(obj, pools)] == [(data.test_labels < 3).sum(),
                                                             np.isin(data.test_labels, [0, 1, 2, 4]).sum()]
    wrong = {**obj, "sessions": [obj["sessions"][0], {**obj["sessions"][1], "labels": [5, 5], "classes": [5]}]}
    with pytest.raises(InputError, match="another class in the features"):
        session_rows(wrong, build_pools(wrong, train, test, data))
    shuffled = _features(np.roll(data.train_labels, 1), index)
    with pytest.raises(InputError, match="do not match the rows of data set 'cifar100'"):
        build_pools(obj, shuffled, test, data)


def test_cub_paths_map_to_the_rows_of_those_images(trees):  # noqa: F811
    data = DATASETS.create("cub", root=str(trees["cub"]))
    train = _features(data.train_labels, np.arange(len(data.train_labels)))
    test = _features(data.test_labels, np.arange(len(data.test_labels)))
    picks = [int(i) for i in np.flatnonzero(data.train_labels == 3)[[4, 1]]]
    entries = [data.train_files[i].split("images/", 1)[1] for i in picks]
    obj = {"format": FORMAT, "entries": "path", "num_classes": 6, "shot": 2,
           "class_names": [f.split("/")[1] for f in data.train_files[::22]],
           "sessions": [{"classes": [0, 1, 2], "train": "all"}, {"classes": [3], "train": entries}], "test": "all"}
    assert obj["class_names"] == [f"{c + 1:03d}.Bird_{c}" for c in range(6)]
    check_sessions(obj)
    rows = session_rows(obj, build_pools(obj, train, test, data))
    assert list(rows[1]) == picks
    missing = {**obj, "sessions": [obj["sessions"][0], {"classes": [3], "train": ["004.Bird_3/absent.jpg"]}]}
    with pytest.raises(InputError, match="has no row for the session entry '004.Bird_3/absent.jpg'"):
        session_rows(missing, build_pools(missing, train, test, data))


def _mini(wnids=("n00000001", "n00000002", "n00000003"), per_class=6, test_per_class=2):
    """A fake miniImageNet copy (file lists in a data set's split, 2 of every 6 images in the published test part)
    and its session file: classes 0-1 base, class 2 new from 2 shots."""
    names = {w: [f"{w}{n:08d}.jpg" for n in range(1, per_class + 1)] for w in wnids}
    train_files = [f"images/{n}" for w in wnids for n in names[w][:4]]  # the data set's own split is another one
    test_files = [f"images/{n}" for w in wnids for n in names[w][4:]]
    split = {w: [1, 6] for w in wnids}  # the published test images: numbers 1 and 6
    fsc_train = sorted(n for w in wnids for n in names[w] if int(n[9:17]) not in split[w])
    obj = {"format": FORMAT, "entries": "file_name", "num_classes": 3, "shot": 2, "class_names": list(wnids),
           "sessions": [{"classes": [0, 1], "train": "all"}, {"classes": [2], "train": [names[wnids[2]][2],
                                                                                          names[wnids[2]][4]]}],
           "test": "split", "split": split, "train_digest": digest(fsc_train)}
    labels = np.repeat([7, 3, 5], 4), np.repeat([7, 3, 5], 2)  # the data set's own label order differs
    data = SimpleNamespace(name="mini_imagenet", train_files=train_files, test_files=test_files)
    return obj, data, _features(labels[0], np.arange(12)), _features(labels[1], np.arange(12, 18))


def test_mini_imagenet_file_names_map_across_both_feature_files_with_the_published_split():
    obj, data, train, test = _mini()
    check_sessions(obj)
    pools = build_pools(obj, train, test, data)
    rows = session_rows(obj, pools)
    assert list(pools.feats[rows[1], 0]) == [10, 16]  # n00000003...03.jpg is a train row, ...05.jpg a test row
    assert len(rows[0]) == 8 and list(pools.feature_label) == [7, 3, 5]
    assert [len(r) for r in evaluation_rows(obj, pools)] == [4, 6]
    fewer = SimpleNamespace(name="mini_imagenet", train_files=data.train_files[:-1] + ["images/other.jpg"],
                            test_files=data.test_files)
    with pytest.raises(InputError, match="not exactly the 60,000"):
        build_pools(obj, train, test, fewer)


# ---- the command --------------------------------------------------------------------------------------------------

DRAW = ["--set", "way=1", "--set", "shot=5", "--set", "num_sessions=3", "--trials", "2"]


def test_fscil_end_to_end_on_synthetic_features_and_a_rerun_reuses_every_cell(feature_project):
    methods = "prototype,imprint,imprint_ft,prototype_ft_free,logreg,prototype_analogies"
    args = ["fscil", "--run", "runs/synth", "--methods", methods, "--set", "generator=jitter", *DRAW]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    out = Path("runs/synth/fscil/draw_base_classes_2_novel_classes_2_3x1way5shot")
    rows = [line.split(",") for line in (out / "fscil.csv").read_text().splitlines()]
    assert len(rows) == 1 + 6 * 2 * 4 and {"top1", "base_accuracy", "new_accuracy", "harmonic_mean"} <= set(rows[0])
    for name in ("overall.csv", "summary.csv", "summary_overall.csv", "paired.csv", "tables.md", "fscil.png"):
        assert (out / name).stat().st_size > 0
    assert "top-1 last session" in result.output and "published trends" in result.output
    trial = load_sessions(str(out / "sessions" / "trial_1.json"))
    assert session_classes(trial)[0] == [3, 4, 5] and sorted(sum(session_classes(trial)[1:], [])) == [9, 10, 11]
    cells = {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert len(cells) == 12
    again = invoke(*args)
    assert again.exit_code == 0 and {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == cells
    assert json.loads(sorted(cells)[0].read_text())["inputs"]["train_features"]


def test_fscil_refuses_new_classes_the_representation_was_trained_on(feature_project):
    line = error_line(invoke("fscil", "--run", "runs/synth", "--set", "pool=base_classes_1", *DRAW))
    assert "new-session classes [0, 1, 2] were training classes of the representation" in line


def test_fscil_refuses_a_published_protocol_without_its_data_set(feature_project):
    line = error_line(invoke("fscil", "--run", "runs/synth", "--sessions", "cifar100"))
    assert "names images of data set 'cifar100': pass its copy with --root" in line


def test_the_cifar100_fscil_label_split_trains_on_exactly_the_base_session():
    from lowshot.io.splits import load_label_splits
    splits = load_label_splits(Path(__file__).resolve().parents[1] / "label_splits" / "cifar100_fscil.json")
    classes = session_classes(load_sessions("cifar100"))
    assert splits.base_classes == classes[0] and splits.novel_classes_2 == sorted(sum(classes[1:], []))
    assert splits.label_names == load_sessions("cifar100")["class_names"]


def test_several_training_seeds_make_the_intervals_over_representations(feature_project):
    from conftest import gaussian_features

    from lowshot.io.features import read_features, write_features
    first = read_features("runs/synth/features/train.hdf5")
    for split, per_class in (("train", 40), ("test", 10)):
        feats, labels = gaussian_features(per_class=per_class, noise_seed=7 + per_class)
        write_features(f"runs/synth2/features/{split}.hdf5",
                       FeatureSet(feats, labels, first.attrs, first.classifier_weight, first.classifier_scale))
    result = invoke("fscil", "--run", "runs/synth", "--more-runs", "runs/synth2", "--methods", "prototype,logreg",
                    *DRAW)
    assert result.exit_code == 0, result.output
    assert "over 2 representations (each the mean of 2 trials)" in result.output
    summary = Path("runs/synth/fscil/draw_base_classes_2_novel_classes_2_3x1way5shot/summary.csv").read_text()
    header, *rows = [line.split(",") for line in summary.splitlines()]
    rows = [r for r in rows if r[header.index("n")] != "0"]  # new-class accuracy has no value in the base session
    assert rows and all(r[header.index("representations")] == "2" and r[header.index("n")] == "2" for r in rows)
    assert {r[header.index("session")] for r in rows} == {"1", "2", "3", "4"}
