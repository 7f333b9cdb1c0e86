"""Episodic N-way K-shot evaluation (the prototypical-networks protocol) on cached features.

An episode draws N of the setup's novel classes and, from each, K support and `queries` query
rows of the TEST features (disjoint); labels are renumbered 0..N−1 and there are no base
classes. Accuracy over an episode's queries, averaged over `episodes` seeded episodes, is
reported with its 95 % interval (Student t over episodes). All heads see the same episodes.

Heads with an `episode_scores(support, query, task)` method are scored on a batch of episodes
at once (or asked only for their arg-max, `episode_predictions`, where that is cheaper), in chunks
whose features fill `head.episode_bytes` (default `CHUNK_BYTES`, 16 MiB: about 200 5-way episodes);
others are fitted episode by episode. Heads marked `episodic = False` (they need base
rows) and heads whose fit raises `InputError` on an episode are skipped with a note. Heads that
centre on the base classes (`cosine_ncm`, as SimpleShot) get the mean of the setup's base-class rows
of train.hdf5 as `task.base_mean`. Transductive heads (class attribute `transductive = True`: they
label an episode's queries together) are marked † in the table and `transductive` in the CSV.
`query_dirichlet` = a > 0 unbalances the queries: an episode's ways × queries queries are split
among its classes in proportions drawn from Dirichlet(a, …, a), as in Veilleux et al., "Realistic
Evaluation of Transductive Few-Shot Learning", NeurIPS 2021 (a = 2 there); same classes and support
rows as the balanced episodes of the same seed.
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
from lowshot.io.features import FeatureSet, read_features
from lowshot.io.splits import LabelSplits, load_label_splits
from lowshot.metrics import episode_calibration
from lowshot.run import (
    NO_DATASET,
    RunFolder,
    check_compatible,
    rows_of,
    splits_path,
    test_features_path,
    trained_model,
)
from lowshot.runtime import pick_device
from lowshot.stats import mean_ci

CHUNK_BYTES = 1 << 24  # features of the episodes a batched head scores together, unless it says otherwise


def default_heads() -> List[str]:
    """Every registered head that can be fitted on an episode (class attribute `episodic = True`)."""
    return [name for name in HEADS.names() if getattr(HEADS.get(name), "episodic", False)]


@dataclass
class EpisodesConfig:
    run: str = "runs/demo"
    features_dir: Optional[str] = None  # default: <run>/features
    test_features: Optional[str] = None  # default: <features_dir>/test.hdf5, else H&G's val.hdf5
    splits: Optional[str] = None  # default: label_splits/<dataset>.json
    heads: List[str] = field(default_factory=default_heads)
    head_params: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # head name -> kwargs
    models: Dict[str, str] = field(default_factory=dict)  # artefact -> trained-model file [default: the run's]
    ways: List[int] = field(default_factory=lambda: [5, 20])
    shots: List[int] = field(default_factory=lambda: [1, 5])
    queries: int = 15
    episodes: int = 600
    setup: int = 2
    seed: int = 0
    device: str = "auto"
    out_dir: Optional[str] = None  # default: <run>/episodes
    query_dirichlet: float = 0.0  # 0: `queries` per class; a > 0: class proportions ~ Dirichlet(a)


def draw_episodes(labels: np.ndarray, classes: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                  seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row indices of `episodes` episodes: support (E, ways, shots) and query (E, ways, queries).

    Classes come from `classes` (those with at least shots + queries rows), rows from `labels`;
    support and query rows are disjoint. Seeded by (seed, ways, shots).
    """
    need = shots + queries
    rows = np.flatnonzero(np.isin(labels, classes))
    rows = rows[np.argsort(labels[rows], kind="stable")]
    uniq, start, count = np.unique(labels[rows], return_index=True, return_counts=True)
    ok = count >= need
    if ok.sum() < ways:
        raise InputError(None, f"{ways}-way {shots}-shot episodes with {queries} queries need {ways} novel "
                               f"classes with ≥ {need} test rows; only {int(ok.sum())} have them")
    start, count = torch.as_tensor(start[ok]), torch.as_tensor(count[ok])
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, ways, shots]).generate_state(1)[0]))
    cls = torch.rand(episodes, len(start), generator=gen).argsort(1)[:, :ways]
    keys = torch.rand(episodes, ways, int(count.max()), generator=gen)
    keys[torch.arange(keys.shape[2]) >= count[cls][..., None]] = float("inf")  # padding past a class's rows
    pick = torch.as_tensor(rows)[start[cls][..., None] + keys.argsort(-1)[..., :need]]
    return pick[..., :shots], pick[..., shots:]


