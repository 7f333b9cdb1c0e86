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
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
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


def class_rows(labels: torch.Tensor):
    """Row ids (C, W) of each class in `labels` (N,) and the bool (C, W) marking the real ones, on the CPU."""
    rows, valid, _ = group_rows(torch.arange(len(labels))[:, None], labels.cpu(), torch.unique(labels.cpu()))
    return rows[..., 0], valid


def sgd_on_episodes(model: nn.Module, episode_logp: Callable[[torch.Generator], torch.Tensor], sched: Dict[str, int],
                    cfg, name: str) -> List[Dict[str, float]]:
    """SGD (momentum 0.9, dampening 0.9, wd; lr ÷ 10 every lr_step episodes) on the NLL of one query per class.

    `episode_logp(gen)` draws one episode of m = classes_per_episode classes from `gen` and returns the
    queries' log-probabilities (m, m), query i being of class i. Returns the mean loss and query
    accuracy of each tenth of the episodes; a non-finite loss is a one-line `InputError`.
    """
    m, every = sched["classes_per_episode"], max(1, sched["episodes"] // 10)
    gen = generator(cfg.seed, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, dampening=0.9, weight_decay=cfg.wd)
    target, total, hits, log = torch.arange(m, device=next(model.parameters()).device), 0.0, 0, []
    for ep in tqdm(range(sched["episodes"]), desc=f"{name} episodes", leave=False, disable=None):
        opt.param_groups[0]["lr"] = cfg.lr * 0.1 ** (ep // sched["lr_step"])
        logp = episode_logp(gen)
        loss = F.nll_loss(logp, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, hits = total + loss.item(), hits + int((logp.argmax(1) == target).sum())
        if (ep + 1) % every == 0:
            if not math.isfinite(total):
                raise InputError(cfg.run, f"{name} training diverged at episode {ep + 1}; lower --set lr")
            log.append({"episode": ep + 1, "loss": total / every, "query_acc": hits / (every * m)})
            tqdm.write(f"episode {ep + 1}/{sched['episodes']} lr {opt.param_groups[0]['lr']:g} "
                       f"loss {total / every:.4f} query acc {hits / (every * m):.3f}")
            total, hits = 0.0, 0
    return log


def train_episodes(model: MatchingNet, feats, labels, sched: Dict[str, int],
                   cfg: MatchingTrainConfig) -> List[Dict[str, float]]:
    """H&G's episodes: m classes, 1..max_shots support rows each, one query per class (`sgd_on_episodes`)."""
    rows, valid = class_rows(labels)
    m = sched["classes_per_episode"]

    def episode_logp(gen: torch.Generator) -> torch.Tensor:
        support, support_labels, queries = (t.to(feats.device) for t in sample_episode(rows, valid, m, cfg.max_shots, gen))
        return model(feats[support], support_labels, feats[queries], m)

    return sgd_on_episodes(model, episode_logp, sched, cfg, "matching network")


def episodic_stage(cfg, out: Path, name: str, build: Callable[[int], nn.Module], train: Callable,
                   load_file: Callable[[Path], Dict], extra: Dict) -> Path:
    """A stage that trains a model on base-class episodes: skipped when `out` holds a model of the same
    configuration and base rows; else `build(dim)`, `train(model, feats, labels, sched, cfg)` (returns the
    training log), and an atomic save of the weights, `extra`, configuration, schedule, log and inputs."""
    feats, labels, path, digest = load_base_rows(cfg)
    saved = stage_config(cfg)
    if not cfg.force and model_up_to_date(out, saved, digest, load_file):
        return out
    sched, device = schedule(cfg, len(torch.unique(labels))), pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build(feats.shape[1]).to(device)
    print(f"training {name}: {sched['episodes']} episodes of {sched['classes_per_episode']} classes", flush=True)
    start = time.perf_counter()
    with one_thread(device):
        log = train(model, feats.to(device), labels.to(device), sched, cfg)
    print(f"{name} training: {time.perf_counter() - start:.1f} s", flush=True)
    save_torch(out, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "dim": feats.shape[1],
                     **extra, "config": saved, "schedule": sched, "log": log, "features": path,
                     "features_digest": digest, "versions": versions()})
    return out


def train_matching(cfg: MatchingTrainConfig) -> Path:
    """Train the matching network on all base classes; returns the path of `matching.pt` (skipped if up to date)."""
    out = Path(cfg.out) if cfg.out else RunFolder(Path(cfg.run)).matching_model
    return episodic_stage(cfg, out, "the matching network", lambda dim: MatchingNet(dim, cfg.K), train_episodes,
                          load_model_file, {"K": cfg.K})


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


