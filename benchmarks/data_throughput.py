"""Training throughput streamed from JPEG files against the same model fed from memory, in one process.

Writes a folder of synthetic JPEGs (smooth random colour fields, 256–320 px, quality 90), then runs
the training loop (`lowshot.stages.train.train_one_epoch`) on the same images two ways: streamed (decoded
by DataLoader workers with H&G's 224-pixel augmentation, `--workers`, default: this machine's) and
from memory (the images pre-decoded and centre-cropped to one uint8 tensor, no decoding). Epochs
alternate after a warm-up, so both see the same machine load; the loader's cost is
1 − streamed / memory images/s.

    .venv/bin/python benchmarks/data_throughput.py                       # ResNet-10 at 224 px
    .venv/bin/python benchmarks/data_throughput.py --amp bf16 --epochs 3
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowshot.backbones import build_model
from lowshot.data import DATASETS
from lowshot.data.feeds import FeedOptions, MemoryFeed, StreamFeed
from lowshot.distributed import Dist
from lowshot.precision import grad_scaler
from lowshot.stages.train import TrainConfig, build_optimizer, train_one_epoch


def write_jpegs(root: Path, classes: int, per_class: int, seed: int = 0) -> None:
    """`root/train/c<k>/<i>.jpg` and one test image per class: smooth random colour fields."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", 1)):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = rng.integers(256, 321, size=2)
                small = rng.integers(0, 256, size=(h // 16, w // 16, 3), dtype=np.uint8)
                Image.fromarray(small).resize((w, h), Image.BICUBIC).save(root / split / f"c{c}" / f"{i}.jpg", quality=90)


def memory_copy(feed: StreamFeed) -> MemoryFeed:
    """The feed's images decoded once (evaluation transform) into one uint8 tensor (N, 3, 224, 224)."""
    images = np.stack([feed.eval_set[i][0].numpy() for i in range(len(feed))])
    return MemoryFeed(images, feed.train_set.labels, FeedOptions(feed.opts.device, augment=False))


def epoch(model, feed, cfg, device, k: int) -> dict:
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return train_one_epoch(model, opt, sched, cfg, k, feed, grad_scaler(device, cfg.amp), Dist(), device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, default=64)
    p.add_argument("--backbone", default="resnet10")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (-1: the default for this machine)")
    p.add_argument("--amp", default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs of each kind, after one warm-up of each")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = TrainConfig(batch_size=args.batch_size, amp=args.amp, lr=0.01)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_jpegs(Path(tmp), args.classes, args.per_class)
        print(f"wrote {args.classes * args.per_class} JPEGs in {time.perf_counter() - t:.1f} s")
        opts = FeedOptions(device, Dist(), args.workers, args.channels_last)
        data = DATASETS.create("folder", root=tmp)
        stream = StreamFeed(data, data.train_files, data.train_labels, opts)
        memory = memory_copy(stream)
        model = build_model(args.backbone, "linear", args.classes, 3, args.width, "imagenet").to(device)
        model = model.to(memory_format=torch.channels_last) if args.channels_last else model
        results = {"memory": [], "stream": []}
        for k in range(args.epochs + 1):
            for name, feed in (("memory", memory), ("stream", stream)):
                stats = epoch(model, feed, cfg, device, k)
                print(f"epoch {k} {name:6s} {stats['images_per_s']:8.1f} img/s   data wait {stats['data_wait_s']:6.2f} s"
                      + ("   (warm-up)" if k == 0 else ""), flush=True)
                if k:
                    results[name].append(stats["images_per_s"])
    _summary(results, opts, args)


def _summary(results: dict, opts: FeedOptions, args) -> None:
    mem, stream = np.mean(results["memory"]), np.mean(results["stream"])
    print(f"{args.backbone} width {args.width}, batch {args.batch_size}, amp {args.amp}, "
          f"{opts.num_workers} workers, {torch.get_num_threads()} threads, device {args.device}")
    print(f"memory {mem:.1f} img/s   streamed {stream:.1f} img/s   loader cost {100 * (1 - stream / mem):.1f} %")


if __name__ == "__main__":
    main()
