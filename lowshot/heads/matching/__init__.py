"""Matching networks on cached features (H&G §9, their `matching_network.py`): the `matching` head.

The network (`model.py`) is trained episodically on the base classes by `lowshot train-matching`
(`train.py`); the head is handed that network (`task.model`, loaded by the benchmark), encodes one
support set per cell (base rows + tiled novel shots) and scores test features by attention over it.
At test time 20 support rows per class by default [H&G: 100]; cost grows as N × S × d × (2K + 1).
"""
from __future__ import annotations

import torch

from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads.matching.model import (
    MatchingNet,
    base_support_rows,
    class_log_probs,
    from_saved,
    group_support,
)
from lowshot.heads.maths import split_base


@HEADS.register("matching")
class Matching(Head):
    """Matching networks with full-context embeddings (Vinyals et al., NeurIPS 2016, arXiv 1606.04080), H&G §9.

    The support set is `support_per_class` random train rows of each base class followed by the
    novel shots tiled to about `support_per_class` per class, encoded once by the BiLSTM; a test
    feature's class probability is its attention mass on that class's entries. Needs the network
    of `lowshot train-matching` (artefact `matching`). Traps: returns log-probabilities; `scores`
    costs N × S × d × (2K + 1) (H&G use support_per_class = 100).
    """

    artefact = "matching"
    build_model = staticmethod(from_saved)

    def __init__(self, support_per_class: int = 20):
        self.support_per_class = support_per_class

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "Matching":
        self.net_: MatchingNet = self.trained_model(task)
        support, labels = self._support(feats.float(), labels, task)
        with torch.no_grad():
            self.g_ = self.net_.encode_support(support)
        self.grouped_, self.num_classes_ = group_support(self.g_, labels), task.num_classes
        return self

    def scores(self, feats: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Log-probabilities of shape (N, C), −inf for classes without support; queries in batches."""
        self._check_fitted("g_")
        with torch.no_grad():
            out = [class_log_probs(self.net_.embed_queries(x, self.g_), self.grouped_, self.num_classes_)
                   for x in feats.to(self.g_.device).float().split(batch_size)]
        return torch.cat(out) if out else self.g_.new_zeros(0, self.num_classes_)

    def _support(self, feats: torch.Tensor, labels: torch.Tensor, task: Task):
        """Support (S, d) and labels (S,): base rows grouped by class, then the novel block tiled (H&G)."""
        _, is_base = split_base(labels, task)
        labels_cpu = labels.cpu()
        base = base_support_rows(labels_cpu, is_base.cpu(), self.support_per_class, task.seed)
        novel = (~is_base).nonzero()[:, 0].cpu()
        copies = -(-self.support_per_class // torch.bincount(labels_cpu[novel])[labels_cpu[novel]])  # ceil(spc / m)
        reps = torch.arange(int(copies.max()) if len(novel) else 0)
        rows = torch.cat([base, novel.expand(len(reps), -1)[reps[:, None] < copies]]).to(feats.device)
        return feats[rows], labels[rows]
