"""miniImageNet on Ravi & Larochelle's split (ICLR 2017): 64 train, 16 val, 20 test classes × 600 images.

`root` holds one of three layouts (nothing is downloaded):

- `images/` and `train.csv`, `val.csv`, `test.csv` (`filename,label`): Ravi & Larochelle's files;
- `train/<wnid>/…`, `val/<wnid>/…`, `test/<wnid>/…`: the usual per-split class folders;
- Gidaris & Komodakis' pickles `miniImageNet_category_split_{train_phase_train,train_phase_test,val,test}.pickle`
  (84 × 84 RGB arrays, held in memory), whose `train_phase_test` holds 64-class images that are not
  among the 600 training images: the base test images of their generalised protocol (`lowshot gfsl`).

The class lists and every class's 600 image numbers (`<wnid><number, 8 digits>.jpg`) ship with lowshot
(`splits/mini_imagenet.json`) and the files are checked against them: a CSV or class folder that lists
other images is one error naming it and an image. Folder images named otherwise are only counted (600).
Labels: the 64 train classes (0–63), the 16 val classes (64–79), the 20 test classes (80–99). Parts:
`lowshot.data.fewshot`. Images are read at 84 px (the `crop` preset).
"""
from __future__ import annotations

import csv
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from lowshot.data.base import DATASETS, FileDataset, ImageDataset
from lowshot.data.cifar100 import read_python
from lowshot.data.fewshot import SPLIT_NAMES, check_classes, class_lists, holdout_meta, parts, split_classes
from lowshot.data.files import images_in, require_dir, subfolders
from lowshot.errors import InputError

NAME = re.compile(r"^(n\d{8})(\d{8})\.jpg$")
PICKLE = "miniImageNet_category_split_{}.pickle"


def check_numbers(source, wnid: str, names: Sequence[str]) -> None:
    """The image names of class `wnid` must be exactly Ravi & Larochelle's 600 (`<wnid><8 digits>.jpg`)."""
    expected = set(class_lists("mini_imagenet")["images"][wnid])
    found = {int(m.group(2)) for m in map(NAME.match, names) if m and m.group(1) == wnid}
    foreign = [n for n in names if not (NAME.match(n) and NAME.match(n).group(1) == wnid)]
    extra = sorted(found - expected)
    if foreign or extra:
        shown = foreign[:1] or [f"{wnid}{extra[0]:08d}.jpg"]
        raise InputError(source, f"class {wnid} lists {len(foreign) + len(extra)} images that are not among Ravi "
                                 f"& Larochelle's {len(expected)}, e.g. {shown[0]}")
    missing = sorted(expected - found)
    if missing:
        raise InputError(source, f"class {wnid} lacks {len(missing)} of Ravi & Larochelle's {len(expected)} images, "
                                 f"e.g. {wnid}{missing[0]:08d}.jpg")


def read_csv_split(path: str, expected: Sequence[str]) -> Dict[str, List[str]]:
    """{wnid: file names} of one of Ravi & Larochelle's CSV files, checked against the shipped lists."""
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
        raise InputError(path, "expected a header line `filename,label`")
    names: Dict[str, List[str]] = {}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) < 2:
            raise InputError(path, f"line {i} has fewer than 2 fields")
        names.setdefault(row[1].strip(), []).append(row[0].strip())
    check_classes(path, list(names), expected, "classes of this split")
    for wnid in expected:
        check_numbers(path, wnid, names[wnid])
    return names


def read_folder_split(root: str, split: str, expected: Sequence[str]) -> Dict[str, List[str]]:
    """{wnid: file names} of `root/<split>/<wnid>/`, checked against the shipped lists."""
    folder = require_dir(os.path.join(root, split), f"{split} folder")
    check_classes(folder, subfolders(folder), expected, "classes of this split")
    names = {}
    for wnid in expected:
        files = images_in(os.path.join(folder, wnid))
        if all(NAME.match(n) for n in files):
            check_numbers(os.path.join(folder, wnid), wnid, files)
        elif len(files) != len(class_lists("mini_imagenet")["images"][wnid]):
            raise InputError(os.path.join(folder, wnid), f"has {len(files)} images; Ravi & Larochelle's class has "
                                                          f"{len(class_lists('mini_imagenet')['images'][wnid])}")
        names[wnid] = [f"{split}/{wnid}/{n}" for n in files]
    return names


