"""Training of the analogy generator G on mined analogies (H&G §8.5), run by the stage `lowshot generate`.

SGD on CE(clf(B̂), class of B) + λ · MSE(B̂, B) with B̂ = G(A, C, D), where (A, B, C, D) are
analogies between base-class centroids (`mining.py`) and clf is a frozen classifier over the base
classes (`loss_classifier.py`).
"""
from __future__ import annotations

import math
import time
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from lowshot.errors import InputError
from lowshot.generators.analogies.loss_classifier import LossClassifier
from lowshot.generators.analogies.model import AnalogyGenerator, analogy_errors
from lowshot.runtime import cpu_threads, progress

LOG_EVERY = 10  # progress lines per training run


def default_iterations(num_analogies: int, batch_size: int) -> int:
    """4 passes over the analogies (H&G: 120,000 × 128 ≈ 4 × 3.85M), clamped to [2,000, 120,000]."""
    return int(min(120_000, max(2_000, 4 * math.ceil(num_analogies / batch_size))))


def _lr(initlr: float, it: int, iterations: int) -> float:
    """initlr ÷ 10 after each third of the iterations (H&G: at 40k and 80k of 120k)."""
    return initlr * 0.1 ** min(2, it // max(1, iterations // 3))


def train_generator(centroids: torch.Tensor, quads: torch.Tensor, centroid_labels: torch.Tensor,
                    clf: LossClassifier, cfg, iterations: int) -> Dict[str, torch.Tensor]:
    """SGD on CE(clf(B̂), class of B) + λ · MSE(B̂, B), B̂ = G(A, C, D) (H&G §8.5).

    Args:
        centroids: (num_base · k, d) float32; quads: (M, 4) int64 rows into it;
        centroid_labels: (num_base · k,) base-class position (column of `clf`) of each centroid.

    Returns:
        the model's state dict (on the CPU).
    """
    device = centroids.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AnalogyGenerator(centroids.shape[1]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.initlr, momentum=0.9, dampening=0.9, weight_decay=1e-4)
    order = quads[torch.randperm(len(quads), generator=torch.Generator().manual_seed(cfg.seed)).to(device)]
    totals = torch.zeros(3, device=device)  # ce, mse, hits since the last log line
    seen, pos, every = 0, 0, max(1, iterations // LOG_EVERY)
    for it in progress(range(iterations), desc="generator iterations", leave=False):
        batch = order[pos:pos + cfg.batch_size]  # consumed in order; the wrap batch may be short (H&G)
        pos = 0 if pos + cfg.batch_size >= len(order) else pos + cfg.batch_size
        for group in opt.param_groups:
            group["lr"] = _lr(cfg.initlr, it, iterations)
        target = centroids[batch[:, 1]]
        pred = model(centroids[batch[:, 0]], centroids[batch[:, 2]], centroids[batch[:, 3]])
        scores = clf.scores(pred)
        ce, mse = F.cross_entropy(scores, centroid_labels[batch[:, 1]]), F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        (ce + cfg.mse_weight * mse).backward()
        opt.step()
        totals += torch.stack([ce.detach() * len(batch), mse.detach() * len(batch),
                               (scores.argmax(1) == centroid_labels[batch[:, 1]]).sum()])
        seen += len(batch)
        if (it + 1) % every == 0 or it + 1 == iterations:
            _log(it, iterations, totals / seen, cfg)
            totals.zero_()
            seen = 0
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _log(it: int, iterations: int, means: torch.Tensor, cfg) -> None:
    ce, mse, acc = means.tolist()
    if not math.isfinite(ce + mse):
        raise InputError(cfg.run, f"generator training diverged at iteration {it + 1}; lower --set initlr")
    print(f"iter {it + 1}/{iterations} lr {_lr(cfg.initlr, it, iterations):g} ce {ce:.4f} mse {mse:.5f} "
          f"classifier acc {acc:.3f}", flush=True)


def fit_generator(centroids: torch.Tensor, quads: torch.Tensor, labels: torch.Tensor, clf: LossClassifier,
                  cfg, iterations: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    """Train G (`train_generator`, same arguments), then measure its fit to the analogies.

    Returns:
        (model state dict, {"generator", "copy_seed", "a_minus_c_plus_d"}: mean squared errors
        against B over all analogies), the second so that a G that learned nothing shows.
    """
    print(f"training the generator: {len(quads)} analogies, {iterations} iterations", flush=True)
    start = time.perf_counter()
    with cpu_threads(cfg.cpu_threads if centroids.device.type == "cpu" else None):
        state = train_generator(centroids, quads, labels, clf, cfg, iterations)
    print(f"generator training: {time.perf_counter() - start:.1f} s", flush=True)
    model = AnalogyGenerator(centroids.shape[1]).to(centroids.device)
    model.load_state_dict(state)
    fit = analogy_errors(model, centroids, quads)
    print("MSE over the analogies: G(A, C, D) {generator:.4f}, copying the seed A {copy_seed:.4f}, "
          "A − C + D {a_minus_c_plus_d:.4f}".format(**fit), flush=True)
    if fit["generator"] >= fit["copy_seed"]:
        print("warning: G completes the analogies no better than copying the seed, so its rows add nothing; "
              "try a smaller --set initlr or more --set iterations", flush=True)
    return state, fit
