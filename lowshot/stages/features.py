"""Stage 2: cache the penultimate features of every train and test image in HDF5.

Rows are written in blocks as the batches arrive (ImageNet's 1.28M rows are never all in memory).
Under `torchrun` the rows are cut into the batches one process would form, each process extracts
a contiguous run of batches into a part file, and rank 0 copies the parts in row order into each
file (atomically): the file equals the single-process one.

`--dataset B` with a checkpoint trained on another data set A extracts B's test images through A's
representation (cross-domain, `cross_features`) into `<run>/cross/<B>/features/`, never over A's.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import h5py
import numpy as np
import torch
from torch import nn

from lowshot import distributed
from lowshot.backbones import Model
from lowshot.backbones.external import build_external, check_source
from lowshot.data import DATASETS, ImageDataset
from lowshot.data.cross import cross_inputs, data_args, data_tag
from lowshot.data.feeds import FeedOptions, make_feed
from lowshot.data.stream import UnreadableImage
from lowshot.io.checkpoints import load_checkpoint, model_digest, trained_model
from lowshot.io.features import BLOCK_ROWS, FeatureSet, feature_writer
from lowshot.errors import InputError
from lowshot.io.fingerprint import digest, file_digest, up_to_date
from lowshot.precision import autocast
from lowshot.run import RunFolder
from lowshot.runtime import progress


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
    dataset: Optional[str] = None  # --backbone: glyphs by default; a checkpoint: another data set (cross-domain)
    dataset_args: Dict[str, Any] = field(default_factory=dict)
    preprocess: Dict[str, Any] = field(default_factory=dict)  # overrides, e.g. {"image_size": 64}
    seed: int = 0


@torch.no_grad()
def extract_batches(model, feed, rows: np.ndarray, batch_size: int, device: torch.device,
                    amp: str = "off") -> Iterator[np.ndarray]:
    """Pooled features float32 (b, d) of the feed's `rows`, one batch at a time, in eval mode, in row order."""
    model.eval()
    for x, _ in feed.batches(rows, batch_size):
        with autocast(device, amp):
            yield model.trunk.forward_features(x).float().cpu().numpy()


def _progress(batches: Iterator[np.ndarray], rows: int, desc: str) -> Iterator[np.ndarray]:
    """`batches` with a progress bar counting rows (shown on a terminal only)."""
    with progress(total=rows, desc=desc, unit="row", unit_scale=True, leave=False) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def write_rows(batches: Iterator[np.ndarray], num_rows: int, header: FeatureSet, ctx: distributed.Dist, path: Path,
               split: str) -> None:
    """Write the feature file `path` in blocks as the batches (`num_rows` rows here) arrive, never holding all rows.

    One process writes its batches straight into the file. Under `torchrun` each process writes
    its contiguous run of rows into a part file (`.<split>.rank<r>.npy`, filled batch by batch);
    rank 0 then copies the parts in rank order, block by block, into the file: the same file.
    """
    stale = lambda: path.parent.glob(f".{split}.rank*.npy")  # noqa: E731  (part files of any earlier run)
    if ctx.world == 1:
        for old in stale():  # a killed torchrun's parts: no other process writes them now
            old.unlink()
        with feature_writer(path, header) as write:
            for batch in batches:
                write(batch)
        return
    part = lambda r: path.parent / f".{split}.rank{r}.npy"  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_part(batches, part(ctx.rank), num_rows, header.dim)
    distributed.barrier(ctx)
    if ctx.main:
        with feature_writer(path, header) as write:
            for r in range(ctx.world):
                rows = np.load(part(r), mmap_mode="r", allow_pickle=False)
                for start in range(0, len(rows), BLOCK_ROWS):
                    write(np.asarray(rows[start:start + BLOCK_ROWS]))
                del rows
        for old in stale():
            old.unlink()


