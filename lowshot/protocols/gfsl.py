"""Generalised few-shot episodes: a few novel classes beside every base class (Gidaris & Komodakis, CVPR 2018).

Their evaluation ("Dynamic Few-Shot Visual Learning without Forgetting", arXiv 1804.09458; read in
gidariss/FewShotWithoutForgetting at commit 0efdc78, `dataloader.py` `FewShotDataloader` and
`algorithms/FewShot.py`), on cached features. An episode draws:

- `ways` (5) of the setup's novel classes, without replacement;
- from each, `shots` (1 or 5) exemplars and `queries` (15) queries, distinct TEST rows of the class;
- `base_queries` (75) base queries: for each one a base class uniformly with replacement, then distinct
  TEST rows of each class drawn (the base classes' held-out images, never their training images).

The classifier knows every base class of the setup and the episode's novel classes (64 + 5 on
miniImageNet): a head is fitted on every base TRAIN row of the setup plus the exemplars (a head with a
trained model, e.g. `weight_generator`, keeps its base rows and writes novel ones). Three top-1
accuracies per episode, as their `FewShot.py` computes them:

- `novel`: the novel queries, scores restricted to the episode's novel classes (a `ways`-way task);
- `base`: the base queries, scores restricted to the base classes;
- `both`: every query, scores over the base classes and the episode's novel classes.

Each is averaged over `episodes` (600, their `--testset` count) seeded episodes with its 95 % interval
(Student t over episodes; they report 1.96 · sd / √N, for `novel` only). Their episodes are drawn with
Python's `random` seeded by the epoch; these are drawn with numpy, seeded by (seed, shots, episode), and
are the same for every head.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.io.atomic import atomic_path
from lowshot.run import RunFolder, load_inputs, rows_of, trained_model
from lowshot.runtime import pick_device
from lowshot.stats import mean_ci

METRICS = ("novel", "base", "both")


@dataclass
class GFSLConfig:
    run: str = "runs/demo"
    features_dir: Optional[str] = None  # default: <run>/features
    test_features: Optional[str] = None  # default: <features_dir>/test.hdf5, else H&G's val.hdf5
    splits: Optional[str] = None  # default: label_splits/<dataset>.json
    heads: List[str] = field(default_factory=lambda: ["protonet", "cosine_ncm", "imprint", "weight_generator"])
    head_params: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # head name -> kwargs
    models: Dict[str, str] = field(default_factory=dict)  # artefact -> trained-model file [default: the run's]
    ways: int = 5
    shots: List[int] = field(default_factory=lambda: [1, 5])
    queries: int = 15  # per novel class
    base_queries: int = 75  # per episode, spread over the base classes
    episodes: int = 600
    setup: int = 2
    seed: int = 0
    device: str = "auto"
    out_dir: Optional[str] = None  # default: <run>/gfsl


@dataclass
class Episode:
    """Row indices into the test features: exemplars (ways·shots,), novel queries, base queries; the novel classes."""

    support: np.ndarray
    novel_queries: np.ndarray
    base_queries: np.ndarray
    novel: np.ndarray


def class_rows(labels: np.ndarray, classes: np.ndarray) -> Dict[int, np.ndarray]:
    """{class: its row indices in `labels`} for each of `classes`."""
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], classes)
    ends = np.searchsorted(labels[order], classes, side="right")
    return {int(c): order[a:b] for c, a, b in zip(classes, starts, ends)}


def draw_episode(rng: np.random.Generator, novel: Dict[int, np.ndarray], base: Dict[int, np.ndarray],
                 cfg: GFSLConfig, shots: int) -> Episode:
    """One episode by Gidaris & Komodakis' sampler (see the module docstring)."""
    classes = np.sort(rng.choice(np.asarray(list(novel)), cfg.ways, replace=False))
    support, queries = [], []
    for c in classes:
        rows = rng.choice(novel[int(c)], cfg.queries + shots, replace=False)
        queries.append(rows[:cfg.queries])
        support.append(rows[cfg.queries:])
    base_classes = np.asarray(list(base))
    picked, counts = np.unique(rng.choice(len(base_classes), cfg.base_queries, replace=True), return_counts=True)
    short = [int(base_classes[i]) for i, k in zip(picked, counts) if k > len(base[int(base_classes[i])])]
    if short:
        raise InputError(None, f"an episode draws more base queries of class {short[0]} than its "
                               f"{len(base[short[0]])} test rows")
    base_rows = [rng.choice(base[int(base_classes[i])], k, replace=False) for i, k in zip(picked, counts)]
    return Episode(np.concatenate(support), np.concatenate(queries),
                   np.concatenate(base_rows) if base_rows else np.zeros(0, np.int64), classes)


