"""Stage 2: cache the penultimate features of every train and test image in HDF5."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import h5py
import numpy as np
import torch

from lowshot.config import pick_device
from lowshot.checkpoints import load_checkpoint, model_from_config
from lowshot.data import load_dataset, normalise_images
from lowshot.io.features import FeatureSet, write_features
from lowshot.io.fingerprint import file_digest


@dataclass
class FeaturesConfig:
    run: str = "runs/demo"
    checkpoint: Optional[str] = None  # default: <run>/checkpoints/last.pt
    out_dir: Optional[str] = None  # default: <run>/features
    batch_size: int = 512
    device: str = "auto"
    force: bool = False


@torch.no_grad()
def extract(model, images: np.ndarray, device, batch_size: int) -> np.ndarray:
    """Pooled features (N, d) float32 of uint8 images (N, C, H, W), in eval mode, in row order."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalise_images(torch.from_numpy(images[start:start + batch_size]).to(device))
        out.append(model.trunk.forward_features(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.trunk.num_features), np.float32)


def _is_current(path: Path, digest: str) -> bool:
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("checkpoint_sha1") == digest
    except OSError:
        return False


def features(cfg: FeaturesConfig) -> Dict[str, Path]:
    """Write `<out>/train.hdf5` and `<out>/test.hdf5`; skip files made from the same checkpoint."""
    ckpt_path = Path(cfg.checkpoint or Path(cfg.run) / "checkpoints" / "last.pt")
    out = Path(cfg.out_dir or Path(cfg.run) / "features")
    paths = {split: out / f"{split}.hdf5" for split in ("train", "test")}
    digest = file_digest(ckpt_path) if ckpt_path.exists() else ""
    ckpt = load_checkpoint(ckpt_path)
    if not cfg.force and all(_is_current(p, digest) for p in paths.values()):
        print(f"features in {out} are up to date with {ckpt_path}")
        return paths
    tcfg = ckpt["config"]
    data = load_dataset(tcfg["dataset"], **tcfg["dataset_args"])
    device = pick_device(cfg.device)
    model = model_from_config(tcfg, data.num_classes, data.channels)
    model.load_state_dict(ckpt["model"])
    model.to(device)
    clf = model.classifier
    weight = clf.weight.detach().cpu().numpy()
    scale = float(clf.scale.detach()) if clf.scale is not None else None
    for split, path in paths.items():
        images, labels = (data.train_images, data.train_labels) if split == "train" else (data.test_images, data.test_labels)
        attrs = {"dataset": tcfg["dataset"], "split": split, "checkpoint": str(ckpt_path), "checkpoint_sha1": digest,
                 "model": tcfg["backbone"], "classifier": tcfg["classifier"], "seed": tcfg["seed"],
                 "epoch": int(ckpt["epoch"])}
        write_features(path, FeatureSet(extract(model, images, device, cfg.batch_size), labels, attrs, weight, scale))
        print(f"wrote {path} ({len(labels)} rows)")
    return paths
