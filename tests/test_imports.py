"""The import graph of the package, read with `ast` (function-level imports included): no cycles, and
nothing under `heads/` or `generators/` imports a stage or a side protocol."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import lowshot

PACKAGE = Path(lowshot.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> Dict[str, Set[str]]:
    """module -> the package modules it imports anywhere in its body (`from a import b` counts `a.b` when b is a
    module, else `a`)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


STAGE_SIDE = ("lowshot.stages", "lowshot.protocols", "lowshot.run", "lowshot.cli", "lowshot.slurm")


def test_heads_and_generators_import_no_stage():
    """Heads and generators are pure computation: no stage, protocol, run folder (paths) or front end."""
    bad = [(m, t) for m, targets in import_graph().items() if m.startswith(("lowshot.heads", "lowshot.generators"))
           for t in targets if t in STAGE_SIDE or t.startswith(tuple(s + "." for s in STAGE_SIDE))]
    assert bad == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
