"""CIFAR-100 from a local copy (never downloaded), held in memory (60,000 × 3 × 32 × 32 uint8 = 184 MB).

`root` is, or contains, `cifar-100-binary/` (`train.bin`, `test.bin`: records of 1 coarse-label
byte, 1 fine-label byte and 3,072 pixel bytes, plus `fine_label_names.txt`) or `cifar-100-python/`
(`train`, `test`, `meta`: pickled dicts). The binary version is parsed directly; the python version
is read only through an unpickler that builds plain containers and numpy arrays, so no code from a
data file ever runs. Rows are grouped by fine label (stable within a class); `meta["train_index"]` and
`meta["test_index"]` give each row's position in the file (the original order, which published index
lists such as the FSCIL sessions refer to).
"""
from __future__ import annotations

import codecs
import os
import pickle
from typing import Any, Dict, List, Tuple

import numpy as np

from lowshot.data.base import DATASETS, ImageDataset
from lowshot.data.files import require_dir
from lowshot.errors import InputError

RECORD = 2 + 3 * 32 * 32  # bytes per image in the binary version
_ALLOWED = {"numpy.ndarray", "numpy.dtype", "_codecs.encode"} | {
    f"{core}.{name}" for core in ("numpy.core", "numpy._core")
    for name in ("multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer")}


class PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; any other global is refused.

    `_codecs.encode` (text -> bytes) is how Python 3 writes bytes, e.g. an array's buffer, at pickle protocol 2.
    """

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "_codecs":
            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
        return getattr(getattr(core, module.rsplit(".", 1)[1]), name)


def read_python(path: str, what: str = "a CIFAR-100 python file") -> Dict[str, Any]:
    """One file of the python version (or another pickled dict of arrays, `what`) as a dict with str keys."""
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    try:
        with open(path, "rb") as f:
            obj = PlainUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise InputError(path, f"not {what} ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(path, f"not {what} (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def python_part(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), fine labels int64 (N,)) of `train` or `test` (python version)."""
    d = read_python(path)
    data, labels = d.get("data"), d.get("fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != RECORD - 2:
        raise InputError(path, f"`data` must be a uint8 array of shape (N, {RECORD - 2})")
    if labels is None or len(labels) != len(data):
        raise InputError(path, f"`fine_labels` must hold one label per image ({len(data)})")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, np.int64)


def binary_part(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), fine labels int64 (N,)) of `train.bin` or `test.bin`."""
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    size = os.path.getsize(path)
    if size == 0 or size % RECORD:
        raise InputError(path, f"has {size} bytes, not a whole number of {RECORD}-byte CIFAR-100 records")
    raw = np.fromfile(path, np.uint8).reshape(-1, RECORD)
    return raw[:, 2:].reshape(-1, 3, 32, 32), raw[:, 1].astype(np.int64)


def fine_names(folder: str, binary: bool) -> List[str]:
    """The fine label names of the copy in `folder` (label k = name k)."""
    if binary:
        path = os.path.join(folder, "fine_label_names.txt")
        if not os.path.isfile(path):
            raise InputError(path, "file not found")
        return [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
    names = read_python(os.path.join(folder, "meta")).get("fine_label_names", [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def locate_copy(root: str) -> Tuple[str, bool]:
    """(folder, is_binary) of the copy under `root`."""
    for folder in (os.path.join(root, "cifar-100-binary"), os.path.join(root, "cifar-100-python"), root):
        if os.path.isfile(os.path.join(folder, "train.bin")):
            return folder, True
        if os.path.isfile(os.path.join(folder, "train")):
            return folder, False
    raise InputError(root, "no CIFAR-100 copy here: expected cifar-100-binary/train.bin or cifar-100-python/train")


@DATASETS.register("cifar100")
def cifar100(root: str) -> ImageDataset:
    """CIFAR-100 (fine labels) from a local copy; see the module docstring."""
    folder, binary = locate_copy(require_dir(root))
    read, ext = (binary_part, ".bin") if binary else (python_part, "")
    names = fine_names(folder, binary)
    parts, index = [], {}
    for split in ("train", "test"):
        images, labels = read(os.path.join(folder, split + ext))
        if len(labels) and labels.max() >= len(names):
            raise InputError(os.path.join(folder, split + ext), f"label {labels.max()} but only {len(names)} class names")
        order = np.argsort(labels, kind="stable")
        parts += [np.ascontiguousarray(images[order]), labels[order]]
        index[f"{split}_index"] = order
    return ImageDataset("cifar100", *parts, names, {"root": root, "format": "binary" if binary else "python", **index})
