"""The backbone and classifier registries (`lowshot.backbones` re-exports them)."""
from lowshot.registry import Registry

BACKBONES = Registry("backbone")
CLASSIFIERS = Registry("classifier")
