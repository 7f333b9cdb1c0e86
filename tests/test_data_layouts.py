"""On-disk data sets on small real image trees (JPEG/PNG written with Pillow): loaders, order, bad input,
and data → train → features → benchmark → report through the CLI for each layout."""
import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from image_trees import WNIDS, corrupt, glyphs6, one_thread, tiny_train_config, trees  # noqa: F401
from synthetic_cli import error_line, invoke

from lowshot.data import DATASETS
from lowshot.data.cifar100 import PlainUnpickler
from lowshot.io.splits import make_label_splits


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path



def written_for(kind: str, folder: str = "experiment_cfgs", suffix: str = "") -> Path:
    """The one definition file or folder `lowshot data` wrote for data of `kind` read from a folder: its name is
    `<kind>-<first digits of the data's fingerprint>`."""
    (path,) = Path(folder).glob(f"{kind}-*{suffix}")
    return path


# ---- loaders ---------------------------------------------------------------------------------------------------

def test_imagenet_meta_built_in_hg_order_and_splitfiles_adopted(work, trees, glyphs6):
    root = trees["imagenet"]
    args = {"label_idx": str(root / "label_idx.json"), "splitfiles": str(root / "hg"), "meta_dir": str(work / "metas")}
    assert invoke("data", "--dataset", "imagenet", "--root", root, "--dataset-args", json.dumps(args)).exit_code == 0
    meta = json.loads((work / "metas" / "train.json").read_text())
    assert meta["label_names"] == WNIDS  # label_idx order, not sorted wnids
    assert meta["image_labels"] == sorted(meta["image_labels"])  # class-contiguous blocks in label order
    assert meta["image_names"][:2] == [f"train/{WNIDS[0]}/{WNIDS[0]}_000.JPEG", f"train/{WNIDS[0]}/{WNIDS[0]}_001.JPEG"]
    hg = json.loads((root / "hg" / "splitfile_3.json").read_text())
    assert json.loads((written_for("imagenet") / "splitfile_3.json").read_text()) == hg
    assert json.loads(written_for("imagenet", "label_splits", ".json").read_text())["novel_classes_2"] == [4, 5]
    data = DATASETS.create("imagenet", root=str(root), **args)
    assert len(data.test_files) == 24 and data.test_files[0].startswith(f"val/{WNIDS[0]}/ILSVRC2012_val_")


