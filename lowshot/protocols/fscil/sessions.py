"""FSCIL session files: the published ones shipped with the package, drawn ones, and their checks.

A session file (JSON, `"format": "lowshot-fscil-sessions/1"`) holds `sessions`, a list whose first
entry is the base session and the others the incremental sessions, each `{"classes": [...],
"train": [...]}`: its class ids and the exact training entries of its classes. The base session may
say `"train": "all"` (every training image of its classes, `train_count` of them when given).
`entries` says what an entry names: `row` (a row of the run's train.hdf5), `train_index` (a
position in the data set's original training order, CIFAR-100), `path` (an image path under the
data set's `images/`, CUB) or `file_name` (an image file name, miniImageNet). `test` says which
images test a session: `all` (every test image of the classes seen so far; `test_counts` gives
their cumulative numbers when known) or `split` (miniImageNet: the test images listed in `split`).
`source` records where published lists come from (repository, path, commit, git blob hash).

Published (Tao et al., CVPR 2020; CEC; FACT), in `sessions/`: `cifar100` (60 base classes, then 8
sessions of 5-way 5-shot), `mini_imagenet` (the same), `cub200` (100 base, then 10 sessions of
10-way 5-shot).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path

FORMAT = "lowshot-fscil-sessions/1"
SHIPPED = Path(__file__).parent / "sessions"
ENTRIES = ("row", "train_index", "path", "file_name")


def shipped() -> List[str]:
    """Names of the published session files shipped with the package."""
    return sorted(p.stem for p in SHIPPED.glob("*.json"))


def load_sessions(name_or_path: str) -> Dict[str, Any]:
    """A shipped session file by name, or a session file by path, checked (`check_sessions`)."""
    path = SHIPPED / f"{name_or_path}.json" if name_or_path in shipped() else Path(name_or_path)
    if not path.is_file():
        raise InputError(path, f"no such session file; the shipped ones are: {', '.join(shipped())}")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON ({e})") from None
    check_sessions(obj, path)
    return obj


def check_sessions(obj: Dict[str, Any], path: Any = None) -> None:
    """One `InputError` naming the first problem: the format, a class in two sessions, an entry listed
    twice, a session whose entries do not give every class `shot` rows, labels that disagree."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("entries") not in ENTRIES:
        raise InputError(path, f"not an FSCIL session file (format {FORMAT!r}, entries one of {', '.join(ENTRIES)})")
    sessions = obj.get("sessions")
    if not isinstance(sessions, list) or len(sessions) < 2:
        raise InputError(path, "needs a base session and at least one incremental session")
    seen, entries = set(), set()
    for t, s in enumerate(sessions, 1):
        classes = [int(c) for c in s.get("classes", [])]
        if not classes or len(set(classes)) < len(classes) or seen & set(classes):
            raise InputError(path, f"session {t}: no classes, or a class listed twice or seen in an earlier session")
        seen |= set(classes)
        if s.get("train") == "all":
            if t > 1:
                raise InputError(path, f"session {t}: only the base session may train on 'all' its images")
            continue
        _check_entries(obj, s, t, entries, path)
        entries |= set(map(str, s["train"]))


def _check_entries(obj: Dict[str, Any], s: Dict[str, Any], t: int, before: set, path: Any) -> None:
    train = [str(e) for e in s.get("train", [])]
    if not train or len(set(train)) < len(train) or before & set(train):
        raise InputError(path, f"session {t}: no training entries, or an entry listed twice")
    labels = entry_labels(obj, s)
    if labels is not None:
        if len(labels) != len(train) or set(map(int, labels)) != set(map(int, s["classes"])):
            raise InputError(path, f"session {t}: an entry's class is not one of the session's classes")
        shots = Counter(map(int, labels))
        if "shot" in obj and t > 1 and set(shots.values()) != {int(obj["shot"])}:
            raise InputError(path, f"session {t}: every class needs {obj['shot']} entries, not {dict(shots)}")


def entry_labels(obj: Dict[str, Any], s: Dict[str, Any]):
    """The class id of each training entry of session `s`: its `labels`, else read from the entry where
    the file says how (`path`: the class folder, `file_name`: the wnid before the 8-digit number, both
    positions in `class_names`); None when neither is possible."""
    if "labels" in s:
        return [int(c) for c in s["labels"]]
    names = {n: i for i, n in enumerate(obj.get("class_names", []))}
    key = {"path": lambda e: e.split("/")[0], "file_name": lambda e: e[:-12]}.get(obj["entries"])
    if key is None or not names:
        return None
    return [names.get(key(str(e)), -1) for e in s["train"]]


def session_classes(obj: Dict[str, Any]) -> List[List[int]]:
    """The class ids of each session, base first."""
    return [[int(c) for c in s["classes"]] for s in obj["sessions"]]


def draw_sessions(train_labels: np.ndarray, base: Sequence[int], pool: Sequence[int], way: int, shot: int,
                  num_sessions: int, seed: int, trial: int) -> Dict[str, Any]:
    """A session file with entries = rows of train.hdf5: base session = `base` (all its rows), then
    `num_sessions` sessions of `way` classes drawn from `pool` without repeats, `shot` rows each.

    Trial t's class order and shots come from the seed sequence (seed, trial), so every learner sees
    the same sessions (paired comparisons), and a rerun draws the same ones.
    """
    if way * num_sessions > len(pool):
        raise InputError(None, f"{num_sessions} sessions of {way} classes need {way * num_sessions} new classes; "
                               f"the pool has {len(pool)}")
    rng = np.random.default_rng([seed, trial, 0xF5C1])
    order = rng.permutation(np.asarray(pool, np.int64))[:way * num_sessions].reshape(num_sessions, way)
    sessions: List[Dict[str, Any]] = [{"classes": sorted(int(c) for c in base), "train": "all"}]
    for classes in order:
        rows, labels = [], []
        for c in sorted(int(c) for c in classes):
            have = np.flatnonzero(train_labels == c)
            if len(have) < shot:
                raise InputError(None, f"class {c} has {len(have)} training rows, fewer than {shot} shots")
            rows += [int(r) for r in rng.permutation(have)[:shot]]
            labels += [c] * shot
        sessions.append({"classes": sorted(int(c) for c in classes), "train": rows, "labels": labels})
    return {"format": FORMAT, "name": f"draw{trial}", "entries": "row", "way": way, "shot": shot,
            "seed": seed, "trial": trial, "sessions": sessions, "test": "all"}


def reorder_sessions(obj: Dict[str, Any], seed: int, trial: int) -> Dict[str, Any]:
    """Trial 0: `obj` as it is (the published order). Trial t > 0: the same incremental sessions
    (classes and shots unchanged) in an order drawn from (seed, trial): a session ordering."""
    if trial == 0:
        return obj
    order = np.random.default_rng([seed, trial, 0x0D3]).permutation(len(obj["sessions"]) - 1) + 1
    out = dict(obj, sessions=[obj["sessions"][0]] + [obj["sessions"][i] for i in order], trial=trial)
    out.pop("test_counts", None)  # cumulative counts follow the published order only
    return out


def write_sessions(path: Path, obj: Dict[str, Any]) -> None:
    """A session file, one session per line, atomically."""
    head = {k: v for k, v in obj.items() if k != "sessions"}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
    body = ",\n".join("  " + json.dumps(s, separators=(",", ":")) for s in obj["sessions"])
    with atomic_path(path) as tmp:
        tmp.write_text("{\n" + ",\n".join(lines + [f' "sessions": [\n{body}\n ]']) + "\n}\n")
