"""Shared fixtures: tiny data made on the fly, never downloaded."""
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the lowshot command sets it, before torch is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lowshot.io.features import FeatureSet, write_features
from lowshot.io.splits import LabelSplits, make_shots, write_label_splits, write_shots

TINY_GLYPHS = {"num_classes": 8, "images_per_class": 26, "test_per_class": 4}


@pytest.fixture(scope="session")
def glyph_cache(tmp_path_factory):
    """A glyph cache folder shared by the whole session (generation takes about a second)."""
    return str(tmp_path_factory.mktemp("glyph-cache"))


@pytest.fixture
def tiny_project(tmp_path, monkeypatch, glyph_cache):
    """A working folder holding tiny glyph splits and shot files, and a tiny training config."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOWSHOT_CACHE", glyph_cache)
    from lowshot.stages.data import DataConfig, prepare_data
    prepare_data(DataConfig("glyphs", TINY_GLYPHS))
    cfg = {"dataset": "glyphs", "dataset_args": TINY_GLYPHS, "backbone": "resnet10", "width": 0.125, "stem": "small",
           "classifier": "cosine", "epochs": 2, "batch_size": 32, "lr": 0.05, "schedule": "cosine"}
    (tmp_path / "train.json").write_text(json.dumps(cfg))
    return tmp_path


def gaussian_features(num_classes=12, per_class=40, dim=16, sep=6.0, seed=0, noise_seed=None):
    """Well-separated Gaussian classes (centres drawn from `seed`, noise from `noise_seed`):
    features (N, dim) float32 and labels (N,) grouped by class."""
    centres = np.random.default_rng(seed).normal(size=(num_classes, dim)) * sep
    labels = np.repeat(np.arange(num_classes), per_class)
    noise = np.random.default_rng(seed if noise_seed is None else noise_seed).normal(size=(len(labels), dim))
    feats = centres[labels] + noise
    return feats.astype(np.float32), labels


@pytest.fixture
def feature_project(tmp_path, monkeypatch):
    """Synthetic train/test feature files + splits + shot files for 12 classes (6 base, 6 novel)."""
    monkeypatch.chdir(tmp_path)
    feats, labels = gaussian_features()
    test_feats, test_labels = gaussian_features(per_class=10, noise_seed=1)
    weight = np.random.default_rng(2).normal(size=(12, feats.shape[1])).astype(np.float32)
    attrs = {"dataset": "synth"}
    write_features("runs/synth/features/train.hdf5", FeatureSet(feats, labels, attrs, weight, 10.0))
    write_features("runs/synth/features/test.hdf5", FeatureSet(test_feats, test_labels, attrs, weight, 10.0))
    splits = LabelSplits([f"c{i}" for i in range(12)], [0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11])
    write_label_splits("label_splits/synth.json", splits)
    for k in range(1, 6):
        write_shots(f"experiment_cfgs/synth/splitfile_{k}.json", make_shots(labels, 12, 0, k))
    return tmp_path


ADDCLASS_GLYPHS = {"num_classes": 24, "images_per_class": 40, "test_per_class": 20}


@pytest.fixture(scope="session")
def glyph_model(tmp_path_factory, glyph_cache):
    """A cosine-classifier ResNet-10 (width 1/8) trained 30 epochs on 12 glyph base classes, and its features
    (used by the add-class and incremental tests)."""
    from lowshot.data import DATASETS
    from lowshot.io.splits import load_label_splits
    from lowshot.stages.data import DataConfig, prepare_data
    from lowshot.stages.features import FeaturesConfig, features
    from lowshot.stages.train import TrainConfig, train

    root, args = tmp_path_factory.mktemp("addclass"), {**ADDCLASS_GLYPHS, "cache_dir": glyph_cache}
    prepare_data(DataConfig("glyphs", args, splits_dir=str(root / "splits"), shots_root=str(root / "shots")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(run=str(root / "run"), dataset="glyphs", dataset_args=args,
                          splits=str(root / "splits/glyphs.json"), width=0.125, stem="small", classifier="cosine",
                          epochs=30, batch_size=32, lr=0.05,
                          schedule="cosine", save_every=1000, device="cpu")
        checkpoint = train(cfg)
        features(FeaturesConfig(run=cfg.run, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "checkpoint": checkpoint, "data": DATASETS.create("glyphs", **args),
            "splits": load_label_splits(root / "splits/glyphs.json")}
