"""Stage configs: dataclass defaults < JSON config file < command-line flags."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional, Type, TypeVar

import torch

from lowshot.errors import InputError

T = TypeVar("T")


def resolve_config(cls: Type[T], path: Optional[str] = None, **overrides: Any) -> T:
    """Build `cls` from its defaults, then a JSON file's keys, then the non-None overrides."""
    values: Dict[str, Any] = {}
    if path:
        try:
            with open(path) as f:
                values.update(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(path, f"cannot read config ({e})") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(path, f"unknown config keys {unknown}; known: {sorted(known)}")
    return cls(**values)


def pick_device(device: str = "auto") -> torch.device:
    """`auto` -> the GPU when one is present, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def versions() -> Dict[str, str]:
    """Package versions recorded in every output."""
    import numpy

    from lowshot import __version__
    return {"lowshot": __version__, "torch": str(torch.__version__), "numpy": str(numpy.__version__)}
