"""The analogy-based feature generator of Hariharan & Girshick (plug-in `analogies`).

Hariharan & Girshick, "Low-shot Visual Recognition by Shrinking and Hallucinating Features",
ICCV 2017 (arXiv 1606.02819). Base-class centroids are mined for analogies "A is to B as C is
to D"; an MLP G learns to complete them, B̂ = G(A, C, D). A novel example x then yields new
examples G(x, c, d) for two centroids c, d of a random base class. `lowshot generate` trains G
(see `lowshot.generate`); this module holds the model and the plug-in that loads and uses it.
Trap: the final ReLU keeps outputs non-negative, like the post-ReLU features it imitates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict

import torch
from torch import nn

from lowshot.errors import InputError
from lowshot.generators import GENERATORS, GeneratorPlugin
from lowshot.generators._common import plan_new_rows

HIDDEN = 512
GENERATE_BATCH = 1000


class AnalogyGenerator(nn.Module):
    """G(a, c, d) = ReLU(fc3(ReLU(fc2(ReLU(fc1([a, c, d])))))), hidden width 512 (H&G §8.5)."""

    def __init__(self, dim: int, hidden: int = HIDDEN):
        super().__init__()
        self.fc1 = nn.Linear(3 * dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, dim)

    def forward(self, a: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """a, c, d of shape (B, dim) -> B̂ of shape (B, dim)."""
        h = torch.relu(self.fc1(torch.cat([a, c, d], dim=1)))
        return torch.relu(self.fc3(torch.relu(self.fc2(h))))


@torch.no_grad()
def analogy_errors(model: AnalogyGenerator, centroids: torch.Tensor, quads: torch.Tensor,
                   chunk: int = 65536) -> Dict[str, float]:
    """How well analogies are completed: mean squared error (per element) against B.

    Args:
        centroids: (num_centroids, d); quads: (M, 4) rows (A, B, C, D) into it.

    Returns:
        {"generator": G(A, C, D), "copy_seed": A, "a_minus_c_plus_d": A − C + D}, each the mean
        over M × d elements. A G that learned the analogies sits well below "copy_seed".
    """
    sums = torch.zeros(3, dtype=torch.float64, device=centroids.device)
    for s in range(0, len(quads), chunk):
        a, b, c, d = (centroids[quads[s:s + chunk, i]] for i in range(4))
        guesses = (model(a, c, d), a, a - c + d)
        sums += torch.stack([(g - b).pow(2).sum().double() for g in guesses])
    values = (sums / (len(quads) * centroids.shape[1])).tolist()
    return dict(zip(("generator", "copy_seed", "a_minus_c_plus_d"), values))


@dataclass
class AnalogyState:
    """A loaded generator: the model, the centroids (num_base · k, d) grouped by base class, and
    `key`, the hash of everything it was trained from (for result identities)."""

    model: AnalogyGenerator
    centroids: torch.Tensor
    clusters_per_class: int
    key: str = ""


def load_generator_file(path) -> dict:
    """Read `generator.pt` safely (`weights_only=True`), with one clear error when it is bad."""
    if path is None or not os.path.exists(path):
        raise InputError(path, "generator not found (run `lowshot generate` first)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise InputError(path, f"cannot load generator ({e.__class__.__name__})") from None


def init(path, device, train) -> AnalogyState:
    """Load `generator.pt` onto `device`; its feature dimension must match the train features."""
    obj = load_generator_file(path)
    if int(obj["feature_dim"]) != train.dim:
        raise InputError(path, f"generator was trained on d={int(obj['feature_dim'])} features, "
                               f"these have d={train.dim}")
    model = AnalogyGenerator(int(obj["feature_dim"]), int(obj.get("hidden", HIDDEN)))
    model.load_state_dict(obj["model_state"])
    model.to(device).eval()
    return AnalogyState(model, obj["centroids"].float().to(device), int(obj["clusters_per_class"]),
                        str(obj.get("key", "")))


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
    cent = state.centroids
    new = [state.model(feats[rows[s:s + GENERATE_BATCH]].float(), cent[c[s:s + GENERATE_BATCH]],
                       cent[d[s:s + GENERATE_BATCH]]).to(feats.dtype)
           for s in range(0, len(rows), GENERATE_BATCH)]
    return torch.cat([feats, *new]), torch.cat([labels, new_labels])


GENERATORS.register("analogies")(GeneratorPlugin(init, generate))
