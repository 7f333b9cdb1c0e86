"""The analogy generator G(a, c, d) of Hariharan & Girshick (ICCV 2017, arXiv 1606.02819), §8.5.

Trained by `lowshot generate` (`train.py`, on mined analogies between base-class centroids); used
by the `analogies` plug-in (`__init__.py`). Trap: the final ReLU keeps outputs non-negative, like
the post-ReLU features it imitates.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

HIDDEN = 512


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
