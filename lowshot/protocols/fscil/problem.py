"""One representation's side of `lowshot fscil`: its features relabelled by the protocol, the checks that the
protocol fits what it was trained on, its classifier and generator, and each trial's rows (`Plan`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from lowshot.data import DATASETS
from lowshot.errors import InputError
from lowshot.generators import GENERATORS
from lowshot.io.features import FeatureSet, content_digest
from lowshot.io.fingerprint import digest, file_digest
from lowshot.io.splits import LabelSplits
from lowshot.protocols.fscil.rows import Pools, build_pools, evaluation_rows, session_rows
from lowshot.protocols.fscil.sessions import (
    draw_sessions,
    load_sessions,
    reorder_sessions,
    session_classes,
    write_sessions,
)
from lowshot.run import RunFolder, load_inputs, read_artefact, rows_of
from lowshot.runtime import pick_device

SPLIT_LISTS = ("base_classes", "base_classes_1", "base_classes_2", "novel_classes_1", "novel_classes_2")


@dataclass
class Problem:
    """Everything the cells of one representation share.

    Attributes:
        name: the representation (its run folder's name); train_path: its train feature file.
        sessions: the session file (None for `draw`); splits: its label split; pools: its rows.
        feats: (P, d) pooled rows on `device`; labels: (P,) their protocol class ids.
        classifier_weight: (K, d) its cosine classifier's rows by protocol class, or None; classifier_scale.
        generator: (plug-in, state) when a method tops up new classes, and generator_key its file's digest.
        inputs: the digests every cell's identity holds; cache: memo shared by its cells.
    """

    name: str
    train_path: Optional[str]
    sessions: Optional[Dict[str, Any]]
    splits: LabelSplits
    pools: Pools
    feats: torch.Tensor
    labels: torch.Tensor
    classifier_weight: Optional[torch.Tensor]
    classifier_scale: Optional[float]
    inputs: Dict[str, Any]
    device: torch.device
    generator: Optional[Tuple[Any, Any]] = None
    generator_key: Optional[str] = None
    cache: Dict[Any, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """One trial: the session file it follows, each session's classes, training and test rows, and seeds."""

    trial: int
    sessions: Dict[str, Any]
    classes: List[List[int]]
    rows: List[np.ndarray]
    test: List[np.ndarray]
    seeds: List[int]
    key: str


def prepare(cfg, run: str, specs: List[Dict[str, Any]]) -> Problem:
    """Read a run's features and label split, map the protocol onto them, check it, load the generator."""
    tcfg = trained_config(run)
    # shots "." : FSCIL reads no shot files (it only keeps load_inputs from asking for them)
    inputs = load_inputs(run, cfg.features_dir, cfg.splits or tcfg.get("splits"), ".", cfg.test_features)
    train, test, splits = inputs.train, inputs.test, inputs.splits
    sessions = None if cfg.sessions == "draw" else load_sessions(cfg.sessions)
    skeleton = sessions or draw_skeleton(cfg, splits)
    pools = build_pools(skeleton, train, test, dataset_for(cfg, skeleton, tcfg, train))
    check_trained_classes(skeleton, pools, splits, inputs.splits_path)
    device = pick_device(cfg.device)
    weight, scale = protocol_classifier(train, pools, device)
    digests = {"train_features": content_digest(train), "test_features": content_digest(test),
               "splits": file_digest(inputs.splits_path), "pools": pools.key, "seed": cfg.seed}
    prob = Problem(Path(run).name, train.path, sessions, splits, pools, torch.from_numpy(pools.feats).to(device),
                   torch.from_numpy(pools.labels).to(device), weight, scale, digests, device)
    if any(s.get("top_up") for s in specs):
        prob.generator, prob.generator_key = load_generator(cfg, run, train, splits)
    return prob


def trained_config(run: str) -> Dict[str, Any]:
    """The training config in the run's checkpoint (its data set, loader arguments, label split), or {}."""
    path = RunFolder(Path(run)).path("checkpoint")
    if not path.exists():
        return {}
    from lowshot.io.checkpoints import load_checkpoint
    return dict(load_checkpoint(path).get("config", {}))


def draw_skeleton(cfg, splits: LabelSplits) -> Dict[str, Any]:
    """A session file holding every class a draw may use: the base classes, then the pool."""
    base, pool = (split_list(splits, name) for name in (cfg.base, cfg.pool))
    if set(base) & set(pool) or not base or not pool:
        raise InputError(None, f"draw: base ({cfg.base}) and pool ({cfg.pool}) must be non-empty and disjoint")
    return {"entries": "row", "num_classes": splits.num_classes, "sessions": [{"classes": base}, {"classes": pool}]}


def split_list(splits: LabelSplits, name: str) -> List[int]:
    if name not in SPLIT_LISTS:
        raise InputError(None, f"unknown label split list {name!r}; choose one of: {', '.join(SPLIT_LISTS)}")
    return [int(c) for c in getattr(splits, name)]


def dataset_for(cfg, sessions: Dict[str, Any], tcfg: Dict[str, Any], train: FeatureSet):
    """The data set a session file's entries name (None for rows): `cfg.dataset`, else the file's; its loader
    arguments: `cfg.dataset_args` over the run's training ones (when the run was trained on it)."""
    if sessions["entries"] == "row":
        return None
    name = cfg.dataset or sessions["dataset"]
    args = {**(tcfg.get("dataset_args", {}) if tcfg.get("dataset") == name else {}), **cfg.dataset_args}
    if not args.get("root"):
        raise InputError(train.path, f"the session file names images of data set {name!r}: pass its copy with "
                                     "--root (or --set dataset_args=...)")
    return DATASETS.create(name, **args)


def check_trained_classes(sessions: Dict[str, Any], pools: Pools, splits: LabelSplits, path) -> None:
    """Every base class was a training class of the representation (its label split's `base_classes`)
    and no new class was: an FSCIL base session never holds a class the representation did not see, and
    a new class must be new to it."""
    trained = set(splits.base_classes)
    classes = session_classes(sessions)
    base = {int(pools.feature_label[c]) for c in classes[0]}
    new = {int(pools.feature_label[c]) for s in classes[1:] for c in s}
    if not base <= trained:
        raise InputError(path, f"base-session classes {sorted(base - trained)[:5]} are not training classes of the "
                               "representation (the label split's base_classes): train it on the base session's classes")
    if new & trained:
        raise InputError(path, f"new-session classes {sorted(new & trained)[:5]} were training classes of the "
                               "representation (the label split's base_classes): a new class must be unseen")


def protocol_classifier(train: FeatureSet, pools: Pools, device) -> Tuple[Optional[torch.Tensor], Optional[float]]:
    """The representation's classifier rows re-indexed by protocol class (K, d), and its cosine scale."""
    if train.classifier_weight is None:
        return None, None
    w = np.zeros((len(pools.feature_label), train.dim), np.float32)
    have = pools.feature_label >= 0
    w[have] = train.classifier_weight[pools.feature_label[have]]
    return torch.from_numpy(w).to(device), train.classifier_scale


def load_generator(cfg, run: str, train: FeatureSet, splits: LabelSplits):
    """((plug-in, state), its trained file's digest) of `cfg.generator`."""
    plugin = GENERATORS.get(cfg.generator)
    saved, key = None, None
    if plugin.artefact:
        saved, key, _ = read_artefact(run, plugin.artefact, cfg.models.get(plugin.artefact))
    return (plugin, plugin.init(saved, train.dim, lambda: rows_of(train, splits.base_classes))), key


def trial_plan(cfg, prob: Problem, trial: int, out: Path) -> Plan:
    """Trial t's sessions (drawn, or the session file reordered), written to `sessions/trial_<t>.json`,
    mapped to rows and checked; seeds from (seed, trial, session), shared by every method."""
    if prob.sessions is None:
        b, p = (split_list(prob.splits, n) for n in (cfg.base, cfg.pool))
        obj = draw_sessions(_train_labels(prob.pools), b, p, cfg.way, cfg.shot, cfg.num_sessions, cfg.seed, trial)
    else:
        obj = reorder_sessions(prob.sessions, cfg.seed, trial)
    write_sessions(out / "sessions" / f"trial_{trial}.json", obj)
    rows, test = session_rows(obj, prob.pools, prob.train_path), evaluation_rows(obj, prob.pools, prob.train_path)
    seeds = [int(np.random.default_rng([cfg.seed, trial, t]).integers(2 ** 31)) for t in range(len(rows))]
    key = digest({k: v for k, v in obj.items() if k not in ("source", "paper", "notes")}, prob.pools.key, trial)
    return Plan(trial, obj, session_classes(obj), rows, test, seeds, key)


def _train_labels(pools: Pools) -> np.ndarray:
    """Labels of the pool's training rows (the train file's rows come first, so positions are rows)."""
    return np.where(pools.is_train, pools.labels, -1)
