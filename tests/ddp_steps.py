"""Run by test_distributed.py under torchrun (2 gloo processes, one launch): the steps whose files it checks.

Usage: torchrun --standalone --nproc-per-node 2 tests/ddp_steps.py IMAGE_TREE
"""
import sys

from lowshot.cli import main


def lowshot(*args):
    main([str(a) for a in args], standalone_mode=False)


common = ["--config", "t.json", "--dataset", "folder", "--root", sys.argv[1], "--device", "cpu"]
lowshot("train", *common, "--run", "runs/straight", "--epochs", 2)
lowshot("train", *common, "--run", "runs/resumed", "--epochs", 1)  # stops after epoch 0 ...
lowshot("train", *common, "--run", "runs/resumed", "--epochs", 2)  # ... a new call resumes from last.pt
lowshot("features", "--run", "runs/straight", "--set", "out_dir=runs/straight/f2", "--set", "batch_size=32",
        "--workers", 0, "--device", "cpu")  # 5 train batches: 3 on rank 0, 2 on rank 1
lowshot("features", "--run", "runs/tv", "--backbone", "torchvision:resnet18", "--random-init", "--dataset", "folder",
        "--root", sys.argv[1], "--set", 'preprocess={"image_size": 32}', "--set", "batch_size=32", "--workers", 0,
        "--device", "cpu")  # an external model: the same seeded random weights in both processes
print("steps done", flush=True)
