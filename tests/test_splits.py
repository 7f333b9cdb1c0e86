"""Label splits and shot files: layout, determinism, nesting, disjointness, validation."""
import json
from pathlib import Path

import numpy as np
import pytest

from lowshot.errors import InputError
from lowshot.io.splits import (
    LabelSplits,
    load_label_splits,
    load_shots,
    make_label_splits,
    make_shots,
    write_label_splits,
    write_shots,
)

REPO = Path(__file__).resolve().parents[1]


def test_committed_glyph_files_regenerate_byte_for_byte(tmp_path):
    committed = load_label_splits(REPO / "label_splits" / "glyphs.json")
    made = make_label_splits(committed.label_names, seed=0)
    made.data = committed.data  # the record of the data it describes (DataIdentity.record)
    write_label_splits(tmp_path / "glyphs.json", made)
    assert (tmp_path / "glyphs.json").read_bytes() == (REPO / "label_splits" / "glyphs.json").read_bytes()
    # the default glyph set: 400 classes × 70 train images, class-contiguous rows
    train_labels = np.repeat(np.arange(400), 70)
    for k in range(1, 6):
        write_shots(tmp_path / "s.json", make_shots(train_labels, 400, 0, k))
        assert (tmp_path / "s.json").read_bytes() == (REPO / "experiment_cfgs/glyphs" / f"splitfile_{k}.json").read_bytes()


def test_splits_are_disjoint_and_cover_everything():
    s = make_label_splits([str(i) for i in range(40)], seed=3)
    parts = [s.base_classes_1, s.base_classes_2, s.novel_classes_1, s.novel_classes_2]
    assert sorted(sum(parts, [])) == list(range(40))
    assert all(p == sorted(p) for p in parts) and s.base_classes == sorted(s.base_classes_1 + s.base_classes_2)


def test_shots_are_nested_inside_their_class_and_differ_across_experiments(tmp_path):
    labels = np.repeat(np.arange(5), 30)
    write_shots(tmp_path / "s1.json", make_shots(labels, 5, 0, 1))
    write_shots(tmp_path / "s2.json", make_shots(labels, 5, 0, 2))
    classes = np.array([1, 3])
    prev = set()
    for n in (1, 2, 5, 10, 20):
        idx = load_shots(tmp_path / "s1.json", labels, classes, n)
        assert len(idx) == 2 * n and set(labels[idx]) == {1, 3} and prev <= set(idx)
        prev = set(idx)
    one = [set(load_shots(tmp_path / f"s{k}.json", labels, classes, 1)) for k in (1, 2)]
    assert one[0] != one[1]


def test_hg_label_idx_loads_unchanged(tmp_path):
    hg = {"base_classes": [0, 2], "base_classes_1": [2], "base_classes_2": [0], "novel_classes_1": [1],
          "novel_classes_2": [3], "label_names": ["n01", "n02", "n03", "n04"]}
    (tmp_path / "label_idx.json").write_text(json.dumps(hg))
    s = load_label_splits(tmp_path / "label_idx.json")
    assert s.setup(2)[0].tolist() == [0] and s.setup(2)[1].tolist() == [3] and s.base_classes == [0, 2]


def test_setups_may_share_all_their_base_classes_but_not_some(tmp_path):
    """The few-shot benchmarks: the train classes are the base of both setups; a partial overlap stays an error."""
    shared = LabelSplits(list("abcdef"), [0, 1], [0, 1], [2, 3], [4, 5])
    write_label_splits(tmp_path / "fs.json", shared)
    s = load_label_splits(tmp_path / "fs.json")
    assert s.base_classes == [0, 1] and json.loads((tmp_path / "fs.json").read_text())["base_classes"] == [0, 1]
    assert s.setup(1)[0].tolist() == s.setup(2)[0].tolist() == [0, 1]
    partial = {"base_classes_1": [0, 1], "base_classes_2": [1, 2], "novel_classes_1": [3], "novel_classes_2": [4],
               "label_names": list("abcde")}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(InputError, match="partial.json: setups 1 and 2 share classes"):
        load_label_splits(tmp_path / "partial.json")


def test_overlapping_base_and_novel_is_an_error(tmp_path):
    bad = {"base_classes_1": [0, 1], "base_classes_2": [2], "novel_classes_1": [1], "novel_classes_2": [3],
           "label_names": list("abcd")}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"bad.json: base and novel classes overlap: \[1\]"):
        load_label_splits(tmp_path / "bad.json")


def test_shot_outside_its_class_is_an_error(tmp_path):
    labels = np.repeat(np.arange(3), 25)
    shots = make_shots(labels, 3, 0, 1)
    shots[2, 0] = 3  # a row of class 0
    write_shots(tmp_path / "s.json", shots)
    with pytest.raises(InputError, match="s.json: shot index 3 of class 2 is outside"):
        load_shots(tmp_path / "s.json", labels, np.array([2]), 1)
