"""Stage: train the matching network episodically on base-class features (`lowshot train-matching`).

H&G's `matching_network.py` training (reference §9): episodes of m base classes with 1..max_shots
support rows each and one query per class, SGD on the query NLL. Writes `<run>/heads/matching.pt`
(plain tensors and dicts, read with `weights_only=True`), skipped when the configuration and the
base rows are unchanged. Reduced defaults fit a 2-core CPU (H&G's ImageNet values in brackets):
2,000 episodes [60,000] of 50 classes [all 389].
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lowshot.checkpoints import check_feature_dim, load_checkpoint, model_up_to_date, stage_config
from lowshot.config import pick_device, versions
from lowshot.errors import InputError
from lowshot.heads._common import generator, group_rows
from lowshot.heads.matching import MatchingNet, one_thread
from lowshot.io.atomic import save_torch
from lowshot.run import RunFolder, base_train_rows

MISSING = "no trained matching network: run `lowshot train-matching --run <run>` first"
DEFAULT_EPISODES, DEFAULT_CLASSES_PER_EPISODE = 2000, 50


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


def load_base_rows(cfg: MatchingTrainConfig):
    """Base-class train features (N, d), labels (N,), the file's path and a digest of the rows."""
    feats, labels, train = base_train_rows(cfg.run, cfg.features_dir, cfg.splits)
    digest = hashlib.sha1(feats.tobytes() + labels.tobytes()).hexdigest()[:16]
    return torch.from_numpy(feats), torch.from_numpy(labels), train.path, digest


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
    out = Path(cfg.out) if cfg.out else RunFolder(Path(cfg.run)).matching_model
    feats, labels, path, digest = load_base_rows(cfg)
    saved = stage_config(cfg)
    if not cfg.force and model_up_to_date(out, saved, digest, load_model_file):
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
    return load_checkpoint(path, MISSING, "the matching network")


def load_matching_net(path: str | Path, dim: int) -> MatchingNet:
    """The trained network in `path`, checked to take `dim`-dimensional features."""
    saved = load_model_file(path)
    check_feature_dim(path, saved, dim)
    net = MatchingNet(int(saved["dim"]), int(saved["K"]))
    net.load_state_dict(saved["state_dict"])
    return net