def _save_part(batches: Iterator[np.ndarray], path: Path, num_rows: int, dim: int) -> None:
    """This process's `num_rows` rows, float32 (num_rows, dim), written into an `.npy` file batch by batch."""
    out = np.lib.format.open_memmap(path, "w+", np.float32, (num_rows, dim))
    done = 0
    for batch in batches:
        out[done:done + len(batch)] = batch
        done += len(batch)
    out.flush()
    del out


def _stored_identity(path: Path) -> Optional[Dict[str, Any]]:
    """The identity a feature file records (None for an unreadable file or one written before identities)."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["identity"]) if "identity" in f.attrs else None
    except OSError:
        return None


def _up_to_date(paths: Dict[str, Path], identity: Dict[str, Any], source: str) -> bool:
    if all(up_to_date(p, identity, _stored_identity) for p in paths.values()):
        print(f"features in {next(iter(paths.values())).parent} are up to date with {source}")
        return True
    return False


def _data_attrs(data) -> Dict[str, Any]:
    """What a feature file records of its images: the data set's key and the fingerprint of its class and image lists."""
    return {"data_key": data.key, "data_fingerprint": data.fingerprint}


def _load_model(ckpt_path: Path, ckpt, data, device: torch.device):
    """The checkpoint's model on `device` (channels_last if it was trained so)."""
    model = trained_model(ckpt_path, ckpt, data.num_classes, data.channels)
    model.to(device)
    return model.to(memory_format=torch.channels_last) if ckpt["config"].get("channels_last") else model


def _write_splits(model, data, opts: FeedOptions, cfg: FeaturesConfig, paths: Dict[str, Path], attrs: Dict[str, Any],
                  weight: Optional[np.ndarray], scale: Optional[float]) -> None:
    """Extract every split (each process its shard) and write its file on rank 0, with `attrs` and the classifier."""
    ctx = opts.ctx
    for split, path in paths.items():
        feed = make_feed(data, split, None, opts)
        rows = distributed.shard(len(feed), cfg.batch_size, ctx)
        labels = data.train_labels if split == "train" else data.test_labels
        header = FeatureSet(np.zeros((0, model.trunk.num_features), np.float32), labels, {**attrs, "split": split},
                            weight, scale)
        batches = extract_batches(model, feed, rows, cfg.batch_size, opts.device, cfg.amp)
        try:
            write_rows(_progress(batches, len(rows), f"features {split}"), len(rows), header, ctx, path, split)
        except UnreadableImage as e:
            raise UnreadableImage(e.path, f"{e.problem}; to list every image that fails at once, run "
                                          f"`lowshot data --dataset {data.name} --root {data.meta.get('root')} --verify`"
                                  ) from None
        if ctx.main:
            print(f"wrote {path} ({len(labels)} rows)")
    distributed.barrier(ctx)


def _output_paths(cfg: FeaturesConfig) -> Tuple[Path, Dict[str, Path]]:
    """The output folder (`--out-dir`, else the run's features folder) and its train/test files."""
    out = Path(cfg.out_dir or RunFolder(Path(cfg.run)).features)
    return out, {split: out / f"{split}.hdf5" for split in ("train", "test")}


def _trained_classifier(model, tcfg: Dict[str, Any]):
    """(classifier rows (C, d), cosine scale or None) when the training objective trained the classifier,
    else (None, None): a metric objective (protonet, magnet, repmet) leaves it at its random initialisation."""
    from lowshot.objectives import OBJECTIVES
    if not OBJECTIVES.get(tcfg.get("objective", "ce")).uses_classifier:
        return None, None
    clf = model.classifier
    return clf.weight.detach().cpu().numpy(), float(clf.scale.detach()) if clf.scale is not None else None


