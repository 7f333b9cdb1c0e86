"""Fingerprints: the one digest of the package, and the one "is this output up to date?" check.

A cached output (a result, a feature file, a trained model, a cache entry) records its identity:
what determines its contents (options, and the digests of the files it was made from), never
where files lie, thread counts or devices. A stage skips an output only when the recorded
identity equals the one it would record now (`up_to_date`).

`digest` hashes anything a stage needs to fingerprint — JSON-able values, bytes, numpy arrays,
arrays kept on disk (`blocks()`), files (`file_digest`) — with SHA-1, as DIGITS hex digits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from lowshot.errors import InputError

DIGITS = 16
BLOCK = 1 << 20
NOT_IDENTITY = {"identity": False}  # dataclass field metadata: the field does not change what a stage computes


def digest(*parts: Any) -> str:
    """SHA-1 (DIGITS hex digits) of `parts`: arrays by dtype, shape and bytes (on-disk arrays block by block),
    bytes as they are, None as absent, anything else as sorted JSON."""
    h = hashlib.sha1()
    for part in parts:
        _update(h, part)
    return h.hexdigest()[:DIGITS]


def _update(h, part: Any) -> None:
    if part is None:
        h.update(b"none")
    elif isinstance(part, (bytes, bytearray, memoryview)):
        h.update(part)
    elif isinstance(part, np.ndarray) or hasattr(part, "blocks"):
        a = part if hasattr(part, "blocks") else np.ascontiguousarray(part)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        for block in a.blocks() if hasattr(a, "blocks") else [a]:
            h.update(memoryview(np.ascontiguousarray(block, dtype=a.dtype).reshape(-1)).cast("B"))
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())


def file_digest(path: str | os.PathLike) -> str:
    """`digest` of a file's bytes, read in 1 MiB blocks; an `InputError` if it is missing."""
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()[:DIGITS]


def identity_fields(cfg: Any) -> Dict[str, Any]:
    """A stage config's fields that determine its output: all but those marked `NOT_IDENTITY`
    (paths of its inputs and outputs, devices, worker and thread counts, `force`)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("identity", True)}


def up_to_date(path: str | os.PathLike, identity: Dict[str, Any], read: Callable[[Path], Optional[Dict]]) -> bool:
    """Whether the output at `path` exists and records exactly `identity`; `read(path)` returns the identity
    it records (None when it records none, or cannot be read: the output is then remade)."""
    path = Path(path)
    if not path.exists():
        return False
    stored = read(path)
    return stored is not None and digest(stored) == digest(identity)
