"""Add a class to a trained cosine-classifier model from a folder of images, and predict with it.

keras-imprinting's use case ("I have a trained model and ten photos of a new thing: add it"), done
as Qi, Brown & Lowe prescribe (CVPR 2018, arXiv 1712.07136): the new row is normalise(mean of the
L2-normalised embeddings of the images), appended to the unit-norm rows of a classifier trained
with normalised features and a learned scale s, so old and new rows score on one scale. With
`fine_tune`, every row and s are then trained on the cached base-class features of the model's run
plus the new images (the `imprint_ft` head: class-balanced, fixed schedule). The trunk never moves.

The output is a self-contained checkpoint (`format` "lowshot-classifier/1"): the model's weights
with one classifier row per known class, `classes` (names, row order), `class_ids` (the data-set
label of each row, −1 for added classes), `input` (an `InputSpec`), `source` (the training
checkpoint: path, SHA-1, epoch), `added` (per added class: images, their embeddings, options,
seed), the training `config` and `versions`. A training checkpoint knows the base classes of its
label split; `predict` reads either kind.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from lowshot.backbones import Model
from lowshot.config import versions
from lowshot.data import DATASETS
from lowshot.data.images import InputSpec, folder_images, read_images
from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.io.atomic import save_torch
from lowshot.io.checkpoints import load_checkpoint, model_digest, trained_model
from lowshot.io.features import read_features
from lowshot.io.fingerprint import file_digest
from lowshot.io.splits import load_label_splits
from lowshot.run import RunFolder, splits_path
from lowshot.runtime import pick_device

FORMAT = "lowshot-classifier/1"
LINEAR_REFUSAL = (
    "has a linear classifier: imprinting needs the cosine classifier (normalised features and rows, one scale s). "
    "A raw mean feature appended to unnormalised rows, as keras-imprinting does, has a norm unrelated to the trained "
    "rows and takes over the arg-max: the `raw_imprint` negative control keeps 0.0 % base top-1 on a linear glyph "
    "run (5 shots, setup 2; docs/protocols.md, \"Add a class\"). Train with `lowshot train --classifier cosine`, then add the "
    "class; or keep this model and benchmark the new class with `lowshot benchmark --heads logreg`")


@dataclass
class Classifier:
    """A trained model restricted to the classes it knows, with what is needed to read images for it."""

    model: Model
    names: List[str]
    class_ids: List[int]
    spec: InputSpec
    config: Dict[str, Any]
    source: Dict[str, Any]
    digest: str  # `model_digest` of the file it was loaded from
    added: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class AddClassConfig:
    """`lowshot add-class`: which model, which class from which images, where to write."""

    checkpoint: str = ""
    name: str = ""
    images: str = ""  # a folder of image files (undecodable ones are skipped with a note)
    out: str = ""
    fine_tune: bool = False
    ft_params: Dict[str, Any] = field(default_factory=dict)  # imprint_ft options (steps, lr, ...); default its own
    features: Optional[str] = None  # cached train features of the source run; default <run>/features/train.hdf5
    force: bool = False
    seed: int = 0
    device: str = "auto"


def load_classifier(path: str | os.PathLike) -> Classifier:
    """A `lowshot train` or `lowshot add-class` checkpoint as a `Classifier`; one-line errors for anything else."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt) or "classifier" not in ckpt["config"]:
        raise InputError(path, "unknown checkpoint format: expected one written by `lowshot train` or "
                               "`lowshot add-class` (a dict with 'model' and 'config')")
    if ckpt.get("format", FORMAT) != FORMAT:
        raise InputError(path, f"unknown checkpoint format {ckpt['format']!r}; this version reads {FORMAT!r}")
    if "format" in ckpt:
        spec = InputSpec(**ckpt["input"])
        model = trained_model(path, ckpt, len(ckpt["classes"]), spec.channels)
        return Classifier(model, list(ckpt["classes"]), list(ckpt["class_ids"]), spec, ckpt["config"],
                          dict(ckpt["source"]), model_digest(ckpt), list(ckpt["added"]))
    cfg = ckpt["config"]
    data = DATASETS.create(cfg["dataset"], **cfg.get("dataset_args", {}))
    splits = load_label_splits(splits_path(cfg["dataset"], cfg.get("splits")))
    model = trained_model(path, ckpt, data.num_classes, data.channels)
    base = splits.base_classes
    model.classifier.weight = torch.nn.Parameter(model.classifier.weight.detach()[base].clone())
    key = model_digest(ckpt)
    source = {"checkpoint": str(path), "sha1": key, "epoch": int(ckpt.get("epoch", -1))}
    return Classifier(model, [splits.label_names[c] for c in base], list(base), InputSpec.of(data, cfg), cfg, source, key)