def features(cfg: FeaturesConfig) -> Dict[str, Path]:
    """Write `<out>/train.hdf5` and `<out>/test.hdf5`; skip files made from the same checkpoint.

    With `cfg.dataset` other than the checkpoint's (cross-domain), write only the test file of that data set,
    into `<run>/cross/<data tag>/features/` (`cross_features`).
    """
    if cfg.backbone:
        return external_features(cfg)
    ckpt_path = Path(cfg.checkpoint or RunFolder(Path(cfg.run)).path("checkpoint"))
    ckpt = load_checkpoint(ckpt_path)
    tcfg, checkpoint_digest = ckpt["config"], model_digest(ckpt)
    if _is_cross(cfg, tcfg):
        return cross_features(cfg, ckpt_path, ckpt, checkpoint_digest)
    _, paths = _output_paths(cfg)
    data = DATASETS.create(tcfg["dataset"], **tcfg["dataset_args"])
    identity = {"checkpoint": checkpoint_digest, "data": data.fingerprint}
    if not cfg.force and _up_to_date(paths, identity, str(ckpt_path)):
        return paths
    ctx, device = distributed.setup(cfg.device)
    model = _load_model(ckpt_path, ckpt, data, device)
    opts = FeedOptions(device, ctx, cfg.workers, tcfg.get("channels_last", False), False, tcfg.get("transforms"),
                       tcfg.get("image_size"), tcfg["seed"])
    weight, scale = _trained_classifier(model, tcfg)
    attrs = {**_checkpoint_attrs(tcfg, ckpt_path, checkpoint_digest, ckpt), **_data_attrs(data),
             "identity": json.dumps(identity)}
    _write_splits(model, data, opts, cfg, paths, attrs, weight, scale)
    return paths


def _checkpoint_attrs(tcfg: Dict[str, Any], ckpt_path: Path, digest: str, ckpt) -> Dict[str, Any]:
    """What a feature file of a lowshot checkpoint records: its data set (and the loader arguments that change the
    images), the checkpoint, model, classifier, seed, epoch and objective."""
    return {"dataset": tcfg["dataset"], "dataset_args": json.dumps(data_args(tcfg["dataset"], tcfg["dataset_args"])),
            "checkpoint": str(ckpt_path), "checkpoint_sha1": digest, "model": tcfg["backbone"],
            "classifier": tcfg["classifier"], "seed": tcfg["seed"], "epoch": int(ckpt["epoch"]),
            "objective": tcfg.get("objective", "ce")}


def _is_cross(cfg: FeaturesConfig, tcfg: Dict[str, Any]) -> bool:
    """Whether `cfg` asks for another data set (or other images of it) than the checkpoint was trained on."""
    return cfg.dataset is not None and (cfg.dataset, data_args(cfg.dataset, cfg.dataset_args)) != (
        tcfg["dataset"], data_args(tcfg["dataset"], tcfg["dataset_args"]))


def _cross_target(cfg: FeaturesConfig, tcfg: Dict[str, Any]) -> Tuple[Path, Dict[str, Any]]:
    """The test file of cross-domain features and the attributes naming A and B; refuses to write over
    the run's own features or over features of anything else."""
    run = RunFolder(Path(cfg.run))
    out = Path(cfg.out_dir) if cfg.out_dir else run.cross(data_tag(cfg.dataset, cfg.dataset_args)) / "features"
    path = out / "test.hdf5"
    attrs = {"dataset": cfg.dataset, "dataset_args": json.dumps(data_args(cfg.dataset, cfg.dataset_args)),
             "source_dataset": tcfg["dataset"],
             "source_dataset_args": json.dumps(data_args(tcfg["dataset"], tcfg["dataset_args"]))}
    if out.resolve() == run.features.resolve():
        raise InputError(out, "holds the features of the checkpoint's own data set; cross-domain features of "
                              f"{cfg.dataset} go to their own folder (leave out_dir out: {path})")
    if path.exists():
        with h5py.File(path, "r") as f:
            held = {k: f.attrs.get(k) for k in attrs}
        if held != attrs:
            raise InputError(path, f"holds features of {held['dataset']} ({held['dataset_args']}, trained on "
                                   f"{held['source_dataset']}), not written over; choose another out_dir")
    return path, attrs


