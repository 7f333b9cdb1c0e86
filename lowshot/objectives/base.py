"""The objectives registry and the types its entries share (`lowshot.objectives` re-exports them)."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lowshot.errors import InputError
from lowshot.registry import Registry

OBJECTIVES = Registry("training objective")

Batch = Tuple[torch.Tensor, torch.Tensor]


class Objective:
    """Base class: the batches of an epoch and the loss of a batch.

    `setup` is called once before training; `parameters()` are trained with the network (their own
    optimiser group, no weight decay); `state_dict()` is saved in checkpoints and restored on resume.
    """

    uses_classifier = False  # True: the loss trains model.classifier (base accuracy is then evaluated)

    def setup(self, feed, base_classes: np.ndarray, dim: int, seed: int, device: torch.device) -> None:
        """Remember the base classes (sorted label ids), the embedding width `dim` and the seed."""
        self.base_, self.dim_, self.seed_, self.device_ = np.asarray(base_classes), dim, seed, device

    def parameters(self) -> List[torch.nn.Parameter]:
        return []

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def steps(self, feed, batch_size: int) -> int:
        """Optimiser steps per epoch."""
        return feed.steps(batch_size)

    def batches(self, model, feed, epoch: int, batch_size: int) -> Iterator[Batch]:
        """The epoch's (images, labels) batches; default: the feed's seeded shuffled order."""
        return feed.train_batches(epoch, batch_size)

    def loss(self, scores: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss of a batch: scores (B, C), pooled features (B, d), labels (B,)."""
        raise NotImplementedError


@OBJECTIVES.register("ce")
class CrossEntropy(Objective):
    """Softmax cross-entropy of the classifier's scores (H&G's representation training)."""

    uses_classifier = True

    def loss(self, scores: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(scores, labels)


class GroupSampler:
    """Rows of a training set grouped (by class or by cluster), for batches of whole groups.

    Args:
        groups: (N,) long group id of every row, in 0..G−1.
        num_groups: G.
    """

    def __init__(self, groups: torch.Tensor, num_groups: int):
        from lowshot.heads.maths import group_rows
        rows, real, self.counts = group_rows(torch.arange(len(groups))[:, None], groups, torch.arange(num_groups), 1)
        self.members = rows[..., 0].masked_fill(~real, -1)  # (G, width) row ids in order, −1 padding

    def draw(self, chosen: torch.Tensor, per_group: int, gen: torch.Generator) -> torch.Tensor:
        """Row indices (len(chosen), per_group): distinct rows of each chosen group (with replacement
        only for a group with fewer than `per_group` rows)."""
        mask = (self.members[chosen] >= 0).float()
        small = self.counts[chosen] < per_group
        pick = torch.empty(len(chosen), per_group, dtype=torch.long)
        if (~small).any():
            pick[~small] = torch.multinomial(mask[~small], per_group, replacement=False, generator=gen)
        if small.any():
            pick[small] = torch.multinomial(mask[small], per_group, replacement=True, generator=gen)
        return torch.gather(self.members[chosen], 1, pick)


class Episodic(Objective):
    """An objective whose batches are drawn group by group (`draw`), `images` rows per batch.

    An epoch has ⌈N / images⌉ batches (about the images of one `ce` epoch); the draws and the
    augmentation come from the feed's per-epoch seed, so a resumed run draws the same batches.
    """

    images = 128

    def steps(self, feed, batch_size: int) -> int:
        return math.ceil(len(feed) / self.images)

    def batches(self, model, feed, epoch: int, batch_size: int) -> Iterator[Batch]:
        from lowshot.data.feeds import MemoryFeed, epoch_seed
        if not isinstance(feed, MemoryFeed) or feed.opts.ctx.world > 1:
            raise InputError(None, f"objective {type(self).__name__}: episodic batches need an in-memory data set "
                                   "(glyphs, cifar100) and one training process")
        gen = torch.Generator().manual_seed(epoch_seed(feed.opts.seed, epoch))
        self.start_epoch(model, feed, epoch)
        for _ in range(self.steps(feed, batch_size)):
            yield feed.rows(self.draw(gen).reshape(-1), gen)

    def start_epoch(self, model, feed, epoch: int) -> None:
        """Work before an epoch's first batch (Magnet: re-cluster the training set)."""

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        """Row indices of the next batch, shaped (groups, rows per group)."""
        raise NotImplementedError


def base_positions(labels: torch.Tensor, base: np.ndarray) -> torch.Tensor:
    """Position of each label (B,) in the sorted base classes `base`; an `InputError` for other labels."""
    classes = torch.as_tensor(base, device=labels.device)
    pos = torch.searchsorted(classes, labels).clamp(max=len(classes) - 1)
    if not torch.equal(classes[pos], labels):
        raise InputError(None, "a training label is not a base class")
    return pos
