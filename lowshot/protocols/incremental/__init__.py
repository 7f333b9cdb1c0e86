"""`lowshot incremental`: N base classes + 1 new class, the fair "40 + 1" protocol (`heads-and-protocols.md` §8).

A cosine-classifier network trained on the B base classes of its label split receives one novel
class from n shots. For each novel class c of the setup (setup 1: validation-novel classes, used
only to choose fine-tuning settings; setup 2: the reported ones) and draw r, one seeded
permutation π_{c,r} (seed from (global seed, c, r)) of the class's training images gives the
shots: the first n of π_{c,r}, so shots are nested across n and shared by every method (paired
comparisons). Test set: the test images of the B base classes and of class c, (B + 1)-way.

Methods: the feature heads of `lowshot.heads` on embeddings of the trained network (imprint,
imprint_ft = FT-last class-balanced, imprint_ft with BmLMz's weighted loss and replication,
rand_ft, cosine_ncm, protonet, logreg, raw_imprint) and `full_ft_bmlmz`, imprinting followed by
full-network fine-tuning with BmLMz's recipe (`lowshot.protocols.incremental.finetune`), run on the first
`full_ft_classes` classes × `full_ft_draws` draws only (it trains on images). Fixed schedules;
nothing is selected on test images.

Outputs under `<run>/incremental/setup<k>/` (or `out`): `cells/<method>_c<class>_r<draw>_<key>.json`
(one per method, class and draw, all n; the key hashes every input that determines it, so a
finished cell is skipped and a changed input recomputes it), `incremental.csv` (one row per
method, n, class, draw with seed, shot indices and inputs) and the tables of
`lowshot.protocols.incremental.tables`. All written atomically.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from lowshot.backbones import Model
from lowshot.config import versions
from lowshot.data import DATASETS
from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.io.atomic import write_json
from lowshot.io.fingerprint import digest
from lowshot.io.splits import load_label_splits
from lowshot.io.tables import write_csv
from lowshot.metrics import cell_metrics
from lowshot.protocols.addclass import Classifier, embed, load_classifier
from lowshot.protocols.incremental.finetune import FullFTRecipe, SplitCosine, fine_tune
from lowshot.protocols.incremental.tables import write_tables
from lowshot.run import RunFolder, splits_path
from lowshot.runtime import pick_device

FEATURE_METHODS = {  # method -> (head, params); every head is the one `lowshot benchmark` runs
    "imprint": ("imprint", {}), "imprint_ft": ("imprint_ft", {}), "imprint_ft_bmlmz": ("imprint_ft", {"weighted": True}),
    "rand_ft": ("rand_ft", {}), "cosine_ncm": ("cosine_ncm", {}), "protonet": ("protonet", {}),
    "logreg": ("logreg", {}), "raw_imprint": ("raw_imprint", {}),
}
FULL_FT = "full_ft_bmlmz"


@dataclass
class IncrementalConfig:
    """`lowshot incremental`: which network, which novel classes and draws, which methods."""

    run: str = "runs/incremental-glyphs40"
    checkpoint: Optional[str] = None  # default <run>/checkpoints/last.pt
    dataset: Optional[str] = None  # default: the checkpoint's data set
    dataset_args: Dict[str, Any] = field(default_factory=dict)  # default: the checkpoint's (e.g. root)
    setup: int = 2  # 1: validation-novel classes (for choosing FT settings), 2: reported classes
    classes: Optional[List[int]] = None  # novel classes; default the first `num_classes` of the setup's
    num_classes: int = 20
    draws: int = 5
    ns: List[int] = field(default_factory=lambda: [1, 5, 10, 20])
    methods: List[str] = field(default_factory=lambda: list(FEATURE_METHODS) + [FULL_FT])
    full_ft_classes: int = 4  # full-network FT on the first K classes ...
    full_ft_draws: int = 1  # ... × first R draws (feature heads run on those draws too)
    recipe: Dict[str, Any] = field(default_factory=dict)  # FullFTRecipe fields (default BmLMz's)
    head_params: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per feature method, on top of its own
    out: Optional[str] = None  # default <run>/incremental/setup<setup>
    force: bool = False
    seed: int = 0
    device: str = "auto"


@dataclass
class Problem:
    """Everything the cells share: the network, base images and embeddings, the novel classes."""

    clf: Classifier
    data: Any
    base_train: np.ndarray  # (N,) indices into data.train_images
    base_test: np.ndarray  # (M,) indices into data.test_images
    relabel: np.ndarray  # data label -> row 0..B−1 (−1 elsewhere)
    feats: Dict[str, torch.Tensor]  # "train", "test": base embeddings (N, d), (M, d)
    classes: List[int]
    inputs: Dict[str, Any]  # what the cells' keys hash
    device: torch.device
    embedded: Dict[Any, torch.Tensor] = field(default_factory=dict)  # memo of `embedded_images`


def incremental(cfg: IncrementalConfig) -> Path:
    """Run every missing cell, write `incremental.csv` and the tables; returns the CSV path."""
    _check_config(cfg)
    prob = prepare(cfg)
    out = out_dir(cfg)
    rows: List[dict] = []
    for c in prob.classes:
        pool, test = class_rows(prob.data, c)
        for r in range(cfg.draws):
            perm = np.random.default_rng([cfg.seed, c, r]).permutation(pool)
            for method in cell_methods(cfg, prob.classes.index(c), r):
                rows += run_cell(cfg, prob, out, method, c, r, perm, test)
    df = with_harmonic_mean(pd.DataFrame(rows))
    write_csv(df, out / "incremental.csv")
    print(write_tables(df, out))
    return out / "incremental.csv"


def with_harmonic_mean(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with `harmonic_mean` = 2·r·b / (r + b) of each run's novel recall r and base accuracy b (0 if both are 0)."""
    r, b = df["novel_recall"], df["base_accuracy"]
    return df.assign(harmonic_mean=(2 * r * b / (r + b)).where(r + b > 0, 0.0))