def cross_features(cfg: FeaturesConfig, ckpt_path: Path, ckpt, digest: str) -> Dict[str, Path]:
    """Cross-domain features (Chen et al. 2019, §4.4): the test images of data set B (`cfg.dataset`) through a
    representation trained on data set A (the checkpoint's), fed as A's images were (`lowshot.data.cross`).

    Writes `<run>/cross/<B's data tag>/features/test.hdf5` (never the run's own features), recording A
    (`source_dataset`, `source_dataset_args`) and B (`dataset`, `dataset_args`), and the cosine scale but not A's
    classifier rows (their classes are not B's).
    """
    tcfg = ckpt["config"]
    path, cross_attrs = _cross_target(cfg, tcfg)
    target = DATASETS.create(cfg.dataset, **cfg.dataset_args)
    identity = {"checkpoint": digest, "data": target.fingerprint, "cross": cross_attrs}
    if not cfg.force and _up_to_date({"test": path}, identity, f"{ckpt_path} (cross-domain)"):
        return {"test": path}
    source = DATASETS.create(tcfg["dataset"], **tcfg["dataset_args"])
    if hasattr(target, "verify"):
        target.verify()
    transforms, size, preset = cross_inputs(source, target, tcfg, ckpt_path)
    ctx, device = distributed.setup(cfg.device)
    model = _load_model(ckpt_path, ckpt, source, device)
    opts = FeedOptions(device, ctx, cfg.workers, tcfg.get("channels_last", False), False, transforms, size,
                       tcfg["seed"], preset)
    attrs = {**_checkpoint_attrs(tcfg, ckpt_path, digest, ckpt), **cross_attrs, **_data_attrs(target),
             "identity": json.dumps(identity)}
    _write_splits(model, target, opts, cfg, {"test": path}, attrs, None, _trained_classifier(model, tcfg)[1])
    return {"test": path}


def external_features(cfg: FeaturesConfig) -> Dict[str, Path]:
    """Features of a timm or torchvision model (`cfg.backbone`) from a local weights file, on `cfg.dataset`.

    The files record the model name, the weights file's digest and the preprocessing, and have no
    classifier; `checkpoint_sha1` fingerprints all the inputs (model, weights, preprocessing
    overrides, seed, data set), so an unchanged extraction is skipped.
    """
    check_source(cfg.backbone, cfg.weights, cfg.random_init)
    _, paths = _output_paths(cfg)
    weights = file_digest(cfg.weights) if cfg.weights else "random-init"
    data = DATASETS.create(cfg.dataset or "glyphs", **cfg.dataset_args)
    identity = {"model": cfg.backbone, "weights_digest": weights, "preprocess": cfg.preprocess,
                "seed": cfg.seed if cfg.random_init else None, "data": data.fingerprint,
                "images": data_args(data.name, cfg.dataset_args)}
    if not cfg.force and _up_to_date(paths, identity, f"{cfg.backbone} ({weights})"):
        return paths
    ctx, device = distributed.setup(cfg.device)
    torch.manual_seed(cfg.seed)  # the same random initialisation in every process
    trunk = build_external(cfg.backbone, cfg.weights, cfg.random_init, cfg.preprocess, isinstance(data, ImageDataset))
    prep = trunk.preprocessing
    opts = FeedOptions(device, ctx, cfg.workers, False, False, seed=cfg.seed, preset=prep.preset())
    attrs = {"dataset": data.name, **_data_attrs(data), "identity": json.dumps(identity),
             "checkpoint": cfg.weights or "random-init", "checkpoint_sha1": digest(identity),
             "model": cfg.backbone, "weights_digest": weights, "preprocessing": json.dumps(dataclasses.asdict(prep)),
             "seed": cfg.seed}
    _write_splits(Model(trunk, nn.Identity()).to(device), data, opts, cfg, paths, attrs, None, None)
    return paths
