"""Feature generators (hallucination): a registry of plug-ins.

A plug-in is pure computation, like a head: it never reads a file. It declares the run-folder
artefact of its trained model (`artefact`, a key of `lowshot.run.ARTEFACTS`, or None), and the
benchmark hands `init(saved, dim, base_rows) -> state` what that stage saved (None without an
artefact), the feature dimension and a function returning the base classes' train rows (features,
labels: for statistics). `generate(feats, labels, state, max_per_label, seed) -> (feats, labels)`:
for every label with m < max_per_label real rows it appends max_per_label − m generated rows; the
real rows come first, unchanged.
"""
from lowshot.generators.base import GENERATORS, GeneratorPlugin  # noqa: F401

from lowshot.generators import analogies, jitter, pmn  # noqa: E402,F401  (register the plug-ins)
