"""Stage 1: train a representation on the base classes (H&G `main.py`, made resumable).

Data come from memory (glyphs, CIFAR-100: batched augmentation on the device) or stream from disk
(ImageNet, folders, CUB: DataLoader workers, `torchvision.transforms.v2`). Under `torchrun` the
model is wrapped in DistributedDataParallel, metrics are summed over processes and rank 0 alone
writes checkpoints and logs; a run resumes exactly from `last.pt` with any number of workers.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from lowshot import distributed
from lowshot.backbones import Model
from lowshot.data import DATASETS, ImageDataset
from lowshot.data.feeds import FeedOptions, make_feed, timed
from lowshot.data.transforms import TRANSFORMS
from lowshot.errors import InputError
from lowshot.io.atomic import write_json
from lowshot.io.checkpoints import load_checkpoint, model_from_config, save_checkpoint
from lowshot.io.fingerprint import NOT_IDENTITY, digest, identity_fields
from lowshot.io.splits import check_same_data, load_label_splits
from lowshot.losses import AUX_LOSSES
from lowshot.objectives import OBJECTIVES, Objective
from lowshot.precision import autocast, grad_scaler
from lowshot.run import RunFolder, splits_path
from lowshot.runtime import progress


@dataclass
class TrainConfig:
    """Representation training. The defaults are H&G's ResNet-10 recipe (90 epochs, step schedule)."""

    run: str = field(default="runs/demo", metadata=NOT_IDENTITY)
    dataset: str = "glyphs"
    dataset_args: Dict[str, Any] = field(default_factory=dict)
    splits: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # default: label_splits/<data key>.json
    backbone: str = "resnet10"
    width: float = 1.0
    stem: str = "auto"  # imagenet (7×7/2 + max-pool) | small (3×3/2) | cifar (3×3/1); auto: small for inputs ≤ 128 px
    classifier: str = "linear"
    aux_loss: str = "none"
    aux_weight: float = 0.0
    objective: str = "ce"  # ce | protonet | magnet | repmet (lowshot/objectives/)
    objective_args: Dict[str, Any] = field(default_factory=dict)  # the objective's keyword arguments
    epochs: int = field(default=90, metadata=NOT_IDENTITY)  # a run may resume to train longer
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"  # "step": H&G ×0.1 every 30 epochs; "cosine": per-step cosine, for short runs
    warmup_epochs: int = 0
    warmup_lr: float = 0.01
    augment: bool = True
    transforms: Optional[str] = None  # on-disk data: augmentation preset (default: the data set's)
    image_size: Optional[int] = None  # on-disk data: side of the crops (default: the preset's, 224 for hg)
    workers: int = field(default=-1, metadata=NOT_IDENTITY)  # decoding processes per training process (-1: auto)
    amp: str = "off"  # off | bf16 | fp16
    channels_last: bool = False
    compile: bool = field(default=False, metadata=NOT_IDENTITY)
    save_every: int = field(default=10, metadata=NOT_IDENTITY)
    seed: int = 0
    device: str = field(default="auto", metadata=NOT_IDENTITY)


