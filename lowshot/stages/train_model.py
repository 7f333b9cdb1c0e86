"""The stages that train a model on a run's cached base-class features: one function for all of them.

`lowshot train-matching`, `train-weight-generator` and `train-pmn` each pair a config with a pure
training function `fit(base, cfg, device) -> dict` that lives beside its model (e.g.
`lowshot.heads.matching.train`). This stage reads the base rows, skips the work when the model file
records the same identity (the config's identity fields and the digest of the base rows), and else
trains and saves the model atomically, with plain tensors and dicts read back with `weights_only=True`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from lowshot.config import versions
from lowshot.errors import InputError
from lowshot.heads import BaseRows
from lowshot.io.atomic import save_torch
from lowshot.io.checkpoints import load_checkpoint
from lowshot.io.fingerprint import digest, identity_fields, up_to_date
from lowshot.run import RunFolder, base_train_rows
from lowshot.runtime import pick_device
from lowshot.stages import Stage


def base_rows(cfg) -> tuple:
    """(BaseRows of the run's base classes, their digest, the train file's path)."""
    feats, labels, train = base_train_rows(cfg.run, cfg.features_dir, cfg.splits)
    weight = None if train.classifier_weight is None else np.ascontiguousarray(train.classifier_weight, np.float32)
    rows = BaseRows(torch.from_numpy(feats), torch.from_numpy(labels),
                    None if weight is None else torch.from_numpy(weight), train.classifier_scale)
    return rows, digest(feats, labels, weight, train.classifier_scale), train.path


def stored_identity(path: Path) -> Dict[str, Any]:
    """The identity a model file records (None for a file of an older version)."""
    return load_checkpoint(path, what="the trained model").get("identity")


def train_model(stage: Stage, cfg) -> Path:
    """Train (or find up to date) the model `stage` writes, as `cfg` says; returns the model file."""
    out = Path(cfg.out) if cfg.out else RunFolder(Path(cfg.run)).path(stage.writes[0])
    base, rows_digest, source = base_rows(cfg)
    identity = {"config": identity_fields(cfg), "base_rows": rows_digest}
    if not cfg.force and up_to_date(out, identity, stored_identity):
        print(f"{out} is up to date", flush=True)
        return out
    try:
        saved = stage.fit()(base, cfg, pick_device(cfg.device))
    except InputError as e:  # the trainer sees rows, not files: name the file they came from
        raise (InputError(source, str(e)) if e.path is None else e) from None
    save_torch(out, {**saved, "identity": identity, "features": source, "versions": versions()})
    return out
