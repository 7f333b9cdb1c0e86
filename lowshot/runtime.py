"""Where and how a process computes: the device, and the CPU threads of its tensor operations."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch


def pick_device(device: str = "auto") -> torch.device:
    """`auto` -> the GPU when one is present, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


@contextlib.contextmanager
def single_thread(device: torch.device):
    """One intra-op CPU thread for the block (on a CPU device): sequential small products, such as an LSTM's
    (1, d) × (d, 4d) steps, gain nothing from OpenMP, whose barriers cost 10× when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1 if device.type == "cpu" else before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def cpu_threads(n: Optional[int]):
    """Run the block with n intra-op CPU threads (None: unchanged), restoring the old number."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
