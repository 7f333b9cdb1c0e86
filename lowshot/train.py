"""Stage 1: train a representation on the base classes (H&G `main.py`, made resumable)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lowshot.backbones import Model
from lowshot.checkpoints import load_checkpoint, model_from_config, save_checkpoint
from lowshot.config import pick_device
from lowshot.data import ImageDataset, load_dataset, normalise_images
from lowshot.errors import InputError
from lowshot.io.atomic import save_torch, write_json
from lowshot.io.splits import LabelSplits, load_label_splits
from lowshot.losses import AUX_LOSSES
from lowshot.run import splits_path


@dataclass
class TrainConfig:
    """Representation training. The defaults are H&G's ResNet-10 recipe (90 epochs, step schedule)."""

    run: str = "runs/demo"
    dataset: str = "glyphs"
    dataset_args: Dict[str, Any] = field(default_factory=dict)
    splits: Optional[str] = None  # default: label_splits/<dataset>.json
    backbone: str = "resnet10"
    width: float = 1.0
    stem: str = "imagenet"
    classifier: str = "linear"
    aux_loss: str = "none"
    aux_weight: float = 0.0
    epochs: int = 90
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"  # "step": H&G ×0.1 every 30 epochs; "cosine": per-step cosine, for short runs
    warmup_epochs: int = 0
    warmup_lr: float = 0.01
    augment: bool = True
    save_every: int = 10
    seed: int = 0
    device: str = "auto"


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


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation (±1/8 of the side) and scale (±10 %), per image, one batched resample."""
    b = len(x)
    scale = 1 + 0.1 * (2 * torch.rand(b, generator=gen) - 1)
    shift = 0.25 * (2 * torch.rand(b, 2, generator=gen) - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def base_class_data(data: ImageDataset, splits: LabelSplits, part: str):
    """Images and labels of the base classes in the `train` or `test` part."""
    images, labels = (data.train_images, data.train_labels) if part == "train" else (data.test_images, data.test_labels)
    keep = np.isin(labels, splits.base_classes)
    return torch.from_numpy(images[keep]), torch.from_numpy(labels[keep])


def build_optimizer(model: Model, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD; weight decay on everything but the cosine classifier's scale."""
    scale = [p for n, p in model.named_parameters() if n == "classifier.scale"]
    rest = [p for n, p in model.named_parameters() if n != "classifier.scale"]
    groups = [{"params": rest}] + ([{"params": scale, "weight_decay": 0.0}] if scale else [])
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def train_one_epoch(model, opt, sched, cfg: TrainConfig, epoch: int, images, labels, device) -> Dict[str, float]:
    """One pass over the base training images in a seeded order; returns mean losses."""
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(labels), generator=gen)
    aux_fn = AUX_LOSSES.get(cfg.aux_loss)
    totals = {"loss": 0.0, "aux": 0.0}
    batches = range(0, len(order), cfg.batch_size)
    for start in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=None):
        idx = order[start:start + cfg.batch_size]
        x = normalise_images(images[idx].to(device))
        x = augment(x, gen) if cfg.augment else x
        y = labels[idx].to(device)
        scores, feats = model(x)
        aux = aux_fn(scores, feats, y)
        loss = F.cross_entropy(scores, y) + cfg.aux_weight * aux
        if not torch.isfinite(loss):
            raise InputError(cfg.run, f"training diverged at epoch {epoch} (loss {loss.item()}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        totals["loss"] += loss.item() * len(idx)
        totals["aux"] += aux.item() * len(idx)
    return {k: v / len(order) for k, v in totals.items()}


@torch.no_grad()
def evaluate(model: Model, images: torch.Tensor, labels: torch.Tensor, device, batch_size: int = 512) -> Dict[str, float]:
    """Top-1/top-5 accuracy (fractions) over all classes on the given images."""
    model.eval()
    hits1 = hits5 = 0
    for start in range(0, len(labels), batch_size):
        scores, _ = model(normalise_images(images[start:start + batch_size].to(device)))
        top5 = scores.topk(5, dim=1).indices.cpu()
        y = labels[start:start + batch_size, None]
        hits1 += (top5[:, :1] == y).sum().item()
        hits5 += (top5 == y).any(1).sum().item()
    return {"val_top1": hits1 / max(1, len(labels)), "val_top5": hits5 / max(1, len(labels))}


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the representation of `cfg.run`; returns the path of `last.pt`."""
    run = Path(cfg.run)
    ckpt_dir = run / "checkpoints"
    data = load_dataset(cfg.dataset, **cfg.dataset_args)
    splits = load_label_splits(splits_path(cfg.dataset, cfg.splits))
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = model_from_config(dataclasses.asdict(cfg), data.num_classes, data.channels).to(device)
    opt = build_optimizer(model, cfg)
    train_x, train_y = base_class_data(data, splits, "train")
    steps = math.ceil(len(train_y) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s, steps))
    start = _resume(ckpt_dir / "last.pt", model, opt, sched, cfg)
    val_x, val_y = base_class_data(data, splits, "test")
    write_json(run / "train_config.json", dataclasses.asdict(cfg))
    for epoch in range(start, cfg.epochs):
        stats = train_one_epoch(model, opt, sched, cfg, epoch, train_x, train_y, device)
        stats.update(evaluate(model, val_x, val_y, device), epoch=epoch, lr=opt.param_groups[0]["lr"])
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}), flush=True)
        with open(run / "train_log.jsonl", "a") as log:
            log.write(json.dumps(stats) + "\n")
        if epoch % cfg.save_every == 0 or epoch == cfg.epochs - 1:
            save_checkpoint(ckpt_dir / f"{epoch}.pt", model, opt, sched, epoch, dataclasses.asdict(cfg))
        save_checkpoint(ckpt_dir / "last.pt", model, opt, sched, epoch, dataclasses.asdict(cfg))
    if cfg.epochs == 0:  # an untrained network: the random-initialisation baseline
        save_checkpoint(ckpt_dir / "last.pt", model, opt, sched, -1, dataclasses.asdict(cfg))
    return ckpt_dir / "last.pt"


def _resume(path: Path, model, opt, sched, cfg: TrainConfig) -> int:
    """Restore from `last.pt` if present; returns the first epoch still to run."""
    if not path.exists():
        return 0
    ckpt = load_checkpoint(path)
    saved = {k: v for k, v in ckpt["config"].items() if k not in ("epochs", "device", "save_every")}
    now = {k: v for k, v in dataclasses.asdict(cfg).items() if k in saved}
    if saved != now:
        diff = sorted(k for k in saved if saved[k] != now.get(k))
        raise InputError(path, f"exists with a different configuration ({', '.join(diff)}); use another --run")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    return ckpt["epoch"] + 1
