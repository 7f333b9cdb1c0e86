"""Single image files turned into a trained model's input: what `add-class` and `predict` read.

A model's input is described by an `InputSpec` taken from the data set it was trained on:
in-memory data sets (glyphs, CIFAR-100) give the channel count and side (images are converted to
that many channels, resized with antialiasing when their size differs, and scaled to [-1, 1] as
`normalise_images` does in training); on-disk data sets give their evaluation transform preset
(RGB, resize + centre crop, mean/std normalisation).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from lowshot.data.base import ImageDataset, normalise_images
from lowshot.data.files import IMAGE_SUFFIXES, images_in
from lowshot.data.stream import UnreadableImage, open_image
from lowshot.data.transforms import TRANSFORMS
from lowshot.errors import InputError


@dataclass(frozen=True)
class InputSpec:
    """What a model reads: `channels`, and either `height` × `width` (in memory) or a `transforms` preset."""

    channels: int
    height: Optional[int] = None
    width: Optional[int] = None
    transforms: Optional[str] = None
    image_size: Optional[int] = None

    @classmethod
    def of(cls, data, cfg: dict) -> "InputSpec":
        """The spec of a model trained on `data` with training config `cfg` (its `transforms`, `image_size`)."""
        if isinstance(data, ImageDataset):
            _, c, h, w = data.train_images.shape
            return cls(int(c), int(h), int(w))
        return cls(3, transforms=cfg.get("transforms") or data.transforms, image_size=cfg.get("image_size"))

    def to_pixels(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> uint8 tensor (channels, H, W), converted to the model's channel count."""
        if self.transforms:
            return TRANSFORMS.create(self.transforms, image_size=self.image_size).eval(image.convert("RGB"))
        image = image.convert("L" if self.channels == 1 else "RGB")
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.BILINEAR, reducing_gap=None)
        pixels = np.asarray(image, np.uint8).reshape(self.height, self.width, -1)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, channels, H, W) -> the float input the model was trained on."""
        if self.transforms:
            return TRANSFORMS.create(self.transforms, image_size=self.image_size).normalise(pixels)
        return normalise_images(pixels)


def folder_images(folder: str) -> List[str]:
    """Paths of the files with an image suffix in `folder`, sorted; `InputError` if there is none."""
    if not os.path.isdir(folder):
        raise InputError(folder, "image folder not found")
    names = images_in(folder)
    if not names:
        raise InputError(folder, f"has no image file (looked for {', '.join(IMAGE_SUFFIXES)})")
    return [os.path.join(folder, n) for n in names]


def read_images(paths: Sequence[str], spec: InputSpec, skip_bad: bool) -> Tuple[torch.Tensor, List[str], List[str]]:
    """Decode and convert image files for a model.

    Args:
        paths: image files.
        spec: the model's input.
        skip_bad: leave out files that do not decode (else the first one is an `InputError`).
    Returns:
        uint8 pixels (N, channels, H, W), the N paths kept, and notes (one line each) about skipped
        files and channel conversions.
    """
    pixels, kept, bad, converted = [], [], [], {}
    for path in paths:
        try:
            image = open_image(path)
        except UnreadableImage as e:
            if not skip_bad:
                raise
            bad.append(str(e))
            continue
        bands = len(image.getbands())
        if bands != spec.channels:
            converted[image.mode] = converted.get(image.mode, 0) + 1
        pixels.append(spec.to_pixels(image))
        kept.append(path)
    if not kept:
        folder = os.path.dirname(paths[0]) if paths else None
        raise InputError(folder, f"has no decodable image ({len(bad)} files tried; first: {bad[0] if bad else '-'})")
    notes = [f"skipped {b}" for b in bad]
    notes += [f"converted {k} {mode} image(s) to {spec.channels} channel(s), as the model was trained on"
              for mode, k in sorted(converted.items())]
    return torch.stack(pixels), kept, notes
