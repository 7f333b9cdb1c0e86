"""Stage 4: the low-shot grid. One cell = (head, n, experiment id, setup) -> one result JSON.

Features stay on disk: a process reads the setup's base and test rows once (class-contiguous
slices, shared by every cell) and each cell's shot rows; the file's content digest is computed
block by block. Peak memory is thus set by the setup's rows, not by the file.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from lowshot.config import versions
from lowshot.errors import InputError
from lowshot.generators import GENERATORS
from lowshot.heads import HEADS, Head, Task
from lowshot.io.features import content_digest
from lowshot.io.fingerprint import NOT_IDENTITY, file_digest
from lowshot.io.results import has_result, remove_superseded, required_keys, result_path, training_seed, write_result
from lowshot.io.splits import load_shots
from lowshot.metrics import cell_metrics
from lowshot.run import (
    RunFolder,
    RunInputs,
    load_inputs,
    read_artefact,
    rows_of,
    trained_model,
)
from lowshot.runtime import available_cpus, forked_map, pick_device, progress

SHOTS = (1, 2, 5, 10, 20)
EXPERIMENTS = (1, 2, 3, 4, 5)


@dataclass
class BenchmarkConfig:
    run: str = field(default="runs/demo", metadata=NOT_IDENTITY)
    heads: List[str] = field(default_factory=lambda: ["logreg"])
    head_params: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # head name -> kwargs
    ns: List[int] = field(default_factory=lambda: list(SHOTS))
    expids: Optional[List[int]] = None  # default: $SLURM_ARRAY_TASK_ID if set, else 1..5
    setup: int = 2
    generator: Optional[str] = None
    max_per_label: int = 0
    models: Dict[str, str] = field(default_factory=dict, metadata=NOT_IDENTITY)  # artefact -> file, e.g. {"matching": "x.pt"}
    features_dir: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: <run>/features
    test_features: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: test.hdf5, else H&G's val.hdf5
    splits: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: label_splits/<dataset>.json
    shots_dir: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: experiment_cfgs/<dataset>
    out_dir: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: <run>/results
    seed: int = 0
    device: str = field(default="auto", metadata=NOT_IDENTITY)
    force: bool = field(default=False, metadata=NOT_IDENTITY)
    jobs: Optional[int] = field(default=None, metadata=NOT_IDENTITY)  # processes for the cells; default: CPUs / threads
    temperatures: bool = field(default=False, metadata=NOT_IDENTITY)  # also ECE/NLL/Brier of softmax(scores / T)


def default_expids() -> List[int]:
    """`$SLURM_ARRAY_TASK_ID` (one experiment per array job) when set, else all five."""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return [int(task)] if task else list(EXPERIMENTS)


@dataclass
class Context:
    """Everything the cells of one process share, loaded once."""

    cfg: BenchmarkConfig
    inputs: RunInputs
    out_dir: Path
    device: torch.device
    base_feats: torch.Tensor
    base_labels: torch.Tensor
    test_feats: torch.Tensor
    test_labels: torch.Tensor
    task: Task
    digests: Dict[str, Any]
    generator_state: Any = None
    generator_key: Optional[str] = None
    models: Dict[type, Tuple[Any, str]] = field(default_factory=dict)  # head class -> (its trained model, digest)


def load_context(cfg: BenchmarkConfig) -> Context:
    """Read features, splits and the generator; keep the setup's base and test rows on the device."""
    inputs = load_inputs(cfg.run, cfg.features_dir, cfg.splits, cfg.shots_dir, cfg.test_features, lazy=True)
    train, test, splits = inputs.train, inputs.test, inputs.splits
    device = pick_device(cfg.device)
    base, novel = splits.setup(cfg.setup)
    base_feats, base_labels = rows_of(train, base)
    test_feats, test_labels = rows_of(test, np.concatenate([base, novel]))
    task = Task(splits.num_classes, base, novel, _tensor(train.classifier_weight, device), train.classifier_scale,
                seed=cfg.seed, device=device)
    ctx = Context(cfg, inputs, Path(cfg.out_dir or RunFolder(Path(cfg.run)).path("results")),
                  device, _tensor(base_feats, device), _tensor(base_labels, device), _tensor(test_feats, device),
                  _tensor(test_labels, device), task, input_digests(inputs))
    if cfg.generator:
        ctx.generator_state, ctx.generator_key = load_generator(cfg, inputs)
    return ctx


