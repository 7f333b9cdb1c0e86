"""Data sets: a registry of loaders.

Small sets live in memory as one uint8 array per part (`ImageDataset`: glyphs, CIFAR-100, CIFAR-FS,
FC100, Omniglot, miniImageNet's pickles); large ones are lists of image files read lazily by
DataLoader workers (`FileDataset`: ImageNet, image folders, CUB, mini- and tieredImageNet). The
few-shot benchmarks' class lists ship in `lowshot/data/splits/` (see `lowshot.data.fewshot`). Both
order rows by class, classes ascending, and may carry the data set's own label split and shot files
(`default_splits`, `default_shots`), which `lowshot data` writes.
"""
from lowshot.data.base import DATASETS, FileDataset, ImageDataset, normalise_images  # noqa: F401

from lowshot.data import cifar100, cub, folder, glyphs, imagenet  # noqa: E402,F401  (register the loaders)
from lowshot.data import cifar_fewshot, mini_imagenet, omniglot, tiered_imagenet  # noqa: E402,F401
