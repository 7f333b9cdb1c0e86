"""Dynamic few-shot learning without forgetting (Gidaris & Komodakis, CVPR 2018, arXiv 1804.09458).

A cosine classifier whose base rows are kept, plus a few-shot classification-weight generator
that writes a novel class's row from its shots: feature averaging plus attention over the base
rows (`model.py`). The generator (and the base rows, scale and bias with it) is trained by the
`lowshot train-weight-generator` stage (`train.py`) on cached base-class features with simulated
novel classes (the paper's stage 2; the feature extractor stays frozen).
"""
from __future__ import annotations

import torch

from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads._rows import Rows
from lowshot.heads.maths import dots, group_rows, l2_normalise, mask_absent, split_base
from lowshot.heads.weight_generator.model import (
    FewShotWeightGenerator,
    ShotGenerators,
    from_saved,
)


@HEADS.register("weight_generator")
class WeightGenerator(Head):
    """Few-shot weight generation without forgetting (Gidaris & Komodakis, CVPR 2018, arXiv 1804.09458).

    Base classes of the setup keep the generator's base rows (trained in stage 2 from the
    representation's cosine classifier); each novel class's row is generated from its training
    rows (real shots and any hallucinated ones) by feature averaging + attention over every base
    row the model has (both setups' base classes: their evaluation attends over all 389 ImageNet
    base classes); score = s · (cos(x, w) + b), −inf outside the setup's base and novel classes.
    Needs the generators of `lowshot train-weight-generator` (artefact `weight_generator`), one per
    number of shots; a cell uses the one trained with the most
    shots not above its smallest novel class (else the fewest). In an episode the support rows
    are the shots.
    """

    episodic = True
    episode_ms = 0.03  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)
    artefact = "weight_generator"
    build_model = staticmethod(from_saved)

    def __init__(self) -> None:
        """No hyper-parameters: everything comes from the trained generators."""

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "WeightGenerator":
        base, is_base = split_base(labels, task)
        novel_classes = torch.unique(labels[~is_base])
        shots, mask, counts = group_rows(feats[~is_base].float(), labels[~is_base], novel_classes)
        self.net_ = self._generator(task, int(counts.min()) if len(counts) else 1)
        every = torch.arange(len(self.net_.classes), device=self.net_.classes.device)
        weight = feats.new_zeros(task.num_classes, feats.shape[1], dtype=torch.float32)
        with torch.no_grad():
            weight[base] = self.net_.weight_base[self.net_.base_index(base.to(every.device))]
            if len(novel_classes):  # attention over every base row, as in their evaluation
                weight[novel_classes] = self.net_.novel_weights(shots, mask, every)
        self.weight_, self.present_ = weight, torch.zeros(task.num_classes, dtype=torch.bool, device=feats.device)
        self.present_[base], self.present_[novel_classes] = True, True
        return self

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """s · (cos + b) of shape (N, C); −inf for classes neither base of the setup nor with training rows."""
        self._check_fitted("weight_")
        with torch.no_grad():
            s = self.net_.logits(feats.to(self.weight_.device).float(), self.weight_)
        return mask_absent(s, self.present_)

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """s · (cos + b) (E, Q, W) of a batch of episodes: support (E, W, S, d), query (E, Q, d)."""
        net, rows = self._episode_rows(support, task)
        with torch.no_grad():
            q = Rows.of(query.float())  # unit queries, not written out
            return (net.scale_cls * (q.dots(rows) / q.sq.sqrt().clamp_min(1e-12)[:, None] + net.bias)).transpose(1, 2)

    def episode_predictions(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Arg-max (E, Q) of s · x·w, which drops 1 / ‖x‖ and s · b (the same for every class)."""
        net, rows = self._episode_rows(support, task)
        with torch.no_grad():
            return dots(net.scale_cls * rows, query.float()).max(1).indices

    def _episode_rows(self, support: torch.Tensor, task: Task):
        """The generator for the episodes' shots and their generated unit rows (E, W, d)."""
        net = self._generator(task, support.shape[2])
        every = torch.arange(len(net.classes), device=net.classes.device)
        with torch.no_grad():
            mask = support.new_ones(support.shape[:-1], dtype=torch.bool)
            return net, l2_normalise(net.novel_weights(support.float(), mask, every))

    def _generator(self, task: Task, shots: int) -> FewShotWeightGenerator:
        """The handed-over generator trained for `shots` shots."""
        generators: ShotGenerators = self.trained_model(task)
        return generators.for_shots(shots)