@torch.no_grad()
def embed(clf: Classifier, pixels: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Pooled features (N, d) float32 of uint8 images (N, channels, H, W), the model in eval mode."""
    clf.model.to(device).eval()
    out = [clf.model.trunk.forward_features(clf.spec.normalise(pixels[i:i + batch_size].to(device))).float()
           for i in range(0, len(pixels), batch_size)]
    return torch.cat(out)


def add_class(cfg: AddClassConfig) -> Path:
    """Write `cfg.out`: the model of `cfg.checkpoint` plus the class `cfg.name` imprinted from `cfg.images`.

    Skips the work when `cfg.out` already holds this very addition; refuses to overwrite anything
    else without `force`. Returns the output path.
    """
    out = Path(cfg.out)
    if out.exists() and out.resolve() == Path(cfg.checkpoint).resolve():
        raise InputError(out, "is the input checkpoint; write the new model to another file with -o")
    clf = load_classifier(cfg.checkpoint)
    _check_addable(clf, cfg)
    paths = folder_images(cfg.images)
    identity = _identity(cfg, clf, paths)
    if out.exists() and not cfg.force:
        if _added_identity(out) == identity:
            print(f"{out} is up to date")
            return out
        raise InputError(out, "exists and holds another model; pass --force to replace it")
    device = pick_device(cfg.device)
    pixels, kept, notes = read_images(paths, clf.spec, skip_bad=True)
    for note in notes:
        print(note)
    shots = embed(clf, pixels, device)
    weight, scale = _new_rows(clf, shots, cfg, device)
    record = {"name": cfg.name, "images": [os.path.basename(p) for p in kept], "features": shots.cpu(),
              "fine_tune": cfg.fine_tune, "ft_params": dict(cfg.ft_params), "seed": cfg.seed, "identity": identity}
    _save(out, clf, weight.cpu(), scale, cfg.name, record)
    print(f"added {cfg.name!r} from {len(kept)} images as class {len(clf.names)} of {len(clf.names) + 1}"
          f"{' (last layer fine-tuned)' if cfg.fine_tune else ''}: {out}")
    return out


def _check_addable(clf: Classifier, cfg: AddClassConfig) -> None:
    if clf.model.classifier.scale is None:
        raise InputError(cfg.checkpoint, LINEAR_REFUSAL)
    if not cfg.name.strip():
        raise InputError(None, "--name must not be empty")
    if cfg.name in clf.names:
        raise InputError(cfg.checkpoint, f"already has a class named {cfg.name!r} (row {clf.names.index(cfg.name)}); "
                                         "choose another --name")


def _identity(cfg: AddClassConfig, clf: Classifier, paths: Sequence[str]) -> Dict[str, Any]:
    """Every input that determines the output: checkpoint, name, image bytes, options, features, seed."""
    return {"checkpoint_sha1": clf.digest, "name": cfg.name,
            "images": {os.path.basename(p): file_digest(p) for p in paths}, "fine_tune": cfg.fine_tune,
            "ft_params": dict(cfg.ft_params) if cfg.fine_tune else {}, "seed": cfg.seed,
            "features_sha1": file_digest(_features_path(cfg, clf)) if cfg.fine_tune else None}


def _added_identity(path: Path) -> Optional[Dict[str, Any]]:
    try:
        ckpt = load_checkpoint(path)
        return ckpt["added"][-1]["identity"] if ckpt.get("format") == FORMAT and ckpt["added"] else None
    except InputError:
        return None


def _features_path(cfg: AddClassConfig, clf: Classifier) -> Path:
    """The cached train features `--fine-tune` reads, or an `InputError` saying how to make them."""
    path = Path(cfg.features) if cfg.features else RunFolder(Path(clf.config["run"])).features / "train.hdf5"
    if not path.exists():
        raise InputError(path, f"feature file not found: --fine-tune needs the run's cached base features "
                               f"(run {_features_command(clf)}, or pass --features)")
    return path


def _features_command(clf: Classifier) -> str:
    return f"`lowshot features --run {clf.config['run']} --checkpoint {clf.source['checkpoint']}`"


def _new_rows(clf: Classifier, shots: torch.Tensor, cfg: AddClassConfig, device: torch.device):
    """Unit rows (K + 1, d) and scale s after imprinting (and fine-tuning) the new class as row K."""
    rows = clf.model.classifier.weight.detach().to(device)
    k = len(rows)
    task = Task(num_classes=k + 1, base_classes=np.arange(k), novel_classes=np.array([k]),
                classifier_weight=torch.cat([rows, rows.new_zeros(1, rows.shape[1])]),
                classifier_scale=float(clf.model.classifier.scale.detach()), seed=cfg.seed, device=device)
    feats, labels = shots, torch.full((len(shots),), k, dtype=torch.long, device=device)
    if cfg.fine_tune:
        known, known_labels = _known_features(clf, cfg, device)
        feats, labels = torch.cat([known, shots]), torch.cat([known_labels, labels])
    head = HEADS.create("imprint_ft", **cfg.ft_params) if cfg.fine_tune else HEADS.create("imprint")
    head.fit(feats, labels, task)
    return head.weight_, float(head.scale_)


def _known_features(clf: Classifier, cfg: AddClassConfig, device: torch.device):
    """Training rows (N, d) of the known classes with labels = their rows: cached base features + earlier additions."""
    path = _features_path(cfg, clf)
    fs = read_features(path)
    if fs.attrs.get("checkpoint_sha1") != clf.source["sha1"]:
        raise InputError(path, f"was not extracted from {clf.source['checkpoint']} (SHA-1 {clf.source['sha1']}): "
                               f"run {_features_command(clf)} or pass --features")
    ids = np.asarray(clf.class_ids)
    row_of = np.full(max(int(fs.labels.max()), int(ids.max())) + 1, -1)
    row_of[ids[ids >= 0]] = np.flatnonzero(ids >= 0)
    keep = row_of[fs.labels] >= 0
    feats = [torch.from_numpy(fs.feats[keep])] + [a["features"] for a in clf.added]
    labels = [torch.from_numpy(row_of[fs.labels[keep]])] + [
        torch.full((len(a["features"]),), clf.names.index(a["name"])) for a in clf.added]
    return torch.cat(feats).to(device), torch.cat(labels).long().to(device)


def _save(out: Path, clf: Classifier, weight: torch.Tensor, scale: float, name: str, record: Dict[str, Any]) -> None:
    state = clf.model.state_dict()
    state["classifier.weight"] = weight.float().contiguous()
    state["classifier.scale"] = torch.tensor(scale)
    save_torch(out, {"format": FORMAT, "model": state, "classes": clf.names + [name],
                     "class_ids": clf.class_ids + [-1], "input": dataclasses.asdict(clf.spec), "source": clf.source,
                     "added": clf.added + [record], "config": clf.config, "versions": versions()})


def image_paths(items: Sequence[str]) -> List[str]:
    """Files as given, folders expanded to their image files."""
    paths: List[str] = []
    for item in items:
        paths += folder_images(item) if os.path.isdir(item) else [item]
    if not paths:
        raise InputError(None, "no image given")
    return paths


def predict(checkpoint: str | os.PathLike, images: Sequence[str], top_k: int = 5,
            device: str = "auto") -> List[Dict[str, Any]]:
    """The top-k classes of each image: one dict per (image, rank) with `class` name and `probability`.

    Probabilities are the softmax of the classifier's scores over every class the model knows
    (s · cos for a cosine classifier). A file that does not decode is an `InputError`.
    """
    clf = load_classifier(checkpoint)
    paths = image_paths(images)
    pixels, _, notes = read_images(paths, clf.spec, skip_bad=False)
    for note in notes:
        print(note)
    with torch.no_grad():
        probs = clf.model.classifier(embed(clf, pixels, pick_device(device))).softmax(1).cpu()
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [{"image": path, "rank": r + 1, "class": clf.names[int(c)], "probability": float(p)}
            for path, ps, cs in zip(paths, top.values, top.indices) for r, (p, c) in enumerate(zip(ps, cs))]
