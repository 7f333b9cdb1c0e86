"""Prototype matching networks with a meta-learned hallucinator (Wang et al., CVPR 2018, arXiv 1801.05401).

Matching networks attend over every support example, so a class with many examples (a base class
of the generalised benchmark) draws attention away from a class with one (a novel class). Prototype
matching networks (PMN) keep the full-context embeddings of matching networks but attend over class
prototypes: the mean full-context embedding of each class's examples. A hallucinator G(x, z)
(`lowshot/generators/pmn.py`) tops every novel class up to n_aug examples before the prototypes are
taken (Wang et al.: G adds n_gen examples to a class until it has exactly n_aug); G and the network
(`model.py`) are trained together on base-class episodes by `lowshot train-pmn` (`train.py`), so G
learns to make examples that help this classifier.
"""
from __future__ import annotations

from typing import Optional

import torch

from lowshot.heads.base import HEADS, Head, Task
from lowshot.heads.matching.model import base_support_rows
from lowshot.heads.maths import generator, split_base
from lowshot.heads.pmn_hallucinator.model import PrototypeMatchingNet, from_saved


@HEADS.register("pmn_hallucinator")
class PMNHallucinator(Head):
    """Prototype matching networks with hallucination (Wang, Girshick, Hebert & Hariharan, CVPR 2018, arXiv 1801.05401).

    The support set is `support_per_class` random train rows of each base class, then the novel
    rows (real shots and any a generator plug-in added), then rows G(seed, z) that top each novel class
    up to `n_aug` rows (default: the number the model was trained with); it is encoded once by the BiLSTM and averaged
    into one prototype per class; a test feature's score is its log-probability by attention over
    the prototypes. Needs the network of `lowshot train-pmn` (artefact `pmn`).
    Traps: returns log-probabilities; G's noise and seeds are drawn from the cell's seed. In an episode
    (no base rows) every support class is novel and is topped up by G.
    """

    episodic = True
    episode_ms = 4.4  # per 5-way 1-shot episode, batched, one thread (docs/speed.md)
    episode_bytes = 1 << 22  # its LSTM activations are 4d wide per query: a few dozen 5-way episodes at a time
    artefact = "pmn"
    build_model = staticmethod(from_saved)

    def __init__(self, support_per_class: int = 20, n_aug: Optional[int] = None):
        self.support_per_class = support_per_class
        self.n_aug = n_aug

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "PMNHallucinator":
        net: PrototypeMatchingNet = self.trained_model(task)
        self.net_ = net
        _, is_base = split_base(labels, task)
        base = base_support_rows(labels.cpu(), is_base.cpu(), self.support_per_class, task.seed)
        rows = torch.cat([base, (~is_base).nonzero()[:, 0].cpu()]).to(feats.device)
        support, support_labels = feats[rows].float(), labels[rows]
        n_aug = int(net.n_aug) if self.n_aug is None else self.n_aug
        with torch.no_grad():
            support, support_labels = net.augment(support, support_labels, torch.unique(labels[~is_base]), n_aug,
                                                  generator(task.seed, torch.device("cpu")))
            self.classes_ = torch.unique(support_labels)
            self.protos_ = net.prototypes(support, support_labels, self.classes_)
        self.num_classes_ = task.num_classes
        return self

    def episode_scores(self, support: torch.Tensor, query: torch.Tensor, task: Task) -> torch.Tensor:
        """Log-probabilities (E, Q, W) of a batch of episodes: support (E, W, S, d), query (E, Q, d); each episode
        as `fit` + `scores` make it alone (G's plan and noise drawn from the task's seed)."""
        net: PrototypeMatchingNet = self.trained_model(task)
        n_aug = int(net.n_aug) if self.n_aug is None else self.n_aug
        with torch.no_grad():
            return net.episode_log_probs(support.float(), query.float(), n_aug, generator(task.seed, torch.device("cpu")))

    def scores(self, feats: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Log-probabilities of shape (N, C), −inf for classes without support; queries in batches."""
        self._check_fitted("protos_")
        out = self.protos_.new_full((len(feats), self.num_classes_), float("-inf"))
        with torch.no_grad():
            for start in range(0, len(feats), batch_size):
                x = feats[start:start + batch_size].to(self.protos_.device).float()
                out[start:start + len(x), self.classes_] = self.net_.log_probs(x, self.protos_)
        return out