def _lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at a global step (0-based)."""
    epoch = step // steps_per_epoch
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr / cfg.lr
    if cfg.schedule == "step":
        return 0.1 ** (epoch // 30)
    if cfg.schedule == "cosine":
        t = (step - cfg.warmup_epochs * steps_per_epoch) / max(1, (cfg.epochs - cfg.warmup_epochs) * steps_per_epoch)
        return 0.5 * (1 + math.cos(math.pi * t))
    raise InputError(None, f"unknown schedule {cfg.schedule!r}; choose one of: step, cosine")


def build_optimizer(model: Model, cfg: TrainConfig, extra=()) -> torch.optim.SGD:
    """SGD; weight decay on everything but the cosine classifier's scale and an objective's `extra` parameters."""
    scale = [p for n, p in model.named_parameters() if n == "classifier.scale"]
    rest = [p for n, p in model.named_parameters() if n != "classifier.scale"]
    groups = [{"params": rest}] + ([{"params": scale, "weight_decay": 0.0}] if scale else [])
    groups += [{"params": list(extra), "weight_decay": 0.0}] if extra else []
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def train_one_epoch(model, opt, sched, cfg: TrainConfig, epoch: int, feed, scaler, ctx: distributed.Dist,
                    device: torch.device, objective: Optional[Objective] = None) -> Dict[str, float]:
    """One epoch of the objective's (default `ce`) seeded batches of base images; returns mean losses and speed.

    Returns:
        loss and aux (means over images, all processes), images_per_s (all processes) and
        data_wait_s (seconds this process waited for batches).
    """
    model.train()
    objective = objective or OBJECTIVES.create("ce")
    aux_fn = AUX_LOSSES.get(cfg.aux_loss)
    sums, wait, t0 = [0.0, 0.0, 0.0], [0.0], time.perf_counter()
    batches = timed(objective.batches(model, feed, epoch, cfg.batch_size), wait)
    for x, y in progress(batches, total=objective.steps(feed, cfg.batch_size), desc=f"epoch {epoch}", leave=False,
                         show=ctx.main):
        with autocast(device, cfg.amp):
            scores, feats = model(x)
            aux = aux_fn(scores, feats, y)
            loss = objective.loss(scores, feats, y) + cfg.aux_weight * aux
        if not torch.isfinite(loss):
            raise InputError(cfg.run, f"training diverged at epoch {epoch} (loss {loss.item()}); lower --lr")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        sums[0] += loss.item() * len(y)
        sums[1] += aux.item() * len(y)
        sums[2] += len(y)
    loss_sum, aux_sum, n = distributed.all_sum(sums, ctx, device)
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / n, "aux": aux_sum / n, "images_per_s": n / seconds, "data_wait_s": wait[0]}


@torch.no_grad()
def evaluate(model: Model, feed, cfg: TrainConfig, ctx: distributed.Dist, device,
             batch_size: int = 512) -> Dict[str, float]:
    """Top-1/top-5 accuracy (fractions) over all classes on the feed's images, summed over processes."""
    model.eval()
    distributed.broadcast_buffers(model, ctx)
    hits1 = hits5 = 0
    for x, y in feed.batches(np.arange(ctx.rank, len(feed), ctx.world), batch_size):
        with autocast(device, cfg.amp):
            scores, _ = model(x)
        top5 = scores.topk(5, dim=1).indices.cpu()
        hits1 += (top5[:, :1] == y[:, None]).sum().item()
        hits5 += (top5 == y[:, None]).any(1).sum().item()
    hits1, hits5 = distributed.all_sum([hits1, hits5], ctx, device)
    return {"val_top1": hits1 / max(1, len(feed)), "val_top5": hits5 / max(1, len(feed))}


def build_objective(cfg: TrainConfig, model: Model, feed, splits, device: torch.device) -> Objective:
    """The training objective `cfg` names, set up on the base classes and the model's feature width."""
    try:
        objective = OBJECTIVES.create(cfg.objective, **cfg.objective_args)
    except TypeError as e:
        raise InputError(cfg.run, f"objective_args {cfg.objective_args} do not fit objective {cfg.objective!r} ({e})") from None
    if not objective.uses_classifier and feed.opts.ctx.world > 1:  # e.g. RepMet's representatives are outside DDP
        raise InputError(cfg.run, f"objective {cfg.objective!r} trains in one process only; run it without torchrun")
    if not objective.uses_classifier and cfg.aux_loss != "none":
        raise InputError(cfg.run, f"aux_loss {cfg.aux_loss!r} acts on the classifier, which objective "
                                  f"{cfg.objective!r} does not train; use aux_loss none")
    base = np.asarray(sorted(splits.base_classes), np.int64)
    objective.setup(feed, base, model.trunk.num_features, cfg.seed, device)
    return objective


def build_feeds(cfg: TrainConfig, ctx: distributed.Dist, device: torch.device):
    """(data set, label splits, train feed, validation feed) of the base classes; the split file must describe
    the data (`lowshot data` wrote it for them)."""
    data = DATASETS.create(cfg.dataset, **cfg.dataset_args)
    path = splits_path(data.key, cfg.splits)
    splits = load_label_splits(path)
    check_same_data(path, splits.data, data.fingerprint, f"data set {data.key}")
    opts = FeedOptions(device, ctx, cfg.workers, cfg.channels_last, cfg.augment, cfg.transforms, cfg.image_size, cfg.seed)
    base = np.asarray(splits.base_classes, np.int64)
    train = make_feed(data, "train", np.isin(data.train_labels, base), opts)
    val = make_feed(data, "test", np.isin(data.test_labels, base), opts)
    return data, splits, train, val


def input_side(cfg: TrainConfig, data) -> int:
    """The side (pixels) of the network's input images: in-memory images as they are, files as their preset crops them."""
    if isinstance(data, ImageDataset):
        return int(data.train_images.shape[-1])
    preset = TRANSFORMS.get(cfg.transforms or data.transforms)
    return int(cfg.image_size or data.image_size or inspect.signature(preset).parameters["image_size"].default)


