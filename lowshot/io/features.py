"""HDF5 feature files, compatible with the Hariharan & Girshick harness.

Layout (contiguous, uncompressed): `all_feats` float32 (N, d), `all_labels` int32 (N,),
`count` int32 (1,); optional `classifier_weight` float32 (C, d) and `classifier_scale` (1,).
Readers honour `count` (H&G files carry zero padding rows after it) and accept
`all_features` (Gidaris & Komodakis) as the feature name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import h5py
import numpy as np

from lowshot import __version__
from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.io.fingerprint import array_digest

FEATURE_NAMES = ("all_feats", "all_features")


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
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("all_feats", data=np.ascontiguousarray(fs.feats, dtype=np.float32))
        f.create_dataset("all_labels", data=fs.labels.astype(np.int32))
        f.create_dataset("count", data=np.array([len(fs.labels)], dtype=np.int32))
        if fs.classifier_weight is not None:
            f.create_dataset("classifier_weight", data=fs.classifier_weight.astype(np.float32))
        if fs.classifier_scale is not None:
            f.create_dataset("classifier_scale", data=np.array([fs.classifier_scale], np.float32))
        attrs = {"lowshot_version": __version__, "feature_dim": fs.feats.shape[1], **fs.attrs}
        for key, value in attrs.items():
            f.attrs[key] = value if value is not None else ""


def read_features(path: str | os.PathLike) -> FeatureSet:
    """Read a whole feature file into memory; raise `InputError` naming the file if it is bad."""
    if not os.path.exists(path):
        raise InputError(path, "feature file not found (run `lowshot features` first)")
    try:
        with h5py.File(path, "r") as f:
            name = next((n for n in FEATURE_NAMES if n in f), None)
            if name is None or "all_labels" not in f:
                raise InputError(path, "not a feature file: needs `all_feats` (or `all_features`) and `all_labels`")
            count = int(f["count"][0]) if "count" in f else f[name].shape[0]
            if not 0 <= count <= min(f[name].shape[0], f["all_labels"].shape[0]):
                raise InputError(path, f"count = {count} but the file stores {f[name].shape[0]} feature rows "
                                       f"and {f['all_labels'].shape[0]} labels")
            feats = f[name][:count].astype(np.float32, copy=False)
            labels = f["all_labels"][:count].astype(np.int64)
            weight = f["classifier_weight"][...] if "classifier_weight" in f else None
            scale = float(f["classifier_scale"][0]) if "classifier_scale" in f else None
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise InputError(path, f"cannot read HDF5 ({e.__class__.__name__}: {e})") from None
    _check_features(path, feats, labels, weight)
    return FeatureSet(feats, labels, attrs, weight, scale, str(path))


def content_digest(fs: Optional[FeatureSet]) -> Optional[str]:
    """Fingerprint of what a feature file holds: rows, labels and the stored classifier (memoised)."""
    if fs is None:
        return None
    if fs.digest is None:
        scale = None if fs.classifier_scale is None else np.array([fs.classifier_scale])
        fs.digest = array_digest(fs.feats, fs.labels, fs.classifier_weight, scale)
    return fs.digest


def _check_features(path, feats: np.ndarray, labels: np.ndarray, weight) -> None:
    if feats.ndim != 2 or len(feats) != len(labels):
        raise InputError(path, f"features of shape {feats.shape} do not match {len(labels)} labels")
    if not np.isfinite(feats).all():
        raise InputError(path, "features contain NaN or infinite values")
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
