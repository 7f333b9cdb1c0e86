"""Where and how a process computes: the device, the CPUs it may use, and the threads of its tensor operations.

`available_cpus` counts the CPUs this process may really use — its affinity mask, a cgroup CPU
quota (containers) and `SLURM_CPUS_PER_TASK` — not the machine's core count: on a 64-core node
where SLURM gave the job 4 CPUs, 64 threads or workers would each wait on the others.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
from typing import Callable, Iterable, Iterator, Optional

import torch


def pick_device(device: str = "auto") -> torch.device:
    """`auto` -> the GPU when one is present, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def available_cpus() -> int:
    """The CPUs this process may use: the smallest of its affinity mask, the cgroup quota and $SLURM_CPUS_PER_TASK."""
    counts = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)]
    quota = _cgroup_quota()
    if quota:
        counts.append(quota)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    return max(1, min(counts))


def forked_map(fn: Callable, items: Iterable, processes: int, chunksize: int = 1) -> Iterator:
    """`fn` over `items`, results in order: here, or with `processes` > 1 in that many forked processes, which
    inherit this process's memory (what `fn` reads from module state is not pickled) and run the same code."""
    if processes < 2:
        yield from map(fn, items)
        return
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        yield from pool.imap(fn, items, chunksize)


def _cgroup_quota(path: str = "/sys/fs/cgroup/cpu.max") -> Optional[int]:
    """CPUs allowed by a cgroup v2 quota ("max 100000" or "200000 100000"), rounded up; None without one."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


@contextlib.contextmanager
def single_thread(device: torch.device):
    """One intra-op CPU thread for the block (on a CPU device): sequential small products, such as an LSTM's
    (1, d) × (d, 4d) steps, gain nothing from OpenMP, whose barriers cost 10× when other processes share the cores."""
    with cpu_threads(1 if device.type == "cpu" else None):
        yield


@contextlib.contextmanager
def cpu_threads(n: Optional[int]):
    """Run the block with n intra-op CPU threads (None: unchanged), restoring the old number."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def progress(iterable=None, show: bool = True, **kwargs):
    """A tqdm progress bar on stderr, with the time left: shown on a terminal and hidden in logs (CI, SLURM)
    unless `lowshot --progress` (or $LOWSHOT_PROGRESS=1) asks for it, or `--no-progress` (=0) hides it;
    `show=False` hides it always (e.g. in every process but the first)."""
    from tqdm import tqdm

    wanted = os.environ.get("LOWSHOT_PROGRESS", "")
    disable = {"1": False, "0": True}.get(wanted) if show else True
    return tqdm(iterable, file=sys.stderr, disable=disable, dynamic_ncols=True, **kwargs)


def cpu_source() -> str:
    """Where `available_cpus` got its number, in words."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return "SLURM_CPUS_PER_TASK" if slurm.isdigit() else "cgroup quota" if _cgroup_quota() else "affinity mask"


def set_threads(threads: Optional[int], many_small_ops: bool, processes: int = 1) -> int:
    """Set this process's intra-op CPU threads and say so on stderr; returns it.

    `threads` when given (`lowshot --threads N`); else one thread for work made of many small tensor operations
    (heads, small fits, training on cached features), whose OpenMP barriers gain little alone and collapse when
    another process shares the cores (measured in docs/speed.md); else the CPUs the process may use, shared by
    its `processes`.
    """
    cpus = available_cpus()
    chosen = threads or (1 if many_small_ops else max(1, cpus // processes))
    torch.set_num_threads(chosen)
    print(f"lowshot: {cpus} CPU{'s' * (cpus > 1)} ({cpu_source()}); {chosen} intra-op thread{'s' * (chosen > 1)} "
          "per process",
          file=sys.stderr)
    return chosen
