"""Backbones (ResNet-10/18/34/50/101) and the classifiers on top of them."""
from lowshot.backbones.base import BACKBONES, CLASSIFIERS  # noqa: F401

from lowshot.backbones import classifiers, resnet  # noqa: E402,F401  (fill the registries)
from lowshot.backbones.model import Model, build_model  # noqa: E402,F401
