"""The matching network on features (Vinyals et al., NeurIPS 2016, arXiv 1606.04080), as H&G §9 use it.

Built from what `lowshot train-matching` saved (`from_saved`); read by the `matching` head.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from lowshot.heads.maths import check_dim, generator, group_rows


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
        """g(S) of shape (..., S, d) from support features (..., S, d), in the order given; each leading
        index is a separate sequence (a batch of episodes runs as one LSTM batch)."""
        seq = support.reshape(-1, *support.shape[-2:]).transpose(0, 1)  # (S, B, d): B sequences of S steps
        out, _ = self.support_lstm(seq)
        fwd, bwd = out.transpose(0, 1).split(self.dim, dim=-1)
        return support + (fwd + bwd).view(support.shape)

    def embed_queries(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """f(x) of shape (..., Q, d): K steps of attention over g (..., S, d) read by an LSTM cell, residual
        on x (..., Q, d); leading indices (episodes) attend over their own g."""
        h, c = x, torch.zeros_like(x)
        for _ in range(self.K):
            step = torch.cat([x, attend(h, g)], dim=-1)
            h, c = self.query_cell(step.reshape(-1, step.shape[-1]), (h.reshape(-1, self.dim), c.reshape(-1, self.dim)))
            h, c = h.view(x.shape) + x, c.view(x.shape)
        return h

    def embed_queries_over_few(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """`embed_queries` for a few attended rows g (E, P, d), P ≪ d (prototypes), queries x (E, Q, d).

        The same maths with the LSTM cell written out: its input [x, r] enters the gates through
        W_ih = [A | B]; x·Aᵀ is the same at every step and r = a·g (attention a over the P rows), so
        r·Bᵀ = a·(g·Bᵀ). Each step then costs the hidden product h·W_hhᵀ and (E, Q, P) attention,
        about a third of the cell's multiply-adds.
        """
        cell = self.query_cell
        a_part, b_part = cell.weight_ih.split(self.dim, dim=1)
        fixed = x @ a_part.t() + cell.bias_ih + cell.bias_hh  # (E, Q, 4d)
        g_b = g @ b_part.t()  # (E, P, 4d)
        h, c, d = x, torch.zeros_like(x), self.dim
        for _ in range(self.K):
            a = torch.softmax(h @ g.transpose(-1, -2), dim=-1)
            gates = torch.addmm(fixed.view(-1, 4 * d), h.reshape(-1, d), cell.weight_hh.t()).view(fixed.shape)
            gates.baddbmm_(a.masked_fill(a < torch.finfo(a.dtype).tiny, 0.0), g_b)
            z = gates[..., 2 * d:3 * d].tanh()
            i, f, _, o = gates.sigmoid_().chunk(4, -1)  # in place: the input, forget and output gates
            c = f * c + i * z
            h = o * c.tanh() + x
        return h

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, queries: torch.Tensor,
                num_classes: int) -> torch.Tensor:
        """Log-probabilities (Q, num_classes) of queries (Q, d) given support (S, d) with labels (S,)."""
        g = self.encode_support(support)
        return class_log_probs(self.embed_queries(queries, g), group_support(g, support_labels), num_classes)


def attend(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """softmax(h·gᵀ) @ g of shape (..., Q, d) for h (..., Q, d), g (..., S, d).

    Subnormal weights (< 1.2e-38) are zeroed: they cannot change the read, but peaked attention
    makes many of them and they slow CPU matrix products 5×.
    """
    a = torch.softmax(h @ g.transpose(-1, -2), dim=-1)
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



def from_saved(saved: Dict[str, Any], dim: int) -> MatchingNet:
    """The network `lowshot train-matching` saved, checked to take `dim`-dimensional features."""
    check_dim(saved, dim, "the matching network")
    net = MatchingNet(int(saved["dim"]), int(saved["K"]))
    net.load_state_dict(saved["state_dict"])
    return net
