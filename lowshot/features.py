"""Stage 2: cache the penultimate features of every train and test image in HDF5.

Under `torchrun` the rows are cut into the batches one process would form, each process extracts
a contiguous run of batches, and rank 0 joins the runs in row order and writes each file
(atomically): the file equals the single-process one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import h5py
import numpy as np
import torch
from torch import nn

from lowshot import distributed
from lowshot.backbones import Model
from lowshot.backbones.external import build_external, check_source
from lowshot.checkpoints import load_checkpoint, model_from_config
from lowshot.data import DATASETS, ImageDataset
from lowshot.data.feeds import FeedOptions, make_feed
from lowshot.io.features import FeatureSet, write_features
from lowshot.io.fingerprint import file_digest
from lowshot.precision import autocast
from lowshot.run import RunFolder


@dataclass
class FeaturesConfig:
    run: str = "runs/demo"
    checkpoint: Optional[str] = None  # default: <run>/checkpoints/last.pt
    out_dir: Optional[str] = None  # default: <run>/features
    batch_size: int = 512
    workers: int = -1  # decoding processes per extraction process (-1: one per spare core, at most 8)
    amp: str = "off"  # off | bf16 | fp16 (features are stored as float32 either way)
    device: str = "auto"
    force: bool = False
    # an external model instead of a checkpoint (see lowshot.backbones.external)
    backbone: Optional[str] = None  # "timm:<name>" | "torchvision:<name>"
    weights: Optional[str] = None  # local weights file (.safetensors or a torch.save state dict)
    random_init: bool = False  # no weights file: the library's random initialisation (seeded)
    dataset: str = "glyphs"
    dataset_args: Dict[str, Any] = field(default_factory=dict)
    preprocess: Dict[str, Any] = field(default_factory=dict)  # overrides, e.g. {"image_size": 64}
    seed: int = 0


@torch.no_grad()
def extract(model, feed, rows: np.ndarray, batch_size: int, device: torch.device, amp: str = "off") -> np.ndarray:
    """Pooled features (len(rows), d) float32 of the feed's `rows`, in eval mode, in row order."""
    model.eval()
    out = []
    for x, _ in feed.batches(rows, batch_size):
        with autocast(device, amp):
            out.append(model.trunk.forward_features(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.trunk.num_features), np.float32)


def gather_rows(feats: np.ndarray, ctx: distributed.Dist, folder: Path, split: str) -> Optional[np.ndarray]:
    """Every process's rows joined in rank order on rank 0 (None elsewhere), through files in `folder`."""
    if ctx.world == 1:
        return feats
    part = lambda r: folder / f".{split}.rank{r}.npy"  # noqa: E731
    folder.mkdir(parents=True, exist_ok=True)
    np.save(part(ctx.rank), feats, allow_pickle=False)
    distributed.barrier(ctx)
    if not ctx.main:
        return None
    joined = np.concatenate([np.load(part(r), allow_pickle=False) for r in range(ctx.world)])
    for r in range(ctx.world):
        part(r).unlink()
    return joined


def _is_current(path: Path, digest: str) -> bool:
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("checkpoint_sha1") == digest
    except OSError:
        return False


def _load_model(ckpt, data, device: torch.device):
    """The checkpoint's model on `device` (channels_last if it was trained so)."""
    model = model_from_config(ckpt["config"], data.num_classes, data.channels)
    model.load_state_dict(ckpt["model"])
    model.to(device)
    return model.to(memory_format=torch.channels_last) if ckpt["config"].get("channels_last") else model


def _write_splits(model, data, opts: FeedOptions, cfg: FeaturesConfig, paths: Dict[str, Path], attrs: Dict[str, Any],
                  weight: Optional[np.ndarray], scale: Optional[float]) -> None:
    """Extract every split (each process its shard) and write its file on rank 0, with `attrs` and the classifier."""
    ctx = opts.ctx
    for split, path in paths.items():
        feed = make_feed(data, split, None, opts)
        rows = distributed.shard(len(feed), cfg.batch_size, ctx)
        feats = gather_rows(extract(model, feed, rows, cfg.batch_size, opts.device, cfg.amp), ctx, path.parent, split)
        if ctx.main:
            labels = data.train_labels if split == "train" else data.test_labels
            write_features(path, FeatureSet(feats, labels, {**attrs, "split": split}, weight, scale))
            print(f"wrote {path} ({len(labels)} rows)")
    distributed.barrier(ctx)


