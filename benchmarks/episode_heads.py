"""Episode heads: lowshot's batched scoring against a plain per-episode loop of the same maths.

For every head `lowshot episodes` runs by default and 5-way 1- and 5-shot episodes of setup 2 (the
draws of `lowshot episodes`, 15 queries per class), this times, in one process and on the same episodes:

- **lowshot**: `episode_accuracies` on all `--episodes` episodes, the path `lowshot episodes` takes
  (the head's batched `episode_scores` or `episode_predictions`, chunked by memory); after one warm-up
  run, the median of 3 runs (1 when a run takes longer than `--budget` seconds);
- **loop**: a plain reference implementation of the same maths, one episode at a time, written below
  the way a per-episode library (easyfsl) writes a method: one episode's support (W, S, d) and queries
  (Q, d) in, ordinary torch calls on them (`torch.cdist`, `softmax`; `torch.optim.Adam` with autograd
  for TIM and fine-tuning; Python loops over iterations with each episode's own stopping test for
  Sinkhorn and the LaplacianShot bound); the trained-model heads call the same trained modules per
  episode. No per-class Python loops, nothing slowed on purpose: it is the fastest one-episode code
  this file's author could write without batching episodes. The loop runs on the first episodes until
  `--budget` seconds have passed.

Prints one markdown row per head, configuration and thread count: ms per 1,000 episodes for both, the
ratio, lowshot's accuracy, and the largest per-episode accuracy difference between the two on the looped
episodes (0 = the same predictions' accuracy). Needs the demo's features (`make train features`; the
weight-generator and PMN heads use `runs/<run>/heads/*.pt` when present, else untrained models of the
same shape, which cost the same). About 4 minutes on 2 CPU cores:

    .venv/bin/python benchmarks/episode_heads.py [--episodes 600] [--threads 1 2] [--heads tim pt_map]
"""
import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.protocols.episodes import (
    EpisodesConfig,
    _load,
    default_heads,
    draw_episodes,
    episode_accuracies,
)
from lowshot.run import trained_model

# ---- plain per-episode references: s (W, S, d) support, q (Q, d) queries, h the head (its params) -> (Q, W)


def unit(x):
    return F.normalize(x, dim=-1)


def prepared(x, how, ctx, beta=0.5):
    """A paper's feature preprocessing, on one episode's rows."""
    if how == "cl2n":
        return unit(x - ctx.base_mean)
    if how == "power":
        return unit(torch.where(x >= 0, (x + 1e-6).pow(beta), -(1e-6 - x).pow(beta)))
    return unit(x) if how == "l2" else x


def protonet(s, q, h, ctx):
    return -torch.cdist(q, s.mean(1)).pow(2)


def cosine_ncm(s, q, h, ctx):
    return unit(q - ctx.base_mean) @ unit(unit(s - ctx.base_mean).mean(1)).T


def imprint(s, q, h, ctx):
    return ctx.scale * unit(q) @ unit(unit(s).mean(1)).T


def raw_imprint(s, q, h, ctx):
    return q @ s.mean(1).T


def rectified(s, q, eps):
    """BD-CSPN's prototypes (W, d): shifted queries pseudo-labelled, weights softmax(ε·cos) within a class."""
    w, n = s.shape[0], s.shape[0] * s.shape[1]
    flat = s.reshape(n, -1)
    rows = torch.cat([flat, q + flat.mean(0) - q.mean(0)])
    cos = unit(rows) @ unit(s.mean(1)).T
    labels = torch.cat([torch.arange(w).repeat_interleave(s.shape[1]), cos[n:].argmax(1)])
    weight = torch.exp(eps * cos) * F.one_hot(labels, w)
    return (weight / weight.sum(0)).T @ rows


def bd_cspn(s, q, h, ctx):
    s, q = prepared(s, h.features, ctx), prepared(q, h.features, ctx)
    return unit(q) @ unit(rectified(s, q, h.eps)).T


def laplacian_shot(s, q, h, ctx):
    s, q = prepared(s, h.features, ctx), prepared(q, h.features, ctx)
    unary = torch.cdist(q, rectified(s, q, h.eps) if h.rectify else s.mean(1)).pow(2)
    near = torch.cdist(q, q).topk(h.knn, largest=False).indices[:, 1:]  # the point itself, then knn − 1 others
    kernel = torch.zeros(len(q), len(q)).scatter_(1, near, 1.0)
    y, old = torch.softmax(-unary, 1), float("inf")
    for i in range(h.iterations):
        y = torch.softmax(-unary + h.lam * kernel @ y, 1)
        bound = float((y * torch.log(y.clamp_min(1e-20)) + unary * y - h.lam * (kernel @ y) * y).sum())
        if i > 1 and abs(bound - old) <= 1e-6 * abs(old):
            break
        old = bound
    return y


