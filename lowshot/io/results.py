"""Result files: one JSON per benchmark cell, written atomically; the report reads only these."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List

from lowshot.io.atomic import write_json

ACC_NAMES = ("top1_novel", "top5_novel", "top1_base", "top5_base", "top1_all", "top5_all")
CELL_KEYS = ("representation", "head", "head_params", "generator", "n", "expid", "setup", "seed")
IDENTITY_KEYS = CELL_KEYS + ("inputs",)  # inputs: fingerprints of the feature, split and shot files


def cell_key(identity: Dict[str, Any]) -> str:
    """Stable short hash of a cell's coordinates (the file name): a result from changed inputs is replaced."""
    blob = json.dumps({k: identity[k] for k in CELL_KEYS}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def result_path(results_dir: str | os.PathLike, identity: Dict[str, Any]) -> Path:
    """`<dir>/<head>_<gen>_setup<k>_n<n>_exp<id>_<hash>.json`."""
    gen = identity["generator"]["name"] if identity["generator"] else "nogen"
    name = f"{identity['head']}_{gen}_setup{identity['setup']}_n{identity['n']}_exp{identity['expid']}"
    return Path(results_dir) / f"{name}_{cell_key(identity)}.json"


def has_result(path: Path, identity: Dict[str, Any]) -> bool:
    """True when `path` holds a finished result of exactly this identity, inputs' fingerprints included."""
    if not path.exists():
        return False
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return all(json.dumps(stored.get(k), sort_keys=True, default=str) == json.dumps(identity[k], sort_keys=True, default=str)
               for k in IDENTITY_KEYS)


def write_result(path: Path, result: Dict[str, Any]) -> None:
    write_json(path, result)


def read_results(results_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """Every result JSON under `results_dir` (recursively), skipping temporary files."""
    out = []
    for p in sorted(Path(results_dir).rglob("*.json")):
        if not p.name.startswith("."):
            r = json.loads(p.read_text())
            if "accs" in r:
                r["_path"] = str(p)
                out.append(r)
    return out
