"""Images read lazily from disk and decoded in DataLoader worker processes.

Augmentation randomness is a function of (seed, epoch, image) only: each training sample reseeds
the worker's torch RNG from those three numbers, so results do not depend on the number of
workers or processes, and a resumed run sees exactly the crops an uninterrupted one would.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lowshot.errors import InputError
from lowshot.runtime import forked_map, progress


class UnreadableImage(InputError):
    """An image file that cannot be opened or decoded.

    A DataLoader worker's exception reaches the main process as `cls(text of the traceback)`; the
    one-argument form recovers the original one-line message from its last line.
    """

    def __init__(self, path: str, problem: str = None):
        if problem is None:
            path, _, problem = path.strip().splitlines()[-1].split(": ", 1)[-1].partition(": ")
        super().__init__(path, problem)


class ImageFiles(Dataset):
    """Item i (or `(epoch, i)`, which reseeds the augmentation) -> (uint8 tensor (3, S, S), label).

    Args:
        root: folder the names are relative to.
        names: image paths, one per row.
        labels: int64 array of shape (N,).
        transform: PIL RGB image -> uint8 tensor (a `Preset`'s train or eval transform).
        seed: run seed mixed into the per-sample augmentation seed.
    """

    def __init__(self, root: str, names: Sequence[str], labels: np.ndarray, transform: Callable, seed: int = 0):
        self.root, self.names, self.labels = root, list(names), np.asarray(labels, np.int64)
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            epoch, key = key
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 2_147_483_647 + key) % (1 << 63))
        image = open_image(os.path.join(self.root, self.names[key]), "RGB")
        return self.transform(image), int(self.labels[key])


def open_image(path: str, mode: Optional[str] = None) -> Image.Image:
    """The decoded image at `path` (converted to `mode` when given), or `UnreadableImage` naming the file."""
    try:
        with Image.open(path) as im:
            if mode:
                return im.convert(mode)
            im.load()
            return im.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(path, f"cannot decode image ({e.__class__.__name__}: {e})") from None


class EpochSampler(Sampler):
    """A `DistributedSampler` (one process: world 1) that yields `(epoch, index)`, reshuffled by `set_epoch`."""

    def __init__(self, dataset: Dataset, world: int, rank: int, seed: int):
        self.inner = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return ((self.epoch, i) for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def make_loader(dataset: Dataset, batch_size: int, workers: int, pin: bool, sampler=None,
                persistent: bool = True) -> DataLoader:
    """A DataLoader with `workers` decoding processes (0: in this process), pinned memory on a GPU."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                      persistent_workers=persistent and workers > 0, prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(0))


def subset(dataset: ImageFiles, rows: List[int]) -> ImageFiles:
    """The same files restricted to `rows`, in that order."""
    return ImageFiles(dataset.root, [dataset.names[r] for r in rows], dataset.labels[rows], dataset.transform,
                      dataset.seed)


def _problem(path: str) -> Optional[str]:
    """The decoding problem of the image at `path`, or None when it decodes."""
    try:
        open_image(path)
    except UnreadableImage as e:
        return str(e)
    return None


def undecodable(root: str, names: Sequence[str], processes: int) -> List[str]:
    """"<path>: <problem>" for every image under `root` that does not decode, all of them, with a progress bar
    (on a terminal); `processes` (forked, no torch in them) decode in parallel."""
    paths = [os.path.join(root, n) for n in names]
    problems = forked_map(_problem, paths, processes, chunksize=64)
    return [p for p in progress(problems, total=len(paths), desc="verify images", unit="image") if p]
