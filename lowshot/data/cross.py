"""Cross-domain inputs: images of data set B fed to a representation trained on data set A.

Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019, §4.4: a representation trained on
miniImageNet's base classes, evaluated on episodes of CUB's test classes. A representation must get
the inputs it was trained on, and the two kinds of data sets feed different ones:

- in memory (`ImageDataset`: glyphs, CIFAR-FS, FC100, Omniglot, miniImageNet's pickles): uint8
  pixels at the data set's own size scaled to [−1, 1] (`normalise_images`), no resizing;
- streamed (`FileDataset`): decoded files through a transform preset (resize, centre crop to its
  size) and ImageNet's mean and std (`Preset.normalise`).

So B is fed as A was: both in memory, when channels and size agree (else refused); both streamed,
through A's preset and size; A in memory with 3 channels and B streamed, by resizing and centre-cropping
B's files to A's size and scaling to [−1, 1] (a preset with mean = std = ½). A streamed representation
applied to in-memory images, and channel counts that differ, are refused with one line.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Dict, Optional, Tuple

from lowshot.data.base import DATASETS, FileDataset, ImageDataset
from lowshot.data.transforms import Preset
from lowshot.errors import InputError

PATH_KEYS = ("root", "cache_dir")  # loader arguments that say where files lie, not what the images are


def data_args(dataset: str, args: Dict[str, Any]) -> Dict[str, Any]:
    """The loader arguments that change the images: `args` less paths and less the loader's own defaults."""
    try:
        params = inspect.signature(DATASETS.get(dataset)).parameters
    except (InputError, TypeError, ValueError):
        params = {}
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {k: v for k, v in sorted((args or {}).items()) if k not in PATH_KEYS and (k not in defaults
                                                                                      or defaults[k] != v)}


def data_tag(dataset: str, args: Dict[str, Any]) -> str:
    """A folder name for data set B: `<dataset>[-<key>-<value>...]` (a digest when that would be unwieldy)."""
    from lowshot.io.fingerprint import digest
    kept = data_args(dataset, args)
    words = "-".join(f"{k}-{v}" for k, v in kept.items())
    if kept and not re.fullmatch(r"[A-Za-z0-9_.=-]{1,60}", words):
        words = digest(kept)[:8]
    return dataset + (f"-{words}" if words else "")


def _kind(data) -> str:
    return "in memory" if isinstance(data, ImageDataset) else "streamed"


def _shape(data: ImageDataset) -> Tuple[int, int, int]:
    return tuple(int(x) for x in data.train_images.shape[1:]) if len(data.train_images) else tuple(
        int(x) for x in data.test_images.shape[1:])


def _scaled_preset(size: int) -> Preset:
    """Streamed images as an in-memory representation saw its inputs: resize + centre crop to `size`, [−1, 1]."""
    from torchvision.transforms import v2
    tf = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])
    return Preset(tf, tf, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def cross_inputs(source, target, tcfg: Dict[str, Any], where: Any) -> Tuple[Optional[str], Optional[int],
                                                                            Optional[Preset]]:
    """How to feed `target`'s images (B) to a representation trained on `source` (A) with training config
    `tcfg`: (transform preset name, image size, ready preset) for the feed, or an `InputError` naming `where`."""
    what = f"a representation trained on {tcfg['dataset']} ({_kind(source)})"
    if isinstance(source, ImageDataset) and isinstance(target, ImageDataset):
        a, b = _shape(source), _shape(target)
        if a != b:
            raise InputError(where, f"{what} saw {a[0]} × {a[1]} × {a[2]} images (channels × height × width); "
                                    f"{target.name}'s are {b[0]} × {b[1]} × {b[2]}: in-memory images are fed unresized")
        return None, None, None
    if isinstance(source, FileDataset) and isinstance(target, FileDataset):
        name = tcfg.get("transforms") or source.transforms
        return name, tcfg.get("image_size"), None  # None: the preset's own size, as in training
    if isinstance(source, ImageDataset) and source.channels == 3:
        return None, None, _scaled_preset(_shape(source)[1])
    raise InputError(where, f"{what} cannot read {target.name}'s images ({_kind(target)}): in-memory images are "
                            f"fed as [−1, 1] pixels at their own size, streamed ones through a transform preset "
                            f"with ImageNet's mean and std"
                            + (f", and {source.channels}-channel inputs cannot take RGB files"
                               if isinstance(source, ImageDataset) else ""))
