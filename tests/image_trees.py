"""Small real image trees written with Pillow from glyph renders, one per on-disk layout."""
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import one_thread  # noqa: F401 (re-exported autouse fixture)

from lowshot.io.splits import LabelSplits, write_label_splits

GLYPHS = {"num_classes": 6, "images_per_class": 26, "test_per_class": 4}  # 22 train + 4 test per class
WNIDS = ["n0300", "n0100", "n0500", "n0200", "n0600", "n0400"]  # label order is not sorted, as in H&G


def glyph_data(cache_dir):
    from lowshot.data import DATASETS
    return DATASETS.create("glyphs", **GLYPHS, cache_dir=cache_dir)


def _rgb(image: np.ndarray, k: int) -> Image.Image:
    """A (1, 32, 32) glyph as an RGB image with a colour tint that varies with k."""
    g = image[0].astype(np.float32)
    tint = np.array([1.0, 0.6 + 0.1 * (k % 4), 0.3 + 0.2 * (k % 3)], np.float32)
    return Image.fromarray((g[..., None] * tint).clip(0, 255).astype(np.uint8), "RGB")


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90) if path.suffix.lower() in (".jpg", ".jpeg") else image.save(path)


def _per_class(images, labels):
    for c in np.unique(labels):
        yield int(c), images[labels == c]


def imagenet_tree(root: Path, data) -> Path:
    """`root/{train,val}/<wnid>/*.JPEG` plus H&G's label_idx.json and splitfiles made for that tree."""
    for split, images, labels in (
            ("train", data.train_images, data.train_labels),
            ("val", data.test_images, data.test_labels)):
        for c, imgs in _per_class(images, labels):
            for i, img in enumerate(imgs):
                name = f"{WNIDS[c]}_{i:03d}.JPEG" if split == "train" else f"ILSVRC2012_val_{c * 100 + i:08d}.JPEG"
                _save(root / split / WNIDS[c] / name, _rgb(img, i))
    write_label_splits(root / "label_idx.json", LabelSplits(WNIDS, [0], [1], [2, 3], [4, 5]))
    counts = np.bincount(data.train_labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for k in range(1, 6):
        rows = [(starts[c] + np.random.default_rng([k, c]).permutation(counts[c])[:20]).tolist() for c in range(6)]
        (root / "hg").mkdir(exist_ok=True)
        (root / "hg" / f"splitfile_{k}.json").write_text(json.dumps(rows))
    return root


def folder_tree(root: Path, data, names=None) -> Path:
    """`root/{train,test}/<class>/*.png`."""
    names = names or [f"class_{c}" for c in range(data.num_classes)]
    for split, images, labels in (
            ("train", data.train_images, data.train_labels),
            ("test", data.test_images, data.test_labels)):
        for c, imgs in _per_class(images, labels):
            for i, img in enumerate(imgs):
                _save(root / split / names[c] / f"img_{i:03d}.png", _rgb(img, i))
    return root


def cub_tree(root: Path, data) -> Path:
    """CUB-200-2011's native layout: images/<id>.<name>/*.jpg and the four index files."""
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "classes.txt": []}
    image_id = 0
    for c in range(data.num_classes):
        cls = f"{c + 1:03d}.Bird_{c}"
        lines["classes.txt"].append(f"{c + 1} {cls}")
        parts = [(img, 1) for img in data.train_images[data.train_labels == c]]
        parts += [(img, 0) for img in data.test_images[data.test_labels == c]]
        for i, (img, is_train) in enumerate(parts):
            image_id += 1
            rel = f"{cls}/{cls}_{i:04d}.jpg"
            _save(root / "images" / rel, _rgb(img, i))
            lines["images.txt"].append(f"{image_id} {rel}")
            lines["image_class_labels.txt"].append(f"{image_id} {c + 1}")
            lines["train_test_split.txt"].append(f"{image_id} {is_train}")
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return root


def _cifar_arrays(images, labels):
    """Glyphs as CIFAR rows (N, 3072) RGB planes, shuffled as in the real files."""
    rgb = np.stack([np.asarray(_rgb(img, i)).transpose(2, 0, 1).reshape(-1) for i, img in enumerate(images)])
    order = np.random.default_rng(0).permutation(len(labels))
    return rgb[order].astype(np.uint8), labels[order]


def cifar_trees(root: Path, data) -> Path:
    """Both versions of a CIFAR-100 copy: `cifar-100-binary/` and `cifar-100-python/`."""
    names = [f"fine_{c}" for c in range(data.num_classes)]
    binary, python = root / "cifar-100-binary", root / "cifar-100-python"
    binary.mkdir(parents=True)
    python.mkdir(parents=True)
    for split, images, labels in (
            ("train", data.train_images, data.train_labels),
            ("test", data.test_images, data.test_labels)):
        rows, fine = _cifar_arrays(images, labels)
        records = np.concatenate([(fine // 2)[:, None], fine[:, None], rows], axis=1).astype(np.uint8)
        records.tofile(binary / f"{split}.bin")
        with open(python / split, "wb") as f:
            pickle.dump({b"data": rows, b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 2).tolist(),
                         b"filenames": [b"x.png"] * len(fine)}, f, protocol=4)
    (binary / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    with open(python / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in names]}, f, protocol=4)
    return root


def tiny_train_config(path: Path, **extra) -> Path:
    """A training config small enough for a 1-epoch test on 32-pixel images."""
    cfg = {"backbone": "resnet10", "width": 0.125, "stem": "small", "classifier": "cosine", "batch_size": 16,
           "lr": 0.05, "schedule": "step", "image_size": 32, "workers": 0, **extra}
    path.write_text(json.dumps(cfg))
    return path


def corrupt(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    os.utime(path)


@pytest.fixture(scope="session")
def glyphs6(tmp_path_factory):
    """The 6-class glyph set the trees are drawn from."""
    return glyph_data(str(tmp_path_factory.mktemp("glyph6-cache")))


@pytest.fixture(scope="session")
def trees(tmp_path_factory, glyphs6):
    """One tree per layout, built once for the session; tests copy a tree before changing it."""
    base = tmp_path_factory.mktemp("trees")
    return {"imagenet": imagenet_tree(base / "imagenet", glyphs6), "folder": folder_tree(base / "folder", glyphs6),
            "cub": cub_tree(base / "CUB_200_2011", glyphs6), "cifar100": cifar_trees(base / "cifar", glyphs6)}
