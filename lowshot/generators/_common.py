"""What every generator plug-in shares: deciding which rows to add, and their seed examples."""
from __future__ import annotations

from typing import Tuple

import torch


def plan_new_rows(labels: torch.Tensor, max_per_label: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which new rows to make: M − m for each label with m < M real rows, none for the others.

    Each new row gets a seed example drawn uniformly (with replacement) among the real rows of its
    label, as H&G's `do_generate` does. Draws come from `gen` (a CPU generator), so the plan does
    not depend on the device.

    Args:
        labels: int tensor of shape (n,), the labels of the real rows.
        max_per_label: M.
        gen: seeded CPU `torch.Generator`.

    Returns:
        (seed_rows, new_labels): int64 indices into the real rows and the labels of the new rows,
        both of shape (Σ max(0, M − m),) on the device of `labels`, grouped by ascending label.
    """
    classes, counts = torch.unique(labels.cpu(), return_counts=True)
    need = (max_per_label - counts).clamp(min=0)
    new_labels = torch.repeat_interleave(classes, need)
    order = torch.argsort(labels.cpu(), stable=True)  # real rows grouped by ascending label
    first = torch.cumsum(counts, 0) - counts
    owner = torch.repeat_interleave(torch.arange(len(classes)), need)
    pick = (torch.rand(len(owner), generator=gen, dtype=torch.float64) * counts[owner]).long()
    seed_rows = order[first[owner] + pick.clamp(max=counts[owner] - 1)]
    return seed_rows.to(labels.device), new_labels.to(labels.device, labels.dtype)
