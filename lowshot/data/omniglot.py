"""Omniglot (Lake et al., Science 2015) on Vinyals et al.'s split (NeurIPS 2016), as Snell et al. released it.

1,623 characters of 50 alphabets, 20 drawings each. Vinyals et al. train on 1,200 characters and test
on the other 423; every character's rotations by 0, 90, 180 and 270 degrees are four classes (as in
Snell et al.'s prototypical networks), so 4,800 training and 1,692 test classes. Snell et al. split
the 1,200 into 1,028 train and 172 val characters to choose hyper-parameters, then retrain on all.

`root` holds `images_background/` and `images_evaluation/` (Lake et al.'s two archives, unpacked:
`<alphabet>/<characterNN>/*.png`), or the alphabets of both in one folder (prototypical networks'
`data/omniglot/data`). The character lists and which archive holds each alphabet ship with lowshot
(`splits/omniglot_vinyals.json`). Drawings are read into memory at 28 × 28 as prototypical networks
do (nearest-neighbour resize; ink bright on dark) and rotated counter-clockwise; a class is
`<alphabet>/<character>/rot<degrees>` (6,492 classes, 129,840 images, 102 MB).

`split="trainval"` (default, Vinyals et al.): the 1,200 characters are the base classes, the 423 test
characters setup 2's novel classes, setup 1 has none. `split="train"` (Snell et al.'s model selection):
the 1,028 train characters are base, the 172 val characters setup 1's novel classes, the test ones
setup 2's. Parts: `lowshot.data.fewshot`.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
from PIL import Image

from lowshot.data.base import DATASETS, ImageDataset
from lowshot.data.fewshot import class_lists, holdout_meta, parts, split_classes
from lowshot.data.files import images_in, require_dir
from lowshot.data.stream import open_image
from lowshot.errors import InputError

SIZE = 28
DRAWINGS = 20
ROTATIONS = (0, 90, 180, 270)
SPLITS = ("trainval", "train")


def character_folder(root: str, character: str) -> str:
    """Where `<alphabet>/<characterNN>` lies: in the archive that holds its alphabet, else right under root."""
    alphabet = character.split("/")[0]
    archive = "images_background" if alphabet in class_lists("omniglot_vinyals")["background_alphabets"] \
        else "images_evaluation"
    for folder in (os.path.join(root, archive, character), os.path.join(root, character)):
        if os.path.isdir(folder):
            return folder
    raise InputError(os.path.join(root, archive, character), "character folder not found (Omniglot's "
                                                             "images_background/ and images_evaluation/ unpacked?)")


def read_character(folder: str) -> np.ndarray:
    """The 20 drawings of a character as uint8 (20, 28, 28), ink bright on dark."""
    files = images_in(folder)
    if len(files) != DRAWINGS:
        raise InputError(folder, f"has {len(files)} drawings; an Omniglot character has {DRAWINGS}")
    out = np.empty((DRAWINGS, SIZE, SIZE), np.uint8)
    for i, name in enumerate(files):
        image = open_image(os.path.join(folder, name), "L").resize((SIZE, SIZE), Image.NEAREST)
        out[i] = 255 - np.asarray(image, np.uint8)
    return out


def rotated_classes(characters: List[str]) -> List[str]:
    """The class names of `characters`: each character's four rotations, in that order."""
    return [f"{c}/rot{r:03d}" for c in characters for r in ROTATIONS]


@DATASETS.register("omniglot")
def omniglot(root: str, split: str = "trainval", shot_pool: int = 0, base_test: int = 0,
             seed: int = 0) -> ImageDataset:
    """Omniglot from `root`; see the module docstring.

    Args:
        split: "trainval" (Vinyals et al.) or "train" (Snell et al.'s validation setup).
        shot_pool, base_test, seed: drawings held out per novel / base class (`lowshot.data.fewshot`); 0 keeps
            the published parts.
    """
    require_dir(root)
    if split not in SPLITS:
        raise InputError(root, f"unknown Omniglot split {split!r}; choose one of: {', '.join(SPLITS)}")
    train, val, test = split_classes("omniglot_vinyals")
    characters = train + val + test
    images = np.empty((len(characters), len(ROTATIONS), DRAWINGS, 1, SIZE, SIZE), np.uint8)
    for i, character in enumerate(characters):
        drawings = read_character(character_folder(root, character))
        for r in range(len(ROTATIONS)):
            images[i, r, :, 0] = np.rot90(drawings, r, axes=(1, 2))
    names = rotated_classes(characters)
    labels = np.repeat(np.arange(len(names)), DRAWINGS)
    lists = ((train + val, [], test) if split == "trainval" else (train, val, test))
    tr, te, splits, shots = parts(labels, names, [rotated_classes(x) for x in lists], shot_pool, base_test, seed,
                                  source=root)
    flat = images.reshape(-1, 1, SIZE, SIZE)
    meta = {"root": root, "split": split, "image_size": SIZE, **holdout_meta(shot_pool, base_test, seed)}
    return ImageDataset("omniglot", flat[tr], labels[tr], flat[te], labels[te], names, meta, splits, shots)
