"""Matching networks on cached features (H&G §9, their `matching_network.py`).

The network is trained episodically on the base classes by the `lowshot train-matching` stage
(`lowshot/train_matching.py`); the `matching` head takes the trained network, encodes one support
set per cell (base rows + tiled novel shots) and scores test features by attention over it. At
test time 20 support rows per class by default [H&G: 100]; cost grows as N × S × d × (2K + 1).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from lowshot.heads import HEADS, Head, Task
from lowshot.heads._common import (generator, group_rows, memoised_model, model_file_digest, split_base,
                                    trained_model_path)


class MatchingNet(nn.Module):
    """Matching network with full-context embeddings on features (Vinyals et al., NeurIPS 2016, arXiv 1606.04080).

    g: a bidirectional LSTM over the support set read as one sequence, g(S) = S + fwd + bwd.
    f: K attention-LSTM steps from h = x. p(y = c | x) = Σ_{i: y_i = c} softmax(f(x)·ĝ(S)ᵀ)_i with
    ĝ = g / (‖g‖ + 1e-5): only the support side is normalised (as in H&G).
    """

    def __init__(self, dim: int, K: int = 5):
        super().__init__()
        self.dim, self.K = dim, K
        self.support_lstm = nn.LSTM(dim, dim, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)

    def encode_support(self, support: torch.Tensor) -> torch.Tensor:
        """g(S) of shape (S, d) from support features of shape (S, d), in the order given."""
        out, _ = self.support_lstm(support[:, None])  # (S, 1, 2d): one sequence of S steps
        fwd, bwd = out[:, 0].split(self.dim, dim=-1)
        return support + fwd + bwd

    def embed_queries(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """f(x) of shape (Q, d): K steps of attention over g (S, d) read by an LSTM cell, residual on x (Q, d)."""
        h, c = x, torch.zeros_like(x)
        for _ in range(self.K):
            h, c = self.query_cell(torch.cat([x, attend(h, g)], dim=1), (h, c))
            h = h + x
        return h

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, queries: torch.Tensor,
                num_classes: int) -> torch.Tensor:
        """Log-probabilities (Q, num_classes) of queries (Q, d) given support (S, d) with labels (S,)."""
        g = self.encode_support(support)
        return class_log_probs(self.embed_queries(queries, g), group_support(g, support_labels), num_classes)


def attend(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """softmax(h·gᵀ) @ g of shape (Q, d) for h (Q, d), g (S, d).

    Subnormal weights (< 1.2e-38) are zeroed: they cannot change the read, but peaked attention
    makes many of them and they slow CPU matrix products 5×.
    """
    a = torch.softmax(h @ g.t(), dim=1)
    return a.masked_fill(a < torch.finfo(a.dtype).tiny, 0.0) @ g


def group_support(g: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ĝ = g / (‖g‖ + 1e-5) of g (S, d) grouped by class (a class's attention sum ignores order).

    Returns classes (P,), rows (P, M, d) zero-padded, bool mask (P, M) of the real rows.
    """
    classes = torch.unique(labels)
    rows, mask, _ = group_rows(g / (g.norm(dim=1, keepdim=True) + 1e-5), labels, classes)  # keepdim: H&G §12.7
    return classes, rows, mask


def class_log_probs(h: torch.Tensor, grouped: Tuple[torch.Tensor, ...], num_classes: int) -> torch.Tensor:
    """log(softmax(h·ĝᵀ) @ onehot) of shape (Q, num_classes) for h (Q, d); −inf for classes without support.

    Computed as a per-class log-sum-exp of the logits, so no probability underflows to log 0.
    """
    classes, rows, mask = grouped
    logits = (h @ rows.flatten(0, 1).t()).view(len(h), *mask.shape).masked_fill(~mask, float("-inf"))
    per_class = logits.logsumexp(-1)  # (Q, P)
    out = h.new_full((len(h), num_classes), float("-inf"))
    out[:, classes] = per_class - per_class.logsumexp(1, keepdim=True)
    return out


@contextlib.contextmanager
def one_thread(device: torch.device):
    """One CPU thread for the sequential LSTM steps: their (1, d) × (d, 4d) products gain nothing from
    OpenMP, whose barriers cost 10× when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1 if device.type == "cpu" else before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@HEADS.register("matching")
class Matching(Head):
    """Matching networks with full-context embeddings (Vinyals et al., NeurIPS 2016, arXiv 1606.04080), H&G §9.

    The support set is `support_per_class` random train rows of each base class followed by the
    novel shots tiled to about `support_per_class` per class, encoded once by the BiLSTM; a test
    feature's class probability is its attention mass on that class's entries. Needs a network
    from `lowshot train-matching` (`model`, default <run>/heads/matching.pt). Traps: returns
    log-probabilities; `scores` costs N × S × d × (2K + 1) (H&G use support_per_class = 100).
    """

    def __init__(self, support_per_class: int = 20, model: Optional[str] = None):
        self.support_per_class = support_per_class
        self.model = model

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, task: Task) -> "Matching":
        self.net_ = self._load(task, feats.shape[1])
        support, labels = self._support(feats.float(), labels, task)
        with torch.no_grad(), one_thread(support.device):
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

    def input_digests(self, task: Task) -> Dict[str, str]:
        """Fingerprint of the network file, which `lowshot benchmark` adds to a cell's identity: a cell
        computed with another (e.g. retrained) network is recomputed, not skipped."""
        from lowshot.train_matching import MISSING
        return {"matching_network": model_file_digest(task, self._path(task), MISSING)}

    def _path(self, task: Task) -> Path:
        return trained_model_path(task, self.model, "matching_model")

    def _load(self, task: Task, dim: int) -> MatchingNet:
        """The trained network, read once per process (memoised in `task.cache`)."""
        from lowshot.train_matching import load_matching_net
        path = self._path(task)
        return memoised_model(task, ("matching_net", str(path), str(task.device)), lambda: load_matching_net(path, dim))

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


def base_support_rows(labels: torch.Tensor, is_base: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of `per_class` random rows of each base class (all of a smaller class), grouped by class.

    Args:
        labels: (N,) labels on the CPU; is_base: bool (N,) marking the rows of base classes.
    Returns:
        int64 row indices (≤ per_class · #base,), classes ascending, random order within a class (seeded).
    """
    gen = generator(seed, torch.device("cpu"))
    base = is_base.nonzero()[:, 0]
    base = base[torch.randperm(len(base), generator=gen)]
    base = base[torch.argsort(labels[base], stable=True)]  # grouped by class, random within
    first = torch.searchsorted(labels[base], labels[base])  # where each row's class starts
    return base[torch.arange(len(base)) - first < per_class]