def test_imagenet_tree_that_does_not_match_the_splitfiles(work, trees, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(trees["imagenet"], root)
    for f in sorted((root / "train" / WNIDS[0]).iterdir())[:5]:  # class 0 loses 5 images: later rows shift
        f.unlink()
    args = {"label_idx": str(root / "label_idx.json"), "splitfiles": str(root / "hg")}
    line = error_line(invoke("data", "--dataset", "imagenet", "--root", root, "--dataset-args", json.dumps(args)))
    assert "splitfile_1.json: row " in line and "does not match" in line
    assert not list(Path("label_splits").glob("imagenet*"))


def test_folder_cub_and_cifar_orders(trees, glyphs6):
    f = DATASETS.create("folder", root=str(trees["folder"]))
    assert f.label_names == [f"class_{c}" for c in range(6)] and len(f.train_files) == 132
    np.testing.assert_array_equal(f.train_labels, glyphs6.train_labels)
    held = DATASETS.create("folder", root=str(trees["folder"]), test="none", test_fraction=0.25)
    assert len(held.test_files) == 6 * 6 and not set(held.test_files) & set(held.train_files)
    c = DATASETS.create("cub", root=str(trees["cub"]))
    assert c.default_splits.base_classes_2 == [0, 1, 2] and c.default_splits.novel_classes_2 == [3, 4, 5]
    assert len(c.train_files) == 132 and c.train_files[0].startswith("images/001.Bird_0/")
    binary, python = (DATASETS.create("cifar100", root=str(trees["cifar100"] / v))
                      for v in ("cifar-100-binary", "cifar-100-python"))
    np.testing.assert_array_equal(binary.train_images, python.train_images)
    np.testing.assert_array_equal(binary.train_labels, glyphs6.train_labels)
    assert binary.train_images.shape == (132, 3, 32, 32) and python.label_names == [f"fine_{c}" for c in range(6)]


def test_cifar_python_never_runs_code_from_the_file(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))
    (tmp_path / "train").write_bytes(pickle.dumps({"data": Evil()}))
    (tmp_path / "meta").write_bytes(pickle.dumps({"fine_label_names": ["a"]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        PlainUnpickler(open(tmp_path / "train", "rb")).load()
    line = error_line(invoke("data", "--dataset", "cifar100", "--root", tmp_path))
    assert "train: not a CIFAR-100 python file (refusing to load builtins.print" in line


# ---- bad input: one line naming the file, nothing written ------------------------------------------------------

def test_missing_root(work):
    assert "Error: /no/such/folder: data set root not found" in error_line(
        invoke("data", "--dataset", "folder", "--root", "/no/such/folder"))


def test_meta_naming_missing_images(work, trees):
    meta = json.loads(json.dumps({"label_names": WNIDS, "image_labels": [0, 0, 1], "image_names":
                                  [f"train/{WNIDS[0]}/{WNIDS[0]}_000.JPEG", "train/gone/a.JPEG", "train/gone/b.JPEG"]}))
    Path("train.json").write_text(json.dumps(meta))
    Path("val.json").write_text(json.dumps(meta))
    line = error_line(invoke("data", "--dataset", "imagenet", "--root", trees["imagenet"],
                             "--dataset-args", json.dumps({"meta_dir": str(work)})))
    assert f"{work / 'train.json'}: names 2 of 3 train images that do not exist" in line
    assert "e.g. train/gone/a.JPEG, train/gone/b.JPEG" in line


def test_class_names_disagree_with_label_idx(work, trees):
    idx = json.loads((trees["imagenet"] / "label_idx.json").read_text())
    idx["label_names"][2] = "n9999"
    Path("label_idx.json").write_text(json.dumps(idx))
    meta = {"label_names": WNIDS, "image_labels": [], "image_names": []}
    Path("train.json").write_text(json.dumps(meta))
    Path("val.json").write_text(json.dumps(meta))
    line = error_line(invoke("data", "--dataset", "imagenet", "--root", trees["imagenet"], "--dataset-args",
                             json.dumps({"meta_dir": str(work), "label_idx": "label_idx.json"})))
    assert "train.json: class names disagree with label_idx.json: label 2 is 'n0500' here, 'n9999' there" in line


def test_novel_class_with_too_few_images(work, trees, tmp_path):
    root = tmp_path / "few"
    shutil.copytree(trees["folder"], root)
    novel = make_label_splits([f"class_{c}" for c in range(6)]).novel_classes_2[0]
    for f in sorted((root / "train" / f"class_{novel}").iterdir())[12:]:
        f.unlink()
    line = error_line(invoke("data", "--dataset", "folder", "--root", root))
    assert f"novel class 'class_{novel}' (label {novel}) has 12 training images; the shot files need 20" in line
    assert not Path("label_splits").exists()


def test_cifar_file_of_the_wrong_size(work, trees, tmp_path):
    root = tmp_path / "cifar-100-binary"
    shutil.copytree(trees["cifar100"] / "cifar-100-binary", root)
    with open(root / "train.bin", "ab") as f:
        f.write(b"\0" * 100)
    line = error_line(invoke("data", "--dataset", "cifar100", "--root", root))
    assert "train.bin: has 405868 bytes, not a whole number of 3074-byte CIFAR-100 records" in line


def test_image_that_does_not_decode_is_named(work, trees, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(trees["folder"], root)
    base = make_label_splits([f"class_{c}" for c in range(6)]).base_classes[0]
    bad = root / "train" / f"class_{base}" / "img_003.png"
    corrupt(bad)
    assert invoke("data", "--dataset", "folder", "--root", root).exit_code == 0  # the file exists
    tiny_train_config(work / "t.json", workers=1)
    line = error_line(invoke("train", "--config", "t.json", "--dataset", "folder", "--root", root, "--run", "runs/bad",
                             "--epochs", "1", "--device", "cpu"))
    assert line.startswith(f"Error: {bad}: cannot decode image")
    assert not Path("runs/bad/checkpoints/last.pt").exists()


# ---- the pipeline through the CLI, per layout --------------------------------------------------------------------

LAYOUTS = {
    "imagenet": ("imagenet", "", {"label_idx": "label_idx.json", "splitfiles": "hg"}),
    "folder": ("folder", "", {}),
    "cub": ("cub", "", {}),
    "cifar100": ("cifar100", "cifar-100-binary", {}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_pipeline_end_to_end(layout, work, trees, tmp_path):
    name, sub, rel_args = LAYOUTS[layout]
    root = tmp_path / "data"
    shutil.copytree(trees[layout] / sub if sub else trees[layout], root)  # imagenet writes its metas into root
    args = {k: str(root / v) for k, v in rel_args.items()}
    assert invoke("data", "--dataset", name, "--root", root, "--dataset-args", json.dumps(args)).exit_code == 0
    extra = {"dataset_args": args, "amp": "bf16"} if layout == "imagenet" else {"dataset_args": args}
    tiny_train_config(work / "t.json", **extra)
    out = invoke("train", "--config", "t.json", "--dataset", name, "--root", root, "--run", f"runs/{layout}",
                 "--epochs", "1", "--device", "cpu")
    assert out.exit_code == 0, out.output
    log = json.loads(Path(f"runs/{layout}/train_log.jsonl").read_text().splitlines()[0])
    assert log["images_per_s"] > 0 and log["data_wait_s"] >= 0
    assert invoke("features", "--run", f"runs/{layout}", "--device", "cpu", "--workers", "0").exit_code == 0
    with h5py.File(f"runs/{layout}/features/train.hdf5") as f:
        assert f["count"][0] == 132 and f.attrs["dataset"] == name
        assert np.isfinite(f["all_feats"][:]).all()
    out = invoke("benchmark", "--run", f"runs/{layout}", "--heads", "protonet", "--n", "1,2", "--expid", "1",
                 "--device", "cpu")
    assert out.exit_code == 0 and "2 new result files" in out.output, out.output
    rep = invoke("report", f"runs/{layout}/results", "--no-plot")
    assert rep.exit_code == 0 and "Novel top-1" in rep.output
