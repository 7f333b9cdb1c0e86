"""`lowshot fscil`: few-shot class-incremental sessions on cached features (Tao et al., CVPR 2020, arXiv 2004.10956).

A base session (every training image of its classes), then sessions that each add `way` new
classes from `shot` images each; after every session each learner is tested on the test images
of every class seen so far. Sessions come from a session file (`sessions.py`): a published one
shipped with the package (`cifar100`, `mini_imagenet`, `cub200`), a file of one's own, or `draw`:
base classes and a pool of new classes taken from the run's label split, drawn afresh for every
trial. Trials are the repetitions behind the intervals: shot draws and class orders (`draw`), or
orderings of the published sessions (trial 0 = the published order). Every learner sees the same
trials, so differences between learners are paired. `more_runs` adds representations trained
with other seeds: intervals are then over the runs (each the mean over its trials).

Base and new classes must respect what the representation saw: every base class was one of its
training classes (its label split's `base_classes`), no new class was.

Methods are learners (`lowshot.protocols.fscil.learners`) with parameters, optionally with a
generator (`lowshot.generators`, H&G's analogies by default) topping each new class up to
`top_up` rows. Outputs under `<run>/fscil/<protocol>/` (or `out`): `cells/<method>_t<trial>_<key>.json`
(one per method, trial and representation; the key hashes every input, so a rerun skips finished
cells and a changed input recomputes them), `sessions/trial_<t>.json` (the sessions each trial
used), `fscil.csv` (one row per representation, method, trial and session) and the tables and plot
of `lowshot.protocols.fscil.tables`. All written atomically.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd
import torch

from lowshot.config import versions
from lowshot.errors import InputError
from lowshot.io.atomic import write_json
from lowshot.io.fingerprint import NOT_IDENTITY, digest
from lowshot.protocols.fscil.learners import LEARNERS, BaseSession, Session
from lowshot.protocols.fscil.learners.base import columns
from lowshot.protocols.fscil.metrics import session_metrics
from lowshot.protocols.fscil.problem import Plan, Problem, prepare, trial_plan
from lowshot.protocols.fscil.tables import write_report
from lowshot.run import RunFolder

METHODS: Dict[str, Dict[str, Any]] = {  # method -> learner, its parameters, generated rows per new class (0: none)
    "prototype": {"learner": "prototype", "params": {}, "top_up": 0},
    "imprint": {"learner": "imprint", "params": {}, "top_up": 0},
    "imprint_ft": {"learner": "imprint_ft", "params": {"init": "classifier", "old": "frozen"}, "top_up": 0},
    "prototype_ft": {"learner": "imprint_ft", "params": {"init": "prototypes", "old": "frozen"}, "top_up": 0},
    "prototype_ft_l2": {"learner": "imprint_ft", "params": {"init": "prototypes", "old": "l2"}, "top_up": 0},
    "prototype_ft_free": {"learner": "imprint_ft", "params": {"init": "prototypes", "old": "free"}, "top_up": 0},
    "logreg": {"learner": "logreg", "params": {}, "top_up": 0},
    "prototype_analogies": {"learner": "prototype", "params": {}, "top_up": 20},
}
BASELINE = "prototype"


@dataclass
class FSCILConfig:
    """`lowshot fscil`: which sessions, how many trials, which methods."""

    run: str = field(default="runs/demo", metadata=NOT_IDENTITY)
    more_runs: List[str] = field(default_factory=list, metadata=NOT_IDENTITY)  # the representation's other seeds
    sessions: str = "draw"  # a shipped protocol (cifar100, mini_imagenet, cub200), a session file, or draw
    base: str = "base_classes_2"  # draw: the label split's list of base-session classes
    pool: str = "novel_classes_2"  # draw: the label split's list the new classes are drawn from
    way: int = 10  # draw: new classes per session
    shot: int = 5  # draw: training images per new class
    num_sessions: int = 10  # draw: incremental sessions after the base one
    trials: int = 5  # shot draws / class orders (draw), session orderings (a session file; trial 0 = as listed)
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    method_specs: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # more methods, or changed ones
    generator: str = "analogies"  # for methods with top_up > 0
    dataset: Optional[str] = None  # the data set a published file's entries name [default: the file's]
    dataset_args: Dict[str, Any] = field(default_factory=dict, metadata=NOT_IDENTITY)  # its loader's (root)
    features_dir: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default <run>/features
    test_features: Optional[str] = field(default=None, metadata=NOT_IDENTITY)
    splits: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: the run's label split
    models: Dict[str, str] = field(default_factory=dict, metadata=NOT_IDENTITY)  # artefact -> file
    out: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default <run>/fscil/<protocol>
    seed: int = 0
    device: str = field(default="auto", metadata=NOT_IDENTITY)
    force: bool = field(default=False, metadata=NOT_IDENTITY)


def fscil(cfg: FSCILConfig) -> Path:
    """Run every missing cell, write `fscil.csv`, the tables and the plot; returns the CSV's path."""
    specs = method_specs(cfg)
    out, t0 = out_dir(cfg), time.perf_counter()
    rows: List[dict] = []
    for run in [cfg.run] + list(cfg.more_runs):
        prob = prepare(cfg, run, [specs[m] for m in cfg.methods])
        check_learners(prob, {m: specs[m] for m in cfg.methods})
        for trial in range(cfg.trials):
            plan = trial_plan(cfg, prob, trial, out)
            for method in cfg.methods:
                rows += run_cell(cfg, prob, plan, method, specs[method], out)
    df = pd.DataFrame(rows)
    print(write_report(df, out, BASELINE, time.perf_counter() - t0))
    return out / "fscil.csv"