def _check_config(cfg: IncrementalConfig) -> None:
    unknown = [m for m in cfg.methods if m not in FEATURE_METHODS and m != FULL_FT]
    if unknown:
        raise InputError(None, f"unknown method(s) {', '.join(unknown)}; choose from: "
                               f"{', '.join(list(FEATURE_METHODS) + [FULL_FT])}")
    if set(cfg.head_params) - set(FEATURE_METHODS):
        raise InputError(None, f"head_params for unknown method(s) {sorted(set(cfg.head_params) - set(FEATURE_METHODS))}")
    if cfg.setup not in (1, 2) or cfg.draws < 1 or not cfg.ns or min(cfg.ns) < 1:
        raise InputError(None, "need setup 1 or 2, draws >= 1 and shot counts n >= 1")
    bad = set(cfg.recipe) - {f.name for f in dataclasses.fields(FullFTRecipe)}
    if bad:
        raise InputError(None, f"unknown recipe field(s) {', '.join(sorted(bad))}")


def out_dir(cfg: IncrementalConfig) -> Path:
    """`cfg.out`, else `<run>/incremental/setup<k>`."""
    return Path(cfg.out) if cfg.out else RunFolder(Path(cfg.run)).path("incremental") / f"setup{cfg.setup}"


def cell_methods(cfg: IncrementalConfig, class_pos: int, draw: int) -> List[str]:
    """The methods run on (class, draw): every feature method; full FT on the first classes × draws."""
    full = class_pos < cfg.full_ft_classes and draw < cfg.full_ft_draws
    return [m for m in cfg.methods if m != FULL_FT or full]


def prepare(cfg: IncrementalConfig) -> Problem:
    """Load the network and the images, check them, embed the base images once."""
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else RunFolder(Path(cfg.run)).path("checkpoint")
    clf = load_classifier(ckpt)
    if clf.model.classifier.scale is None:
        raise InputError(ckpt, "has a linear classifier: the 40 + 1 protocol imprints into a cosine classifier "
                               "(`lowshot train --classifier cosine`)")
    name = cfg.dataset or clf.config["dataset"]
    args = {**(clf.config.get("dataset_args", {}) if name == clf.config["dataset"] else {}), **cfg.dataset_args}
    data = DATASETS.create(name, **args)
    if not hasattr(data, "train_images") or data.channels != clf.spec.channels:
        raise InputError(ckpt, f"was trained on {clf.spec.channels}-channel images; data set {name!r} does not give "
                               "those in memory")
    splits = load_label_splits(splits_path(clf.config["dataset"], clf.config.get("splits")))
    classes = _novel_classes(cfg, splits, data)
    relabel = np.full(data.num_classes, -1)
    relabel[clf.class_ids] = np.arange(len(clf.class_ids))
    base_train = np.flatnonzero(relabel[data.train_labels] >= 0)
    base_test = np.flatnonzero(relabel[data.test_labels] >= 0)
    device = pick_device(cfg.device)
    feats = {"train": embed(clf, torch.from_numpy(data.train_images[base_train]), device),
             "test": embed(clf, torch.from_numpy(data.test_images[base_test]), device)}
    inputs = {"checkpoint_sha1": clf.digest, "dataset": name,
              "data_sha1": digest(data.train_labels, data.test_labels, data.train_images, data.test_images),
              "setup": cfg.setup, "seed": cfg.seed, "ns": list(cfg.ns)}
    return Problem(clf, data, base_train, base_test, relabel, feats, classes, inputs, device)


