"""Tiny synthetic low-shot cells for head tests: Gaussian classes and a matching cosine classifier."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowshot.heads import Task


def mixture(shots: int = 5, d: int = 32, base: int = 10, novel: int = 10, per_base: int = 40, per_test: int = 30,
            sep: float = 5.0, noise: float = 0.5, seed: int = 0, random_labels: bool = False, extra: int = 0,
            interleave: bool = False):
    """One cell: train = every base row + `shots` rows per novel class; test rows of every class.

    Class means are random directions of norm `sep`; rows add N(0, noise²) per dimension. The
    Task carries a cosine classifier (unit rows along the true means, scale 10). `random_labels`
    draws every row's features from a random class, independent of its label. `extra` classes
    without any row are appended to the label space; `interleave` scatters base and novel labels.

    Returns:
        xtr (N, d), ytr (N,), xte (M, d), yte (M,), task.
    """
    g = torch.Generator().manual_seed(seed)
    num = base + novel
    perm = torch.randperm(num, generator=g) if interleave else torch.arange(num)
    base_cls, novel_cls = perm[:base].sort().values, perm[base:].sort().values
    mu = F.normalize(torch.randn(num + extra, d, generator=g), dim=1) * sep
    ytr = torch.cat([base_cls.repeat_interleave(per_base), novel_cls.repeat_interleave(shots)])
    yte = perm.sort().values.repeat_interleave(per_test)

    def rows(y: torch.Tensor) -> torch.Tensor:
        src = torch.randint(num, y.shape, generator=g) if random_labels else y
        return mu[src] + noise * torch.randn(len(y), d, generator=g)

    xtr, xte = rows(ytr), rows(yte)
    task = Task(num + extra, base_cls.numpy().astype(np.int64), novel_cls.numpy().astype(np.int64),
                F.normalize(mu, dim=1), 10.0, seed=seed)
    return xtr, ytr, xte, yte, task


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add overhead, and stall when other jobs hold the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def head_params(name: str, dim: int) -> dict:
    """Small-budget keyword arguments for a head."""
    return {"support_per_class": 20} if name in ("matching", "pmn_hallucinator") else dict(FAST.get(name, {}))


def trained(name: str, dim: int):
    """The trained model a head needs (its `task.model`), or None: `matching` an untrained (seeded) network,
    enough for its contract and separable-data checks; `weight_generator` untrained generators (φ_att = 0) over
    random rows of base classes 0..63; `pmn_hallucinator` an untrained (seeded) PMN, K = 1, whose hallucinator
    copies its seeds."""
    from lowshot.heads.matching.model import MatchingNet
    if name == "matching":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return MatchingNet(dim, 1).eval()
    if name == "pmn_hallucinator":
        return pmn_net(dim)
    if name == "weight_generator":
        return weight_generators(torch.randn(64, dim, generator=torch.Generator().manual_seed(dim)))
    return None


def with_model(name: str, task: Task, dim: int) -> Task:
    """`task` carrying the trained model of head `name` (if it needs one)."""
    return dataclasses.replace(task, model=trained(name, dim))


def pmn_saved(dim: int, K: int = 1, n_aug: int = 2, hidden: int = 0) -> dict:
    """What `lowshot train-pmn` saves, for an untrained (seeded) network; hidden 0 means 2 · dim, where the
    identity-initialised hallucinator returns its (non-negative) seeds."""
    from lowshot.heads.pmn_hallucinator.model import PrototypeMatchingNet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = PrototypeMatchingNet(dim, K, hidden or 2 * dim, n_aug)
    return {"state_dict": net.state_dict(), "dim": dim, "K": K, "hidden": hidden or 2 * dim}


def pmn_net(dim: int, **kwargs):
    """The untrained network of `pmn_saved`, as the benchmark builds it."""
    from lowshot.heads.pmn_hallucinator.model import from_saved
    return from_saved(pmn_saved(dim, **kwargs), dim).eval()


def pmn_file(path, dim: int, **kwargs) -> str:
    """`pmn_saved` written as a `lowshot train-pmn` file."""
    from lowshot.io.atomic import save_torch
    save_torch(path, pmn_saved(dim, **kwargs))
    return str(path)


def weight_generators_saved(weight_base: torch.Tensor, scale: float = 10.0, phi_att: float = 0.0,
                            shots=(1,)) -> dict:
    """What `lowshot train-weight-generator` saves, for untrained generators over base classes 0..B−1
    (weight_base (B, d)); φ_att = 0 makes the generated rows the mean normalised shot (imprinting)."""
    from lowshot.heads.weight_generator.model import FewShotWeightGenerator

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = FewShotWeightGenerator(torch.arange(len(weight_base)), weight_base, scale)
    with torch.no_grad():
        net.phi_att.fill_(phi_att)
    return {"generators": {str(n): net.state_dict() for n in shots}, "dim": weight_base.shape[1]}


def weight_generators(weight_base: torch.Tensor, **kwargs):
    """The generators of `weight_generators_saved`, as the benchmark builds them."""
    from lowshot.heads.weight_generator.model import from_saved
    return from_saved(weight_generators_saved(weight_base, **kwargs), weight_base.shape[1]).eval()


FAST = {"logreg": {"tol": 1e-3}, "tim": {"iterations": 20, "lr": 1e-2}, "pt_map": {"iterations": 5}}
