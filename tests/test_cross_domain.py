"""Cross-domain features (a representation of data set A on the images of data set B) and their episodes."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import TINY_GLYPHS
from synthetic_cli import error_line, invoke

from lowshot.data import FileDataset, ImageDataset
from lowshot.data.cross import cross_inputs, data_args, data_tag
from lowshot.errors import InputError
from lowshot.io.fingerprint import file_digest
from lowshot.protocols.episode_report import read_results

B_ARGS = json.dumps({**TINY_GLYPHS, "variant": "outline"})


def test_cross_domain_features_never_overwrite_the_source_and_record_a_and_b(tiny_project):
    assert invoke("train", "--config", "train.json", "--run", "runs/a", "--epochs", "0", "--device", "cpu").exit_code == 0
    assert invoke("features", "--run", "runs/a").exit_code == 0
    own = {p: file_digest(f"runs/a/features/{p}") for p in ("train.hdf5", "test.hdf5")}
    cross = ["features", "--run", "runs/a", "--dataset", "glyphs", "--set", f"dataset_args={B_ARGS}"]
    out = invoke(*cross)
    assert out.exit_code == 0, out.output
    tag = data_tag("glyphs", json.loads(B_ARGS))
    path = tiny_project / "runs/a/cross" / tag / "features/test.hdf5"
    assert {p: file_digest(f"runs/a/features/{p}") for p in own} == own  # A's features untouched
    with h5py.File(path) as f, h5py.File("runs/a/features/test.hdf5") as a:
        assert f.attrs["source_dataset"] == "glyphs" and json.loads(f.attrs["dataset_args"])["variant"] == "outline"
        assert "variant" not in json.loads(f.attrs["source_dataset_args"])
        assert f.attrs["checkpoint_sha1"] == a.attrs["checkpoint_sha1"] and "classifier_weight" not in f
        assert not np.array_equal(f["all_feats"][...], a["all_feats"][...])  # other images, same rows and labels
        assert np.array_equal(f["all_labels"][...], a["all_labels"][...])
    assert "up to date" in invoke(*cross).output
    line = error_line(invoke(*cross, "--set", "out_dir=runs/a/features"))
    assert "own data set" in line and "runs/a/features" in line
    small = ["--set", "episodes=6", "--set", "queries=2", "--set", "ways=[2]", "--set", "shots=[1]",
             "--set", 'heads=["protonet"]']
    for extra in ([], ["--dataset", "glyphs", "--set", f"dataset_args={B_ARGS}"]):
        assert invoke("episodes", "--run", "runs/a", *small, *extra).exit_code == 0
    a_res, = read_results("runs/a/episodes")
    b_res, = read_results(f"runs/a/cross/{tag}/episodes")
    assert b_res["source_dataset"] == "glyphs" and b_res["data"]["variant"] == "outline"
    assert a_res["data"] == TINY_GLYPHS and a_res["dataset_label"] != b_res["dataset_label"]
    assert a_res["episode_file"] != b_res["episode_file"]  # B's episodes are B's own file


def fake(kind, shape=(1, 32, 32), name="x", transforms="crop"):
    if kind == "memory":
        return ImageDataset(name, np.zeros((1, *shape), np.uint8), np.zeros(1, np.int64), np.zeros((0, *shape),
                            np.uint8), np.zeros(0, np.int64), ["c"])
    return FileDataset(name, "/nowhere", ["a.jpg"], np.zeros(1, np.int64), [], np.zeros(0, np.int64), ["c"], transforms)


def test_each_kind_of_source_gets_the_inputs_it_was_trained_on():
    tcfg = {"dataset": "a", "transforms": None, "image_size": None}
    assert cross_inputs(fake("memory"), fake("memory"), tcfg, "ckpt") == (None, None, None)
    assert cross_inputs(fake("files"), fake("files", transforms="hg"), tcfg, "ckpt")[:2] == ("crop", None)
    preset = cross_inputs(fake("memory", (3, 84, 84)), fake("files"), tcfg, "ckpt")[2]
    assert preset.mean == preset.std == (0.5, 0.5, 0.5)  # streamed files scaled to [−1, 1] as in-memory pixels
    with pytest.raises(InputError, match="1 × 28 × 28.*1 × 32 × 32"):
        cross_inputs(fake("memory", (1, 28, 28)), fake("memory"), tcfg, "ckpt")
    with pytest.raises(InputError, match="cannot read"):
        cross_inputs(fake("files"), fake("memory"), tcfg, "ckpt")
    with pytest.raises(InputError, match="1-channel"):
        cross_inputs(fake("memory"), fake("files"), tcfg, "ckpt")


def test_data_tags_drop_paths_and_defaults():
    assert data_args("glyphs", {"variant": "hard", "cache_dir": "/c", "seed": 0}) == {}
    assert data_tag("glyphs", {"variant": "outline", "root": "/x"}) == "glyphs-variant-outline"
    assert data_tag("cub", {"split": "chen", "root": "/data/cub"}).startswith("cub")
    assert data_tag("synth", {"k": 1}) == "synth-k-1"  # an unknown data set: every argument kept
