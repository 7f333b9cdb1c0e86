"""CIFAR-FS (Bertinetto et al., ICLR 2019) and FC100 (Oreshkin et al., NeurIPS 2018) from a CIFAR-100 copy.

Both split the 100 CIFAR-100 classes, not its images: every class has all of its 600 images (the 500
of `train` and the 100 of `test`, in that order), as in the benchmarks' own preparation scripts.
CIFAR-FS: 64 / 16 / 20 classes, random (r2d2's split files); FC100: the fine classes of 12 / 4 / 4
superclasses (TADAM's `class_split`), so that train and test classes are semantically apart. `root`
is read by the `cifar100` loader (`cifar-100-binary/` or `cifar-100-python/`), in memory at 32 × 32.
The class lists ship with lowshot (`splits/cifar_fs.json`, `splits/fc100.json`); the copy's fine
label names must be CIFAR-100's. Labels: train classes, then val, then test, in the lists' order.
Parts: `lowshot.data.fewshot`.
"""
from __future__ import annotations

import os

import numpy as np

from lowshot.data.base import DATASETS, ImageDataset
from lowshot.data.cifar100 import binary_part, fine_names, locate_copy, python_part
from lowshot.data.fewshot import check_classes, class_lists, holdout_meta, parts, split_classes
from lowshot.data.files import require_dir


def cifar_benchmark(name: str, root: str, shot_pool: int, base_test: int, seed: int) -> ImageDataset:
    """Benchmark `name` (its class lists) over every image of a CIFAR-100 copy under `root`."""
    folder, binary = locate_copy(require_dir(root))
    read, ext = (binary_part, ".bin") if binary else (python_part, "")
    fine = fine_names(folder, binary)
    source = os.path.join(folder, "fine_label_names.txt" if binary else "meta")
    check_classes(source, fine, class_lists("cifar100_labels")["fine_label_names"], "CIFAR-100 fine label names")
    lists = split_classes(name)
    label_names = sum(lists, [])
    relabel = np.asarray([label_names.index(n) for n in fine], np.int64)
    images, labels = zip(*(read(os.path.join(folder, split + ext)) for split in ("train", "test")))
    all_images, all_labels = np.concatenate(images), relabel[np.concatenate(labels)]
    train, test, splits, shots = parts(all_labels, label_names, lists, shot_pool, base_test, seed, source=root)
    meta = {"root": root, "format": "binary" if binary else "python", **holdout_meta(shot_pool, base_test, seed)}
    return ImageDataset(name, np.ascontiguousarray(all_images[train]), all_labels[train],
                        np.ascontiguousarray(all_images[test]), all_labels[test], label_names, meta, splits, shots)


@DATASETS.register("cifar_fs")
def cifar_fs(root: str, shot_pool: int = 0, base_test: int = 0, seed: int = 0) -> ImageDataset:
    """CIFAR-FS (64 / 16 / 20 classes) from a CIFAR-100 copy; see the module docstring.

    Args:
        shot_pool, base_test, seed: images held out per novel / base class for the generalised grid
            (`lowshot.data.fewshot`); 0 keeps the published parts.
    """
    return cifar_benchmark("cifar_fs", root, shot_pool, base_test, seed)


@DATASETS.register("fc100")
def fc100(root: str, shot_pool: int = 0, base_test: int = 0, seed: int = 0) -> ImageDataset:
    """FC100 (superclasses 12 / 4 / 4 -> 60 / 20 / 20 classes) from a CIFAR-100 copy; see the module docstring."""
    return cifar_benchmark("fc100", root, shot_pool, base_test, seed)
