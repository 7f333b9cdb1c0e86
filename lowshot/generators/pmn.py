"""Wang et al.'s meta-learned hallucinator G(x, z) (plug-in `pmn`).

Wang, Girshick, Hebert & Hariharan, "Low-shot Learning from Imaginary Data", CVPR 2018 (arXiv
1801.05401). G maps a seed example x and a noise vector z to a new example of x's class; it is
trained end to end with prototype matching networks by `lowshot train-pmn`
(`lowshot/train_pmn.py`), so it learns to make examples that help the classifier, not realistic
ones. This module holds G and the plug-in that lets any head (e.g. `logreg`) train on G's output,
like the analogy generator. Trap: G starts as the identity on x (it copies the seed), so an
untrained G adds duplicates, not noise.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lowshot.generators import GENERATORS, GeneratorPlugin
from lowshot.generators._common import plan_new_rows

HIDDEN = 512  # Wang et al.: a hidden width of 512 (for 512-d ResNet-10 features)


class Hallucinator(nn.Module):
    """G(x, z) = W₃ σ(W₂ σ(W₁ [x, z] + b₁) + b₂) + b₃, σ = LeakyReLU(0.01), z ~ N(0, I_d).

    Three fully connected layers (2d → hidden → hidden → d) with leaky ReLU, as Wang et al.
    describe. Every weight starts as a (rectangular) identity and every bias at 0 (their
    block-diagonal identity initialisation), so with hidden ≥ 2d and a non-negative seed (a
    post-ReLU feature) G(x, z) = x at the start of training.
    """

    def __init__(self, dim: int, hidden: int = HIDDEN):
        super().__init__()
        self.dim = dim
        self.fc1, self.fc2, self.fc3 = nn.Linear(2 * dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, dim)
        for layer in (self.fc1, self.fc2, self.fc3):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """New examples (B, d) from seeds x (B, d) and noise z (B, d)."""
        act = nn.functional.leaky_relu
        return self.fc3(act(self.fc2(act(self.fc1(torch.cat([x, z], dim=1))))))

    def hallucinate(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """G(x, z) of shape (B, d) for seeds x (B, d), with z drawn from `gen` (a CPU generator: same rows on any device)."""
        z = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
        return self(x, z)


@dataclass
class PMNState:
    """A loaded hallucinator and `key`, the digest of its model file (joins a result's identity)."""

    model: Hallucinator
    key: str


def model_path(path) -> Path:
    """The model file: `path`, except the benchmark's default generator file, which means the run's `train-pmn` output."""
    from lowshot.run import RunFolder
    p = Path(path) if path else Path("runs/demo/generator/generator.pt")
    return RunFolder(p.parent.parent).pmn_model if (p.name, p.parent.name) == ("generator.pt", "generator") else p


def init(path, device, train) -> PMNState:
    """Load the hallucinator of a `lowshot train-pmn` file onto `device`; its dimension must match `train`'s."""
    from lowshot.train_pmn import load_pmn
    p = model_path(path)
    net = load_pmn(p, train.dim)
    return PMNState(net.hallucinator.to(device).eval(), hashlib.sha1(p.read_bytes()).hexdigest()[:16])


@torch.no_grad()
def generate(feats: torch.Tensor, labels: torch.Tensor, state: PMNState, max_per_label: int, seed: int):
    """Real rows first (unchanged), then M − m rows G(seed, z) for each label with m < M real rows.

    Args:
        feats: (n, d); labels: (n,). Seeds are uniform among a label's real rows; z ~ N(0, I).
    Returns:
        (feats, labels) of shapes (n + new, d) and (n + new,).
    """
    gen = torch.Generator().manual_seed(int(seed))
    rows, new_labels = plan_new_rows(labels, max_per_label, gen)
    new = state.model.hallucinate(feats[rows].float(), gen).to(feats.dtype)
    return torch.cat([feats, new]), torch.cat([labels, new_labels])


GENERATORS.register("pmn")(GeneratorPlugin(init, generate))
