"""Training: an interrupted run resumes to exactly the weights of an uninterrupted one."""
import json

import pytest
import torch
from interrupt import interrupted_then_resumed

from lowshot.config import resolve_config
from lowshot.errors import InputError
from lowshot.io.checkpoints import load_checkpoint
from lowshot.stages.train import TrainConfig, train


def _cfg(project, run, **kw):
    return resolve_config(TrainConfig, str(project / "train.json"), run=str(project / run), device="cpu", **kw)


def test_resume_reaches_the_same_weights(tiny_project, monkeypatch):
    train(_cfg(tiny_project, "straight"))
    last = interrupted_then_resumed(_cfg(tiny_project, "resumed"), monkeypatch)
    a = load_checkpoint(tiny_project / "straight/checkpoints/last.pt")
    b = load_checkpoint(last)
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    log = [json.loads(line) for line in (tiny_project / "resumed/train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and all(0 <= r["val_top1"] <= 1 for r in log)


def test_checkpoint_holds_everything_to_resume(tiny_project):
    ckpt = load_checkpoint(train(_cfg(tiny_project, "r", epochs=1)))
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config", "versions"} <= set(ckpt)
    assert ckpt["config"]["seed"] == 0 and "classifier.scale" in ckpt["model"]


def test_resuming_with_another_configuration_is_refused(tiny_project):
    train(_cfg(tiny_project, "r", epochs=1))
    with pytest.raises(InputError, match="trained with another lr"):
        train(_cfg(tiny_project, "r", lr=0.5))
