"""Matching networks on cached features (H&G §9, their `matching_network.py`).

`lowshot train-matching` trains the network episodically on all base classes and writes
`<run>/heads/matching.pt`; the `matching` head loads it, encodes one support set per cell (base
rows + tiled novel shots) and scores test features by attention over it. Reduced defaults fit a
2-core CPU (H&G's ImageNet values in brackets): 2,000 episodes [60,000] of 50 classes [all 389],
20 support rows per class at test time [100]; test cost grows as N × S × d × (2K + 1).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lowshot.config import pick_device, versions
from lowshot.errors import InputError
from lowshot.heads import Head, Task, register_head
from lowshot.heads._common import generator, group_rows, split_base
from lowshot.io.atomic import save_torch
from lowshot.io.features import read_features
from lowshot.io.splits import load_label_splits

MISSING = "no trained matching network: run `lowshot train-matching --run <run>` first"
DEFAULT_EPISODES, DEFAULT_CLASSES_PER_EPISODE = 2000, 50


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


@dataclass
class MatchingTrainConfig:
    """Episodic training of the matching network (`lowshot train-matching`); None = reduced default."""

    run: str = "runs/demo"
    features_dir: Optional[str] = None  # default: <run>/features
    splits: Optional[str] = None  # default: label_splits/<dataset>.json
    out: Optional[str] = None  # default: <run>/heads/matching.pt
    episodes: Optional[int] = None  # default: 2,000 (H&G: 60,000)
    classes_per_episode: Optional[int] = None  # default: min(#base, 50) (H&G: all 389)
    max_shots: int = 10  # per-class support size uniform in 1..max_shots
    K: int = 5  # full-context embedding steps
    lr: float = 0.1
    wd: float = 0.001
    lr_step: Optional[int] = None  # lr ÷ 10 every lr_step episodes; default: a third of the episodes
    seed: int = 0
    device: str = "auto"
    force: bool = False


def schedule(cfg: MatchingTrainConfig, num_base: int) -> Dict[str, int]:
    """Episodes, classes per episode and lr step, with the reduced defaults filled in."""
    episodes = DEFAULT_EPISODES if cfg.episodes is None else cfg.episodes
    classes = min(cfg.classes_per_episode or DEFAULT_CLASSES_PER_EPISODE, num_base)
    return {"episodes": episodes, "classes_per_episode": classes, "lr_step": cfg.lr_step or max(1, -(-episodes // 3))}


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


def load_base_rows(cfg: MatchingTrainConfig):
    """Base-class train features (N, d), labels (N,), the file's path and a digest of the rows."""
    path = Path(cfg.features_dir or Path(cfg.run) / "features") / "train.hdf5"
    train = read_features(path)
    if cfg.splits is None and not train.attrs.get("dataset"):
        raise InputError(path, "records no data set: pass --set splits=<label split file>")
    keep = np.isin(train.labels, load_label_splits(
        cfg.splits or Path("label_splits") / f"{train.attrs['dataset']}.json").base_classes)
    if not keep.any():
        raise InputError(path, "has no rows of the base classes")
    feats, labels = np.ascontiguousarray(train.feats[keep]), train.labels[keep]
    digest = hashlib.sha1(feats.tobytes() + labels.tobytes()).hexdigest()[:16]
    return torch.from_numpy(feats), torch.from_numpy(labels), str(path), digest


def sample_episode(rows: torch.Tensor, valid: torch.Tensor, m: int, max_shots: int, gen: torch.Generator):
    """One H&G episode: m classes without replacement, 1..max_shots support rows each, one query each.

    Args:
        rows: (C, W) train row ids of each base class; valid: bool (C, W) marking the real ones.
    Returns:
        support rows (S,) grouped by class, their episode labels (S,) in 0..m−1, query rows (m,).
        The query is drawn independently of the support, so it may be one of them (as in H&G).
    """
    pick = torch.randperm(len(rows), generator=gen)[:m]
    counts = valid[pick].sum(1)
    shots = torch.minimum(torch.randint(1, max_shots + 1, (m,), generator=gen), counts)
    keys = torch.rand(m, rows.shape[1], generator=gen).masked_fill(~valid[pick], 2.0)
    shuffled = rows[pick].gather(1, torch.argsort(keys, dim=1))  # each class's rows in random order
    support = shuffled[torch.arange(rows.shape[1]) < shots[:, None]]
    queries = rows[pick, (torch.rand(m, generator=gen) * counts).long()]
    return support, torch.arange(m).repeat_interleave(shots), queries