def dirichlet_counts(ways: int, total: int, cap: int, alpha: float, episodes: int, seed: int) -> torch.Tensor:
    """Query counts (E, ways) per class, each row summing to `total`, proportions ~ Dirichlet(alpha).

    Proportions × total are rounded by largest remainder; an episode in which a class would get
    more than `cap` queries (its rows left after the support) is redrawn. Seeded by (seed, ways, total).
    """
    if cap * ways < total:
        raise InputError(None, f"{total} queries in {ways} classes of at most {cap} query rows each")
    rng = np.random.default_rng([seed, ways, total])
    out, todo = np.zeros((episodes, ways), np.int64), np.arange(episodes)
    while len(todo):
        raw = rng.dirichlet(np.full(ways, alpha), len(todo)) * total
        counts = np.floor(raw).astype(np.int64)
        first = np.argsort(np.argsort(counts - raw, axis=1), axis=1)  # 0 = largest remainder
        counts += first < (total - counts.sum(1))[:, None]
        ok = (counts <= cap).all(1)
        out[todo[ok]], todo = counts[ok], todo[~ok]
    return torch.from_numpy(out)


def draw_queries(cfg: EpisodesConfig, labels: np.ndarray, classes: np.ndarray, ways: int,
                 shots: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support (E, W, S) and query (E, W·Q) row indices, and each query's way (E, W·Q), per `cfg`."""
    total = ways * cfg.queries
    if cfg.query_dirichlet <= 0:
        sup, qry = draw_episodes(labels, classes, ways, shots, cfg.queries, cfg.episodes, cfg.seed)
        return sup, qry.flatten(1), torch.arange(ways).repeat_interleave(cfg.queries).expand(len(sup), -1)
    rows = np.bincount(labels, minlength=int(classes.max()) + 1)[classes]
    rows = rows[rows >= shots + cfg.queries]  # the classes draw_episodes may use
    cap = min(total, int(rows.min()) - shots) if len(rows) else cfg.queries
    counts = dirichlet_counts(ways, total, cap, cfg.query_dirichlet, cfg.episodes, cfg.seed)
    sup, pool = draw_episodes(labels, classes, ways, shots, cap, cfg.episodes, cfg.seed)
    keep = torch.arange(cap) < counts[..., None]  # (E, W, cap): the first counts[e, w] of each pool
    ways_of = torch.arange(ways)[:, None].expand_as(pool)
    return sup, pool[keep].reshape(len(sup), total), ways_of[keep].reshape(len(sup), total)


def episode_accuracies(name: str, params: Dict[str, Any], support: torch.Tensor, query: torch.Tensor,
                       task: Task, truth: Optional[torch.Tensor] = None,
                       scores_out: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
    """Accuracy (E,) of one head on episodes: support (E, W, S, d) and query (E, W, Q, d), or query
    (E, Q, d) with truth (E, Q), each query's way. A list `scores_out` receives the scores (E', Q, W) of
    consecutive chunks of episodes, for `lowshot.metrics.episode_calibration`."""
    e, w, s, d = support.shape
    if truth is None:
        truth = torch.arange(w, device=query.device).repeat_interleave(query.shape[2])
        query = query.reshape(e, -1, d)
    head = HEADS.create(name, **params)
    keep = scores_out.append if scores_out is not None else (lambda x: None)
    if hasattr(head, "episode_scores"):
        fast = getattr(head, "episode_predictions", None)
        predict = fast or (lambda *a: _kept(head.episode_scores(*a), keep).max(-1).indices)
        step = max(1, getattr(head, "episode_bytes", CHUNK_BYTES) // (4 * d * (w * s + query.shape[1])))
        guess = torch.cat([predict(support[i:i + step], query[i:i + step], task) for i in range(0, e, step)])
        if fast and scores_out is not None:  # the cheaper arg-max keeps no scores: compute them for calibration
            for i in range(0, e, step):
                keep(head.episode_scores(support[i:i + step], query[i:i + step], task))
    else:
        labels = torch.arange(w, device=support.device).repeat_interleave(s)
        guess = torch.stack([_kept(HEADS.create(name, **params).fit(support[i].reshape(-1, d), labels, task)
                                   .scores(query[i]), lambda x: keep(x[None])).argmax(-1) for i in range(e)])
    return (guess == truth).float().mean(-1)


def _kept(scores: torch.Tensor, keep) -> torch.Tensor:
    keep(scores)
    return scores


def _load(cfg: EpisodesConfig):
    """Test features, the setup's novel classes and the mean (d,) of its base classes' train rows (or None)."""
    folder = Path(cfg.features_dir) if cfg.features_dir else RunFolder(Path(cfg.run)).features
    test = read_features(test_features_path(folder, cfg.test_features))
    dataset = test.attrs.get("dataset")
    if cfg.splits is None and not dataset:
        raise InputError(test.path, NO_DATASET)
    spath = splits_path(dataset, cfg.splits)
    splits = load_label_splits(spath)
    check_compatible(test, None, splits, spath)
    base, novel = splits.setup(cfg.setup)
    return test, novel, _base_mean(folder / "train.hdf5", test, base, splits, spath)


def _base_mean(path: Path, test: FeatureSet, base: np.ndarray, splits: LabelSplits,
               spath: Path) -> Optional[torch.Tensor]:
    """Mean (d,) of the base classes' rows of the train features (SimpleShot's centre); None without them."""
    if not path.exists():
        return None
    train = read_features(path)
    check_compatible(train, test, splits, spath)
    feats, _ = rows_of(train, base)
    return torch.from_numpy(feats.mean(0, dtype=np.float64)).float() if len(feats) else None


def head_models(cfg: EpisodesConfig, heads: List[str], dim: int, device: torch.device,
                notes: Dict[str, str]) -> Dict[str, Any]:
    """The trained models of the heads that need one; a head that cannot run on episodes (it needs base rows)
    or whose model is missing gets a note in `notes` instead."""
    models = {}
    for name in heads:
        cls = HEADS.get(name)
        if getattr(cls, "episodic", None) is False:
            notes[name] = "skipped: needs base-class rows (or fine-tunes on them)"
        elif cls.artefact:
            try:
                models[name] = trained_model(cfg.run, cls, dim, device, cfg.models.get(cls.artefact))[0]
            except InputError as err:
                notes[name] = f"skipped: {err}"
    return models


def episodes(cfg: EpisodesConfig) -> str:
    """Run every (head, ways, shots) cell; write <out_dir>/episodes.{csv,md}; return the markdown."""
    heads, ways, shots = cfg.heads, cfg.ways, cfg.shots
    for name in heads:
        HEADS.get(name)
    test, novel, base_mean = _load(cfg)
    device = pick_device(cfg.device)
    feats = torch.from_numpy(np.ascontiguousarray(test.feats)).to(device)
    base_mean = base_mean.to(device) if base_mean is not None else None
    notes: Dict[str, str] = {}
    models = head_models(cfg, heads, test.dim, device, notes)
    rows = []
    for w in ways:
        for s in shots:
            sup, qry, truth = draw_queries(cfg, test.labels, novel, w, s)
            support, query = feats[sup.to(device)], feats[qry.to(device)]
            for name in heads:
                if name in notes:
                    continue
                task = Task(w, np.zeros(0, np.int64), np.arange(w), None, test.classifier_scale, seed=cfg.seed,
                            device=device, base_mean=base_mean, model=models.get(name))
                start = time.perf_counter()
                scores: List[torch.Tensor] = []
                try:
                    acc = episode_accuracies(name, cfg.head_params.get(name, {}), support, query, task,
                                             truth.to(device), scores)
                except InputError as err:
                    notes[name] = f"skipped: {err}"
                    continue
                mean, half, n = mean_ci(acc.cpu().numpy())
                rows.append({"head": name, "ways": w, "shots": s, "queries": cfg.queries, "episodes": n,
                             "mean_acc": mean, "ci95": half, "seconds": round(time.perf_counter() - start, 3),
                             "transductive": bool(getattr(HEADS.get(name), "transductive", False)),
                             "query_dirichlet": cfg.query_dirichlet, "sd": float(acc.std()) if n > 1 else float("nan"),
                             **episode_calibration(torch.cat(scores), truth)})
    return _write(cfg, rows, notes, heads, ways, shots)


def _query_words(cfg: EpisodesConfig) -> str:
    """How the table's episodes spread their queries, in words."""
    if cfg.query_dirichlet > 0:
        return f"ways × {cfg.queries} queries, class proportions ~ Dirichlet({cfg.query_dirichlet:g})"
    return f"{cfg.queries} queries per class"


def _write(cfg: EpisodesConfig, rows: List[dict], notes: Dict[str, str], heads, ways, shots) -> str:
    """Long CSV and a markdown table (heads × configurations, % with 95 % interval), both atomic."""
    out = Path(cfg.out_dir) if cfg.out_dir else RunFolder(Path(cfg.run)).path("episodes")
    with atomic_path(out / "episodes.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["head", "ways", "shots", "queries", "episodes", "mean_acc", "ci95",
                                               "seconds", "transductive", "query_dirichlet", "sd", "ece", "nll",
                                               "brier"])
        writer.writeheader()
        writer.writerows(rows)
    cell = {(r["head"], r["ways"], r["shots"]): f"{100 * r['mean_acc']:.2f} ± {100 * r['ci95']:.2f}" for r in rows}
    configs = [(w, s) for w in ways for s in shots]
    lines = ["| head | " + " | ".join(f"{w}-way {s}-shot" for w, s in configs) + " |",
             "|---|" + "---|" * len(configs)]
    dagger = {r["head"]: " †" if r["transductive"] else "" for r in rows}
    lines += [f"| {h}{dagger.get(h, '')} | " + " | ".join(cell.get((h, w, s), "–") for w, s in configs) + " |"
              for h in heads if h not in notes]
    lines += [""] + [f"- {h}: {why}" for h, why in notes.items()] if notes else []
    lines += ["", f"Top-1 accuracy (%) over {cfg.episodes} episodes of setup {cfg.setup}'s novel classes "
                  f"({_query_words(cfg)}), mean ± 95 % interval."]
    lines += ["† transductive: labels an episode's queries together, using them all."] if any(dagger.values()) else []
    text = "\n".join(lines) + "\n"
    with atomic_path(out / "episodes.md") as tmp:
        tmp.write_text(text)
    return text
