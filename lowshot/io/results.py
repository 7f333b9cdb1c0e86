"""Result files: one JSON per benchmark cell, written atomically; the report reads only these.

`long_table` turns them into one row per cell (metrics in percent) for the tables of `lowshot.io.tables`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from lowshot.errors import InputError
from lowshot.io.atomic import write_json
from lowshot.io.fingerprint import digest, up_to_date

ACC_NAMES = ("top1_novel", "top5_novel", "top1_base", "top5_base", "top1_all", "top5_all")
CELL_KEYS = ("head", "head_params", "generator", "n", "expid", "setup", "seed")
IDENTITY_KEYS = CELL_KEYS + ("inputs",)  # inputs: fingerprints of the feature, split and shot files
METRICS = ACC_NAMES + ("novel_precision", "harmonic_mean_top1", "wang_novel_top5", "wang_all_top5",
                       "wang_all_prior_top5")
GROUP = ["representation", "method", "setup"]


def cell_key(identity: Dict[str, Any]) -> str:
    """Digest of a cell's coordinates (the file name): a result from changed inputs is replaced. The
    representation is the run folder's name, not part of the key: a renamed run keeps its results."""
    return digest({k: identity[k] for k in CELL_KEYS})


def result_path(results_dir: str | os.PathLike, identity: Dict[str, Any]) -> Path:
    """`<dir>/<head>_<gen>_setup<k>_n<n>_exp<id>_<hash>.json`."""
    gen = identity["generator"]["name"] if identity["generator"] else "nogen"
    name = f"{identity['head']}_{gen}_setup{identity['setup']}_n{identity['n']}_exp{identity['expid']}"
    return Path(results_dir) / f"{name}_{cell_key(identity)}.json"


def has_result(path: Path, identity: Dict[str, Any]) -> bool:
    """True when `path` holds a finished result of exactly this identity, inputs' fingerprints included."""
    return up_to_date(path, {k: identity[k] for k in IDENTITY_KEYS}, _stored_identity)


def _stored_identity(path: Path) -> Optional[Dict[str, Any]]:
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return {k: stored.get(k) for k in IDENTITY_KEYS}


def write_result(path: Path, result: Dict[str, Any]) -> None:
    write_json(path, result)


def read_results(results_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """Every result JSON under `results_dir` (recursively), skipping temporary files. A run's `results` folder
    names its representation (the run folder's name, wherever it lies now); another folder keeps the stored name."""
    out, folder = [], Path(results_dir).resolve()
    for p in sorted(folder.rglob("*.json")):
        if not p.name.startswith("."):
            r = json.loads(p.read_text())
            if "accs" in r:
                r["_path"] = str(p)
                if folder.name == "results":
                    r["representation"] = folder.parent.name
                out.append(r)
    return out


def method_name(r: dict) -> str:
    """Head name, non-default options aside, plus the generator: e.g. `logreg+analogies(M=20)`."""
    name = r["head"]
    if r.get("generator"):
        name += f"+{r['generator']['name']}(M={r['generator']['max_per_label']})"
    return name


def long_table(results: Sequence[dict]) -> pd.DataFrame:
    """One row per cell, metrics in percent."""
    rows = []
    for r in results:
        row = {"representation": r["representation"], "method": method_name(r), "setup": r["setup"],
               "n": r["n"], "expid": r["expid"], "head": r["head"], "head_params": json.dumps(r["head_params"], sort_keys=True),
               "seed": r["seed"], "wall_time_s": r.get("wall_time_s")}
        row.update({k: 100 * v for k, v in zip(ACC_NAMES, r["accs"])})
        row.update({k: 100 * r[k] for k in METRICS[6:] if k in r})
        rows.append(row)
    if not rows:
        raise InputError(None, "no result files found")
    return pd.DataFrame(rows).sort_values(GROUP + ["n", "expid"], kind="stable").reset_index(drop=True)


def check_same_inputs(results: Sequence[dict]) -> None:
    """Refuse to average or pair results of one representation that were computed from different files.

    All results of a representation must share its feature files and label splits, and all results
    of one experiment its shot file; otherwise one error names the fingerprints, the files and an
    example result of each side.
    """
    groups: Dict[tuple, Dict[str, List[dict]]] = {}
    for r in results:
        inputs = r.get("inputs") or {}
        for what in ("train_features", "test_features", "splits", "shots"):
            key = (r["representation"], what) + ((r["expid"],) if what == "shots" else ())
            groups.setdefault(key, {}).setdefault(inputs.get(what, "unrecorded"), []).append(r)
    for (rep, what, *exp), sides in groups.items():
        if len(sides) > 1:
            where = " and ".join(_describe_side(digest, rs, what) for digest, rs in sides.items())
            raise InputError(None, f"results of representation {rep!r}{' exp ' + str(exp[0]) if exp else ''} come "
                                   f"from different {what.replace('_', ' ')}: {where}; re-run `lowshot benchmark` "
                                   "so every cell reads the same files, or move the stale results away")


def _describe_side(digest: str, results: List[dict], what: str) -> str:
    files = sorted({(r.get("input_files") or {}).get(what, "?") for r in results})
    return f"{digest} ({', '.join(files)}; {len(results)} results, e.g. {Path(results[0]['_path']).name})"


def missing_cells(df: pd.DataFrame) -> List[str]:
    """Cells of the grid (every n × every experiment seen) that a method lacks."""
    ns, exps = sorted(df["n"].unique()), sorted(df["expid"].unique())
    out = []
    for key, g in df.groupby(GROUP):
        have = set(zip(g["n"], g["expid"]))
        lack = [f"n={n} exp={e}" for n in ns for e in exps if (n, e) not in have]
        if lack:
            out.append(f"{' / '.join(map(str, key))}: missing {', '.join(lack)}")
    return out
