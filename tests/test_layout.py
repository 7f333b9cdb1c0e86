"""House rules that keep the package legible: small functions, safe checkpoint loading."""
import ast
from pathlib import Path

import lowshot

PACKAGE = Path(lowshot.__file__).parent
MAX_FUNCTION_LINES = 40


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE.parent), node


def test_no_function_is_longer_than_40_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in _functions() if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "functions over 40 lines:\n" + "\n".join(long)


def test_every_torch_load_is_weights_only():
    unsafe = [f"{path}:{node.lineno}" for path, fn in _functions() for node in ast.walk(fn)
              if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load"
              and getattr(node.func.value, "id", None) == "torch"
              and not any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
