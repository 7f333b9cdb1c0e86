"""Fingerprints of inputs: a result or cache is reused only when every input's fingerprint matches."""
from __future__ import annotations

import hashlib
import os

import numpy as np

from lowshot.errors import InputError

BLOCK = 1 << 20


def file_digest(path: str | os.PathLike, algorithm: str = "sha1", digits: int = 12) -> str:
    """Hash of a file's bytes (first `digits` hex digits), read in 1 MiB blocks; `InputError` if it is missing."""
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()[:digits]


def array_digest(*arrays) -> str:
    """SHA-1 of the shapes, dtypes and bytes of the given arrays (None counts as absent), 12 hex digits.

    An array kept on disk (anything with `blocks()`, e.g. `lowshot.io.features.FeatureRows`) is
    hashed block by block in bounded memory, with the same digest as the array in memory.
    """
    h = hashlib.sha1()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        if not hasattr(a, "blocks"):
            a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        for block in a.blocks() if hasattr(a, "blocks") else [a]:
            h.update(memoryview(np.ascontiguousarray(block, dtype=a.dtype).reshape(-1)).cast("B"))
    return h.hexdigest()[:12]