def _output_paths(cfg: FeaturesConfig) -> Tuple[Path, Dict[str, Path]]:
    """The output folder (`--out-dir`, else the run's features folder) and its train/test files."""
    out = Path(cfg.out_dir or RunFolder(Path(cfg.run)).features)
    return out, {split: out / f"{split}.hdf5" for split in ("train", "test")}


def features(cfg: FeaturesConfig) -> Dict[str, Path]:
    """Write `<out>/train.hdf5` and `<out>/test.hdf5`; skip files made from the same checkpoint."""
    if cfg.backbone:
        return external_features(cfg)
    ckpt_path = Path(cfg.checkpoint or RunFolder(Path(cfg.run)).last_checkpoint)
    out, paths = _output_paths(cfg)
    digest = file_digest(ckpt_path) if ckpt_path.exists() else ""
    ckpt = load_checkpoint(ckpt_path)
    if not cfg.force and all(_is_current(p, digest) for p in paths.values()):
        print(f"features in {out} are up to date with {ckpt_path}")
        return paths
    tcfg = ckpt["config"]
    ctx, device = distributed.setup(cfg.device)
    data = DATASETS.create(tcfg["dataset"], **tcfg["dataset_args"])
    model = _load_model(ckpt, data, device)
    opts = FeedOptions(device, ctx, cfg.workers, tcfg.get("channels_last", False), False, tcfg.get("transforms"),
                       tcfg.get("image_size"), tcfg["seed"])
    clf = model.classifier
    weight = clf.weight.detach().cpu().numpy()
    scale = float(clf.scale.detach()) if clf.scale is not None else None
    attrs = {"dataset": tcfg["dataset"], "checkpoint": str(ckpt_path), "checkpoint_sha1": digest,
             "model": tcfg["backbone"], "classifier": tcfg["classifier"], "seed": tcfg["seed"], "epoch": int(ckpt["epoch"])}
    _write_splits(model, data, opts, cfg, paths, attrs, weight, scale)
    return paths


def external_features(cfg: FeaturesConfig) -> Dict[str, Path]:
    """Features of a timm or torchvision model (`cfg.backbone`) from a local weights file, on `cfg.dataset`.

    The files record the model name, the weights file's SHA-256 and the preprocessing, and have no
    classifier; `checkpoint_sha1` fingerprints all the inputs (model, weights, preprocessing
    overrides, seed, data set), so an unchanged extraction is skipped.
    """
    check_source(cfg.backbone, cfg.weights, cfg.random_init)
    out, paths = _output_paths(cfg)
    sha256 = file_digest(cfg.weights, "sha256", 64) if cfg.weights else "random-init"
    inputs = {"model": cfg.backbone, "weights_sha256": sha256, "preprocess": cfg.preprocess,
              "seed": cfg.seed if cfg.random_init else None, "dataset": cfg.dataset, "dataset_args": cfg.dataset_args}
    digest = hashlib.sha1(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    if not cfg.force and all(_is_current(p, digest) for p in paths.values()):
        print(f"features in {out} are up to date with {cfg.backbone} ({sha256[:12]})")
        return paths
    ctx, device = distributed.setup(cfg.device)
    data = DATASETS.create(cfg.dataset, **cfg.dataset_args)
    torch.manual_seed(cfg.seed)  # the same random initialisation in every process
    trunk = build_external(cfg.backbone, cfg.weights, cfg.random_init, cfg.preprocess, isinstance(data, ImageDataset))
    prep = trunk.preprocessing
    opts = FeedOptions(device, ctx, cfg.workers, False, False, seed=cfg.seed, preset=prep.preset())
    attrs = {"dataset": cfg.dataset, "checkpoint": cfg.weights or "random-init", "checkpoint_sha1": digest,
             "model": cfg.backbone, "weights_sha256": sha256, "preprocessing": json.dumps(dataclasses.asdict(prep)),
             "seed": cfg.seed}
    _write_splits(Model(trunk, nn.Identity()).to(device), data, opts, cfg, paths, attrs, None, None)
    return paths
