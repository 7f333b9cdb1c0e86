"""The analogy-based feature generator of Hariharan & Girshick (plug-in `analogies`).

Hariharan & Girshick, "Low-shot Visual Recognition by Shrinking and Hallucinating Features",
ICCV 2017 (arXiv 1606.02819). Base-class centroids are mined for analogies "A is to B as C is
to D"; an MLP G learns to complete them, B̂ = G(A, C, D). A novel example x then yields new
examples G(x, c, d) for two centroids c, d of a random base class. `lowshot generate` trains G
(see `lowshot.stages.generate`); this module holds the model and the plug-in that loads and uses it.
Trap: the final ReLU keeps outputs non-negative, like the post-ReLU features it imitates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lowshot.errors import InputError
from lowshot.generators.base import GENERATORS, GeneratorPlugin
from lowshot.generators.analogies.model import HIDDEN, AnalogyGenerator
from lowshot.heads.maths import plan_new_rows

GENERATE_BATCH = 1000


@dataclass
class AnalogyState:
    """A built generator: the model and the centroids (num_base · k, d) grouped by base class."""

    model: AnalogyGenerator
    centroids: torch.Tensor
    clusters_per_class: int


def init(saved, dim: int, base_rows) -> AnalogyState:
    """G and its centroids from what `lowshot generate` saved; it must take `dim`-dimensional features."""
    if int(saved["feature_dim"]) != dim:
        raise InputError(None, f"the analogy generator was trained on d={int(saved['feature_dim'])} features, "
                               f"these have d={dim}: run `lowshot generate` again on this run's features")
    model = AnalogyGenerator(int(saved["feature_dim"]), int(saved.get("hidden", HIDDEN)))
    model.load_state_dict(saved["model_state"])
    return AnalogyState(model.eval(), saved["centroids"].float(), int(saved["clusters_per_class"]))


@torch.no_grad()
def generate(feats: torch.Tensor, labels: torch.Tensor, state: AnalogyState, max_per_label: int, seed: int):
    """Real rows first (unchanged), then M − m hallucinated rows for each label with m < M.

    Each new row: a seed among its label's real rows, a uniform base class, two uniform
    (independent) centroids c, d of that class; the row is G(seed, c, d).

    Args:
        feats: float tensor of shape (n, d); labels: int tensor of shape (n,). Not modified.

    Returns:
        (feats, labels) of shapes (n + new, d) and (n + new,).
    """
    gen = torch.Generator().manual_seed(int(seed))
    rows, new_labels = plan_new_rows(labels, max_per_label, gen)
    k = state.clusters_per_class
    num_base = len(state.centroids) // k
    base = torch.randint(num_base, (len(rows),), generator=gen)
    c = (base * k + torch.randint(k, (len(rows),), generator=gen)).to(feats.device)
    d = (base * k + torch.randint(k, (len(rows),), generator=gen)).to(feats.device)
    cent, model = state.centroids.to(feats.device), state.model.to(feats.device)
    new = [model(feats[rows[s:s + GENERATE_BATCH]].float(), cent[c[s:s + GENERATE_BATCH]],
                 cent[d[s:s + GENERATE_BATCH]]).to(feats.dtype)
           for s in range(0, len(rows), GENERATE_BATCH)]
    return torch.cat([feats, *new]), torch.cat([labels, new_labels])


GENERATORS.register("analogies")(GeneratorPlugin("generator", init, generate))
