"""Result files: one JSON per benchmark cell, written atomically; the report reads only these.

`long_table` turns them into one row per cell (metrics in percent, NLL in nats, Brier score in [0, 2]) for the
tables of `lowshot.io.tables`. Run folders `<recipe>-seed<k>` (`lowshot.run.seed_run`) are training seeds of one
recipe: `long_table` names each row's recipe and training seed, so that tables average over the seeds.
A stored result lacking one of `RESULT_KEYS` (written before that metric existed) is not up to date: the
benchmark recomputes it, since the metrics need the scores, which results do not keep.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from lowshot.errors import InputError
from lowshot.io.atomic import write_json
from lowshot.io.fingerprint import digest, up_to_date
from lowshot.run import split_seed_run

ACC_NAMES = ("top1_novel", "top5_novel", "top1_base", "top5_base", "top1_all", "top5_all")
CELL_KEYS = ("head", "head_params", "generator", "n", "expid", "setup", "seed")
# inputs: fingerprints of the feature, split and shot files; head_revision: `Head.revision` (results written
# before it existed read as 0)
IDENTITY_KEYS = CELL_KEYS + ("inputs", "head_revision")
CALIBRATION = ("ece", "nll", "brier", "ece_pred_base", "ece_pred_novel", "overconf_pred_base", "overconf_pred_novel")
# chosen on setup 1 by the report and applied to the other setup: a temperature (calibration of softmax(s / T))
# and a novel prior (all-class top-1 with novel classes given that mass)
# (`ece_T1`, `top1_all_no_prior`: the same cells' ECE and all-class top-1 without them, for a fair comparison)
SETUP1_CHOICES = ("temperature_setup1", "ece_T1", "ece_T", "nll_T", "brier_T", "prior_setup1", "top1_all_no_prior",
                  "top1_all_prior_setup1")
METRICS = ACC_NAMES + ("novel_precision", "harmonic_mean_top1", "wang_novel_top5", "wang_all_top5",
                       "wang_all_prior_top5") + CALIBRATION + SETUP1_CHOICES
NOT_PERCENT = ("nll", "brier", "nll_T", "brier_T", "temperature_setup1", "prior_setup1")  # the others: × 100
# what `lowshot.metrics.cell_metrics` writes (tests/test_calibration.py checks it): a result lacking any is recomputed
RESULT_KEYS = ("accs", "novel_precision", "harmonic_mean_top1", "wang_novel_top5", "wang_all_top5",
               "wang_all_prior_top5", "per_class_top1", "per_class_count", "base_novel_confusion") + CALIBRATION + (
               "all_top1_by_prior",)
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


def has_result(path: Path, identity: Dict[str, Any], required: Sequence[str] = RESULT_KEYS) -> bool:
    """True when `path` holds a finished result of exactly this identity, inputs' fingerprints included, with
    every metric of `required`."""
    return up_to_date(path, {k: identity[k] for k in IDENTITY_KEYS}, functools.partial(_stored_identity,
                                                                                       required=tuple(required)))


def _stored_identity(path: Path, required: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if any(k not in stored for k in required):
        return None
    return stored_identity(stored)


def stored_identity(stored: Dict[str, Any]) -> Dict[str, Any]:
    """A stored result's identity as the benchmark writes it now: results written before `head_revision` existed
    read as revision 0, and before the generator's model digest was an input (it was part of the cell's
    coordinates, so a retrained generator left the old file beside the new one), with it moved to the inputs."""
    identity = {k: stored.get(k, 0 if k == "head_revision" else None) for k in IDENTITY_KEYS}
    gen = identity["generator"]
    if isinstance(gen, dict) and "key" in gen:
        identity["generator"] = {k: v for k, v in gen.items() if k != "key"}
        if gen["key"] is not None:
            identity["inputs"] = {**(identity["inputs"] or {}), "generator": gen["key"]}
    return identity


def remove_superseded(path: Path, identity: Dict[str, Any]) -> None:
    """Remove the other result files of the cell `path` holds (same coordinates, written under an earlier
    naming of its identity), so that a folder keeps one result per cell."""
    cell = {k: identity[k] for k in CELL_KEYS}
    prefix = path.name.rsplit("_", 1)[0]
    for other in path.parent.glob(f"{prefix}_*.json"):
        if other != path and other.name.rsplit("_", 1)[0] == prefix:
            try:
                stored = stored_identity(json.loads(other.read_text()))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            if {k: stored[k] for k in CELL_KEYS} == cell:
                other.unlink()


def training_seed(attrs: Dict[str, Any]) -> Optional[int]:
    """The training seed a feature file records (`seed` attribute), or None (e.g. features made elsewhere)."""
    seed = attrs.get("seed")
    return None if seed is None or seed == "" else int(seed)


def required_keys(temperatures: bool) -> Tuple[str, ...]:
    """The metrics a result must hold to be kept: `RESULT_KEYS`, and the temperature curve when it is asked for."""
    return RESULT_KEYS + (("calibration_by_temperature",) if temperatures else ())


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


def scale(metric: str) -> float:
    """The factor from a result file's value to the tables' unit: 100 (percent), or 1 for `NOT_PERCENT`."""
    return 1.0 if metric in NOT_PERCENT else 100.0


def long_table(results: Sequence[dict]) -> pd.DataFrame:
    """One row per cell, metrics in percent (`scale`), with its recipe and training seed (`assign_recipes`)."""
    rows = []
    for r in results:
        row = {"representation": r["representation"], "method": method_name(r), "setup": r["setup"],
               "n": r["n"], "expid": r["expid"], "head": r["head"], "head_params": json.dumps(r["head_params"], sort_keys=True),
               "seed": r["seed"], "train_seed": _train_seed(r), "shots_digest": (r.get("inputs") or {}).get("shots"),
               "wall_time_s": r.get("wall_time_s")}
        row.update({k: 100 * v for k, v in zip(ACC_NAMES, r["accs"])})
        row.update({k: scale(k) * r[k] for k in METRICS[6:] if r.get(k) is not None})
        rows.append(row)
    if not rows:
        raise InputError(None, "no result files found")
    df = pd.DataFrame(rows).sort_values(GROUP + ["n", "expid"], kind="stable").reset_index(drop=True)
    return assign_recipes(df)


def _train_seed(r: dict) -> Optional[int]:
    """The training seed a result records (from its feature file), else the one its run folder's name says."""
    named = split_seed_run(r["representation"])[1]
    recorded = r.get("train_seed")
    if recorded is not None and named is not None and int(recorded) != named:
        raise InputError(r.get("_path"), f"run folder {r['representation']!r} is named for training seed {named}, "
                                         f"but its features were trained with seed {recorded}")
    return int(recorded) if recorded is not None else named


def assign_recipes(df: pd.DataFrame) -> pd.DataFrame:
    """Add `recipe`: the run folder's name less `-seed<k>` when two or more representations share it (the training
    seeds of one recipe, each recorded once), else the representation itself."""
    reps = df.drop_duplicates("representation")[["representation", "train_seed"]]
    recipe = {}
    for name, g in reps.groupby(reps["representation"].map(lambda x: split_seed_run(x)[0]), sort=True):
        if len(g) == 1:
            recipe[g["representation"].iloc[0]] = g["representation"].iloc[0]
            continue
        seeds = g["train_seed"].tolist()
        if any(pd.isna(x) for x in seeds) or len(set(seeds)) < len(seeds):
            raise InputError(None, f"representations {', '.join(g['representation'])} look like training seeds of "
                                   f"recipe {name!r}, but their seeds ({', '.join(map(str, seeds))}) are not known and "
                                   "distinct: report them separately, or rename the folders <recipe>-seed<k>")
        recipe.update({rep: name for rep in g["representation"]})
    return df.assign(recipe=df["representation"].map(recipe))


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