def train_episodes(model: MatchingNet, feats, labels, sched: Dict[str, int], cfg: MatchingTrainConfig) -> None:
    """SGD (momentum 0.9, dampening 0.9, wd) on the NLL of one query per class, one episode per step."""
    rows, valid, _ = group_rows(torch.arange(len(labels))[:, None], labels.cpu(), torch.unique(labels.cpu()))
    m, every = sched["classes_per_episode"], max(1, sched["episodes"] // 10)
    gen = generator(cfg.seed, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, dampening=0.9, weight_decay=cfg.wd)
    target, total, hits = torch.arange(m, device=feats.device), 0.0, 0
    for ep in tqdm(range(sched["episodes"]), desc="matching episodes", leave=False, disable=None):
        opt.param_groups[0]["lr"] = cfg.lr * 0.1 ** (ep // sched["lr_step"])
        episode = sample_episode(rows[..., 0], valid, m, cfg.max_shots, gen)
        support, support_labels, queries = (t.to(feats.device) for t in episode)
        logp = model(feats[support], support_labels, feats[queries], m)
        loss = F.nll_loss(logp, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, hits = total + loss.item(), hits + int((logp.argmax(1) == target).sum())
        if (ep + 1) % every == 0:
            if not math.isfinite(total):
                raise InputError(cfg.run, f"matching network training diverged at episode {ep + 1}; lower --set lr")
            tqdm.write(f"episode {ep + 1}/{sched['episodes']} lr {opt.param_groups[0]['lr']:g} "
                       f"loss {total / every:.4f} query acc {hits / (every * m):.3f}")
            total, hits = 0.0, 0


def train_matching(cfg: MatchingTrainConfig) -> Path:
    """Train the matching network on all base classes; returns the path of `matching.pt` (skipped if up to date)."""
    out = Path(cfg.out or Path(cfg.run) / "heads" / "matching.pt")
    feats, labels, path, digest = load_base_rows(cfg)
    saved = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("force", "device")}
    if out.exists() and not cfg.force:
        old = load_model_file(out)
        if old.get("config") == saved and old.get("features_digest") == digest:
            print(f"{out} is up to date", flush=True)
            return out
    sched, device = schedule(cfg, len(torch.unique(labels))), pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = MatchingNet(feats.shape[1], cfg.K).to(device)
    print(f"training the matching network: {sched['episodes']} episodes of {sched['classes_per_episode']} classes",
          flush=True)
    start = time.perf_counter()
    with one_thread(device):
        train_episodes(model, feats.to(device), labels.to(device), sched, cfg)
    print(f"matching network training: {time.perf_counter() - start:.1f} s", flush=True)
    save_torch(out, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "dim": feats.shape[1],
                     "K": cfg.K, "config": saved, "schedule": sched, "features": path, "features_digest": digest,
                     "versions": versions()})
    return out


def load_model_file(path: str | Path) -> Dict:
    """The dict saved by `train_matching` (loaded with `weights_only=True`), or a one-line `InputError`."""
    if not Path(path).exists():
        raise InputError(path, MISSING)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise InputError(path, f"cannot load the matching network ({e.__class__.__name__})") from None


@register_head("matching")
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

    def _load(self, task: Task, dim: int) -> MatchingNet:
        path = self.model or Path(task.run_dir or ".") / "heads" / "matching.pt"
        saved = load_model_file(path)
        if int(saved["dim"]) != dim:
            raise InputError(path, f"was trained on {saved['dim']}-dimensional features, these have {dim}")
        net = MatchingNet(int(saved["dim"]), int(saved["K"]))
        net.load_state_dict(saved["state_dict"])
        return net.to(task.device).eval()

    def _support(self, feats: torch.Tensor, labels: torch.Tensor, task: Task):
        """Support (S, d) and labels (S,): base rows grouped by class, then the novel block tiled (H&G)."""
        _, is_base = split_base(labels, task)
        labels_cpu, gen = labels.cpu(), generator(task.seed, torch.device("cpu"))
        base = is_base.nonzero()[:, 0].cpu()
        base = base[torch.randperm(len(base), generator=gen)]
        base = base[torch.argsort(labels_cpu[base], stable=True)]  # grouped by class, random within
        first = torch.searchsorted(labels_cpu[base], labels_cpu[base])  # where each row's class starts
        base = base[torch.arange(len(base)) - first < self.support_per_class]
        novel = (~is_base).nonzero()[:, 0].cpu()
        copies = -(-self.support_per_class // torch.bincount(labels_cpu[novel])[labels_cpu[novel]])  # ceil(spc / m)
        reps = torch.arange(int(copies.max()) if len(novel) else 0)
        rows = torch.cat([base, novel.expand(len(reps), -1)[reps[:, None] < copies]]).to(feats.device)
        return feats[rows], labels[rows]
