"""Representation checkpoints: saved by `train`, read by `features` (and any later stage).

A checkpoint is `torch.save` of plain tensors and dicts: model state, optimiser and scheduler
state, the fp16 loss scaler's state, epoch, RNG state, the training configuration and package
versions. It is always read with `weights_only=True`, so loading never executes code from the file.
Every stage's model file (checkpoint, generator, a trained head's model) is named in later identities
by `model_digest`: what it computes, not the bytes of a file that also records paths and thread counts.
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
from lowshot.io.fingerprint import digest


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


# entries of a saved model file that do not change what the model computes: the stage's full config (paths,
# devices, worker and thread counts; what determines the weights is in the file's `identity`, its weights
# and its other entries), the state to resume training, versions, the training log, provenance paths
BOOKKEEPING = frozenset({"config", "optimizer", "scheduler", "scaler", "rng", "versions", "log", "features", "source"})


def model_digest(saved: Dict[str, Any]) -> str:
    """The digest of a saved model file's contents that determine what it computes: every entry but the
    `BOOKKEEPING` ones, tensors by dtype, shape and bytes. The same weights saved from another run folder,
    with other workers or on another device, have the same digest."""
    parts: list = []

    def walk(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(f"{key}/{k}", value[k])
        elif isinstance(value, (list, tuple)) and any(torch.is_tensor(v) or isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(f"{key}/{i}", v)
        elif torch.is_tensor(value):
            t = value.detach().cpu().contiguous().reshape(-1)
            parts.extend([key, f"{value.dtype}{tuple(value.shape)}", t.view(torch.uint8).numpy()])
        else:
            parts.extend([key, value])

    for k in sorted(saved):
        if k not in BOOKKEEPING:
            walk(k, saved[k])
    return digest(*parts)


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


