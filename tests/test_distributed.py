"""torchrun with 2 gloo processes on the CPU, on a small image folder: DistributedDataParallel training resumes
exactly, and sharded feature extraction writes the single-process file.

One torchrun launch runs every step (`ddp_steps.py`, through the CLI), since each process costs seconds of
imports. Success is judged by what the processes wrote and printed, not by the exit status alone: gloo's
teardown can abort after the work is done (reference/environment.md §6).
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from image_trees import glyphs6, one_thread, tiny_train_config, trees  # noqa: F401

from lowshot.io.checkpoints import load_checkpoint
from lowshot.stages.data import DataConfig, prepare_data
from lowshot.stages.features import FeaturesConfig, features

TIMEOUT_S = 300


def torchrun(cwd, script, *args) -> str:
    """`torchrun --standalone --nproc-per-node 2 SCRIPT ARGS` in `cwd`; its output. Killed (group) on timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun {script} ran past {TIMEOUT_S} s")
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, trees):
    """A working folder with the folder tree's split and shot files, a tiny config, and the 2-process outputs."""
    work = tmp_path_factory.mktemp("ddp")
    root = shutil.copytree(trees["folder"], work / "tree")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        prepare_data(DataConfig("folder", {"root": str(root)}))
    finally:
        os.chdir(cwd)
    tiny_train_config(work / "t.json")
    out = torchrun(work, Path(__file__).with_name("ddp_steps.py"), root)
    assert out.count("steps done") == 2, out  # both ranks finished every step
    return work


def test_two_process_training_resumes_to_the_uninterrupted_weights(project):
    straight = load_checkpoint(project / "runs/straight/checkpoints/last.pt")
    resumed = load_checkpoint(project / "runs/resumed/checkpoints/last.pt")
    assert load_checkpoint(project / "runs/resumed/checkpoints/0.pt")["epoch"] == 0
    assert straight["epoch"] == resumed["epoch"] == 1
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert len((project / "runs/resumed/train_log.jsonl").read_text().splitlines()) == 2  # rank 0 alone logs


def assert_same_files(one, folder: Path) -> None:
    """The files `one` (split -> path) hold the arrays of `folder`'s files, and no shard is left in `folder`."""
    for split, path in one.items():
        with h5py.File(path) as a, h5py.File(folder / f"{split}.hdf5") as b:
            for name in ("all_feats", "all_labels", "count"):
                np.testing.assert_array_equal(a[name][:], b[name][:])
    assert not list(folder.glob(".*.npy"))


def test_two_process_features_equal_the_single_process_file(project):
    one = features(FeaturesConfig(run=str(project / "runs/straight"), out_dir=str(project / "runs/straight/f1"),
                                  batch_size=32, workers=0, device="cpu"))
    assert_same_files(one, project / "runs/straight/f2")


def test_two_process_external_model_features_equal_the_single_process_file(project):
    one = features(FeaturesConfig(run=str(project / "runs/tv1"), backbone="torchvision:resnet18", random_init=True,
                                  dataset="folder", dataset_args={"root": str(project / "tree")},
                                  preprocess={"image_size": 32}, batch_size=32, workers=0, device="cpu"))
    assert_same_files(one, project / "runs/tv/features")