def stem_for(stem: str, side: int) -> str:
    """`auto` resolved: the `small` stem (3×3 stride 2) for inputs of at most 128 px (28-84 px few-shot images keep
    enough resolution for four ResNet stages), else H&G's `imagenet` stem."""
    return stem if stem != "auto" else "small" if side <= 128 else "imagenet"


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the representation of `cfg.run`; returns the path of `last.pt`."""
    run = RunFolder(Path(cfg.run))
    ctx, device = distributed.setup(cfg.device)
    data, splits, feed, val = build_feeds(cfg, ctx, device)
    cfg.stem = stem_for(cfg.stem, input_side(cfg, data))
    torch.manual_seed(cfg.seed)
    model = model_from_config(dataclasses.asdict(cfg), data.num_classes, data.channels).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    objective = build_objective(cfg, model, feed, splits, device)
    opt = build_optimizer(model, cfg, objective.parameters())
    steps = objective.steps(feed, cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s, steps))
    scaler = grad_scaler(device, cfg.amp)
    identity = train_identity(cfg, data, splits)
    start = _resume(run.path("checkpoint"), model, opt, sched, scaler, identity, objective)
    net = distributed.wrap(model, ctx, device)
    net = torch.compile(net) if cfg.compile else net
    if ctx.main:
        write_json(run.root / "train_config.json", dataclasses.asdict(cfg))
    for epoch in range(start, cfg.epochs):
        stats = train_one_epoch(net, opt, sched, cfg, epoch, feed, scaler, ctx, device, objective)
        if objective.uses_classifier and len(val):  # a metric objective leaves the classifier untrained; a few-shot
            stats.update(evaluate(model, val, cfg, ctx, device))  # benchmark's base classes may have no test images
        stats.update(epoch=epoch, lr=opt.param_groups[0]["lr"])
        if ctx.main:
            _log(run, stats)
            _save(run, model, opt, sched, scaler, epoch, cfg, objective, identity, data.record())
    if cfg.epochs == 0 and ctx.main:  # an untrained network: the random-initialisation baseline
        save_checkpoint(run.path("checkpoint"), model, opt, sched, -1, dataclasses.asdict(cfg), scaler,
                        {"identity": identity, "data": data.record()})
    distributed.barrier(ctx)
    return run.path("checkpoint")


def _log(run: RunFolder, stats: Dict[str, float]) -> None:
    """Print one JSON line per epoch and append it to `<run>/train_log.jsonl`."""
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}), flush=True)
    with open(run.root / "train_log.jsonl", "a") as log:
        log.write(json.dumps(stats) + "\n")


def _save(run: RunFolder, model, opt, sched, scaler, epoch: int, cfg: TrainConfig, objective: Objective,
          identity: Dict[str, Any], data: Dict[str, Any]) -> None:
    """`<epoch>.pt` every `save_every` epochs and at the end; `last.pt` after every epoch, each with the run's
    identity, its data record and the objective's own state (e.g. RepMet's representatives) when it has one."""
    config, extra = dataclasses.asdict(cfg), {"identity": identity, "data": data}
    extra.update({"objective": objective.state_dict()} if objective.state_dict() else {})
    if epoch % cfg.save_every == 0 or epoch == cfg.epochs - 1:
        save_checkpoint(run.checkpoints / f"{epoch}.pt", model, opt, sched, epoch, config, scaler, extra)
    save_checkpoint(run.path("checkpoint"), model, opt, sched, epoch, config, scaler, extra)


def train_identity(cfg: TrainConfig, data, splits) -> Dict[str, Any]:
    """What determines the weights: the config's identity fields (the data set's arguments without its root),
    the fingerprint of the data and the label split's classes; never where the run folder or the data lie."""
    config = identity_fields(cfg)
    config["dataset_args"] = {k: v for k, v in cfg.dataset_args.items() if k != "root"}
    return {"config": config, "data": data.fingerprint, "splits": digest({**splits.to_json(), "data": None})}


def _legacy_identity(config: Dict[str, Any], identity: Dict[str, Any]) -> Dict[str, Any]:
    """The identity of a checkpoint written before identities were recorded: its config's identity fields."""
    saved = {k: v for k, v in config.items() if k in identity["config"]}
    saved["dataset_args"] = {k: v for k, v in config.get("dataset_args", {}).items() if k != "root"}
    return {"config": saved}


def _resume(path: Path, model, opt, sched, scaler, identity: Dict[str, Any], objective: Objective) -> int:
    """Restore from `last.pt` if present; returns the first epoch still to run."""
    if not path.exists():
        return 0
    ckpt = load_checkpoint(path)
    saved = ckpt.get("identity") or _legacy_identity(ckpt["config"], identity)
    now = {**identity, "config": {k: v for k, v in identity["config"].items() if k in saved["config"]}}
    if saved != {k: now[k] for k in saved}:
        diff = sorted(k for k in now["config"] if saved["config"].get(k) != now["config"][k])
        diff += [k for k in ("data", "splits") if k in saved and saved[k] != now[k]]
        raise InputError(path, f"was trained with another {', '.join(diff)}: resume with the same settings, "
                               "or train into another --run")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("objective"):
        objective.load_state_dict(ckpt["objective"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    return ckpt["epoch"] + 1
