"""Feature generators (hallucination): a registry of plug-ins.

A plug-in provides `init(path, device, train) -> state` (load what `lowshot generate` wrote;
`train` is the train `FeatureSet`, for checks and statistics) and
`generate(feats, labels, state, max_per_label, seed) -> (feats, labels)`: for every label with
m < max_per_label real rows it appends max_per_label − m generated rows; the real rows come
first, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from lowshot.registry import Registry

GENERATORS = Registry("generator")


@dataclass(frozen=True)
class GeneratorPlugin:
    init: Callable[[Optional[str], Any, Any], Any]
    generate: Callable[..., Any]


from lowshot.generators import analogies, jitter  # noqa: E402,F401
from lowshot.generators import pmn  # noqa: E402,F401