def _file_rows(root: str, layout: str) -> Tuple[List[str], np.ndarray, Dict[str, str]]:
    """(image paths relative to root, labels, the file listing each split) of the csv or folder layout."""
    lists = split_classes("mini_imagenet")
    label = {w: k for k, w in enumerate(sum(lists, []))}
    files: List[str] = []
    labels: List[int] = []
    sources = {}
    for split, expected in zip(SPLIT_NAMES, lists):
        if layout == "csv":
            sources[split] = os.path.join(root, f"{split}.csv")
            names = {w: [f"images/{n}" for n in ns] for w, ns in read_csv_split(sources[split], expected).items()}
        else:
            sources[split] = os.path.join(root, split)
            names = read_folder_split(root, split, expected)
        for wnid in expected:
            files += sorted(names[wnid])
            labels += [label[wnid]] * len(names[wnid])
    return files, np.asarray(labels, np.int64), sources


def read_pickle(path: str, expected: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    """(images uint8 (N, 84, 84, 3), wnid per image) of one of Gidaris & Komodakis' pickles."""
    d = read_python(path, "a miniImageNet pickle of Gidaris & Komodakis")
    data, labels, names = d.get("data"), d.get("labels"), d.get("catname2label")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
        raise InputError(path, "`data` must be a uint8 array of shape (N, H, W, 3)")
    if labels is None or len(labels) != len(data) or not isinstance(names, dict):
        raise InputError(path, f"needs `labels` (one per image, {len(data)}) and `catname2label`")
    wnid = {int(v): (k.decode() if isinstance(k, bytes) else str(k)) for k, v in names.items()}
    if any(int(y) not in wnid for y in labels):
        raise InputError(path, "has a label that `catname2label` does not name")
    per_image = [wnid[int(y)] for y in labels]
    check_classes(path, sorted(set(per_image)), expected, "classes of this split")
    return data, per_image


def _from_pickles(root: str, shot_pool: int, base_test: int, seed: int) -> ImageDataset:
    """Gidaris & Komodakis' pickles: train_phase_train = base train images, train_phase_test = base test
    images, val and test = the novel classes' images."""
    if base_test:
        raise InputError(root, "base_test: the pickles hold their own held-out base images (train_phase_test)")
    train, val, test = split_classes("mini_imagenet")
    label = {w: k for k, w in enumerate(train + val + test)}
    images, labels, held = [], [], []
    for part, expected in (("train_phase_train", train), ("train_phase_test", train), ("val", val), ("test", test)):
        data, wnids = read_pickle(os.path.join(root, PICKLE.format(part)), expected)
        images.append(data)
        labels.append(np.asarray([label[w] for w in wnids], np.int64))
        held.append(np.full(len(data), part == "train_phase_test"))
    all_images, all_labels = np.concatenate(images).transpose(0, 3, 1, 2), np.concatenate(labels)
    rows = parts(all_labels, train + val + test, (train, val, test), shot_pool, 0, seed, np.concatenate(held), root)
    tr, te, splits, shots = rows
    meta = {"root": root, "layout": "pickles", **holdout_meta(shot_pool, 0, seed)}
    return ImageDataset("mini_imagenet", np.ascontiguousarray(all_images[tr]), all_labels[tr],
                        np.ascontiguousarray(all_images[te]), all_labels[te], train + val + test, meta, splits, shots)


def layout_of(root: str) -> str:
    """"pickles", "csv" or "folders": the miniImageNet layout under `root`."""
    if os.path.isfile(os.path.join(root, PICKLE.format("train_phase_train"))):
        return "pickles"
    if os.path.isfile(os.path.join(root, "train.csv")):
        return "csv"
    if os.path.isdir(os.path.join(root, "train")):
        return "folders"
    raise InputError(root, "no miniImageNet here: expected train.csv, val.csv, test.csv and images/; train/, val/, "
                           f"test/ class folders; or {PICKLE.format('train_phase_train')} and its siblings")


@DATASETS.register("mini_imagenet")
def mini_imagenet(root: str, shot_pool: int = 0, base_test: int = 0, seed: int = 0, transforms: str = "crop"):
    """miniImageNet from `root` in any of its three layouts; see the module docstring.

    Args:
        shot_pool, base_test, seed: images held out per novel / base class for the generalised grid
            (`lowshot.data.fewshot`); 0 keeps the published parts.
        transforms: augmentation preset of the file layouts (`crop`: 84 px).
    """
    layout = layout_of(require_dir(root))
    if layout == "pickles":
        return _from_pickles(root, shot_pool, base_test, seed)
    files, labels, sources = _file_rows(root, layout)
    names = sum(split_classes("mini_imagenet"), [])
    train, test, splits, shots = parts(labels, names, split_classes("mini_imagenet"), shot_pool, base_test, seed,
                                       source=root)
    meta = {"root": root, "layout": layout, **holdout_meta(shot_pool, base_test, seed),
            "sources": {"train": sources["train"], "test": root}}
    return FileDataset("mini_imagenet", root, [files[i] for i in train], labels[train], [files[i] for i in test],
                       labels[test], names, transforms, meta, splits, shots)
