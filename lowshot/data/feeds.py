"""Batches on the device for training and feature extraction, from memory or streamed from disk.

Both feeds hold the rows of one part of a data set and offer the same two methods:
`train_batches(epoch, batch_size)` (this process's share of a seeded shuffled epoch, augmented)
and `batches(rows, batch_size)` (the given rows in order, evaluation transform). Under torchrun
each process gets `1/world` of every global batch, so the effective batch size stays `batch_size`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lowshot.data.base import FileDataset, ImageDataset, normalise_images
from lowshot.data.stream import EpochSampler, ImageFiles, make_loader, subset
from lowshot.data.transforms import TRANSFORMS, Preset
from lowshot.distributed import Dist
from lowshot.errors import InputError
from lowshot.runtime import available_cpus

Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class FeedOptions:
    """How batches are made: device, processes, decoding workers, memory layout, augmentation."""

    device: torch.device = torch.device("cpu")
    ctx: Dist = field(default_factory=Dist)
    workers: int = -1  # decoding processes per training process; -1: one per spare core, at most 8
    channels_last: bool = False
    augment: bool = True
    transforms: Optional[str] = None  # default: the data set's preset
    image_size: Optional[int] = None  # default: the preset's
    seed: int = 0
    preset: Optional[Preset] = None  # a ready preset (an external model's preprocessing) instead of a named one

    @property
    def num_workers(self) -> int:
        if self.workers >= 0:
            return self.workers
        return max(1, min(8, available_cpus() // self.ctx.world - 1))


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


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch `epoch`'s order and augmentation draws."""
    return seed * 100_003 + epoch


def _layout(x: torch.Tensor, opts: FeedOptions) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if opts.channels_last else x


class MemoryFeed:
    """Rows of an in-memory part, uint8 (N, C, H, W) -> floats in [-1, 1]; batched augmentation on the device."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, opts: FeedOptions):
        self.images, self.labels, self.opts = torch.from_numpy(images), torch.from_numpy(labels), opts

    def __len__(self) -> int:
        return len(self.labels)

    def steps(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        """Seeded order per epoch; the same generator draws the augmentation (resumes exactly)."""
        ctx = self.opts.ctx
        gen = torch.Generator().manual_seed(epoch_seed(self.opts.seed, epoch))
        order = torch.randperm(len(self), generator=gen)
        for start in range(0, len(order), batch_size):
            if len(order[start:start + batch_size]) < ctx.world:
                break  # a last batch too small to give every process an image
            yield self.rows(order[start:start + batch_size][ctx.rank::ctx.world], gen)

    def rows(self, idx: torch.Tensor, gen: torch.Generator) -> Batch:
        """Training batch of rows `idx` (long (B,)), augmented with draws from `gen` when the feed augments."""
        x = normalise_images(self.images[idx].to(self.opts.device))
        x = augment(x, gen) if self.opts.augment else x
        return _layout(x, self.opts), self.labels[idx].to(self.opts.device)

    def batches(self, rows: np.ndarray, batch_size: int) -> Iterator[Batch]:
        """Images of `rows` in order (no augmentation) on the device; labels stay on the CPU."""
        for start in range(0, len(rows), batch_size):
            r = torch.from_numpy(np.asarray(rows[start:start + batch_size]))
            yield _layout(normalise_images(self.images[r].to(self.opts.device)), self.opts), self.labels[r]


class StreamFeed:
    """Rows of an on-disk part, decoded by DataLoader workers with a `transforms` preset."""

    def __init__(self, data: FileDataset, names: List[str], labels: np.ndarray, opts: FeedOptions):
        self.preset = opts.preset or TRANSFORMS.create(opts.transforms or data.transforms,
                                                       image_size=opts.image_size or data.image_size)
        self.opts, self.pin = opts, opts.device.type == "cuda"
        train_tf = self.preset.train if opts.augment else self.preset.eval
        self.train_set = ImageFiles(data.root, names, labels, train_tf, opts.seed)
        self.eval_set = ImageFiles(data.root, names, labels, self.preset.eval, opts.seed)
        self._loader = self._sampler = None

    def __len__(self) -> int:
        return len(self.train_set)

    def _local_batch(self, batch_size: int) -> int:
        if batch_size % self.opts.ctx.world:
            raise InputError(None, f"batch_size {batch_size} is not divisible by {self.opts.ctx.world} processes")
        return batch_size // self.opts.ctx.world

    def steps(self, batch_size: int) -> int:
        return math.ceil(math.ceil(len(self) / self.opts.ctx.world) / self._local_batch(batch_size))

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return _layout(self.preset.normalise(x.to(self.opts.device, non_blocking=True)), self.opts)

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        """This process's share of epoch `epoch`: a distributed sampler reshuffled per epoch, persistent workers."""
        if self._loader is None:
            self._sampler = EpochSampler(self.train_set, self.opts.ctx.world, self.opts.ctx.rank, self.opts.seed)
            self._loader = make_loader(self.train_set, self._local_batch(batch_size), self.opts.num_workers,
                                       self.pin, self._sampler)
        self._sampler.set_epoch(epoch)
        for x, y in self._loader:
            yield self._to_device(x), y.to(self.opts.device, non_blocking=True)

    def batches(self, rows: np.ndarray, batch_size: int) -> Iterator[Batch]:
        """Images of `rows` in order with the evaluation transform; labels stay on the CPU."""
        loader = make_loader(subset(self.eval_set, list(map(int, rows))), batch_size,
                             min(self.opts.num_workers, max(1, len(rows) // batch_size)), self.pin, persistent=False)
        for x, y in loader:
            yield self._to_device(x), y


def make_feed(data, part: str, keep: Optional[np.ndarray], opts: FeedOptions):
    """The feed of `part` ("train" or "test") of `data`, restricted to the rows where `keep` is true."""
    labels = data.train_labels if part == "train" else data.test_labels
    rows = np.arange(len(labels)) if keep is None else np.flatnonzero(keep)
    if isinstance(data, ImageDataset):
        images = data.train_images if part == "train" else data.test_images
        return MemoryFeed(images if keep is None else images[keep], labels[rows], opts)
    names = data.train_files if part == "train" else data.test_files
    return StreamFeed(data, [names[r] for r in rows], labels[rows], opts)


def timed(batches: Iterable[Batch], clock: List[float]) -> Iterator[Batch]:
    """`batches`, adding the seconds spent waiting for each one to `clock[0]` (data-loading wait)."""
    it = iter(batches)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        clock[0] += time.perf_counter() - t
        yield item
