"""Models of other libraries as representations: `timm:<name>` and `torchvision:<name>`.

The library builds the model with random weights and its classifier removed; weights come only
from a local file (safetensors, or a state dict read with `weights_only=True`), never from a
download. `ExternalTrunk` has the surface of lowshot's own backbones (`forward_features(x)` ->
pooled pre-logit features (B, num_features), `num_features`) plus the model's own preprocessing.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lowshot.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preset
from lowshot.errors import InputError

LIBRARIES = ("timm", "torchvision")
SAVE_HINT = {
    "timm": "python -c \"import timm, safetensors.torch as st; st.save_file(timm.create_model('{name}', "
            "pretrained=True).state_dict(), '{name}.safetensors')\"",
    "torchvision": "python -c \"import torch, torchvision; torch.save(torchvision.models.get_model('{name}', "
                   "weights='DEFAULT').state_dict(), '{name}.pt')\"",
}


@dataclass(frozen=True)
class Preprocessing:
    """A model's evaluation input: short side resized to `resize_size`, centre crop `image_size`, mean/std.

    Images held in memory as (B, C, H, W) floats in [−1, 1] (lowshot's small data sets) go through
    the same steps on the device (`memory`); image files through a `Preset` in DataLoader workers.
    """

    image_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD

    def _mode(self) -> v2.InterpolationMode:
        return v2.InterpolationMode(self.interpolation)

    def preset(self) -> Preset:
        """PIL image -> uint8 (3, S, S), and the normalisation, for image files."""
        t = v2.Compose([v2.Resize(self.resize_size, self._mode(), antialias=True), v2.CenterCrop(self.image_size),
                        v2.PILToTensor()])
        return Preset(t, t, tuple(self.mean), tuple(self.std))

    def memory(self, x: torch.Tensor) -> torch.Tensor:
        """In-memory images (B, C, H, W) in [−1, 1] (C = 1 or 3) -> normalised (B, 3, S, S)."""
        x = ((x.float() + 1) / 2).expand(-1, 3, -1, -1) if x.shape[1] == 1 else (x.float() + 1) / 2
        x = TF.resize(x, [self.resize_size], self._mode(), antialias=True)
        return TF.normalize(TF.center_crop(x, [self.image_size]), list(self.mean), list(self.std))

    def override(self, changes: Dict[str, Any]) -> "Preprocessing":
        """A copy with `changes`; a new `image_size` alone keeps the model's resize/crop ratio."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise InputError(None, f"preprocess: unknown keys {unknown}; known: {sorted(fields)}")
        if "image_size" in changes and "resize_size" not in changes:
            changes = {**changes, "resize_size": math.floor(changes["image_size"] * self.resize_size / self.image_size)}
        return dataclasses.replace(self, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})


class ExternalTrunk(nn.Module):
    """A library model without its classifier: `forward_features(x)` -> (B, num_features) pre-logit features.

    Args:
        model: the library model, returning pooled pre-logit features.
        num_features: their width d.
        preprocessing: the model's input pipeline.
        from_memory: inputs are lowshot's in-memory images in [−1, 1] (preprocessed here), not
            already preprocessed image files.
    """

    def __init__(self, model: nn.Module, num_features: int, preprocessing: Preprocessing, from_memory: bool):
        super().__init__()
        self.model, self.num_features = model, num_features
        self.preprocessing, self.from_memory = preprocessing, from_memory

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocessing.memory(x) if self.from_memory else x)


def parse_spec(spec: str) -> Tuple[str, str]:
    """`"timm:resnet18"` -> `("timm", "resnet18")`; `InputError` for anything else."""
    library, _, name = spec.partition(":")
    if library not in LIBRARIES or not name:
        raise InputError(None, f"--backbone {spec!r}: an external model is timm:<model name> or torchvision:<model name>")
    return library, name


