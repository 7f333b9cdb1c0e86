"""Prototype matching networks with a meta-learned hallucinator (Wang et al., CVPR 2018, arXiv 1801.05401).

Matching networks attend over every support example, so a class with many examples (a base class
of the generalised benchmark) draws attention away from a class with one (a novel class). Prototype
matching networks (PMN) keep the full-context embeddings of matching networks but attend over class
prototypes: the mean full-context embedding of each class's examples. A hallucinator G(x, z)
(`lowshot/generators/pmn.py`) tops every novel class up to n_aug examples before the prototypes are
taken (Wang et al.: G adds n_gen examples to a class until it has exactly n_aug); G and the network are trained together on base-class episodes by `lowshot train-pmn`
(`lowshot/train_pmn.py`), so G learns to make examples that help this classifier.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from lowshot.generators._common import plan_new_rows
from lowshot.generators.pmn import HIDDEN, Hallucinator
from lowshot.heads import HEADS, Head, Task
from lowshot.heads._common import (class_means, generator, memoised_model, model_file_digest, split_base,
                                    trained_model_path)
from lowshot.heads.matching import MatchingNet, base_support_rows, one_thread


class PrototypeMatchingNet(nn.Module):
    """PMN on d-dimensional features: the matching network's g and f, attention over prototypes, plus G.

    g(S) = S + fwd + bwd (a bidirectional LSTM over the support examples read as one sequence);
    prototype p_c = mean of g over class c's examples (real and hallucinated); f(x) = K attention-LSTM
    steps from h = x reading over the prototypes (not the examples); p(y = c | x) = softmax_c(f(x)·p̂_c),
    p̂ = p / (‖p‖ + 1e-5) (only the support side normalised, as this package's matching network does).
    `n_aug` (a buffer) is the number of examples G tops each novel class up to, as trained (0: no G).
    """

    def __init__(self, dim: int, K: int = 5, hidden: int = HIDDEN, n_aug: int = 10):
        super().__init__()
        self.matching = MatchingNet(dim, K)
        self.hallucinator = Hallucinator(dim, hidden)
        self.register_buffer("n_aug", torch.tensor(int(n_aug)))

    def augment(self, support: torch.Tensor, labels: torch.Tensor, novel: torch.Tensor, n_aug: int,
                gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """Support (S, d) and labels (S,), then n_aug − m rows G(seed, z) for each class in `novel` (K,) with
        m < n_aug rows; seeds uniform among the class's rows (`plan_new_rows`, draws from the CPU `gen`)."""
        rows = torch.isin(labels, novel).nonzero()[:, 0]
        if n_aug <= 0 or not len(rows):
            return support, labels
        seeds, new_labels = plan_new_rows(labels[rows], n_aug, gen)
        return (torch.cat([support, self.hallucinator.hallucinate(support[rows[seeds]], gen)]),
                torch.cat([labels, new_labels]))

    def prototypes(self, support: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Prototypes (P, d): class means of g(S) for support (S, d), labels (S,) in the sorted `classes` (P,)."""
        g = self.matching.encode_support(support)
        return class_means(g, torch.searchsorted(classes, labels), len(classes))[0]

    def log_probs(self, queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """log softmax_c(f(x)·p̂_c) of shape (Q, P) for queries (Q, d) and prototypes (P, d)."""
        f = self.matching.embed_queries(queries, protos)
        p_hat = protos / (protos.norm(dim=1, keepdim=True) + 1e-5)
        return torch.log_softmax(f @ p_hat.t(), dim=1)

    def forward(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, novel: torch.Tensor,
                gen: torch.Generator) -> torch.Tensor:
        """Log-probabilities (Q, m) of queries (Q, d) over the m classes 0..m−1 of support (S, d), labels (S,);
        classes in `novel` are first topped up to n_aug examples by G."""
        support, labels = self.augment(support, labels, novel, int(self.n_aug), gen)
        classes = torch.unique(labels)
        return self.log_probs(queries, self.prototypes(support, labels, classes))


@HEADS.register("pmn_hallucinator")
class PMNHallucinator(Head):
    """Prototype matching networks with hallucination (Wang, Girshick, Hebert & Hariharan, CVPR 2018, arXiv 1801.05401).

    The support set is `support_per_class` random train rows of each base class, then the novel
    rows (real shots and any a generator plug-in added), then rows G(seed, z) that top each novel class
    up to `n_aug` rows (default: the number the model was trained with); it is encoded once by the BiLSTM and averaged
    into one prototype per class; a test feature's score is its log-probability by attention over
    the prototypes. Needs `lowshot train-pmn` (`model`, default <run>/heads/pmn_hallucinator.pt).
    Traps: returns log-probabilities; G's noise and seeds are drawn from the cell's seed. In an episode
    (no base rows) every support class is novel and is topped up by G.
    """

    episodic = True

    def __init__(self, support_per_class: int = 20, n_aug: Optional[int] = None, model: Optional[str] = None):
        self.support_per_class = support_per_class
        self.n_aug = n_aug
        self.model = model

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "PMNHallucinator":
        net = self.net_ = self._load(task, feats.shape[1])
        _, is_base = split_base(labels, task)
        base = base_support_rows(labels.cpu(), is_base.cpu(), self.support_per_class, task.seed)
        rows = torch.cat([base, (~is_base).nonzero()[:, 0].cpu()]).to(feats.device)
        support, support_labels = feats[rows].float(), labels[rows]
        n_aug = int(net.n_aug) if self.n_aug is None else self.n_aug
        with torch.no_grad(), one_thread(support.device):
            support, support_labels = net.augment(support, support_labels, torch.unique(labels[~is_base]), n_aug,
                                                  generator(task.seed, torch.device("cpu")))
            self.classes_ = torch.unique(support_labels)
            self.protos_ = net.prototypes(support, support_labels, self.classes_)
        self.num_classes_ = task.num_classes
        return self

    def scores(self, feats: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Log-probabilities of shape (N, C), −inf for classes without support; queries in batches."""
        self._check_fitted("protos_")
        out = self.protos_.new_full((len(feats), self.num_classes_), float("-inf"))
        with torch.no_grad():
            for start in range(0, len(feats), batch_size):
                x = feats[start:start + batch_size].to(self.protos_.device).float()
                out[start:start + len(x), self.classes_] = self.net_.log_probs(x, self.protos_)
        return out

    def input_digests(self, task: Task) -> Dict[str, str]:
        """Fingerprint of the model file, which `lowshot benchmark` adds to a cell's identity: a cell computed
        with another (e.g. retrained) network is recomputed, not skipped; a missing file is one line."""
        from lowshot.train_pmn import MISSING
        return {"pmn_hallucinator": model_file_digest(task, self._path(task), MISSING)}

    def _path(self, task: Task) -> Path:
        return trained_model_path(task, self.model, "pmn_model")

    def _load(self, task: Task, dim: int) -> PrototypeMatchingNet:
        """The trained network, read once per process (memoised in `task.cache`)."""
        from lowshot.train_pmn import load_pmn
        path = self._path(task)
        return memoised_model(task, ("pmn_hallucinator", str(path), str(task.device)), lambda: load_pmn(path, dim))
