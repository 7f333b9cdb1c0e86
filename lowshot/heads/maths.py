"""Maths shared by several heads: normalisation, class means, distances, grouping, cache keys."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
import torch.nn.functional as F

from lowshot.errors import InputError

COSINE_HINT = ("needs a representation trained with the cosine classifier: "
               "run `lowshot train --classifier cosine` then `lowshot features`")
NO_CLASSIFIER = ("needs the representation's trained classifier, and the feature file has no classifier_weight "
                 "(features of a timm or torchvision model, or of other code, have none; `lowshot features` on a "
                 "lowshot checkpoint writes it): use a head that needs none, e.g. cosine_ncm (every class "
                 "imprinted from its examples), protonet or logreg")


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows of x scaled to unit L2 norm (zero rows stay zero)."""
    return F.normalize(x, dim=-1)


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class means (C, d) and counts (C,) of feats (N, d); absent classes get a zero mean."""
    counts = torch.bincount(labels, minlength=num_classes).to(feats.dtype)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, labels, feats)
    return sums / counts.clamp(min=1)[:, None], counts


def sq_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (..., N, K) between x (..., N, d) and centres (..., K, d), via the linear form."""
    cross = x @ centres.transpose(-1, -2)
    return (x.pow(2).sum(-1, keepdim=True) - 2 * cross + centres.pow(2).sum(-1).unsqueeze(-2)).clamp_min(0)