def _timm(name: str) -> Tuple[nn.Module, int, Optional[str], Preprocessing]:
    """A timm model with `num_classes=0` (pooled pre-logits), its classifier's name and its data config."""
    try:
        import timm
    except ImportError:
        raise InputError(None, "timm is not installed: pip install 'lowshot[timm]'") from None
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:
        raise InputError(None, f"timm: {e} (see timm.list_models())") from None
    cfg = timm.data.resolve_data_config({}, model=model)
    size = cfg["input_size"][-1]
    prep = Preprocessing(size, math.floor(size / cfg["crop_pct"] + 1e-6), cfg["interpolation"],
                         tuple(cfg["mean"]), tuple(cfg["std"]))
    return model, model.num_features, model.pretrained_cfg.get("classifier"), prep


def _torchvision(name: str) -> Tuple[nn.Module, int, Optional[str], Preprocessing]:
    """A torchvision model whose last `nn.Linear` (the classifier) is replaced by `nn.Identity`."""
    import torchvision
    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError:
        raise InputError(None, f"torchvision has no model {name!r} (see torchvision.models.list_models())") from None
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError(None, f"torchvision:{name} has no linear classifier to remove")
    parent, _, child = linears[-1].rpartition(".")
    num_features = model.get_submodule(linears[-1]).in_features
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model, num_features, linears[-1], _torchvision_preprocessing(name)


def _torchvision_preprocessing(name: str) -> Preprocessing:
    """The evaluation transform of the model's default weights (metadata only: nothing is downloaded)."""
    import torchvision
    try:
        t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, KeyError, AttributeError):
        return Preprocessing()
    return Preprocessing(t.crop_size[0], t.resize_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a weights file: `.safetensors`, or `torch.save` of a state dict (also under "state_dict"/"model")."""
    if not os.path.isfile(path):
        raise InputError(path, "weights file not found")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the readers raise many types for a bad file
        raise InputError(path, f"cannot read weights ({e.__class__.__name__}): give a .safetensors file "
                               "or a state dict saved with torch.save") from None
    for key in ("state_dict", "model"):
        state = state[key] if isinstance(state, dict) and isinstance(state.get(key), dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "is not a state dict (a dict of tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], classifier: Optional[str], path: str,
                 spec: str) -> None:
    """Load `state` into `model` strictly, except that the removed classifier's tensors may be in the file."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in own and not (classifier and k.startswith(classifier + "."))]
    shape = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in own if k in state
             and state[k].shape != own[k].shape]
    problems = [f"{len(v)} {what} (e.g. {v[0]})" for v, what in ((missing, "model tensors missing"),
                (extra, "unknown tensors"), (shape, "of another shape")) if v]
    if problems:
        raise InputError(path, f"is not a weights file of {spec}: {'; '.join(problems)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def check_source(spec: str, weights: Optional[str], random_init: bool) -> Tuple[str, str]:
    """(library, model name) of `spec`; `InputError` unless exactly one of a weights file and `random_init` is given."""
    library, name = parse_spec(spec)
    if weights and random_init:
        raise InputError(None, f"--backbone {spec}: give --weights FILE or --random-init, not both")
    if not weights and not random_init:
        raise InputError(None, f"--backbone {spec} needs --weights FILE (nothing is downloaded at run time; save the "
                               f"weights once where there is a network: {SAVE_HINT[library].format(name=name)}) "
                               "or --random-init")
    return library, name


def build_external(spec: str, weights: Optional[str], random_init: bool, preprocess: Dict[str, Any],
                   from_memory: bool) -> ExternalTrunk:
    """The external model `spec` with the weights of the file `weights` (or random ones if `random_init`).

    Args:
        spec: "timm:<name>" or "torchvision:<name>".
        preprocess: overrides of the model's `Preprocessing` fields.
        from_memory: see `ExternalTrunk`.
    """
    library, name = check_source(spec, weights, random_init)
    model, num_features, classifier, prep = (_timm if library == "timm" else _torchvision)(name)
    if weights:
        load_weights(model, read_state_dict(weights), classifier, weights, spec)
    return ExternalTrunk(model, num_features, prep.override(preprocess), from_memory)
