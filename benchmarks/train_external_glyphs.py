"""Train a timm or torchvision model on the glyph base classes and save its weights for `lowshot features --weights`.

The README's "benchmark any model" table uses it as the model trained here (nothing can be
downloaded on this machine). The model is the one `lowshot features --backbone SPEC` builds
(classifier removed, the same preprocessing overrides) plus a linear classifier used only for
training, on lowshot's glyph data, label split and seeded batch feed (shuffling, augmentation); the
saved state dict is the model without that classifier, so `--weights` loads it strictly.

    .venv/bin/python benchmarks/train_external_glyphs.py --model timm:test_resnet --epochs 6 \\
        --out runs/weights/test_resnet_glyphs.safetensors
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lowshot.backbones import Model
from lowshot.backbones.external import build_external
from lowshot.data import DATASETS
from lowshot.data.feeds import FeedOptions, make_feed
from lowshot.io.atomic import atomic_path
from lowshot.io.splits import load_label_splits


def train(model: Model, feed, epochs: int, batch_size: int, lr: float) -> None:
    """SGD + Nesterov with a cosine schedule on cross-entropy; prints loss and train top-1 per epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * feed.steps(batch_size))
    for epoch in range(epochs):
        model.train()
        start, seen, hits, loss_sum = time.perf_counter(), 0, 0, 0.0
        for x, y in feed.train_batches(epoch, batch_size):
            scores, _ = model(x)
            loss = F.cross_entropy(scores, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen, hits = seen + len(y), hits + int((scores.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        print(f"epoch {epoch}: loss {loss_sum / seen:.3f}, train top-1 {100 * hits / seen:.1f} %, "
              f"{seen / (time.perf_counter() - start):.0f} img/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="timm:test_resnet", help="timm:<name> or torchvision:<name>")
    p.add_argument("--preprocess", default='{"image_size": 32, "resize_size": 32}', help="as lowshot features' preprocess")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="a .safetensors file")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    data = DATASETS.create("glyphs")
    base = load_label_splits("label_splits/glyphs.json").base_classes
    feed = make_feed(data, "train", np.isin(data.train_labels, base), FeedOptions(seed=args.seed))
    trunk = build_external(args.model, None, True, json.loads(args.preprocess), from_memory=True)
    train(Model(trunk, nn.Linear(trunk.num_features, data.num_classes)), feed, args.epochs, args.batch_size, args.lr)
    with atomic_path(args.out) as tmp:
        save_file({k: v.contiguous() for k, v in trunk.model.state_dict().items()}, str(tmp))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