def load_generator(cfg: BenchmarkConfig, inputs: RunInputs) -> Tuple[Any, Optional[str]]:
    """The generator plug-in's state, built from its trained model's file (if it has one), and that file's digest."""
    plugin = GENERATORS.get(cfg.generator)
    saved, key = None, None
    if plugin.artefact:
        saved, key, _ = read_artefact(cfg.run, plugin.artefact, cfg.models.get(plugin.artefact))
    return plugin.init(saved, inputs.train.dim, lambda: rows_of(inputs.train, inputs.splits.base_classes)), key


def head_model(ctx: Context, head) -> Tuple[Any, Optional[str]]:
    """The trained model a head needs (built once per process) and its file's digest; (None, None) for other heads."""
    cls = type(head)
    if cls.artefact is None:
        return None, None
    if cls not in ctx.models:
        ctx.models[cls] = trained_model(ctx.cfg.run, cls, ctx.inputs.train.dim, ctx.device, ctx.cfg.models.get(cls.artefact))
    return ctx.models[cls]


def _tensor(a: Optional[np.ndarray], device) -> Optional[torch.Tensor]:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device)


def input_digests(inputs: RunInputs) -> Dict[str, Any]:
    """Fingerprints of the files every cell reads: features (content), label splits; shot files per experiment.

    Features of an external model (timm, torchvision) add its name, weights digest and preprocessing.
    """
    digests = {"train_features": content_digest(inputs.train), "test_features": content_digest(inputs.test),
               "splits": file_digest(inputs.splits_path)}
    if "weights_digest" in inputs.train.attrs:
        digests["model"] = {k: str(inputs.train.attrs.get(k)) for k in ("model", "weights_digest", "preprocessing")}
    return digests


