"""The few-shot benchmarks on their published splits: the shipped class lists, each loader on a tiny tree
in its exact layout, the parts (train classes train, val/test classes test, seeded hold-outs), bad
layouts as one line, and data → train → features → episodes → gfsl on miniImageNet's pickles."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fewshot_trees import (
    MINI,
    OMNIGLOT,
    WNIDS,
    glyphs6,  # noqa: F401 (fixture)
    mini_csv_tree,
    mini_folder_tree,
    mini_lists,
    mini_pickles,
    numbers,
    omniglot_tree,
    tiered_tree,
    tiny_lists,  # noqa: F401 (fixture)
)
from image_trees import cifar_trees, cub_tree, one_thread, tiny_train_config  # noqa: F401
from synthetic_cli import error_line, invoke

from lowshot.data import DATASETS
from lowshot.data.fewshot import SPLITS_DIR, split_rows
from lowshot.errors import InputError

PUBLISHED = {"mini_imagenet": (64, 16, 20), "tiered_imagenet": (351, 97, 160), "cifar_fs": (64, 16, 20),
             "fc100": (60, 20, 20), "cub_chen2019": (100, 50, 50), "omniglot_vinyals": (1028, 172, 423)}


def shipped(name: str) -> dict:
    return json.loads((SPLITS_DIR / f"{name}.json").read_text())



# ---- the shipped class lists -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_lists_have_the_published_counts_no_class_twice_and_a_source(name):
    d = shipped(name)
    lists = [d["splits"][k] for k in ("train", "val", "test")]
    assert tuple(len(x) for x in lists) == PUBLISHED[name]
    every = sum(lists, [])
    assert len(set(every)) == len(every)  # no class in two splits, none listed twice
    assert d["source"] and all(re.fullmatch(r"[0-9a-f]{40}", s["commit"]) and s["repo"] and s["path"]
                               for s in d["source"])


def test_shipped_lists_agree_with_the_benchmarks_other_facts():
    mini = shipped("mini_imagenet")
    assert set(mini["images"]) == set(sum(mini["splits"].values(), []))
    assert all(len(v) == 600 == len(set(v)) for v in mini["images"].values())
    tiered = shipped("tiered_imagenet")
    for split, n_cats in (("train", 20), ("val", 6), ("test", 8)):
        cats = tiered["categories"][split]
        assert len(cats) == n_cats and sum(cats.values(), []) == tiered["splits"][split]
    labels = shipped("cifar100_labels")
    fine = labels["fine_label_names"]
    assert len(fine) == 100 and sorted(sum(shipped("cifar_fs")["splits"].values(), [])) == fine
    fc = shipped("fc100")
    assert [len(fc["superclasses"][k]) for k in ("train", "val", "test")] == [12, 4, 4]
    for split, supers in fc["superclasses"].items():
        members = sum((labels["coarse_to_fine"][labels["coarse_label_names"][i]] for i in supers), [])
        assert sorted(members) == sorted(fc["splits"][split])
    cub = shipped("cub_chen2019")["splits"]
    folders = sorted(sum(cub.values(), []))  # Chen et al.'s rule over the sorted folders
    assert cub == {"train": folders[0::2], "val": folders[1::4], "test": folders[3::4]}
    omni = shipped("omniglot_vinyals")
    assert len(omni["splits"]["train"]) + len(omni["splits"]["val"]) == 1200
    assert len(omni["background_alphabets"]) == 30 and len(omni["evaluation_alphabets"]) == 20
    alphabets = {k: {c.split("/")[0] for c in v} for k, v in omni["splits"].items()}
    assert alphabets["val"] <= set(omni["background_alphabets"])
    assert alphabets["test"] <= set(omni["evaluation_alphabets"])


# ---- loaders on tiny trees -------------------------------------------------------------------------------------

def counts(labels, n=6):
    return np.bincount(labels, minlength=n).tolist()


def test_mini_imagenet_csv_and_folder_layouts(tmp_path, glyphs6, tiny_lists):
    mini_lists(tiny_lists)
    csv = DATASETS.create("mini_imagenet", root=str(mini_csv_tree(tmp_path / "csv", glyphs6)))
    folders = DATASETS.create("mini_imagenet", root=str(mini_folder_tree(tmp_path / "folders", glyphs6)))
    for data in (csv, folders):
        assert data.label_names == WNIDS and data.transforms == "crop"  # 84 px
        assert counts(data.train_labels) == [26, 26, 26, 0, 0, 0] and counts(data.test_labels) == [0, 0, 0, 26, 26, 26]
        s = data.default_splits
        assert (s.base_classes_1, s.base_classes_2) == ([0, 1, 2], [0, 1, 2])
        assert (s.novel_classes_1, s.novel_classes_2) == ([3], [4, 5])
        assert [len(r) for r in data.default_shots[0]] == [20, 20, 20, 0, 0, 0]  # novel classes: no shot pool
    assert csv.train_files[0] == f"images/{WNIDS[0]}{numbers(0)[0]:08d}.jpg"
    assert folders.test_files[0] == f"val/{WNIDS[3]}/{WNIDS[3]}{numbers(3)[0]:08d}.jpg"
    assert [f.rsplit("/", 1)[1] for f in csv.test_files] == [f.rsplit("/", 1)[1] for f in folders.test_files]


def test_mini_imagenet_pickles_hold_the_held_out_base_images(tmp_path, glyphs6, tiny_lists):
    mini_lists(tiny_lists)
    data = DATASETS.create("mini_imagenet", root=str(mini_pickles(tmp_path / "p", glyphs6)))
    assert counts(data.train_labels) == [22, 22, 22, 0, 0, 0] and counts(data.test_labels) == [4, 4, 4, 26, 26, 26]
    assert data.train_images.shape[1:] == (3, 32, 32)
    held = data.test_images[data.test_labels == 0][:, 0]  # train_phase_test: class 0's 4 glyph test images (red)
    np.testing.assert_array_equal(held, glyphs6.test_images[glyphs6.test_labels == 0][:, 0])
    with pytest.raises(InputError, match="base_test: the pickles hold their own held-out base images"):
        DATASETS.create("mini_imagenet", root=str(tmp_path / "p"), base_test=5)


def test_holdouts_are_seeded_disjoint_and_checked(tmp_path, glyphs6, tiny_lists):
    mini_lists(tiny_lists)
    root = str(mini_csv_tree(tmp_path / "csv", glyphs6))
    a = DATASETS.create("mini_imagenet", root=root, shot_pool=20, base_test=5)
    assert counts(a.train_labels) == [21, 21, 21, 20, 20, 20] and counts(a.test_labels) == [5, 5, 5, 6, 6, 6]
    assert not set(a.train_files) & set(a.test_files) and a.default_shots is None  # `lowshot data` draws its own
    assert a.train_files == DATASETS.create("mini_imagenet", root=root, shot_pool=20, base_test=5).train_files
    assert a.train_files != DATASETS.create("mini_imagenet", root=root, shot_pool=20, base_test=5, seed=1).train_files
    with pytest.raises(InputError, match="shot_pool 5: a shot file row holds 20 images"):
        DATASETS.create("mini_imagenet", root=root, shot_pool=5)
    with pytest.raises(InputError, match="shot_pool 26 leaves no images of class 3, which has 26"):
        DATASETS.create("mini_imagenet", root=root, shot_pool=26)


def test_split_rows_keeps_rows_grouped_and_stable():
    labels = np.array([2, 0, 1, 0, 2, 1, 0])
    train, test = split_rows(labels, base=[0, 1])
    assert train.tolist() == [1, 3, 6, 2, 5] and test.tolist() == [0, 4]


def test_tiered_imagenet(tmp_path, glyphs6, tiny_lists):
    data = DATASETS.create("tiered_imagenet", root=str(tiered_tree(tmp_path / "t", glyphs6, tiny_lists)))
    assert data.label_names == WNIDS and data.transforms == "crop"
    assert counts(data.train_labels) == [26, 26, 26, 0, 0, 0] and counts(data.test_labels) == [0, 0, 0, 26, 26, 26]
    assert data.default_splits.novel_classes_1 == [3]
    assert data.train_files[0] == f"train/{WNIDS[0]}/{WNIDS[0]}_0000.JPEG"


@pytest.mark.parametrize("name,lists", [
    ("cifar_fs", {"train": ["fine_3", "fine_0", "fine_5"], "val": ["fine_1"], "test": ["fine_2", "fine_4"]}),
    ("fc100", {"train": ["fine_0", "fine_1", "fine_4"], "val": ["fine_2"], "test": ["fine_3", "fine_5"]})])
def test_cifar_fs_and_fc100_take_every_image_of_a_class(tmp_path, glyphs6, tiny_lists, name, lists):
    tiny_lists("cifar100_labels", {}, fine_label_names=[f"fine_{c}" for c in range(6)])
    tiny_lists(name, lists)
    data = DATASETS.create(name, root=str(cifar_trees(tmp_path / "c", glyphs6)))
    assert data.label_names == sum(lists.values(), [])
    assert counts(data.train_labels) == [26, 26, 26, 0, 0, 0] and counts(data.test_labels) == [0, 0, 0, 26, 26, 26]
    first = int(lists["train"][0][-1])  # label 0 = the copy's fine class `first`: its 22 train, then 4 test images
    rows = lambda images: sorted(x.tobytes() for x in images)  # noqa: E731
    got = data.train_images[data.train_labels == 0][:, 0]  # the red plane is the glyph
    assert rows(got[:22]) == rows(glyphs6.train_images[glyphs6.train_labels == first][:, 0])
    assert rows(got[22:]) == rows(glyphs6.test_images[glyphs6.test_labels == first][:, 0])


def test_cub_chen_split_uses_every_image_and_qi_is_unchanged(tmp_path, glyphs6, tiny_lists):
    names = [f"{c + 1:03d}.Bird_{c}" for c in range(6)]
    tiny_lists("cub_chen2019", {"train": names[0::2], "val": names[1::4], "test": names[3::4]})
    root = str(cub_tree(tmp_path / "CUB_200_2011", glyphs6))
    chen = DATASETS.create("cub", root=root, split="chen")
    assert counts(chen.train_labels) == [26, 0, 26, 0, 26, 0] and counts(chen.test_labels) == [0, 26, 0, 26, 0, 26]
    s = chen.default_splits
    assert (s.base_classes_2, s.novel_classes_1, s.novel_classes_2) == ([0, 2, 4], [1, 5], [3])
    qi = DATASETS.create("cub", root=root)
    assert counts(qi.train_labels) == [22] * 6 and qi.default_splits.novel_classes_2 == [3, 4, 5]
    with pytest.raises(InputError, match="apply to the few-shot split"):
        DATASETS.create("cub", root=root, shot_pool=20)


def test_omniglot_rotations_are_classes_at_28_pixels(tmp_path, glyphs6, tiny_lists):
    root = str(omniglot_tree(tmp_path / "omniglot", glyphs6, tiny_lists))
    data = DATASETS.create("omniglot", root=root)
    assert data.label_names[:5] == ["Alpha/character01/rot000", "Alpha/character01/rot090", "Alpha/character01/rot180",
                                    "Alpha/character01/rot270", "Alpha/character02/rot000"]
    assert data.train_images.shape == (3 * 4 * 20, 1, 28, 28) and data.test_images.shape == (2 * 4 * 20, 1, 28, 28)
    up, left = data.train_images[:20, 0], data.train_images[20:40, 0]
    np.testing.assert_array_equal(left, np.rot90(up, 1, axes=(1, 2)))  # rot090: counter-clockwise, as PIL's rotate
    assert up.mean() < 128 and set(np.unique(up)) <= {0, 255}  # ink bright on dark, binary (nearest resize)
    s = data.default_splits  # Vinyals et al.: train + val characters are base, no setup 1
    assert s.base_classes_2 == list(range(12)) and s.novel_classes_1 == [] and s.novel_classes_2 == list(range(12, 20))
    snell = DATASETS.create("omniglot", root=root, split="train").default_splits
    assert snell.base_classes_2 == list(range(8)) and snell.novel_classes_1 == [8, 9, 10, 11]


# ---- a layout that does not match: one line naming the file and what is missing --------------------------------

def _drop_csv_row(root):
    lines = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join(lines[:3] + lines[4:]) + "\n")


BAD = {
    "mini csv, a row missing": ("mini_imagenet", mini_csv_tree, _drop_csv_row,
                                f"train.csv: class {WNIDS[0]} lacks 1 of Ravi & Larochelle's 26 images, "
                                f"e.g. {WNIDS[0]}{numbers(0)[2]:08d}.jpg"),
    "mini folders, a class missing": ("mini_imagenet", mini_folder_tree, lambda r: shutil.rmtree(r / "test" / WNIDS[5]),
                                      f"test: lacks 1 of the 2 classes of this split, e.g. {WNIDS[5]}"),
    "mini pickles, a pickle missing": ("mini_imagenet", mini_pickles,
                                       lambda r: (r / "miniImageNet_category_split_val.pickle").unlink(),
                                       "miniImageNet_category_split_val.pickle: file not found"),
    "tiered, a foreign class": ("tiered_imagenet", None,
                                lambda r: shutil.copytree(r / "val" / WNIDS[3], r / "val" / "n0"),
                                "val: has 1 classes that are not among the 1 val classes of tieredImageNet, e.g. n0"),
    "omniglot, a drawing missing": ("omniglot", None,
                                    lambda r: next((r / "images_evaluation" / OMNIGLOT["test"][1]).iterdir()).unlink(),
                                    f"images_evaluation/{OMNIGLOT['test'][1]}: has 19 drawings; an Omniglot character "
                                    "has 20"),
    "no layout": ("mini_imagenet", mini_csv_tree, lambda r: (r / "train.csv").rename(r / "train.txt"),
                  "no miniImageNet here: expected train.csv"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_layout_that_does_not_match_is_one_line(tmp_path, glyphs6, tiny_lists, monkeypatch, case):
    dataset, make, damage, message = BAD[case]
    monkeypatch.chdir(tmp_path)
    mini_lists(tiny_lists)
    root = tmp_path / "root"
    if dataset == "tiered_imagenet":
        tiered_tree(root, glyphs6, tiny_lists)
    elif dataset == "omniglot":
        omniglot_tree(root, glyphs6, tiny_lists)
    else:
        make(root, glyphs6)
    damage(root)
    line = error_line(invoke("data", "--dataset", dataset, "--root", root))
    assert message in line, line
    assert not Path("label_splits").exists()


def test_cifar_copy_and_cub_classes_must_be_the_benchmarks(tmp_path, glyphs6, tiny_lists, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_lists("cifar100_labels", {}, fine_label_names=[f"fine_{c}" for c in range(7)])
    tiny_lists("cifar_fs", {"train": ["fine_0"], "val": [], "test": []})
    line = error_line(invoke("data", "--dataset", "cifar_fs", "--root", cifar_trees(tmp_path / "c", glyphs6)))
    assert "fine_label_names.txt: lacks 1 of the 7 CIFAR-100 fine label names, e.g. fine_6" in line
    tiny_lists("cub_chen2019", {"train": ["001.Bird_0"], "val": [], "test": []})
    line = error_line(invoke("data", "--dataset", "cub", "--root", cub_tree(tmp_path / "cub", glyphs6),
                             "--dataset-args", '{"split": "chen"}'))
    assert "classes.txt: has 5 classes that are not among the 1 CUB-200-2011 classes" in line


# ---- the pipeline --------------------------------------------------------------------------------------------

def test_mini_imagenet_pickles_from_data_to_episodes_and_gfsl(tmp_path, glyphs6, tiny_lists, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mini_lists(tiny_lists)
    root = mini_pickles(tmp_path / "mini", glyphs6)
    assert invoke("data", "--dataset", "mini_imagenet", "--root", root).exit_code == 0
    (shots,) = Path("experiment_cfgs").glob("mini_imagenet-*")
    assert json.loads((shots / "splitfile_1.json").read_text())[4] == []
    cfg = tiny_train_config(tmp_path / "train.json", epochs=1)
    train = invoke("train", "--dataset", "mini_imagenet", "--root", root, "--run", "runs/m", "--config", cfg)
    assert train.exit_code == 0 and '"val_top1"' in train.output  # the held-out base images are test images
    assert invoke("features", "--run", "runs/m").exit_code == 0
    small = ["--set", "episodes=10", "--set", "queries=5", "--set", 'heads=["protonet"]']
    out = invoke("episodes", "--run", "runs/m", "--set", "ways=[2]", *small)
    assert out.exit_code == 0 and "| protonet |" in out.output
    out = invoke("gfsl", "--run", "runs/m", "--set", "ways=2", "--set", "base_queries=4", *small)
    assert out.exit_code == 0 and "2-way 1-shot: novel / base / both" in out.output
    rows = Path("runs/m/gfsl/gfsl.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("head,ways,shots,queries,base_queries,episodes,novel,novel_ci95")
    line = error_line(invoke("benchmark", "--run", "runs/m", "--heads", "protonet"))
    assert "splitfile_1.json: class 4 has no shots" in line and "shot_pool" in line


def test_training_on_the_published_parts_reports_no_validation_accuracy(tmp_path, glyphs6, tiny_lists, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tiered_tree(tmp_path / "t", glyphs6, tiny_lists)  # every train-class image is a train image
    assert invoke("data", "--dataset", "tiered_imagenet", "--root", root).exit_code == 0
    cfg = tiny_train_config(tmp_path / "train.json", epochs=1)
    out = invoke("train", "--dataset", "tiered_imagenet", "--root", root, "--run", "runs/t", "--config", cfg)
    assert out.exit_code == 0 and '"loss"' in out.output and "val_top1" not in out.output  # not a 0 % from nothing
