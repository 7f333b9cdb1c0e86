"""Mixed precision: `off` (float32), `bf16` (autocast, also on the CPU) or `fp16` (autocast + loss scaling).

The same calls run on every device; with `off` they are no-ops, so float32 results are unchanged.
"""
from __future__ import annotations

import contextlib

import torch

from lowshot.errors import InputError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(mode: str) -> str:
    if mode not in AMP_DTYPES:
        raise InputError(None, f"unknown amp mode {mode!r}; choose one of: {', '.join(AMP_DTYPES)}")
    return mode


def autocast(device: torch.device, mode: str):
    """Context manager running the forward pass in `mode`'s precision on `device`."""
    if check_amp(mode) == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[mode])


def grad_scaler(device: torch.device, mode: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (bf16 has float32's range); disabled it passes calls through."""
    return torch.amp.GradScaler(device.type, enabled=check_amp(mode) == "fp16")
