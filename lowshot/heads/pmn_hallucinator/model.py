"""Prototype matching networks and the meta-learned hallucinator G(x, z) (Wang et al., CVPR 2018, arXiv 1801.05401).

Built from what `lowshot train-pmn` saved (`from_saved`); read by the `pmn_hallucinator` head and,
for G alone, by the `pmn` generator plug-in. Trap: G starts as the identity on x (it copies the
seed), so an untrained G adds duplicates, not noise.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lowshot.heads.matching.model import MatchingNet
from lowshot.heads.maths import check_dim, class_means, plan_new_rows

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

    def episode_log_probs(self, support: torch.Tensor, query: torch.Tensor, n_aug: int,
                          gen: torch.Generator) -> torch.Tensor:
        """Log-probabilities (E, Q, W) of E episodes at once: support (E, W, S, d), query (E, Q, d).

        Each episode is what `augment`, `prototypes` and `log_probs` make of it alone with a fresh copy of
        `gen` (every class novel, topped up to n_aug rows): the same new-row plan and noise z for every
        episode, G and both LSTMs run on the whole batch.
        """
        e, w, s, d = support.shape
        labels = torch.arange(w, device=support.device).repeat_interleave(s)
        rows = support.reshape(e, w * s, d)
        if n_aug > 0:
            seeds, new_labels = plan_new_rows(labels, n_aug, gen)
            z = torch.randn((len(seeds), d), generator=gen).to(rows)
            new = self.hallucinator(rows[:, seeds].reshape(-1, d), z.repeat(e, 1)).view(e, -1, d)
            rows, labels = torch.cat([rows, new], 1), torch.cat([labels, new_labels])
        g = self.matching.encode_support(rows)
        onehot = F.one_hot(labels, w).to(g).t()
        protos = (onehot / onehot.sum(1, keepdim=True)) @ g  # (E, W, d): class means of g
        f = self.matching.embed_queries_over_few(query, protos)
        return torch.log_softmax(f @ (protos / (protos.norm(dim=-1, keepdim=True) + 1e-5)).transpose(1, 2), dim=-1)

    def forward(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, novel: torch.Tensor,
                gen: torch.Generator) -> torch.Tensor:
        """Log-probabilities (Q, m) of queries (Q, d) over the m classes 0..m−1 of support (S, d), labels (S,);
        classes in `novel` are first topped up to n_aug examples by G."""
        support, labels = self.augment(support, labels, novel, int(self.n_aug), gen)
        classes = torch.unique(labels)
        return self.log_probs(queries, self.prototypes(support, labels, classes))


def from_saved(saved: Dict[str, Any], dim: int) -> PrototypeMatchingNet:
    """The network (with its hallucinator) `lowshot train-pmn` saved, checked to take `dim`-dimensional features."""
    check_dim(saved, dim, "the prototype matching network")
    net = PrototypeMatchingNet(int(saved["dim"]), int(saved["K"]), int(saved["hidden"]))
    net.load_state_dict(saved["state_dict"])
    return net