def _novel_classes(cfg: IncrementalConfig, splits, data) -> List[int]:
    """`cfg.classes`, else the first `num_classes` of the setup's novel classes; each must have n_max shots."""
    allowed = splits.novel_classes_1 if cfg.setup == 1 else splits.novel_classes_2
    classes = list(cfg.classes) if cfg.classes else list(allowed[:cfg.num_classes])
    outside = [c for c in classes if c not in allowed]
    if outside:
        raise InputError(None, f"class(es) {outside[:5]} are not novel classes of setup {cfg.setup} "
                               f"(setup 1: validation-novel, setup 2: test-novel)")
    for c in classes:
        have = int((data.train_labels == c).sum())
        if have < max(cfg.ns) or not (data.test_labels == c).any():
            raise InputError(None, f"novel class {c} has {have} training images (n up to {max(cfg.ns)} needed) "
                                   f"and {int((data.test_labels == c).sum())} test images")
    return classes


def class_rows(data, c: int):
    """(training-image indices, test-image indices) of class c."""
    return np.flatnonzero(data.train_labels == c), np.flatnonzero(data.test_labels == c)


def cell_key(prob: Problem, cfg: IncrementalConfig, method: str, c: int, r: int) -> str:
    """Digest of every input that determines a cell's rows (no paths: a moved run folder keeps its cells)."""
    spec = {"method": method, "class": c, "draw": r, **prob.inputs,
            "head": _head(cfg, method) if method in FEATURE_METHODS else None, "recipe": dataclasses.asdict(FullFTRecipe(**cfg.recipe))
            if method == FULL_FT else None}
    return digest(spec)


def run_cell(cfg: IncrementalConfig, prob: Problem, out: Path, method: str, c: int, r: int,
             perm: np.ndarray, test: np.ndarray) -> List[dict]:
    """The rows (one per n) of one (method, class, draw): read when the cell exists, else computed and written."""
    path = out / "cells" / f"{method}_c{c}_r{r}_{cell_key(prob, cfg, method, c, r)}.json"
    if path.exists() and not cfg.force:
        return json.loads(path.read_text())["rows"]
    t0 = time.perf_counter()
    rows = []
    for n in sorted(cfg.ns):
        shots = perm[:n]
        seed = int(np.random.default_rng([cfg.seed, c, r, n]).integers(2 ** 31))
        scores, labels = (full_ft_scores if method == FULL_FT else head_scores)(cfg, prob, method, shots, test, seed)
        rows.append({"method": method, "n": n, "novel_class": c, "class_name": prob.data.label_names[c], "draw": r,
                     "seed": seed, **incremental_metrics(scores, labels), "shots": " ".join(map(str, shots)),
                     "setup": cfg.setup, "checkpoint_sha1": prob.inputs["checkpoint_sha1"]})
    write_json(path, {"rows": rows, "inputs": prob.inputs, "seconds": time.perf_counter() - t0,
                      "versions": versions()})
    return rows