def mask_absent(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Scores with −inf in the columns of classes that had no training data (present: bool (C,))."""
    return scores.masked_fill(~present.to(scores.device), float("-inf"))


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch.Generator on `device`, seeded."""
    return torch.Generator(device=device).manual_seed(int(seed))


def split_base(labels: torch.Tensor, task) -> Tuple[torch.Tensor, torch.Tensor]:
    """(base classes of the setup as a long tensor, bool (N,) mask of the rows with a base label)."""
    base = torch.as_tensor(task.base_classes, dtype=torch.long, device=labels.device)
    return base, torch.isin(labels, base)


def cosine_scale(task, head: str) -> float:
    """The representation's cosine-classifier scale s, or an `InputError` saying what to run first."""
    if task.classifier_scale is None:
        raise InputError(None, f"head '{head}' {COSINE_HINT if task.classifier_weight is not None else NO_CLASSIFIER}")
    return float(task.classifier_scale)





def base_rows(task, head: str, device: torch.device) -> torch.Tensor:
    """The representation's classifier rows (C, d), or an `InputError` if the feature file has none."""
    if task.classifier_weight is None:
        raise InputError(None, f"head '{head}' {NO_CLASSIFIER}")
    return task.classifier_weight.to(device=device, dtype=torch.float32)


def check_dim(saved: Dict[str, Any], dim: int, what: str) -> None:
    """A one-line `InputError` when a trained model (`saved`, as its stage wrote it) takes features other than `dim`-wide."""
    if int(saved["dim"]) != dim:
        raise InputError(None, f"{what} was trained on {saved['dim']}-dimensional features, these have {dim}: "
                               "train it again on this run's features")


def group_rows(x: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, width: int = 0):
    """Rows of x grouped by class, zero-padded.

    Args:
        x: (N, d) rows; labels: (N,) labels, all in `classes`; classes: (C,) sorted class ids.
        width: minimal padded width.
    Returns:
        (C, m, d) rows, bool (C, m) mask of real rows, (C,) counts; m = max(largest count, width).
    """
    pos = torch.searchsorted(classes, labels)
    order = torch.argsort(pos, stable=True)
    pos = pos[order]
    counts = torch.bincount(pos, minlength=len(classes))
    within = torch.arange(len(pos), device=x.device) - (torch.cumsum(counts, 0) - counts)[pos]
    m = max(int(counts.max()) if len(pos) else 0, width)
    out = x.new_zeros(len(classes), m, x.shape[1])
    mask = torch.zeros(len(classes), m, dtype=torch.bool, device=x.device)
    out[pos, within], mask[pos, within] = x[order], True
    return out, mask, counts


def fingerprint(*tensors: torch.Tensor) -> tuple:
    """A cheap content key for `task.cache`: shapes and float64 sums of row sums and row norms."""
    key = []
    for t in tensors:
        t = t.detach().float()
        t = t.flatten(1) if t.dim() > 1 else t[:, None]
        norms = torch.linalg.vector_norm(t, dim=-1)
        key += [tuple(t.shape), float(t.sum(-1).double().sum()), float(norms.double().sum())]
    return tuple(key)


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """fn applied to x in chunks of `rows` rows (bounds the memory of (N, K) distance matrices)."""
    return torch.cat([fn(x[i:i + rows]) for i in range(0, len(x), rows)]) if len(x) else fn(x)


def plan_new_rows(labels: torch.Tensor, max_per_label: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which new rows to make: M − m for each label with m < M real rows, none for the others.

    Each new row gets a seed example drawn uniformly (with replacement) among the real rows of its
    label, as H&G's `do_generate` does. Draws come from `gen` (a CPU generator), so the plan does
    not depend on the device.

    Args:
        labels: int tensor of shape (n,), the labels of the real rows.
        max_per_label: M.
        gen: seeded CPU `torch.Generator`.

    Returns:
        (seed_rows, new_labels): int64 indices into the real rows and the labels of the new rows,
        both of shape (Σ max(0, M − m),) on the device of `labels`, grouped by ascending label.
    """
    classes, counts = torch.unique(labels.cpu(), return_counts=True)
    need = (max_per_label - counts).clamp(min=0)
    new_labels = torch.repeat_interleave(classes, need)
    order = torch.argsort(labels.cpu(), stable=True)  # real rows grouped by ascending label
    first = torch.cumsum(counts, 0) - counts
    owner = torch.repeat_interleave(torch.arange(len(classes)), need)
    pick = (torch.rand(len(owner), generator=gen, dtype=torch.float64) * counts[owner]).long()
    seed_rows = order[first[owner] + pick.clamp(max=counts[owner] - 1)]
    return seed_rows.to(labels.device), new_labels.to(labels.device, labels.dtype)


# --- shared by the transductive episode heads (bd_cspn, laplacian_shot, tim, pt_map, transductive_ft) ---

FEATURES = ("l2", "cl2n", "power", "none")


def base_centre(rows: torch.Tensor, labels, task, head: str, hint: str = "choose another feature preprocessing"
                ) -> torch.Tensor:
    """SimpleShot's centre (E, d) of E training sets rows (E, N, d): the mean of their base rows.

    With labels (N,) holding base classes (a benchmark cell) it is the mean of those rows; with
    labels None (an episode: no base rows) it is `task.base_mean`, or an `InputError` ending in `hint`.
    """
    is_base = split_base(labels, task)[1] if labels is not None else None
    if is_base is not None and is_base.any():
        return rows[:, is_base].mean(1)
    if task.base_mean is None:
        raise InputError(None, f"head '{head}' centres on the base classes' mean train feature and has none here "
                               f"(episodes read it from the run's train.hdf5); {hint}")
    return task.base_mean.to(rows).expand(rows.shape[0], -1)


def power_transform(x: torch.Tensor, beta: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """PT-MAP's (x + ε)^β, elementwise; negative entries (features that are not ReLU outputs) get −(−x + ε)^β."""
    y = x.abs().add_(eps).pow_(beta)
    return torch.where(x < 0, -y, y)


def unit_shot_means(support: torch.Tensor, centre=None) -> torch.Tensor:
    """normalise(mean_s normalise(x_s − c)) of shape (E, W, d) for support (E, W, S, d), centre (E, 1, d) or None.

    The imprinted / SimpleShot class rows of a batch of episodes, without writing out the normalised
    shots: mean_s (x_s − c)/‖x_s − c‖ is one weighted sum of each class's raw shots.
    """
    e, w, s, d = support.shape
    sq = sq_norms(support)
    if centre is not None:
        xc = (support.view(e, w * s, d) @ centre.transpose(1, 2)).view(e, w, s)  # x·c
        sq = sq - 2 * xc + sq_norms(centre)[..., None]
    weight = sq.clamp_min(0).sqrt().clamp_min(1e-12).reciprocal()  # (E, W, S)
    if s == 1:  # one shot: its own row (a batch of 1 × 1 products is slow)
        means = support[:, :, 0] * weight
    else:
        means = (weight[:, :, None] @ support)[:, :, 0]  # Σ_s x_s / ‖x_s − c‖
    if centre is not None:
        means = means - weight.sum(-1, keepdim=True) * centre
    return l2_normalise(means)


def one_hot_means(rows: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Class means (E, k, d) of E sets rows (E, N, d) sharing labels (N,) in 0..k−1."""
    onehot = F.one_hot(labels, k).to(rows)
    return (onehot / onehot.sum(0)).t() @ rows


def sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 norms (...) of the rows of x (..., d), in one pass over x (no (..., d) temporary)."""
    return torch.linalg.vector_norm(x, dim=-1).square()


def dots(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Dot products (E, K, N) of a few vectors a (E, K, d) with rows x (E, N, d), class-major.

    The batched episode heads keep (E, classes, rows) layouts: a product with K ≪ N is faster as
    a @ xᵀ, and softmax or max over a short class axis is 5–10× faster along dim 1 of (E, K, N)
    than along the last axis of (E, N, K) on a CPU.
    """
    return a @ x.transpose(1, 2)


def sinkhorn(kernel: torch.Tensor, col_mass: float, tol: float = 1e-6, max_iter: int = 1000) -> torch.Tensor:
    """Scale kernel (E, K, Q) (class-major: K classes, Q queries) so that every query's K entries sum to 1
    and every class's Q entries to `col_mass` (Sinkhorn-Knopp).

    Each of the E problems stops on its own, after the first scaling that moves its row sums by
    less than `tol`; later iterations compute only the problems still running, on a compact copy
    (a problem is written back once, when it stops). A batch thus gives the same plans as one problem
    at a time, for the cost of its slowest problem's iterations, shared by the whole batch.
    """
    plan = kernel / kernel.sum((1, 2), keepdim=True)
    active, now = torch.arange(len(plan), device=plan.device), plan.clone()
    for i in range(max_iter):
        rows = now.sum(1, keepdim=True)
        now.div_(rows + 1e-10)
        now.mul_(col_mass / (now.sum(2, keepdim=True) + 1e-10))
        done = (rows - now.sum(1, keepdim=True)).abs().amax((1, 2)) < tol
        if i == max_iter - 1:
            done = torch.ones_like(done)
        if done.any():
            plan[active[done]] = now[done]
            active, now = active[~done], now[~done]
            if not len(active):
                break
    return plan


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (...) of distributions p (..., K) along the last axis, in nats."""
    return -(p * torch.log(p + 1e-12)).sum(-1)


def adam_descent(params, gradients: Callable[[], list], steps: int, lr: float) -> None:
    """`steps` full-batch steps of `torch.optim.Adam` (default betas and ε) on `params`, in place.

    `gradients()` returns the gradient of the loss for each parameter at their current values
    (computed by hand: at an episode's size autograd's bookkeeping costs more than the maths). The
    update is torch's own Adam, so it matches an autograd loop with `torch.optim.Adam` step for step.
    Adam acts elementwise, so with a loss summed over E episodes each episode's parameters follow
    exactly the path they would alone.
    """
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        for p, g in zip(params, gradients()):
            p.grad = g
        opt.step()


def entropy_gradient(p: torch.Tensor, log_p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """∂H(softmax(z))/∂z = −p ⊙ (log p + H) for distributions p (softmax of z) along `dim`."""
    h = -(p * log_p).sum(dim, keepdim=True)
    return -p * (log_p + h)
