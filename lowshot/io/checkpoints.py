"""Representation checkpoints: saved by `train`, read by `features` (and any later stage).

A checkpoint is `torch.save` of plain tensors and dicts: model state, optimiser and scheduler
state, the fp16 loss scaler's state, epoch, RNG state, the training configuration and package
versions. It is always read with `weights_only=True`, so loading never executes code from the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

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


