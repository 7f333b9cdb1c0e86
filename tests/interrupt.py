"""Run `lowshot.stages.train.train` killed in epoch 1, then the same command again (it resumes): the resume tests' helper."""
import pytest

import lowshot.stages.train


def interrupted_then_resumed(cfg, monkeypatch):
    """Train `cfg` with a KeyboardInterrupt at the start of epoch 1, then again; returns the final `last.pt` path."""
    real_epoch = lowshot.stages.train.train_one_epoch

    def killed_in_epoch_1(model, opt, sched, c, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(model, opt, sched, c, epoch, *rest)

    monkeypatch.setattr(lowshot.stages.train, "train_one_epoch", killed_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        lowshot.stages.train.train(cfg)
    monkeypatch.setattr(lowshot.stages.train, "train_one_epoch", real_epoch)
    return lowshot.stages.train.train(cfg)  # the same command again resumes at epoch 1
