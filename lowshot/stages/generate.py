"""Stage 3 (optional): train the analogy-based feature generator on base-class features.

H&G `train_analogy_generator.py` (reference §8): cluster each base class's train features
(`kmeans.py`), mine analogies between the centroids of different classes (`mining.py`), train
G(A, C, D) → B̂ with CE(classifier(B̂), class of B) + λ · MSE(B̂, B). The classifier is frozen and
linear with bias, fitted on the base-class train rows (`loss_classifier.py`; a cosine
representation classifier is blind to the norm of B̂ and made G no better than copying the seed).
Writes `<out>/generator.pt` (plain tensors and dicts, loads with `weights_only=True`) and caches
the clustering, the analogies and the classifier under `<out>/cache/`, each keyed by a hash of
everything it depends on, so an interrupted run resumes after its last stage.

Defaults (documented choices; H&G's values on ImageNet in brackets):
  clusters per class k = min(100, max(2, median base rows per class // 5))   [100]
  iterations = clamp(4 passes over the analogies at the batch size, 2,000, 120,000)   [120,000]
  λ = 100 through the fitted classifier, initlr 0.1   [λ = 10 through the ConvNet's classifier, 0.1]
so ImageNet gets H&G's k and iterations and the demo (≈70 rows per class) gets k = 14 and 2,000
iterations. λ was chosen on setup 1 of the demo (docs/results.md): λ = 10 left G's analogy MSE at 0.070
(copying the seed: 0.106) and gained 2 points of novel top-1 at n = 1; λ = 100 reached 0.042 and
gained 17; 3,000 or 6,000 iterations changed neither by more than the noise.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from lowshot.config import versions
from lowshot.errors import InputError
from lowshot.generators.analogies.kmeans import (
    default_clusters_per_class,
    kmeans_per_class,
)
from lowshot.generators.analogies.loss_classifier import (
    KINDS,
    LossClassifier,
    fit_base_logreg,
    representation_classifier,
)
from lowshot.generators.analogies.mining import mine_analogies
from lowshot.generators.analogies.model import HIDDEN
from lowshot.generators.analogies.train import default_iterations, fit_generator
from lowshot.io.atomic import save_torch, write_json
from lowshot.io.checkpoints import load_checkpoint
from lowshot.io.features import FeatureSet
from lowshot.io.fingerprint import digest, up_to_date
from lowshot.run import RunFolder, load_inputs, rows_of
from lowshot.runtime import cpu_threads, pick_device

MINING_VERSION = 1  # bump when the mined analogies of the same centroids could change
CLASSIFIER_VERSION = 1  # bump when the fitted loss classifier of the same rows could change


@dataclass
class GenerateConfig:
    """Options of `lowshot generate`; k and iterations default (None) as the module docstring says.

    `cpu_threads`: k-means and G's training steps (batch 128) are many small ops, so on a CPU one
    intra-op thread loses little, while two threads on a busy 2-core machine wait on each other
    at every op (measured: 10 vs 200 ms per training step, 0.3 vs 5 s for the demo's k-means).
    Mining (large matrix products) always uses torch's default. Raise it on a big idle CPU.
    """

    run: str = "runs/demo"
    features_dir: Optional[str] = None  # default: <run>/features
    splits: Optional[str] = None  # default: label_splits/<dataset>.json
    out_dir: Optional[str] = None  # default: <run>/generator
    clusters_per_class: Optional[int] = None  # default: min(100, max(2, median rows per class // 5))
    kmeans_iters: int = 20
    mining_memory_mb: float = 256  # bound on one similarity block of the miner
    iterations: Optional[int] = None  # default: clamp(4 passes over the analogies, 2000, 120000)
    batch_size: int = 128
    initlr: float = 0.1  # H&G: 0.1 for plain features, 1 for SGM features
    mse_weight: float = 100.0  # λ; H&G: 10 through the network's classifier (chosen on setup 1, docs/results.md)
    classifier: str = "fit"  # fit: logreg on the base rows | representation: the feature file's (linear only)
    classifier_wd: float = 1e-3  # weight decay of the fitted classifier (the logreg head's default)
    cpu_threads: Optional[int] = 1  # CPU threads for k-means and training; None: torch's default
    seed: int = 0
    device: str = "auto"
    force: bool = False


@dataclass
class BaseData:
    """Base-class train rows (on the device) and the representation's classifier, if any."""

    feats: torch.Tensor  # (N, d)
    labels: torch.Tensor  # (N,)
    classes: list  # sorted base classes
    weight: Optional[torch.Tensor]  # (C, d) the representation's classifier, if the file has one
    scale: Optional[float]  # cosine classifier scale s, None for a linear classifier
    digest: str  # identity of the base rows
    classifier_digest: str



def load_base_data(cfg: GenerateConfig, device: torch.device) -> BaseData:
    """Read the train features and splits; keep the base-class rows and the classifier."""
    inputs = load_inputs(cfg.run, cfg.features_dir, cfg.splits, need_test=False)
    train, classes, path = inputs.train, inputs.splits.base_classes, inputs.train.path
    _check_classifier(train, classes, cfg.classifier)
    feats, labels = rows_of(train, classes)
    missing = sorted(set(classes) - set(np.unique(labels).tolist()))
    if missing:
        raise InputError(path, f"base classes without train rows: {missing[:5]}")
    weight = None if train.classifier_weight is None else train.classifier_weight.astype(np.float32)
    return BaseData(torch.from_numpy(feats).to(device), torch.from_numpy(labels).to(device), classes,
                    None if weight is None else torch.from_numpy(weight).to(device), train.classifier_scale,
                    digest(feats, labels, classes), digest(weight, train.classifier_scale))


def _check_classifier(train: FeatureSet, classes, kind: str) -> None:
    """A known kind; for `representation`, linear classifier rows in `train` that cover the base classes."""
    if kind not in KINDS:
        raise InputError(None, f"unknown classifier {kind!r}; choose one of: {', '.join(KINDS)}")
    if kind == "fit":
        return
    if train.classifier_weight is None:
        raise InputError(train.path, "has no classifier_weight: use --set classifier=fit")
    if train.classifier_scale is not None:
        raise InputError(train.path, "holds a cosine classifier, blind to the norm of generated features: "
                                     "use --set classifier=fit")
    if max(classes) >= len(train.classifier_weight):
        raise InputError(train.path, f"classifier_weight has {len(train.classifier_weight)} rows, base class "
                                     f"{max(classes)} needs more")


def cached(path: Path, compute: Callable[[], Dict[str, torch.Tensor]], force: bool, what: str) -> Dict:
    """Load a stage's tensors from `path`, or compute and save them atomically."""
    if path.exists() and not force:
        print(f"reusing {what} from {path}", flush=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    start = time.perf_counter()
    out = compute()
    save_torch(path, {k: v.cpu() for k, v in out.items()})
    print(f"{what}: {time.perf_counter() - start:.1f} s -> {path}", flush=True)
    return out




def stage_keys(cfg: GenerateConfig, base: BaseData, k: int) -> Dict[str, str]:
    """Cache keys: each stage's key hashes its inputs and options, and the key of the stage before."""
    clusters = digest(["clusters", base.digest, k, cfg.kmeans_iters, cfg.seed])
    analogies = digest(["analogies", clusters, MINING_VERSION])
    classifier = digest(["classifier", base.digest, cfg.classifier_wd, CLASSIFIER_VERSION] if cfg.classifier == "fit"
                         else ["representation", base.digest, base.classifier_digest])
    train = {f: getattr(cfg, f) for f in ("iterations", "batch_size", "initlr", "mse_weight", "seed")}
    return {"clusters": clusters, "analogies": analogies, "classifier": classifier,
            "generator": digest(["generator", analogies, classifier, train, HIDDEN])}


def loss_classifier(cfg: GenerateConfig, base: BaseData, key: str, cache: Path) -> LossClassifier:
    """The frozen classifier of G's CE term over the base classes, fitted once and cached."""
    if cfg.classifier == "representation":
        return LossClassifier(**representation_classifier(base.weight, base.classes))
    rows = cached(cache / f"classifier-{key}.pt",
                  lambda: fit_base_logreg(base.feats, base.labels, base.classes, cfg.classifier_wd),
                  cfg.force, f"base-class logistic regression (wd {cfg.classifier_wd:g})")
    return LossClassifier(rows["weight"].to(base.feats.device), rows["bias"].to(base.feats.device))


def cluster_and_mine(cfg: GenerateConfig, base: BaseData, k: int, keys: Dict[str, str], cache: Path):
    """Centroids (num_base, k, d) and analogies (M, 4) on the device, each from its cache when there."""
    with cpu_threads(cfg.cpu_threads if base.feats.device.type == "cpu" else None):
        clusters = cached(cache / f"clusters-{keys['clusters']}.pt",
                          lambda: {"centroids": kmeans_per_class(base.feats, base.labels, base.classes, k,
                                                                 cfg.kmeans_iters, cfg.seed)},
                          cfg.force, f"k-means ({len(base.classes)} classes × {k} centroids)")
    centroids = clusters["centroids"].to(base.feats.device)
    mined = cached(cache / f"analogies-{keys['analogies']}.pt",
                   lambda: dict(zip(("quads", "scores"), mine_analogies(centroids, cfg.mining_memory_mb))),
                   cfg.force, "analogy mining")
    if len(mined["quads"]) == 0:
        raise InputError(cache, "no analogies were found between the base-class centroids")
    return centroids, mined["quads"].to(base.feats.device)


def generate(cfg: GenerateConfig) -> Path:
    """Cluster, mine, train; returns the path of `generator.pt` (skipped when it is up to date)."""
    out = Path(cfg.out_dir) if cfg.out_dir else RunFolder(Path(cfg.run)).path("generator").parent
    final = out / "generator.pt"
    base = load_base_data(cfg, pick_device(cfg.device))
    k = cfg.clusters_per_class or default_clusters_per_class(torch.bincount(base.labels).cpu()[base.classes].tolist())
    keys = stage_keys(cfg, base, k)
    stored = lambda path: {"key": load_checkpoint(path, what="the generator").get("key")}  # noqa: E731
    if not cfg.force and up_to_date(final, {"key": keys["generator"]}, stored):
        print(f"{final} is up to date", flush=True)
        return final
    centroids, quads = cluster_and_mine(cfg, base, k, keys, out / "cache")
    clf = loss_classifier(cfg, base, keys["classifier"], out / "cache")
    iterations = cfg.iterations or default_iterations(len(quads), cfg.batch_size)
    flat = centroids.reshape(-1, centroids.shape[-1])
    labels = torch.arange(len(base.classes), device=flat.device).repeat_interleave(k)  # columns of clf
    state, fit = fit_generator(flat, quads, labels, clf, cfg, iterations)
    save_torch(final, {"model_state": state, "centroids": flat.float().cpu(), "base_classes": list(base.classes),
                       "num_base_classes": len(base.classes), "clusters_per_class": k, "feature_dim": flat.shape[1],
                       "hidden": HIDDEN, "num_analogies": len(quads), "iterations": iterations,
                       "classifier": {"kind": cfg.classifier, "wd": cfg.classifier_wd, "key": keys["classifier"]},
                       "fit": fit, "key": keys["generator"], "config": dataclasses.asdict(cfg),
                       "versions": versions()})
    write_json(out / "generate_config.json", {**dataclasses.asdict(cfg), "clusters_per_class": k,
                                              "iterations": iterations})
    return final
