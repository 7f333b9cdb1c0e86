"""HDF5 feature files, compatible with the Hariharan & Girshick harness.

Layout (contiguous, uncompressed): `all_feats` float32 (N, d), `all_labels` int32 (N,),
`count` int32 (1,); optional `classifier_weight` float32 (C, d) and `classifier_scale` (1,).
Readers honour `count` (H&G files carry zero padding rows after it) and accept
`all_features` (Gidaris & Komodakis) as the feature name.

Files of ImageNet's size (1.28M rows, 2.6 GB at d = 512) are written in row blocks as they
arrive (`feature_writer`) and read in blocks: whole (`read_features`) or, with `lazy=True`,
only the rows a stage asks for (`FeatureRows`), as contiguous slices.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import h5py
import numpy as np

from lowshot import __version__
from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.io.fingerprint import digest
from lowshot.runtime import progress

FEATURE_NAMES = ("all_feats", "all_features")
BLOCK_ROWS = 1 << 16  # rows per block when a file is read or hashed whole (128 MB at d = 512)
GAP_BYTES = 1 << 18  # unwanted rows between wanted ones are read through up to this size: an HDF5 slice costs ≈ 65 µs


class FeatureRows:
    """The feature rows of a file, read on demand: `rows[key]` reads only the rows asked for.

    `key` is a slice, a boolean mask of shape (N,) or an integer index array; sorted indices are
    read as runs of consecutive rows (one HDF5 slice per run, straight into the result), runs a
    few rows apart as one slice (`GAP_BYTES`), so the rows of a set of classes of a
    class-contiguous file cost one slice per class. Rows read are
    checked to be finite. Behaves as a read-only float32 array of shape (N, d) for `len`,
    `shape`, `dtype`, `np.asarray` (reads everything) and indexing.
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, path: str | os.PathLike, name: str, count: int, dim: int):
        self.path, self.name, self.shape = str(path), name, (int(count), int(dim))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {key.shape} for {len(self)} rows")
            key = np.flatnonzero(key)
        return self.take(key.astype(np.int64, copy=False))

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` (any order, repeats allowed) as a float32 array of shape (len(idx), d)."""
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        out = np.empty((len(idx), self.shape[1]), np.float32)
        with h5py.File(self.path, "r") as f:
            ds = f[self.name]
            for a, b in _slices(ordered, GAP_BYTES // (4 * self.shape[1])):
                lo, hi = int(ordered[a]), int(ordered[b - 1]) + 1
                if hi - lo == b - a and (b - a < 2 or np.diff(ordered[a:b]).min() == 1):  # consecutive: straight in
                    ds.read_direct(out, np.s_[lo:hi], np.s_[a:b])
                else:
                    out[a:b] = ds[lo:hi][ordered[a:b] - lo]
        if not np.isfinite(out).all():
            raise InputError(self.path, "features contain NaN or infinite values")
        if np.any(order[1:] < order[:-1]):
            out[order] = out.copy()
        return out

    def blocks(self, rows: Optional[int] = None) -> Iterator[np.ndarray]:
        """The rows in order, `rows` (default `BLOCK_ROWS`) at a time, for whole-file passes in bounded memory."""
        rows = rows or BLOCK_ROWS
        for start in range(0, len(self), rows):
            yield self[start:start + rows]


def _slices(ordered: np.ndarray, gap: int) -> Iterator[Tuple[int, int]]:
    """Positions [a, b) of the sorted row numbers `ordered` to read as one HDF5 slice each: runs of consecutive
    rows, joined across gaps of at most `gap` unwanted rows, each slice spanning fewer than `BLOCK_ROWS` rows."""
    if not len(ordered):
        return
    a = 0
    for end in [*(np.flatnonzero(np.diff(ordered) > gap + 1) + 1).tolist(), len(ordered)]:
        while ordered[end - 1] - ordered[a] >= BLOCK_ROWS:
            b = a + int(np.searchsorted(ordered[a:end], ordered[a] + BLOCK_ROWS))
            yield a, b
            a = b
        yield a, end
        a = end


@dataclass
class FeatureSet:
    """Features of one split, in memory.

    Attributes:
        feats: float32 array of shape (N, d).
        labels: int64 array of shape (N,).
        attrs: provenance attributes stored in the file.
        classifier_weight: float32 (C, d) rows of the representation's classifier, if stored.
        classifier_scale: the cosine classifier's scale s, if stored.
        path: the file it was read from.
        digest: fingerprint of the contents, filled by `content_digest`.
    """

    feats: np.ndarray
    labels: np.ndarray
    attrs: Dict[str, Any] = field(default_factory=dict)
    classifier_weight: Optional[np.ndarray] = None
    classifier_scale: Optional[float] = None
    path: Optional[str] = None
    digest: Optional[str] = field(default=None, compare=False, repr=False)

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])


def write_features(path: str | os.PathLike, fs: FeatureSet) -> None:
    """Write `fs` to `path` atomically (exactly N rows, `count` = N)."""
    header = FeatureSet(np.empty((0, fs.dim), np.float32), fs.labels, fs.attrs, fs.classifier_weight,
                        fs.classifier_scale)
    with feature_writer(path, header) as write:
        write(np.ascontiguousarray(fs.feats, dtype=np.float32))


@contextlib.contextmanager
def feature_writer(path: str | os.PathLike, header: FeatureSet) -> Iterator[Callable[[np.ndarray], None]]:
    """Write a feature file in row blocks as they arrive, atomically; yields `write(block)`.

    Args:
        header: the file's labels (N,), attributes and classifier; `header.feats` only gives d
            (shape (0, d)). The blocks, float32 arrays of shape (b, d), must add up to N rows in
            order; otherwise nothing is renamed into place.
    """
    num, dim = len(header.labels), header.dim
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset("all_feats", shape=(num, dim), dtype=np.float32)
        done = [0]

        def write(block: np.ndarray) -> None:
            if done[0] + len(block) > num or (len(block) and block.shape[1] != dim):
                raise ValueError(f"block of shape {block.shape} past the {num} × {dim} rows of {path}")
            ds[done[0]:done[0] + len(block)] = block
            done[0] += len(block)

        yield write
        if done[0] != num:
            raise ValueError(f"{path}: {done[0]} of {num} feature rows written")
        _write_header(f, header)


def _write_header(f: h5py.File, fs: FeatureSet) -> None:
    """Labels, `count`, the classifier and the attributes of a feature file."""
    f.create_dataset("all_labels", data=fs.labels.astype(np.int32))
    f.create_dataset("count", data=np.array([len(fs.labels)], dtype=np.int32))
    if fs.classifier_weight is not None:
        f.create_dataset("classifier_weight", data=fs.classifier_weight.astype(np.float32))
    if fs.classifier_scale is not None:
        f.create_dataset("classifier_scale", data=np.array([fs.classifier_scale], np.float32))
    attrs = {"lowshot_version": __version__, "feature_dim": fs.dim, **fs.attrs}
    for key, value in attrs.items():
        f.attrs[key] = value if value is not None else ""


def read_features(path: str | os.PathLike, lazy: bool = False) -> FeatureSet:
    """Read a feature file; raise `InputError` naming the file if it is bad.

    Args:
        lazy: keep the features on disk (`FeatureSet.feats` is a `FeatureRows`: indexing reads
            only those rows, checked finite when read); labels, classifier and attributes are read.
            Otherwise the whole (N, d) array is read into memory, in blocks of `BLOCK_ROWS` rows.
    """
    if not os.path.exists(path):
        raise InputError(path, "feature file not found (run `lowshot features` first)")
    try:
        with h5py.File(path, "r") as f:
            name, count = _feature_rows(path, f)
            labels = f["all_labels"][:count].astype(np.int64)
            weight = f["classifier_weight"][...] if "classifier_weight" in f else None
            scale = float(f["classifier_scale"][0]) if "classifier_scale" in f else None
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            if f[name].ndim != 2:
                raise InputError(path, f"features of shape {f[name].shape} do not match {len(labels)} labels")
            rows = FeatureRows(path, name, count, f[name].shape[1])
        feats = rows if lazy else _read_all(rows)
    except OSError as e:
        raise InputError(path, f"cannot read HDF5 ({e.__class__.__name__}: {e})") from None
    _check_features(path, feats, labels, weight)
    return FeatureSet(feats, labels, attrs, weight, scale, str(path))


def _feature_rows(path, f: h5py.File) -> Tuple[str, int]:
    """(name of the feature dataset, number of valid rows `count`), checked."""
    name = next((n for n in FEATURE_NAMES if n in f), None)
    if name is None or "all_labels" not in f:
        raise InputError(path, "not a feature file: needs `all_feats` (or `all_features`) and `all_labels`")
    count = int(f["count"][0]) if "count" in f else f[name].shape[0]
    if not 0 <= count <= min(f[name].shape[0], f["all_labels"].shape[0]):
        raise InputError(path, f"count = {count} but the file stores {f[name].shape[0]} feature rows "
                               f"and {f['all_labels'].shape[0]} labels")
    return name, count


def _read_all(rows: FeatureRows) -> np.ndarray:
    """Every row in memory, read in blocks into one preallocated array (checked finite block by block),
    with a progress bar on big files."""
    out = np.empty(rows.shape, np.float32)
    starts = range(0, len(rows), BLOCK_ROWS)
    with h5py.File(rows.path, "r") as f:
        ds = f[rows.name]
        for start in progress(starts, desc=f"read {os.path.basename(rows.path)}", unit="block", leave=False,
                              show=len(starts) > 4):
            stop = min(start + BLOCK_ROWS, len(rows))
            ds.read_direct(out, np.s_[start:stop], np.s_[start:stop])
            if not np.isfinite(out[start:stop]).all():
                raise InputError(rows.path, "features contain NaN or infinite values")
    return out


def content_digest(fs: Optional[FeatureSet]) -> Optional[str]:
    """Fingerprint of what a feature file holds: rows, labels and the stored classifier (memoised)."""
    if fs is None:
        return None
    if fs.digest is None:
        scale = None if fs.classifier_scale is None else np.array([fs.classifier_scale])
        fs.digest = digest(fs.feats, fs.labels, fs.classifier_weight, scale)
    return fs.digest


def _check_features(path, feats, labels: np.ndarray, weight) -> None:
    """Shapes agree, labels non-negative (finiteness is checked as the rows are read)."""
    if feats.ndim != 2 or len(feats) != len(labels):
        raise InputError(path, f"features of shape {feats.shape} do not match {len(labels)} labels")
    if len(labels) and labels.min() < 0:
        raise InputError(path, f"negative label {labels.min()}")
    if weight is not None and weight.shape[1] != feats.shape[1]:
        raise InputError(path, f"classifier_weight has dimension {weight.shape[1]}, features {feats.shape[1]}")


def _plain(value: Any) -> Any:
    """HDF5 attribute -> JSON-able Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
