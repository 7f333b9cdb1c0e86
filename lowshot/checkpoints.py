"""Representation checkpoints: saved by `train`, read by `features` (and any later stage).

A checkpoint is `torch.save` of plain tensors and dicts: model state, optimiser and scheduler
state, the fp16 loss scaler's state, epoch, RNG state, the training configuration and package
versions. It is always read with `weights_only=True`, so loading never executes code from the file.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from lowshot.backbones import Model, build_model
from lowshot.config import versions
from lowshot.errors import InputError
from lowshot.io.atomic import save_torch


def save_checkpoint(path: Path, model, opt, sched, epoch: int, config: Dict[str, Any], scaler=None,
                    extra: Optional[Dict[str, Any]] = None) -> None:
    """Everything needed to resume exactly: weights, optimiser, scheduler, fp16 loss scaler, epoch, RNG, config,
    and `extra` entries (a training objective's state: plain tensors and dicts)."""
    save_torch(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "scaler": scaler.state_dict() if scaler is not None else {},
                      "epoch": epoch, "rng": {"torch": torch.get_rng_state()},
                      "config": config, "versions": versions(), **(extra or {})})


def load_checkpoint(path: str | os.PathLike, missing: str = "checkpoint not found (run `lowshot train` first)",
                    what: str = "checkpoint") -> Dict[str, Any]:
    """Load a checkpoint (or another stage's model file, `what`) safely (`weights_only=True`).

    A missing file is one `InputError` saying `missing`; a corrupt one says it cannot load `what`.
    """
    if not os.path.exists(path):
        raise InputError(path, missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise InputError(path, f"cannot load {what} ({e.__class__.__name__})") from None


def trained_model(path: str | os.PathLike, ckpt: Dict[str, Any], num_classes: int, in_channels: int) -> Model:
    """The model checkpoint `ckpt` (read from `path`) describes, with its weights, in eval mode; an
    `InputError` when the weights do not fit the model its config describes."""
    model = model_from_config(ckpt["config"], num_classes, in_channels)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise InputError(path, f"weights do not match the model its config describes ({first})") from None
    return model.eval()


def model_from_config(cfg: Dict[str, Any], num_classes: int, in_channels: int) -> Model:
    """The untrained model a training configuration describes."""
    return build_model(cfg["backbone"], cfg["classifier"], num_classes, in_channels, cfg["width"], cfg["stem"])


def stage_config(cfg) -> Dict[str, Any]:
    """A feature-trained stage's dataclass configuration as its model file records it: every field
    except `force` and `device`, which do not change what the stage computes."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("force", "device")}


def model_up_to_date(out: Path, config: Dict[str, Any], digest: str, load: Callable[[Path], Dict]) -> bool:
    """Whether the model file `out` exists and was trained with `config` on base rows of this `digest`
    (and prints so); `load` reads it (the stage's own loader, for its error message)."""
    if not out.exists():
        return False
    old = load(out)
    if old.get("config") == config and old.get("features_digest") == digest:
        print(f"{out} is up to date", flush=True)
        return True
    return False


def check_feature_dim(path: str | os.PathLike, saved: Dict[str, Any], dim: int) -> None:
    """A one-line `InputError` when the model file `path` (read as `saved`) was trained on features other than `dim`-wide."""
    if int(saved["dim"]) != dim:
        raise InputError(path, f"was trained on {saved['dim']}-dimensional features, these have {dim}")