def method_specs(cfg: FSCILConfig) -> Dict[str, Dict[str, Any]]:
    """`METHODS` updated by `cfg.method_specs`; every method of `cfg.methods` known, its learner registered."""
    specs = {**METHODS, **{k: {"params": {}, "top_up": 0, **v} for k, v in cfg.method_specs.items()}}
    unknown = [m for m in cfg.methods if m not in specs]
    if unknown or not cfg.methods:
        raise InputError(None, f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from: "
                               f"{', '.join(specs)} (or define one with method_specs)")
    for m in cfg.methods:
        LEARNERS.get(specs[m].get("learner", ""))  # an unknown learner: one line listing the registered ones
    if cfg.trials < 1:
        raise InputError(None, f"trials={cfg.trials}: need at least one")
    return specs


def check_learners(prob: Problem, specs: Dict[str, Dict[str, Any]]) -> None:
    """One line, before any cell, for a method that cannot run on this representation."""
    for method, spec in specs.items():
        learner = LEARNERS.create(spec["learner"], **spec.get("params", {}))
        if learner.needs_classifier and prob.classifier_scale is None:
            raise InputError(prob.train_path, f"method {method!r} imprints into the representation's cosine "
                                              "classifier, and this feature file has none: leave it out, or use a "
                                              "run trained with `--classifier cosine`")


def out_dir(cfg: FSCILConfig) -> Path:
    """`cfg.out`, else `<run>/fscil/<protocol>`: the shipped name, the session file's stem, or the draw."""
    if cfg.out:
        return Path(cfg.out)
    from lowshot.protocols.fscil.sessions import shipped
    name = cfg.sessions if cfg.sessions in shipped() else Path(cfg.sessions).stem
    if cfg.sessions == "draw":
        name = f"draw_{cfg.base}_{cfg.pool}_{cfg.num_sessions}x{cfg.way}way{cfg.shot}shot"
    return RunFolder(Path(cfg.run)).path("fscil") / name


def cell_key(prob: Problem, plan: Plan, method: str, spec: Dict[str, Any]) -> str:
    """Digest of every input that determines a cell (no paths: a moved run folder keeps its cells)."""
    gen = prob.generator_key if spec.get("top_up") else None
    return digest({"method": method, "spec": spec, "inputs": prob.inputs, "plan": plan.key, "generator": gen})


def run_cell(cfg: FSCILConfig, prob: Problem, plan: Plan, method: str, spec: Dict[str, Any], out: Path) -> List[dict]:
    """The per-session rows of one (representation, method, trial): read when the cell exists, else computed."""
    path = out / "cells" / f"{method}_t{plan.trial}_{cell_key(prob, plan, method, spec)}.json"
    if path.exists() and not cfg.force:
        stored = json.loads(path.read_text())["rows"]
    else:
        t0 = time.perf_counter()
        stored = run_sessions(prob, plan, spec)
        write_json(path, {"rows": stored, "method": method, "spec": spec, "trial": plan.trial, "inputs": prob.inputs,
                          "seconds": time.perf_counter() - t0, "versions": versions()})
    return [{"representation": prob.name, "method": method, "trial": plan.trial, **r} for r in stored]


def run_sessions(prob: Problem, plan: Plan, spec: Dict[str, Any]) -> List[dict]:
    """One learner through every session of a plan: a row of metrics after each."""
    learner = LEARNERS.create(spec["learner"], **spec.get("params", {}))
    learner.start(base_session(prob, plan))
    rows = [evaluate(prob, plan, learner, 0)]
    for t in range(1, len(plan.rows)):
        learner.add(new_session(prob, plan, t, spec.get("top_up", 0)))
        rows.append(evaluate(prob, plan, learner, t))
    return rows


def base_session(prob: Problem, plan: Plan) -> BaseSession:
    rows = torch.as_tensor(plan.rows[0], device=prob.device)
    return BaseSession(prob.feats[rows], prob.labels[rows], plan.classes[0], prob.classifier_weight,
                       prob.classifier_scale, plan.seeds[0], prob.device, prob.cache)


def new_session(prob: Problem, plan: Plan, t: int, top_up: int) -> Session:
    """Session t's rows (its shots), topped up to `top_up` rows per class by the generator when asked."""
    rows = torch.as_tensor(plan.rows[t], device=prob.device)
    feats, labels = prob.feats[rows], prob.labels[rows]
    if top_up:
        plugin, state = prob.generator
        feats, labels = plugin.generate(feats, labels, state, top_up, plan.seeds[t])
    return Session(feats, labels, plan.classes[t], t + 1, plan.seeds[t])


def evaluate(prob: Problem, plan: Plan, learner, t: int) -> dict:
    """Metrics after session t (0 = base) on the test images of every class seen so far."""
    rows = torch.as_tensor(plan.test[t], device=prob.device)
    labels = prob.labels[rows]
    with torch.no_grad():
        scores = learner.scores(prob.feats[rows])
    truth = columns(labels, learner.classes_)
    is_base = torch.isin(labels, torch.as_tensor(plan.classes[0], device=labels.device))
    return {"session": t + 1, "classes": len(learner.classes_), "test_images": len(rows),
            **session_metrics(scores, truth, is_base)}

