"""Stage configs: dataclass defaults < JSON config file < `--set key=value` < command-line flags.

Every value is converted to its field's declared type (`--set lr=1` is the float 1.0,
`--set ns=1,2` the list [1, 2]); a value that does not convert is one clear error.
"""
from __future__ import annotations

import difflib
import json
import typing
from typing import Any, Dict, Mapping, Optional, Type, TypeVar

import torch

from lowshot.errors import InputError

T = TypeVar("T")


def resolve_config(cls: Type[T], path: Optional[str] = None, sets: Optional[Mapping[str, str]] = None,
                   **flags: Any) -> T:
    """Build `cls` from its defaults, then a JSON file's keys, then `sets` (raw strings), then non-None flags.

    A bad key or value is one `InputError` naming where it came from: the file, `--set key=value` or the flag.
    """
    hints = typing.get_type_hints(cls)
    values: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for key, value in _read_config(path).items():
        values[key], sources[key] = value, str(path)
    for key, text in (sets or {}).items():
        source = f"--set {key}={text}"
        _check_key(key, hints, source, cls)
        values[key], sources[key] = parse_value(text, hints[key], key), source
    for key, value in flags.items():
        if value is not None:
            values[key], sources[key] = value, f"--{key.replace('_', '-')}"
    out = {}
    for key, value in values.items():
        _check_key(key, hints, sources[key], cls)
        out[key] = coerce(value, hints[key], key, sources[key])
    return cls(**out)


def _read_config(path: Optional[str]) -> Dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read config ({e})") from None
    if not isinstance(values, dict):
        raise InputError(path, "a config file holds one JSON object of config keys")
    return values


def _check_key(key: str, hints: Dict[str, Any], source: str, cls: type) -> None:
    if key not in hints:
        close = difflib.get_close_matches(key, hints, 1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(source, f"unknown config key {key!r} of {cls.__name__}; {hint}known: {', '.join(sorted(hints))}")


def parse_value(text: str, hint: Any, key: str) -> Any:
    """A `--set` value: kept as text for a string field, else read as JSON (bare words stay text)."""
    if _base_type(hint) is str:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def coerce(value: Any, hint: Any, key: str, source: Optional[str] = None) -> Any:
    """`value` converted to the type `hint` (int, float, bool, str, List[...], Dict, Optional[...]); an `InputError`
    naming `source` (where the value came from) and the expected type otherwise."""
    if value is None:
        return None
    base, args = _base_type(hint), typing.get_args(_strip_optional(hint))
    try:
        if base is list:
            items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
            return [coerce(parse_value(str(v), args[0], key) if isinstance(v, str) else v, args[0], key, source)
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
        raise InputError(source, f"config key {key!r}: {value!r} is not a valid {_type_name(hint)}") from None
    return value


def _strip_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def _base_type(hint: Any) -> Any:
    hint = _strip_optional(hint)
    return typing.get_origin(hint) or hint


def _type_name(hint: Any) -> str:
    """A type in words: `int`, `list of int`, `dict`, `int or none`."""
    hint = _strip_optional(hint)
    base, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if base is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if base is dict:
        return "dict (a JSON object)"
    return getattr(base, "__name__", str(base))


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
