"""Stage: meta-learn prototype matching networks and the hallucinator end to end (`lowshot train-pmn`).

Wang et al., CVPR 2018 (arXiv 1801.05401), on cached base-class features (the feature extractor
stays fixed, as in their ImageNet experiments on H&G's ResNet-10 features). Each episode simulates
the generalised benchmark inside the base classes: m base classes with 1..max_shots support rows
each (H&G's matching-network episodes, `lowshot.train_matching.sample_episode`); a fraction of them
play novel classes: they keep only 1..max_novel_shots rows and are topped up to n_aug rows by
G(seed, z), while the others keep theirs, so the label space holds "base" and "novel"
classes together; one query per class; the NLL of the queries trains the network and G
together (gradients reach G through the novel prototypes). SGD as the matching network's stage.
Writes `<run>/heads/pmn_hallucinator.pt` (plain tensors and dicts, read with `weights_only=True`),
skipped when the configuration and the base rows are unchanged.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from lowshot.checkpoints import check_feature_dim, load_checkpoint, model_up_to_date, stage_config
from lowshot.config import pick_device, versions
from lowshot.errors import InputError
from lowshot.generators.pmn import HIDDEN
from lowshot.heads._common import generator, group_rows
from lowshot.heads.matching import one_thread
from lowshot.heads.pmn_hallucinator import PrototypeMatchingNet
from lowshot.io.atomic import save_torch
from lowshot.run import RunFolder
from lowshot.train_matching import load_base_rows, sample_episode, schedule

MISSING = "no trained prototype matching network: run `lowshot train-pmn --run <run>` first"


@dataclass
class PMNTrainConfig:
    """Episodic training of PMN + hallucinator (`lowshot train-pmn`); None = reduced default."""

    run: str = "runs/demo"
    features_dir: Optional[str] = None  # default: <run>/features
    splits: Optional[str] = None  # default: label_splits/<dataset>.json
    out: Optional[str] = None  # default: <run>/heads/pmn_hallucinator.pt
    episodes: Optional[int] = None  # default: 2,000 (as train-matching)
    classes_per_episode: Optional[int] = None  # default: min(#base, 50)
    max_shots: int = 10  # support rows of an episode's "base" classes: uniform in 1..max_shots
    novel_fraction: float = 0.5  # share of an episode's classes that play novel (the test setups: 100 of 200)
    max_novel_shots: int = 5  # an episode's "novel" class keeps 1..max_novel_shots of its rows
    n_aug: int = 10  # G tops each novel class up to n_aug rows (0: PMN without hallucinator)
    hidden: int = HIDDEN  # G's hidden width
    K: int = 5  # full-context embedding steps
    lr: float = 0.1
    wd: float = 0.001
    lr_step: Optional[int] = None  # lr ÷ 10 every lr_step episodes; default: a third of the episodes
    seed: int = 0
    device: str = "auto"
    force: bool = False


def fake_novel(support: torch.Tensor, labels: torch.Tensor, m: int, cfg: PMNTrainConfig, gen: torch.Generator):
    """Make the last round(m · novel_fraction) classes of an episode novel: each keeps 1..max_novel_shots rows.

    Args:
        support: (S,) row ids grouped by class, labels (S,) in 0..m−1 ascending (`sample_episode`'s output).
    Returns:
        support rows, their labels, and the novel labels (k,).
    """
    k = min(m, max(0, round(m * cfg.novel_fraction)))
    novel = torch.arange(m - k, m)
    cap = torch.full((m,), len(support), dtype=torch.long)
    cap[novel] = torch.randint(1, cfg.max_novel_shots + 1, (k,), generator=gen)
    within = torch.arange(len(labels)) - torch.searchsorted(labels, labels)
    keep = within < cap[labels]
    return support[keep], labels[keep], novel


def train_episodes(model: PrototypeMatchingNet, feats: torch.Tensor, labels: torch.Tensor, sched: Dict[str, int],
                   cfg: PMNTrainConfig) -> List[Dict[str, float]]:
    """SGD (momentum 0.9, dampening 0.9, wd) on the queries' NLL; returns the mean loss and accuracy per tenth."""
    rows, valid, _ = group_rows(torch.arange(len(labels))[:, None], labels.cpu(), torch.unique(labels.cpu()))
    m, every = sched["classes_per_episode"], max(1, sched["episodes"] // 10)
    gen = generator(cfg.seed, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, dampening=0.9, weight_decay=cfg.wd)
    target, total, hits, log = torch.arange(m, device=feats.device), 0.0, 0, []
    for ep in range(sched["episodes"]):
        opt.param_groups[0]["lr"] = cfg.lr * 0.1 ** (ep // sched["lr_step"])
        support, support_labels, queries = sample_episode(rows[..., 0], valid, m, cfg.max_shots, gen)
        support, support_labels, novel = fake_novel(support, support_labels, m, cfg, gen)
        logp = model(feats[support.to(feats.device)], support_labels.to(feats.device), feats[queries.to(feats.device)],
                     novel.to(feats.device), gen)
        loss = F.nll_loss(logp, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, hits = total + loss.item(), hits + int((logp.argmax(1) == target).sum())
        if (ep + 1) % every == 0:
            if not math.isfinite(total):
                raise InputError(cfg.run, f"PMN training diverged at episode {ep + 1}; lower --set lr")
            log.append({"episode": ep + 1, "loss": total / every, "query_acc": hits / (every * m)})
            print(f"episode {ep + 1}/{sched['episodes']} loss {total / every:.4f} query acc {hits / (every * m):.3f}",
                  flush=True)
            total, hits = 0.0, 0
    return log


def train_pmn(cfg: PMNTrainConfig) -> Path:
    """Train PMN + hallucinator on all base classes; returns the path of the model file (skipped if up to date)."""
    out = Path(cfg.out) if cfg.out else RunFolder(Path(cfg.run)).pmn_model
    feats, labels, path, digest = load_base_rows(cfg)
    saved = stage_config(cfg)
    if not cfg.force and model_up_to_date(out, saved, digest, load_model_file):
        return out
    sched, device = schedule(cfg, len(torch.unique(labels))), pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = PrototypeMatchingNet(feats.shape[1], cfg.K, cfg.hidden, cfg.n_aug).to(device)
    print(f"training PMN + hallucinator: {sched['episodes']} episodes of {sched['classes_per_episode']} classes",
          flush=True)
    start = time.perf_counter()
    with one_thread(device):
        log = train_episodes(model, feats.to(device), labels.to(device), sched, cfg)
    print(f"PMN + hallucinator training: {time.perf_counter() - start:.1f} s", flush=True)
    save_torch(out, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "dim": feats.shape[1],
                     "K": cfg.K, "hidden": cfg.hidden, "config": saved, "schedule": sched, "log": log,
                     "features": path, "features_digest": digest, "versions": versions()})
    return out


def load_model_file(path: str | Path) -> Dict:
    """The dict saved by `train_pmn` (loaded with `weights_only=True`), or a one-line `InputError`."""
    return load_checkpoint(path, MISSING, "the prototype matching network")


def load_pmn(path: str | Path, dim: int) -> PrototypeMatchingNet:
    """The trained network (with its hallucinator) in `path`, checked to take `dim`-dimensional features."""
    saved = load_model_file(path)
    check_feature_dim(path, saved, dim)
    net = PrototypeMatchingNet(int(saved["dim"]), int(saved["K"]), int(saved["hidden"]))
    net.load_state_dict(saved["state_dict"])
    return net