def cell_identity(ctx: Context, head_name: str, head: Head, n: int, expid: int,
                  head_inputs: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """What determines a cell's numbers: its coordinates, the head's options and code `revision`, and every input
    file's fingerprint (the generator's trained model, and `head_inputs`: those of files the head itself reads,
    e.g. a trained model)."""
    cfg = ctx.cfg
    gen = {"name": cfg.generator, "max_per_label": cfg.max_per_label} if cfg.generator else None
    inputs = {**ctx.digests, "shots": file_digest(shot_file(ctx, expid))}
    if ctx.generator_key:
        inputs["generator"] = ctx.generator_key
    if head_inputs:
        inputs["head"] = head_inputs
    return {"head": head_name, "head_params": head.get_params(), "head_revision": head.revision, "generator": gen,
            "n": n, "expid": expid, "setup": cfg.setup, "seed": cfg.seed, "inputs": inputs}


def input_files(ctx: Context, expid: int) -> Dict[str, str]:
    """The paths behind the fingerprints of `cell_identity` (stored beside them, for the report's messages)."""
    return {"train_features": ctx.inputs.train.path, "test_features": ctx.inputs.test.path,
            "splits": str(ctx.inputs.splits_path),
            "shots": str(shot_file(ctx, expid))}


def shot_file(ctx: Context, expid: int) -> Path:
    return ctx.inputs.shots_dir / f"splitfile_{expid}.json"


def cell_seed(seed: int, expid: int, n: int) -> int:
    return int(np.random.SeedSequence([seed, expid, n]).generate_state(1)[0])


def training_set(ctx: Context, n: int, expid: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """All base rows of the setup + the first n shots of each novel class (+ generated rows)."""
    train = ctx.inputs.train
    idx = load_shots(shot_file(ctx, expid), train.labels, ctx.task.novel_classes, n)
    feats, labels = _tensor(train.feats[idx], ctx.device), _tensor(train.labels[idx], ctx.device)
    if ctx.cfg.generator:
        plugin = GENERATORS.get(ctx.cfg.generator)
        feats, labels = plugin.generate(feats, labels, ctx.generator_state, ctx.cfg.max_per_label, seed)
    return torch.cat([ctx.base_feats, feats]), torch.cat([ctx.base_labels, labels])


def run_cell(ctx: Context, head_name: str, n: int, expid: int) -> Optional[Path]:
    """Fit one head on one cell's training set, score the test rows, write the result JSON."""
    head = HEADS.create(head_name, **ctx.cfg.head_params.get(head_name, {}))
    model, model_key = head_model(ctx, head)
    identity = cell_identity(ctx, head_name, head, n, expid, model_key and {head.artefact: model_key})
    path = result_path(ctx.out_dir, identity)
    if not ctx.cfg.force and has_result(path, identity, required_keys(ctx.cfg.temperatures)):
        remove_superseded(path, identity)
        return None
    seed = cell_seed(ctx.cfg.seed, expid, n)
    torch.manual_seed(seed)
    start = time.perf_counter()
    feats, labels = training_set(ctx, n, expid, seed)
    task = dataclasses.replace(ctx.task, seed=seed, model=model)
    head.fit(feats, labels, task)
    scores = head.scores(ctx.test_feats)
    check_finite(scores, identity)
    metrics = cell_metrics(scores, ctx.test_labels, task.base_classes, task.novel_classes,
                           temperatures=ctx.cfg.temperatures)
    write_result(path, {**identity, **metrics, "representation": Path(ctx.cfg.run).name, "cell_seed": seed,
                        "train_seed": training_seed(ctx.inputs.train.attrs),
                        "wall_time_s": time.perf_counter() - start,
                        "num_train_rows": len(labels), "input_files": input_files(ctx, expid),
                        "versions": versions()})
    remove_superseded(path, identity)
    return path


def check_finite(scores: torch.Tensor, identity: Dict[str, Any]) -> None:
    """A diverged fit (NaN or +inf scores) ends the cell with one error that says what to change.

    −inf is allowed: heads give it to classes they never saw.
    """
    if not (torch.isnan(scores).any() or torch.isposinf(scores).any()):
        return
    head, params = identity["head"], identity["head_params"]
    hint = (f"lower its learning rate, e.g. --set 'head_params={{\"{head}\": {{\"lr\": {params['lr'] / 10:g}}}}}'"
            if isinstance(params.get("lr"), (int, float)) else "change its options (--set head_params=...)")
    raise InputError(None, f"head {head!r} diverged in cell n={identity['n']} exp={identity['expid']} "
                           f"setup {identity['setup']} (non-finite scores); no result written; {hint}")


def runnable_heads(ctx: Context) -> List[str]:
    """The heads to run, each asked (`check_inputs`, and its trained model read) before any cell: a named head
    that cannot run on these inputs is its one-line `InputError`; `all` is every registered head that can, and
    names the others."""
    def check(name: str) -> None:
        head = HEADS.create(name, **ctx.cfg.head_params.get(name, {}))
        head.check_inputs(ctx.task)
        head_model(ctx, head)

    if ctx.cfg.heads != ["all"]:
        for name in ctx.cfg.heads:
            check(name)
        return ctx.cfg.heads
    keep = []
    for name in HEADS.names():
        try:
            check(name)
            keep.append(name)
        except InputError as e:
            print(f"--heads all: skipping {name}: {e}", flush=True)
    return keep


def benchmark(cfg: BenchmarkConfig) -> List[Path]:
    """Run every requested cell that has no result yet; returns the paths written."""
    bad = [n for n in cfg.ns if n < 1]
    if bad:
        raise InputError(None, f"--n {bad[0]}: the number of shots must be a positive integer")
    if cfg.max_per_label and min(cfg.ns) > cfg.max_per_label:
        raise InputError(None, f"--max-per-label {cfg.max_per_label} is below every n {cfg.ns}: nothing to generate")
    for name in cfg.heads:
        if name != "all":
            HEADS.get(name)
    cfg.expids = cfg.expids or default_expids()
    ctx = load_context(cfg)
    cells = [(head, n, expid) for head in runnable_heads(ctx) for n in cfg.ns for expid in cfg.expids]
    written = []
    with progress(total=len(cells), desc="benchmark cells", unit="cell") as bar:
        for (head, n, expid), path in run_cells(ctx, cells, jobs(cfg, ctx.device, len(cells))):
            bar.update()
            if path:
                written.append(path)
                bar.write(f"{head:>12} n={n:<2} exp={expid} -> {path.name}")
    return written


def jobs(cfg: BenchmarkConfig, device: torch.device, cells: int) -> int:
    """Processes for the cells: `cfg.jobs`; else, on a CPU, the CPUs the process may use over its threads (1 on a GPU)."""
    if cfg.jobs:
        return max(1, min(cfg.jobs, cells))
    return 1 if device.type != "cpu" else max(1, min(available_cpus() // torch.get_num_threads(), cells))


_CONTEXT: Optional[Context] = None  # the context a forked cell process inherits


def _cell(cell: Tuple[str, int, int]) -> Tuple[Tuple[str, int, int], Optional[Path]]:
    return cell, run_cell(_CONTEXT, *cell)


def run_cells(ctx: Context, cells: List[Tuple[str, int, int]], processes: int):
    """(cell, path written or None) for each cell, computed here or, with `processes` > 1, by forked processes
    that share the loaded features; every cell is seeded by its coordinates and runs on this process's threads,
    so its result does not depend on the number of processes."""
    global _CONTEXT
    _CONTEXT = ctx
    try:
        yield from forked_map(_cell, cells, processes)
    finally:
        _CONTEXT = None