def incremental_metrics(scores: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Metrics of one run from scores (M + m, B + 1) of the base and novel test images, labels in 0..B.

    novel_recall: fraction of the novel test images predicted as the novel class; novel_precision:
    fraction of the images predicted novel that are novel (NaN when none is); base_accuracy and
    all_accuracy: (B + 1)-way top-1 on the base images and on all of them; base_as_novel: number of
    base images predicted as the novel class.
    """
    b = scores.shape[1] - 1
    m = cell_metrics(scores, labels, np.arange(b), np.array([b]))
    return {"novel_recall": m["accs"][0], "novel_precision": m["novel_precision"], "base_accuracy": m["accs"][2],
            "all_accuracy": m["accs"][4], "base_as_novel": int(m["base_novel_confusion"][0][1])}


def _head(cfg: IncrementalConfig, method: str):
    """(head name, parameters) of a feature method: its own, updated by `cfg.head_params[method]`."""
    name, params = FEATURE_METHODS[method]
    return name, {**params, **cfg.head_params.get(method, {})}


def _task(prob: Problem, seed: int) -> Task:
    """A (B + 1)-class task: base rows 0..B−1 with the network's classifier rows and s, the novel class B."""
    rows = prob.clf.model.classifier.weight.detach().float().to(prob.device)
    b = len(rows)
    return Task(num_classes=b + 1, base_classes=np.arange(b), novel_classes=np.array([b]),
                classifier_weight=torch.cat([rows, rows.new_zeros(1, rows.shape[1])]),
                classifier_scale=float(prob.clf.model.classifier.scale.detach()), seed=seed, device=prob.device)


def _labels(prob: Problem, test: np.ndarray):
    """Base training labels (N,), test labels (M + m,) with the novel class as B."""
    b = len(prob.clf.class_ids)
    train_y = torch.from_numpy(prob.relabel[prob.data.train_labels[prob.base_train]]).long()
    test_y = torch.cat([torch.from_numpy(prob.relabel[prob.data.test_labels[prob.base_test]]).long(),
                        torch.full((len(test),), b, dtype=torch.long)])
    return train_y.to(prob.device), test_y.to(prob.device)


def head_scores(cfg: IncrementalConfig, prob: Problem, method: str, shots: np.ndarray, test: np.ndarray, seed: int):
    """Scores (M + m, B + 1) of a feature head fitted on all base training embeddings + the shots' embeddings."""
    name, params = _head(cfg, method)
    train_y, test_y = _labels(prob, test)
    shot_feats = embedded_images(prob, "train", shots)
    test_feats = torch.cat([prob.feats["test"], embedded_images(prob, "test", test)])
    feats = torch.cat([prob.feats["train"], shot_feats])
    labels = torch.cat([train_y, torch.full((len(shots),), len(prob.clf.class_ids), device=prob.device)])
    head = HEADS.create(name, **params).fit(feats, labels, _task(prob, seed))
    return head.scores(test_feats), test_y


def full_ft_scores(cfg: IncrementalConfig, prob: Problem, method: str, shots: np.ndarray, test: np.ndarray,
                   seed: int):
    """Scores (M + m, B + 1) after imprinting the shots and fine-tuning the whole network (BmLMz's recipe)."""
    train_y, test_y = _labels(prob, test)
    b = len(prob.clf.class_ids)
    row = _imprinted_row(prob, shots, seed)
    trunk = copy.deepcopy(prob.clf.model.trunk).to(prob.device)
    head = SplitCosine(prob.clf.model.classifier.weight, row, float(prob.clf.model.classifier.scale.detach())).to(prob.device)
    pixels = torch.from_numpy(np.concatenate([prob.data.train_images[prob.base_train],
                                              prob.data.train_images[shots]])).to(prob.device)
    labels = torch.cat([train_y, torch.full((len(shots),), b, device=prob.device)])
    gen = torch.Generator().manual_seed(seed)
    fine_tune(trunk, head, pixels, labels, len(shots), prob.clf.spec.normalise, FullFTRecipe(**cfg.recipe), gen)
    test_pixels = torch.from_numpy(np.concatenate([prob.data.test_images[prob.base_test],
                                                   prob.data.test_images[test]]))
    tuned = dataclasses.replace(prob.clf, model=Model(trunk, prob.clf.model.classifier))
    with torch.no_grad():
        return head(embed(tuned, test_pixels, prob.device)), test_y


def embedded_images(prob: Problem, split: str, idx: np.ndarray) -> torch.Tensor:
    """Embeddings (len(idx), d) of `data.<split>_images[idx]`, computed once per process: every method and
    n of a (class, draw) embeds the same novel test images and the same shots."""
    key = (split, idx.tobytes())
    if key not in prob.embedded:
        images = prob.data.train_images if split == "train" else prob.data.test_images
        prob.embedded[key] = embed(prob.clf, torch.from_numpy(images[idx]), prob.device)
    return prob.embedded[key]


def _imprinted_row(prob: Problem, shots: np.ndarray, seed: int) -> torch.Tensor:
    """The novel row (d,) the `imprint` head gives these shots: normalise(mean of normalised embeddings)."""
    feats = embedded_images(prob, "train", shots)
    labels = torch.full((len(shots),), len(prob.clf.class_ids), device=prob.device)
    return HEADS.create("imprint").fit(feats, labels, _task(prob, seed)).weight_[-1]
