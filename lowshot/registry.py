"""One registry per kind of component: a name -> constructor dict filled by a decorator."""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from lowshot.errors import InputError


class Registry:
    """Named constructors of one kind (heads, backbones, ...).

    `@REG.register("name")` adds a class or factory and raises on a duplicate name;
    `REG.create("name", **kwargs)` builds one, dropping kwargs that are None so that
    "not given" means "the component's own default".
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj
        return add

    def names(self) -> List[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise InputError(None, f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def __contains__(self, name: str) -> bool:
        return name in self._entries