def draw_episodes(test_labels: np.ndarray, base: np.ndarray, novel: np.ndarray, cfg: GFSLConfig,
                  shots: int, source) -> List[Episode]:
    """`cfg.episodes` episodes of `shots` exemplars, seeded by (seed, shots, episode index)."""
    novel_rows = {c: r for c, r in class_rows(test_labels, novel).items() if len(r) >= cfg.queries + shots}
    base_rows = {c: r for c, r in class_rows(test_labels, base).items() if len(r)}
    if len(novel_rows) < cfg.ways:
        raise InputError(source, f"{cfg.ways}-way {shots}-shot episodes with {cfg.queries} queries need {cfg.ways} "
                                 f"novel classes with ≥ {cfg.queries + shots} test rows; {len(novel_rows)} have them")
    if cfg.base_queries and not base_rows:
        raise InputError(source, "has no test rows of the setup's base classes: these episodes test base classes on "
                                 "held-out images (miniImageNet's pickles hold them; else hold some out with the "
                                 "data set's base_test and extract the features again)")
    return [draw_episode(np.random.default_rng([cfg.seed, shots, e]), novel_rows, base_rows, cfg, shots)
            for e in range(cfg.episodes)]


def _hits(scores: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the label has the best score among `classes`."""
    return classes[scores[:, classes].argmax(1)] == labels


def episode_accuracies(head, ep: Episode, data: Dict[str, torch.Tensor], task: Task) -> Tuple[float, float, float]:
    """(novel, base, both) top-1 accuracy of `head` on one episode (see the module docstring)."""
    test, labels = data["test"], data["test_labels"]
    sup = torch.as_tensor(ep.support, device=test.device)
    head.fit(torch.cat([data["base"], test[sup]]), torch.cat([data["base_labels"], labels[sup]]), task)
    nq = torch.as_tensor(ep.novel_queries, device=test.device)
    bq = torch.as_tensor(ep.base_queries, device=test.device)
    scores = head.scores(test[torch.cat([nq, bq])])
    novel = torch.as_tensor(ep.novel, device=test.device)
    base = data["base_classes"]
    truth = labels[torch.cat([nq, bq])]
    both = _hits(scores, truth, torch.cat([base, novel]))
    novel_hits = _hits(scores[:len(nq)], truth[:len(nq)], novel)
    base_hits = _hits(scores[len(nq):], truth[len(nq):], base)
    mean = lambda x: float(x.float().mean()) if len(x) else float("nan")  # noqa: E731
    return mean(novel_hits), mean(base_hits), mean(both)


def _load(cfg: GFSLConfig, device: torch.device):
    """The setup's base train rows and all test rows on the device, the label split, the classifier, the source."""
    inputs = load_inputs(cfg.run, cfg.features_dir, cfg.splits, None, cfg.test_features)
    base, novel = inputs.splits.setup(cfg.setup)
    feats, labels = rows_of(inputs.train, base)
    on = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    data = {"base": on(feats), "base_labels": on(labels), "test": on(inputs.test.feats),
            "test_labels": on(inputs.test.labels.astype(np.int64)), "base_classes": on(base)}
    weight = None if inputs.train.classifier_weight is None else on(inputs.train.classifier_weight)
    return inputs, base, novel, data, weight


def _runnable(cfg: GFSLConfig, inputs, weight, device, notes: Dict[str, str]) -> Dict[str, Any]:
    """{head: its trained model or None} of the heads that can run; a note for each one that cannot."""
    models = {}
    for name in cfg.heads:
        cls = HEADS.get(name)
        if getattr(cls, "transductive", False):
            notes[name] = "skipped: transductive (labels an episode's queries together), not defined here"
            continue
        try:
            head = HEADS.create(name, **cfg.head_params.get(name, {}))
            head.check_inputs(Task(inputs.splits.num_classes, np.zeros(0, np.int64), np.zeros(0, np.int64), weight,
                                   inputs.train.classifier_scale))
            models[name] = trained_model(cfg.run, cls, inputs.train.dim, device, cfg.models.get(cls.artefact))[0] \
                if cls.artefact else None
        except InputError as err:
            notes[name] = f"skipped: {err}"
    return models


def gfsl(cfg: GFSLConfig) -> str:
    """Run every (head, shots) configuration; write <out_dir>/gfsl.{csv,md}; return the markdown."""
    device = pick_device(cfg.device)
    inputs, base, novel, data, weight = _load(cfg, device)
    notes: Dict[str, str] = {}
    models = _runnable(cfg, inputs, weight, device, notes)
    rows = []
    for shots in cfg.shots:
        episodes = draw_episodes(inputs.test.labels, base, novel, cfg, shots, inputs.test.path)
        for name, model in models.items():
            start, accs = time.perf_counter(), []
            for e, ep in enumerate(episodes):
                task = Task(inputs.splits.num_classes, base, ep.novel, weight, inputs.train.classifier_scale,
                            model=model, seed=cfg.seed * 100_003 + e, device=device)
                accs.append(episode_accuracies(HEADS.create(name, **cfg.head_params.get(name, {})), ep, data, task))
            row = {"head": name, "ways": cfg.ways, "shots": shots, "queries": cfg.queries,
                   "base_queries": cfg.base_queries, "episodes": len(accs)}
            for metric, values in zip(METRICS, zip(*accs)):
                row[metric], row[f"{metric}_ci95"], _ = mean_ci(values)
            rows.append({**row, "seconds": round(time.perf_counter() - start, 3)})
    return _write(cfg, rows, notes)


def _write(cfg: GFSLConfig, rows: List[dict], notes: Dict[str, str]) -> str:
    """Long CSV and a markdown table (heads × shots: novel / base / both, % with 95 % intervals), both atomic."""
    out = Path(cfg.out_dir) if cfg.out_dir else RunFolder(Path(cfg.run)).path("gfsl")
    fields = ["head", "ways", "shots", "queries", "base_queries", "episodes"]
    fields += [f"{m}{s}" for m in METRICS for s in ("", "_ci95")] + ["seconds"]
    with atomic_path(out / "gfsl.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    cell = {(r["head"], r["shots"]): " / ".join(f"{100 * r[m]:.2f} ± {100 * r[m + '_ci95']:.2f}" for m in METRICS)
            for r in rows}
    heads = [h for h in cfg.heads if h not in notes]
    lines = ["| head | " + " | ".join(f"{cfg.ways}-way {s}-shot: novel / base / both" for s in cfg.shots) + " |",
             "|---|" + "---|" * len(cfg.shots)]
    lines += [f"| {h} | " + " | ".join(cell.get((h, s), "–") for s in cfg.shots) + " |" for h in heads]
    lines += [""] + [f"- {h}: {why}" for h, why in notes.items()] if notes else []
    lines += ["", f"Top-1 accuracy (%) over {cfg.episodes} episodes of setup {cfg.setup} ({cfg.queries} queries per "
                  f"novel class, {cfg.base_queries} base queries), mean ± 95 % interval: novel among the episode's "
                  "novel classes, base among the base classes, both among base + novel (Gidaris & Komodakis)."]
    text = "\n".join(lines) + "\n"
    with atomic_path(out / "gfsl.md") as tmp:
        tmp.write_text(text)
    return text
