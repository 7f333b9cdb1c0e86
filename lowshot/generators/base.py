"""The generators registry and the types its entries share (`lowshot.generators` re-exports them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from lowshot.registry import Registry

GENERATORS = Registry("generator")


@dataclass(frozen=True)
class GeneratorPlugin:
    artefact: Optional[str]
    init: Callable[..., Any]
    generate: Callable[..., Any]
