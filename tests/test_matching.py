"""Matching networks: the maths against an explicit numpy reference, training, the model file, the head."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.heads.matching.model import MatchingNet
from lowshot.heads.matching.train import MatchingTrainConfig
from lowshot.run import trained_model
from lowshot.stages import run
from lowshot.stages.benchmark import BenchmarkConfig, benchmark

TINY = dict(episodes=300, classes_per_episode=6, max_shots=5, lr=0.1)


def train_matching(cfg: MatchingTrainConfig) -> Path:
    return run("train-matching", cfg)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _lstm_step(x, h, c, w_ih, w_hh, b):
    """One LSTM step by the textbook formula, PyTorch gate order (i, f, g, o)."""
    i, f, g, o = np.split(w_ih @ x + w_hh @ h + b, 4)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def _full_context(support, p):
    """g(S) = S + forward + backward LSTM outputs over support (S, d), from the state dict `p` (numpy)."""
    def run(seq, sfx):
        h, c, out = np.zeros(seq.shape[1]), np.zeros(seq.shape[1]), []
        for s in seq:
            h, c = _lstm_step(s, h, c, p[f"support_lstm.weight_ih_l0{sfx}"], p[f"support_lstm.weight_hh_l0{sfx}"],
                              p[f"support_lstm.bias_ih_l0{sfx}"] + p[f"support_lstm.bias_hh_l0{sfx}"])
            out.append(h)
        return np.array(out)

    return support + run(support, "") + run(support[::-1], "_reverse")[::-1]


def _reference(net: MatchingNet, support, labels, x, num_classes):
    """softmax(f(x)·ĝᵀ) @ onehot, every step written out in numpy from the module's weights."""
    p = {k: v.detach().double().numpy() for k, v in net.state_dict().items()}
    d = net.dim
    g = _full_context(support, p)
    g_hat = g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-5)
    h, c = x.copy(), np.zeros(d)
    for _ in range(net.K):
        a = np.exp(g @ h - (g @ h).max())
        r = (a / a.sum()) @ g
        h, c = _lstm_step(np.concatenate([x, r]), h, c, p["query_cell.weight_ih"], p["query_cell.weight_hh"],
                          p["query_cell.bias_ih"] + p["query_cell.bias_hh"])
        h = h + x
    a = np.exp(g_hat @ h - (g_hat @ h).max())
    return (a / a.sum()) @ np.eye(num_classes)[labels]


@pytest.mark.parametrize("K", [0, 1, 3])
def test_matches_explicit_formula(K):
    torch.manual_seed(K)
    net = MatchingNet(2, K).double()
    support = np.array([[1.0, 0.2], [-0.5, 1.5], [0.3, -1.0]])
    labels = np.array([2, 0, 2])
    queries = np.array([[0.9, 0.1], [-1.0, 2.0]])
    with torch.no_grad():
        logp = net(torch.tensor(support), torch.tensor(labels), torch.tensor(queries), 4)
    want = np.stack([_reference(net, support, labels, q, 4) for q in queries])
    np.testing.assert_allclose(logp.exp().numpy(), want, rtol=1e-9, atol=1e-12)


def test_log_probs_normalise_over_classes_with_support():
    torch.manual_seed(0)
    net = MatchingNet(8, K=2)
    labels = torch.tensor([0, 0, 2, 2, 3, 3, 3])
    with torch.no_grad():
        logp = net(torch.randn(7, 8) * 3, labels, torch.randn(5, 8) * 3, num_classes=6)
    assert logp.shape == (5, 6)
    assert torch.isneginf(logp[:, [1, 4, 5]]).all()
    assert torch.isfinite(logp[:, [0, 2, 3]]).all()
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(5))


def test_training_is_deterministic_and_loads_weights_only(feature_project, capsys):
    a = train_matching(MatchingTrainConfig(run="runs/synth", out="a.pt", seed=3, **{**TINY, "episodes": 20}))
    b = train_matching(MatchingTrainConfig(run="runs/synth", out="b.pt", seed=3, **{**TINY, "episodes": 20}))
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    assert sa["dim"] == 16 and sa["K"] == 5 and sa["identity"]["config"]["seed"] == 3
    assert sa["features"].endswith("train.hdf5") and sa["identity"]["base_rows"] == sb["identity"]["base_rows"]
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sb["state_dict"][k]), k
    train_matching(MatchingTrainConfig(run="runs/synth", out="a.pt", seed=3, **{**TINY, "episodes": 20}))
    assert "up to date" in capsys.readouterr().out


def test_support_is_base_rows_then_tiled_novel_block():
    labels = torch.tensor([0] * 5 + [1] * 2 + [7, 7, 9, 9])
    feats = torch.arange(len(labels), dtype=torch.float32)[:, None].repeat(1, 4)
    task = Task(10, np.array([0, 1]), np.array([7, 9]), seed=1)
    support, support_labels = HEADS.create("matching", support_per_class=3)._support(feats, labels, task)
    rows = support[:, 0].long()
    assert support_labels.tolist() == [0, 0, 0, 1, 1] + [7, 7, 9, 9] * 2
    assert len(set(rows[:3].tolist())) == 3 and set(rows[:3].tolist()) <= set(range(5))
    assert sorted(rows[3:5].tolist()) == [5, 6] and rows[5:].tolist() == [7, 8, 9, 10] * 2


def test_head_learns_well_separated_novel_classes(feature_project):
    train_matching(MatchingTrainConfig(run="runs/synth", **TINY))
    out = benchmark(BenchmarkConfig(run="runs/synth", heads=["matching"], ns=[5], expids=[1],
                                    head_params={"matching": {"support_per_class": 10}}))
    accs = json.loads(Path(out[0]).read_text())["accs"]
    assert accs[0] > 0.9 and accs[2] > 0.9, accs


def test_missing_model_says_what_to_run(tmp_path):
    with pytest.raises(InputError, match="run `lowshot train-matching") as err:
        trained_model(str(tmp_path), HEADS.get("matching"), 3, torch.device("cpu"))
    assert "\n" not in str(err.value) and str(tmp_path / "heads" / "matching.pt") in str(err.value)


def test_feature_dimension_must_match(feature_project):
    train_matching(MatchingTrainConfig(run="runs/synth", **{**TINY, "episodes": 2}))
    with pytest.raises(InputError, match="16-dimensional"):
        trained_model("runs/synth", HEADS.get("matching"), 8, torch.device("cpu"))


def test_a_retrained_network_recomputes_its_cells(feature_project):
    cfg = BenchmarkConfig(run="runs/synth", heads=["matching"], ns=[1], expids=[1])
    train_matching(MatchingTrainConfig(run="runs/synth", **{**TINY, "episodes": 2}))
    assert len(benchmark(cfg)) == 1 and benchmark(cfg) == []  # written, then up to date
    train_matching(MatchingTrainConfig(run="runs/synth", **{**TINY, "episodes": 3}))
    assert len(benchmark(cfg)) == 1  # another network: the cell is recomputed, not skipped
