"""Training objectives: each loss against a direct computation on a tiny batch; sampling; tiny end-to-end runs."""
import math

import h5py
import numpy as np
import pytest
import torch

from lowshot.objectives import OBJECTIVES, GroupSampler
from lowshot.objectives.magnet import magnet_loss
from lowshot.objectives.protonet import protonet_loss
from lowshot.objectives.repmet import repmet_loss


def _rows(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape)).double()


def _sqd(a, b):
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))


def _log_sum_exp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def test_registry_names():
    assert OBJECTIVES.names() == ["ce", "magnet", "protonet", "repmet"]


def test_protonet_loss_matches_loops():
    support, query = _rows(3, 2, 4), _rows(3, 2, 4, seed=1)
    protos = [[sum(float(support[k, s, j]) for s in range(2)) / 2 for j in range(4)] for k in range(3)]
    total = 0.0
    for k in range(3):
        for q in range(2):
            logits = [-_sqd(query[k, q], protos[c]) for c in range(3)]
            total += _log_sum_exp(logits) - logits[k]
    assert float(protonet_loss(support, query)) == pytest.approx(total / 6, rel=1e-10)


def _magnet_by_loops(r, m, d_per, cls, alpha):
    mu = [[sum(float(r[c * d_per + i, j]) for i in range(d_per)) / d_per for j in range(2)] for c in range(m)]
    var = sum(_sqd(r[n], mu[n // d_per]) for n in range(m * d_per)) / (m * d_per - 1)
    out = []
    for n in range(m * d_per):
        own = n // d_per
        others = [-_sqd(r[n], mu[c]) / (2 * var) for c in range(m) if cls[c] != cls[own]]
        out.append(max(0.0, _sqd(r[n], mu[own]) / (2 * var) + alpha + _log_sum_exp(others)))
    return out


@pytest.mark.parametrize("alpha", [0.7, 3.0])
def test_magnet_loss_matches_loops(alpha):
    m, d_per, cls = 3, 3, [0, 0, 1]  # clusters 0 and 1 share a class: neither is in the other's denominator
    r = _rows(m * d_per, 2)
    expected = _magnet_by_loops(r, m, d_per, cls, alpha)
    mean, per = magnet_loss(r, torch.tensor(cls), alpha)
    assert per.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert float(mean) == pytest.approx(sum(expected) / len(expected), rel=1e-9)
    if alpha < 1:  # the hinge clips some examples and not others
        assert 0 < sum(e == 0 for e in expected) < len(expected)


def test_repmet_loss_matches_loops():
    emb, reps, target = _rows(4, 3), _rows(3, 2, 3, seed=1), [0, 2, 1, 2]
    sigma, alpha = 0.5, 0.5
    unit = lambda v: [float(x) / math.sqrt(sum(float(y) ** 2 for y in v)) for x in v]  # noqa: E731
    e = [unit(x) for x in emb]
    rep = [[unit(reps[i, j]) for j in range(2)] for i in range(3)]
    ce = hinge = 0.0
    for n in range(4):
        dist = [[math.sqrt(_sqd(e[n], rep[i][j])) for j in range(2)] for i in range(3)]
        mass = [sum(math.exp(-dij ** 2 / (2 * sigma ** 2)) for dij in dist[i]) for i in range(3)]
        ce += -math.log(mass[target[n]] / sum(mass))
        wrong = min(dist[i][j] for i in range(3) for j in range(2) if i != target[n])
        hinge += max(0.0, min(dist[target[n]]) - wrong + alpha)
    loss, got_ce, got_hinge = repmet_loss(emb, torch.tensor(target), reps, sigma, alpha)
    assert float(got_ce) == pytest.approx(ce / 4, rel=1e-9)
    assert float(got_hinge) == pytest.approx(hinge / 4, rel=1e-9) and hinge > 0
    assert float(loss) == pytest.approx((ce + hinge) / 4, rel=1e-9)


def test_group_sampler_draws_distinct_rows_of_each_group():
    groups = torch.tensor([2, 0, 1, 0, 2, 0, 1, 0, 2, 2])
    sampler = GroupSampler(groups, 4)  # group 3 is empty
    gen = torch.Generator().manual_seed(0)
    rows = sampler.draw(torch.tensor([0, 2, 1]), 3, gen)
    assert rows.shape == (3, 3)
    for g, r in zip([0, 2], rows[:2]):
        assert (groups[r] == g).all() and len(set(r.tolist())) == 3
    assert (groups[rows[2]] == 1).all()  # 2 rows, 3 wanted: drawn with replacement, still its own rows


@pytest.mark.parametrize("objective,args", [
    ("protonet", '{"ways": 2, "shots": 3, "queries": 2}'),
    ("magnet", '{"k": 2, "clusters": 3, "per_cluster": 4}'),
    ("repmet", '{"k": 2}'),
])
def test_train_objective_end_to_end(tiny_project, objective, args):
    from click.testing import CliRunner

    from lowshot.cli import main
    res = CliRunner().invoke(main, ["train", "--config", "train.json", "--run", "runs/t", "--objective", objective,
                                    "--epochs", "1", "--set", f"objective_args={args}"])
    assert res.exit_code == 0, res.output
    ckpt = torch.load("runs/t/checkpoints/last.pt", weights_only=True)
    assert ckpt["config"]["objective"] == objective
    assert ("objective" in ckpt) == (objective == "repmet")  # the learned representatives are saved
    assert CliRunner().invoke(main, ["features", "--run", "runs/t"]).exit_code == 0
    with h5py.File("runs/t/features/train.hdf5") as f:
        assert f.attrs["objective"] == objective and "classifier_weight" not in f  # an untrained classifier is not kept
        assert np.isfinite(f["all_feats"][...]).all()


def test_metric_objective_refuses_an_aux_loss(tiny_project):
    from click.testing import CliRunner

    from lowshot.cli import main
    res = CliRunner().invoke(main, ["train", "--config", "train.json", "--run", "runs/t", "--objective", "protonet",
                                    "--aux-loss", "sgm", "--aux-weight", "0.1"])
    assert res.exit_code == 1 and "does not train" in res.output


@pytest.mark.parametrize("objective,args", [("repmet", {"k": 2}), ("magnet", {"k": 2, "clusters": 3, "per_cluster": 4})])
def test_interrupted_objective_resumes_to_the_same_weights(tiny_project, monkeypatch, objective, args):
    """RepMet's representatives come back from the checkpoint; Magnet re-clusters from the resumed model."""
    from interrupt import interrupted_then_resumed

    from lowshot.config import resolve_config
    from lowshot.io.checkpoints import load_checkpoint
    from lowshot.stages.train import TrainConfig, train

    def cfg(run):
        return resolve_config(TrainConfig, "train.json", run=run, device="cpu", objective=objective, objective_args=args)
    train(cfg("straight"))
    a = load_checkpoint("straight/checkpoints/last.pt")
    b = load_checkpoint(interrupted_then_resumed(cfg("resumed"), monkeypatch))
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    if objective == "repmet":
        assert torch.equal(a["objective"]["representatives"], b["objective"]["representatives"])
