"""Full-network fine-tuning after imprinting one new class: BmLMz's recipe, with its freeze phase done right.

BmLMz/Few-Shot_Imprinted-Weights (CIFAR-100 "40 + 1"; `heads-and-protocols.md` §2.4): after the
new row is imprinted, every parameter (trunk, classifier rows, scale s) is trained with SGD
(lr 1e-3, momentum 0.9, no weight decay, batch 20, shuffled) for a fixed 2 epochs when n ≤ 5 and
4 when n > 5, on all base training images plus the n shots replicated ν = ⌊mean base-class
count / n⌋ times, with the per-sample weighted negative log-likelihood
L = Σ_batch a_y · (−log softmax(logits)_y), a_y = 1/B² for a base class (B base classes; the
original hard-codes 1/1600 for B = 40) and 1 for the new class, summed over the batch. Rows are
re-projected to unit norm after every step. The last epoch is kept: nothing is selected.

The "special training phase" (Qi et al.'s README: "freezing weights half the time for initial classes") is a
no-op in the original (§2.4: the alternation counter is reset before it is tested, and the saved
rows are a view, not a copy). Here it does what it says: on every other step (the 2nd, 4th, ...)
the base rows enter the forward pass detached, so their gradient is None and SGD skips them —
neither momentum nor weight decay moves them — and the re-projection leaves them alone; the
new row, s and the trunk still move on those steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lowshot.heads.maths import l2_normalise


@dataclass
class FullFTRecipe:
    """BmLMz's fine-tuning recipe (§2.4); `freeze` alternates base-row freezing step by step."""

    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 20
    epochs_small: int = 2  # n <= small_n
    epochs_large: int = 4  # n > small_n
    small_n: int = 5
    freeze: bool = True

    def epochs(self, n: int) -> int:
        """The fixed number of epochs for n shots."""
        return self.epochs_small if n <= self.small_n else self.epochs_large


class SplitCosine(nn.Module):
    """A cosine classifier whose base rows (B, d) and new row (1, d) are separate parameters.

    scores (N, B + 1) = s · cos(φ, w_c); `frozen=True` detaches the base rows, so a backward pass
    leaves their gradient None and an optimiser step (momentum, weight decay) does not touch them.
    """

    def __init__(self, base_rows: torch.Tensor, new_row: torch.Tensor, scale: float):
        super().__init__()
        self.base = nn.Parameter(l2_normalise(base_rows.detach().float()).clone())
        self.new = nn.Parameter(l2_normalise(new_row.detach().float().view(1, -1)).clone())
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, feats: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        base = self.base.detach() if frozen else self.base
        return self.scale * l2_normalise(feats) @ l2_normalise(torch.cat([base, self.new])).t()

    @torch.no_grad()
    def reproject(self, frozen: bool = False) -> None:
        """Rows back to unit norm after a step; frozen base rows are left bit for bit as they are."""
        self.new.copy_(l2_normalise(self.new))
        if not frozen:
            self.base.copy_(l2_normalise(self.base))


def bmlmz_class_weight(num_base: int, device: torch.device) -> torch.Tensor:
    """Per-class loss weights (B + 1,): 1/B² for the B base classes, 1 for the new class (label B)."""
    w = torch.full((num_base + 1,), 1.0 / num_base ** 2, device=device)
    w[num_base] = 1.0
    return w


def ft_step(trunk: nn.Module, head: SplitCosine, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
            class_weight: torch.Tensor, frozen: bool) -> float:
    """One SGD step on images x (b, C, H, W) with labels y (b,) in 0..B; returns the summed weighted NLL."""
    logits = head(trunk.forward_features(x), frozen)
    loss = (class_weight[y] * F.cross_entropy(logits, y, reduction="none")).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    head.reproject(frozen)
    return float(loss.detach())


def training_rows(base_labels: torch.Tensor, num_shots: int, num_base: int) -> torch.Tensor:
    """Indices (M,) into cat(base images, shots): every base image once, each shot ν = ⌊mean base count / n⌋ times."""
    counts = torch.bincount(base_labels, minlength=num_base).float()
    replicas = max(1, int(counts[counts > 0].mean() // num_shots))
    shots = torch.arange(len(base_labels), len(base_labels) + num_shots).repeat(replicas)
    return torch.cat([torch.arange(len(base_labels)), shots])


def fine_tune(trunk: nn.Module, head: SplitCosine, pixels: torch.Tensor, labels: torch.Tensor, num_shots: int,
              normalise: Callable[[torch.Tensor], torch.Tensor], recipe: FullFTRecipe, gen: torch.Generator) -> int:
    """Fine-tune trunk and head in place (train mode) on base images + replicated shots; returns the steps taken.

    Args:
        pixels: uint8 (N_base + n, C, H, W), the base training images then the n shots (same device as trunk).
        labels: (N_base + n,) int64, base classes 0..B−1, shots B.
        normalise: uint8 batch -> the model's float input.
        gen: a seeded CPU generator for the shuffles.
    """
    num_base = head.base.shape[0]
    rows = training_rows(labels[:-num_shots], num_shots, num_base)
    weight = bmlmz_class_weight(num_base, pixels.device)
    opt = torch.optim.SGD(list(trunk.parameters()) + list(head.parameters()), lr=recipe.lr,
                          momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    trunk.train()
    step = 0
    for _ in range(recipe.epochs(num_shots)):
        for batch in rows[torch.randperm(len(rows), generator=gen)].split(recipe.batch_size):
            batch = batch.to(pixels.device)
            ft_step(trunk, head, opt, normalise(pixels[batch]), labels[batch], weight, recipe.freeze and step % 2 == 1)
            step += 1
    trunk.eval()
    return step
