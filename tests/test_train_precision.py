"""Mixed precision and channels_last run the same code on the CPU as on a GPU: an fp16 run trains through
the loss scaler, whose state goes into the checkpoint (so a resumed run continues with the same scale)."""
import torch
from image_trees import one_thread  # noqa: F401

from lowshot.config import resolve_config
from lowshot.io.checkpoints import load_checkpoint
from lowshot.stages.train import TrainConfig, train


def test_fp16_channels_last_run_saves_the_loss_scaler(tiny_project):
    cfg = resolve_config(TrainConfig, str(tiny_project / "train.json"), run=str(tiny_project / "fp16"), device="cpu",
                         amp="fp16", channels_last=True, epochs=1)
    ckpt = load_checkpoint(train(cfg))
    assert ckpt["scaler"]["scale"] > 0 and ckpt["config"]["amp"] == "fp16"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
