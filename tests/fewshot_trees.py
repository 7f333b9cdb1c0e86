"""Tiny trees in the exact on-disk layouts of the few-shot benchmarks, drawn from the 6-class glyph set.

The shipped class lists name hundreds of classes; a test replaces them (`tiny_lists`) with lists of
the tree's 6 classes in the same JSON format, so each loader reads its real layout end to end.
Glyph class c has 22 train and 4 test images (26 in all).
"""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from image_trees import _rgb, _save, glyphs6  # noqa: F401 (re-exported session fixture)
from PIL import Image

from lowshot.data import fewshot

WNIDS = [f"n{c + 1:08d}" for c in range(6)]
MINI = {"train": WNIDS[:3], "val": WNIDS[3:4], "test": WNIDS[4:]}


def all_images(data, c: int) -> np.ndarray:
    """The 26 images (1, 32, 32) of glyph class c: its train images, then its test images."""
    return np.concatenate([data.train_images[data.train_labels == c], data.test_images[data.test_labels == c]])


def numbers(c: int):
    """The image numbers of tiny miniImageNet class c (not contiguous, as in Ravi & Larochelle's files)."""
    return [100 * c + 3 * i + 1 for i in range(26)]


@pytest.fixture
def tiny_lists(tmp_path, monkeypatch):
    """A function writing a tiny stand-in for `lowshot/data/splits/<name>.json`, read instead of the shipped one."""
    folder = tmp_path / "splits"
    folder.mkdir()
    monkeypatch.setattr(fewshot, "SPLITS_DIR", folder)
    fewshot.class_lists.cache_clear()

    def write(name: str, splits: dict, **extra) -> None:
        (folder / f"{name}.json").write_text(json.dumps({"name": name, "splits": splits, **extra}))
        fewshot.class_lists.cache_clear()

    yield write
    fewshot.class_lists.cache_clear()


def mini_lists(write) -> None:
    write("mini_imagenet", MINI, images={w: numbers(c) for c, w in enumerate(WNIDS)})


def mini_csv_tree(root: Path, data) -> Path:
    """Ravi & Larochelle's layout: images/<wnid><8 digits>.jpg and train.csv, val.csv, test.csv."""
    for split, wnids in MINI.items():
        lines = ["filename,label"]
        for w in wnids:
            c = WNIDS.index(w)
            for n, img in zip(numbers(c), all_images(data, c)):
                _save(root / "images" / f"{w}{n:08d}.jpg", _rgb(img, n))
                lines.append(f"{w}{n:08d}.jpg,{w}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def mini_folder_tree(root: Path, data) -> Path:
    """Per-split class folders: train/<wnid>/<wnid><8 digits>.jpg, val/…, test/…."""
    for split, wnids in MINI.items():
        for w in wnids:
            c = WNIDS.index(w)
            for n, img in zip(numbers(c), all_images(data, c)):
                _save(root / split / w / f"{w}{n:08d}.jpg", _rgb(img, n))
    return root


def mini_pickles(root: Path, data) -> Path:
    """Gidaris & Komodakis' pickles: train_phase_{train,test} (train classes: 22 / 4 images), val, test."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = lambda imgs: np.stack([np.asarray(_rgb(x, i)) for i, x in enumerate(imgs)])  # noqa: E731
    parts = {"train_phase_train": [(c, data.train_images[data.train_labels == c]) for c in range(3)],
             "train_phase_test": [(c, data.test_images[data.test_labels == c]) for c in range(3)],
             "val": [(3, all_images(data, 3))], "test": [(c, all_images(data, c)) for c in (4, 5)]}
    for part, blocks in parts.items():
        images = np.concatenate([rgb(imgs) for _, imgs in blocks])
        labels = [c for c, imgs in blocks for _ in imgs]
        d = {"data": images, "labels": labels, "catname2label": {WNIDS[c]: c for c, _ in blocks}}
        with open(root / f"miniImageNet_category_split_{part}.pickle", "wb") as f:
            pickle.dump(d, f, protocol=2)
    return root


def tiered_tree(root: Path, data, write) -> Path:
    """Per-split class folders of tieredImageNet (any file names) and the tiny lists with their categories."""
    splits = {"train": WNIDS[:3], "val": WNIDS[3:4], "test": WNIDS[4:]}
    cats = {"train": {"n09000001": WNIDS[:2], "n09000002": WNIDS[2:3]}, "val": {"n09000003": WNIDS[3:4]},
            "test": {"n09000004": WNIDS[4:]}}
    write("tiered_imagenet", splits, categories=cats)
    for split, wnids in splits.items():
        for w in wnids:
            for i, img in enumerate(all_images(data, WNIDS.index(w))):
                _save(root / split / w / f"{w}_{i:04d}.JPEG", _rgb(img, i))
    return root


OMNIGLOT = {"train": ["Alpha/character01", "Alpha/character02"], "val": ["Beta/character01"],
            "test": ["Gamma/character01", "Gamma/character02"]}


def omniglot_tree(root: Path, data, write) -> Path:
    """images_background/<alphabet>/<character>/*.png and images_evaluation/…: 20 binary 105 × 105 drawings."""
    write("omniglot_vinyals", OMNIGLOT, background_alphabets=["Alpha", "Beta"], evaluation_alphabets=["Gamma"])
    for c, character in enumerate(sum(OMNIGLOT.values(), [])):
        archive = "images_evaluation" if character.startswith("Gamma") else "images_background"
        for i, img in enumerate(all_images(data, c)[:20]):
            ink = np.asarray(Image.fromarray(img[0]).resize((105, 105), Image.NEAREST)) > 127
            path = root / archive / character / f"{c:04d}_{i + 1:02d}.png"
            _save(path, Image.fromarray(~ink).convert("1"))  # dark ink on white, as Omniglot's PNGs
    return root
