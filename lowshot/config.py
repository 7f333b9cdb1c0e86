"""Stage configs: dataclass defaults < JSON config file < `--set key=value` < command-line flags.

Every value is converted to its field's declared type (`--set lr=1` is the float 1.0,
`--set ns=1,2` the list [1, 2]); a value that does not convert is one clear error.
"""
from __future__ import annotations

import json
import typing
from typing import Any, Dict, Mapping, Optional, Type, TypeVar

import torch

from lowshot.errors import InputError

T = TypeVar("T")


def resolve_config(cls: Type[T], path: Optional[str] = None, sets: Optional[Mapping[str, str]] = None,
                   **flags: Any) -> T:
    """Build `cls` from its defaults, then a JSON file's keys, then `sets` (raw strings), then non-None flags."""
    values: Dict[str, Any] = {}
    if path:
        try:
            with open(path) as f:
                values.update(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(path, f"cannot read config ({e})") from None
    hints = typing.get_type_hints(cls)
    unknown = sorted((set(values) | set(sets or {})) - set(hints))
    if unknown:
        raise InputError(path, f"unknown config keys {unknown}; known: {sorted(hints)}")
    values.update({k: parse_value(v, hints[k], k) for k, v in (sets or {}).items()})
    values.update({k: v for k, v in flags.items() if v is not None})
    return cls(**{k: coerce(v, hints[k], k) for k, v in values.items()})


def parse_value(text: str, hint: Any, key: str) -> Any:
    """A `--set` value: kept as text for a string field, else read as JSON (bare words stay text)."""
    if _base_type(hint) is str:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` converted to the type `hint` (int, float, bool, str, List[...], Dict, Optional[...])."""
    if value is None:
        return None
    base, args = _base_type(hint), typing.get_args(_strip_optional(hint))
    try:
        if base is list:
            items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
            return [coerce(parse_value(str(v), args[0], key) if isinstance(v, str) else v, args[0], key)
                    for v in items] if args else list(items)
        if base is bool:
            return _to_bool(value)
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if base in (int, float, str):
            return base(value)
        if base is dict and not isinstance(value, dict):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(None, f"config key {key!r}: {value!r} is not a valid {_type_name(hint)}") from None
    return value


def _strip_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def _base_type(hint: Any) -> Any:
    hint = _strip_optional(hint)
    return typing.get_origin(hint) or hint


def _type_name(hint: Any) -> str:
    return getattr(_strip_optional(hint), "__name__", str(_strip_optional(hint)))


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)



def versions() -> Dict[str, str]:
    """Package versions recorded in every output."""
    import numpy

    from lowshot import __version__
    return {"lowshot": __version__, "torch": str(torch.__version__), "numpy": str(numpy.__version__)}