def tim(s, q, h, ctx):
    s, q = prepared(s, h.features, ctx), prepared(q, h.features, ctx)
    flat, labels = s.reshape(-1, s.shape[-1]), torch.arange(s.shape[0]).repeat_interleave(s.shape[1])
    weights = s.mean(1).clone().requires_grad_(True)
    logits = lambda x: -0.5 * h.temperature * (x.pow(2).sum(1, keepdim=True) - 2 * x @ weights.T  # noqa: E731
                                               + weights.pow(2).sum(1))
    opt = torch.optim.Adam([weights], lr=h.lr)
    with torch.enable_grad():
        for _ in range(h.iterations):
            p = logits(q).softmax(1)
            cond = -(p * torch.log(p + 1e-12)).sum(1).mean()
            marginal = -(p.mean(0) * torch.log(p.mean(0))).sum()
            loss = h.ce_weight * F.cross_entropy(logits(flat), labels) - (h.marginal_weight * marginal
                                                                          - h.cond_weight * cond)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return logits(q)


def transductive_ft(s, q, h, ctx):
    s, q = prepared(s, h.features, ctx), prepared(q, h.features, ctx)
    flat, labels = s.reshape(-1, s.shape[-1]), torch.arange(s.shape[0]).repeat_interleave(s.shape[1])
    weights, bias = unit(s.mean(1)).requires_grad_(True), torch.zeros(s.shape[0], requires_grad=True)
    logits = lambda x: (x @ weights.T + bias) / h.temperature  # noqa: E731
    opt = torch.optim.Adam([weights, bias], lr=h.lr)
    with torch.enable_grad():
        for _ in range(h.iterations):
            p = logits(q).softmax(1)
            loss = F.cross_entropy(logits(flat), labels) + h.entropy_weight * -(p * torch.log(p + 1e-12)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return logits(q)


def sinkhorn(cost, lam, col_mass):
    """PT-MAP's transport plan (Q, W), rows of mass 1, columns `col_mass`, stopped at a 1e-6 row-sum change."""
    plan = torch.exp(-lam * (cost - cost.min(1, keepdim=True).values))
    plan = plan / plan.sum()
    for _ in range(1000):
        rows = plan.sum(1)
        plan = plan / (rows[:, None] + 1e-10)
        plan = plan * (col_mass / (plan.sum(0) + 1e-10))
        if (rows - plan.sum(1)).abs().max() < 1e-6:
            break
    return plan


def pt_map(s, q, h, ctx):
    s, q = prepared(s, h.features, ctx, h.beta), prepared(q, h.features, ctx, h.beta)
    w = s.shape[0]
    rows = torch.cat([s.reshape(-1, s.shape[-1]), q])
    support_mass = F.one_hot(torch.arange(w).repeat_interleave(s.shape[1]), w).float()
    centres = s.mean(1)
    for _ in range(h.iterations):
        mass = torch.cat([support_mass, sinkhorn(torch.cdist(q, centres).pow(2), h.lam, len(q) / w)])
        centres = centres + h.alpha * (mass.T @ rows / mass.sum(0)[:, None] - centres)
    return sinkhorn(torch.cdist(q, centres).pow(2), h.lam, len(q) / w)


def repmet(s, q, h, ctx):
    assert s.shape[1] <= h.k, "the reference covers shots ≤ k (the shots are the representatives)"
    logit = -torch.cdist(unit(q), unit(s).reshape(-1, s.shape[-1])).pow(2) / (2 * h.sigma ** 2)
    per_class = logit.view(len(q), s.shape[0], -1).logsumexp(-1)  # the paper's soft sum ("sum")
    return per_class.log_softmax(1)


def weight_generator(s, q, h, ctx):
    net = ctx.models["weight_generator"].for_shots(s.shape[1])
    with torch.no_grad():
        rows = net.novel_weights(s, torch.ones(s.shape[:2], dtype=torch.bool), torch.arange(len(net.classes)))
        return net.logits(q, rows)


def pmn_hallucinator(s, q, h, ctx):
    net = ctx.models["pmn_hallucinator"]
    labels = torch.arange(s.shape[0]).repeat_interleave(s.shape[1])
    n_aug = int(net.n_aug) if h.n_aug is None else h.n_aug
    with torch.no_grad():
        rows, labels = net.augment(s.reshape(-1, s.shape[-1]), labels, labels.unique(), n_aug,
                                   torch.Generator().manual_seed(ctx.seed))
        return net.log_probs(q, net.prototypes(rows, labels, labels.unique()))


REFERENCES = {f.__name__: f for f in (protonet, cosine_ncm, imprint, raw_imprint, bd_cspn, laplacian_shot, tim,
                                      transductive_ft, pt_map, repmet, weight_generator, pmn_hallucinator)}

# ---- timing


def loop_accuracies(name, support, query, truth, ctx, budget):
    """Accuracies (n,) of the reference on the first n episodes, n as many as fit in `budget` seconds (≥ 3)."""
    head, ref, accs = HEADS.create(name), REFERENCES[name], []
    start = time.perf_counter()
    for i in range(len(support)):
        accs.append((ref(support[i], query[i], head, ctx).argmax(1) == truth).float().mean())
        if i >= 2 and time.perf_counter() - start > budget:
            break
    return torch.stack(accs), time.perf_counter() - start


def models(run, dim, base_weight):
    """The trained models of the weight-generator and PMN heads: the run's files, else untrained ones."""
    from lowshot.heads.pmn_hallucinator.model import PrototypeMatchingNet
    from lowshot.heads.weight_generator.model import FewShotWeightGenerator, ShotGenerators
    out, notes = {}, []
    for name in ("weight_generator", "pmn_hallucinator"):
        try:
            out[name] = trained_model(run, HEADS.get(name), dim, torch.device("cpu"))[0]
        except InputError:
            torch.manual_seed(0)
            out[name] = (ShotGenerators({"1": FewShotWeightGenerator(torch.arange(len(base_weight)), base_weight)})
                         if name == "weight_generator" else PrototypeMatchingNet(dim)).eval()
            notes.append(name)
    return out, notes


def batched_accuracies(name, support, query, task, budget):
    """lowshot's accuracies (E,) and its median time over up to 3 runs of all episodes (1 past `budget` s)."""
    times = []
    while len(times) < 3 and sum(times) < budget:
        start = time.perf_counter()
        accs = episode_accuracies(name, {}, support, query, task)
        times.append(time.perf_counter() - start)
    return accs, float(np.median(times))


def row(name, shots, threads, support, query, task, ctx, budget):
    """One markdown row for a head, a configuration and a thread count."""
    torch.set_num_threads(threads)
    truth = torch.arange(support.shape[1]).repeat_interleave(query.shape[2])
    episode_accuracies(name, {}, support, query, task)  # warm-up (memory allocator, caches): steady state on
    loop_accuracies(name, support[:1], query[:1].flatten(1, 2), truth, ctx, 0.0)  # both sides
    batched, t_batch = batched_accuracies(name, support, query, task, budget)
    looped, t_loop = loop_accuracies(name, support, query.flatten(1, 2), truth, ctx, budget)
    per_b, per_l = 1e6 * t_batch / len(support), 1e6 * t_loop / len(looped)
    gap = (batched[:len(looped)] - looped).abs().max().item()
    return (f"| {name} | 5-way {shots}-shot | {threads} | {per_b:,.0f} | {per_l:,.0f} | {per_l / per_b:.1f}× | "
            f"{100 * batched.mean():.2f} | {100 * gap:.2f} | {len(looped)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of per-episode loop per row")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--shots", type=int, nargs="*", default=[1, 5])
    parser.add_argument("--heads", nargs="*", default=default_heads())
    args = parser.parse_args()
    cfg = EpisodesConfig(run=args.run, device="cpu", episodes=args.episodes)
    test, novel, base_mean = _load(cfg)
    feats = torch.from_numpy(np.ascontiguousarray(test.feats))
    nets, untrained = models(args.run, test.dim, torch.randn(64, test.dim, generator=torch.Generator().manual_seed(0)))
    ctx = SimpleNamespace(base_mean=base_mean, scale=test.classifier_scale, models=nets, seed=cfg.seed)
    print(f"untrained stand-ins (same shapes): {', '.join(untrained) or 'none'}\n")
    print("| head | configuration | threads | lowshot ms/1,000 episodes | loop ms/1,000 episodes | ratio | "
          "accuracy % | largest per-episode accuracy gap (points) | looped episodes |\n|---|---|---|---|---|---|---|---|---|")
    for shots in args.shots:
        sup, qry = draw_episodes(test.labels, novel, 5, shots, cfg.queries, cfg.episodes, cfg.seed)
        support, query = feats[sup], feats[qry]
        for name in args.heads:
            task = Task(5, np.zeros(0, np.int64), np.arange(5), None, test.classifier_scale, seed=cfg.seed,
                        base_mean=base_mean, model=nets.get(name))
            for threads in args.threads:
                print(row(name, shots, threads, support, query, task, ctx, args.budget), flush=True)


if __name__ == "__main__":
    main()
