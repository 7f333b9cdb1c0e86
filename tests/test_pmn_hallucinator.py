"""Prototype matching networks + hallucinator (Wang et al. 2018): maths by hand and against numpy, G, training, head."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import one_thread, pmn_net, pmn_saved  # noqa: F401 (one_thread: autouse fixture)
from test_matching import _full_context, _lstm_step
from test_weight_generator import nuisance_project

from lowshot.errors import InputError
from lowshot.generators import GENERATORS
from lowshot.heads import HEADS, Task
from lowshot.heads.matching.train import sample_episode
from lowshot.heads.maths import group_rows
from lowshot.heads.pmn_hallucinator.model import (
    Hallucinator,
    PrototypeMatchingNet,
    from_saved,
)
from lowshot.heads.pmn_hallucinator.train import PMNTrainConfig, fake_novel
from lowshot.run import trained_model
from lowshot.stages import run
from lowshot.stages.benchmark import BenchmarkConfig, benchmark
from lowshot.stages.train_model import base_rows

TINY = dict(episodes=60, classes_per_episode=6, max_shots=5, max_novel_shots=2, n_aug=3, hidden=32, K=1)


def train_pmn(cfg: PMNTrainConfig) -> Path:
    return run("train-pmn", cfg)


def silent_net(dim: int = 2, K: int = 1, n_aug: int = 0) -> PrototypeMatchingNet:
    """A PMN whose LSTMs are all zero: every LSTM output is 0, so g(S) = S and f(x) = x."""
    net = PrototypeMatchingNet(dim, K, 2 * dim, n_aug).double()
    with torch.no_grad():
        for name, p in net.matching.named_parameters():
            p.zero_()
    return net


def test_two_class_one_shot_scores_by_hand():
    # prototypes (3, 4) and (0, 2) -> p̂ = (3, 4) / (5 + ε), (0, 2) / (2 + ε); x = (1, 1): logits 7 / (5 + ε), 2 / (2 + ε)
    net = silent_net()
    support, labels = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.double), torch.tensor([0, 1])
    logp = net(support, labels, torch.tensor([[1.0, 1.0]], dtype=torch.double), torch.tensor([], dtype=torch.long),
               torch.Generator())
    gap = 7 / (5 + 1e-5) - 2 / (2 + 1e-5)  # ≈ 0.4
    want = torch.tensor([[-math.log1p(math.exp(-gap)), -math.log1p(math.exp(gap))]], dtype=torch.double)
    torch.testing.assert_close(logp, want)


def test_attention_is_over_prototypes_not_examples():
    # three copies of class 0's shot weigh as one: a matching network would give class 0 three times the mass
    net = silent_net()
    x = torch.tensor([[1.0, 1.0]], dtype=torch.double)
    one = net(torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.double), torch.tensor([0, 1]), x,
              torch.tensor([], dtype=torch.long), torch.Generator())
    three = net(torch.tensor([[3.0, 4.0]] * 3 + [[0.0, 2.0]], dtype=torch.double), torch.tensor([0, 0, 0, 1]), x,
                torch.tensor([], dtype=torch.long), torch.Generator())
    torch.testing.assert_close(one, three)


def _reference(net: PrototypeMatchingNet, support, labels, x):
    """softmax_c(f(x)·p̂_c), every step written out in numpy from the module's weights."""
    p = {k: v.detach().double().numpy() for k, v in net.matching.state_dict().items()}
    g = _full_context(support, p)
    protos = np.stack([g[labels == c].mean(0) for c in np.unique(labels)])
    h, c = x.copy(), np.zeros_like(x)
    for _ in range(net.matching.K):
        a = np.exp(protos @ h - (protos @ h).max())
        h, c = _lstm_step(np.concatenate([x, (a / a.sum()) @ protos]), h, c, p["query_cell.weight_ih"],
                          p["query_cell.weight_hh"], p["query_cell.bias_ih"] + p["query_cell.bias_hh"])
        h = h + x
    logits = (protos / (np.linalg.norm(protos, axis=1, keepdims=True) + 1e-5)) @ h
    return np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()


def test_matches_explicit_formula_with_random_weights():
    torch.manual_seed(0)
    net = PrototypeMatchingNet(3, K=2, hidden=6, n_aug=0).double()
    support = np.array([[1.0, 0.2, 0.0], [-0.5, 1.5, 0.3], [0.3, -1.0, 2.0], [0.7, 0.7, -0.2]])
    labels, queries = np.array([0, 1, 0, 2]), np.array([[0.9, 0.1, 0.4], [-1.0, 2.0, 0.5]])
    with torch.no_grad():
        logp = net(torch.tensor(support), torch.tensor(labels), torch.tensor(queries), torch.tensor([], dtype=torch.long),
                   torch.Generator())
    want = np.stack([_reference(net, support, labels, q) for q in queries])
    np.testing.assert_allclose(logp.exp().numpy(), want, rtol=1e-9, atol=1e-12)


def test_hallucinator_by_hand_identity_start_shapes_and_seeds():
    g = Hallucinator(1, hidden=2)
    with torch.no_grad():  # fc1 = [[1, 1], [1, -1]], fc2 = I, fc3 = [2, 1], biases 0
        g.fc1.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        g.fc3.weight.copy_(torch.tensor([[2.0, 1.0]]))
    # x = 1, z = 2: fc1 -> (3, -1) -> leaky -> (3, -.01); fc2 keeps, leaky again -> (3, -.0001); fc3 -> 6 - .0001
    torch.testing.assert_close(g(torch.tensor([[1.0]]), torch.tensor([[2.0]])), torch.tensor([[6.0 - 1e-4]]))
    fresh, x = Hallucinator(4, hidden=8), torch.rand(5, 4)  # non-negative seeds, hidden ≥ 2d
    torch.testing.assert_close(fresh.hallucinate(x, torch.Generator().manual_seed(0)), x)
    with torch.no_grad():
        fresh.fc1.weight.add_(0.1)
    a, b, c = (fresh.hallucinate(x, torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert a.shape == (5, 4) and torch.equal(a, b) and not torch.equal(a, c)


def test_novel_classes_are_topped_up_to_n_aug_from_their_own_rows():
    net = PrototypeMatchingNet(2, K=1, hidden=4, n_aug=40)  # identity G: a new row is a copy of its seed
    support = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 5.0], [9.0, 9.0]])
    labels = torch.tensor([7, 7, 3, 3, 3, 9])  # 9: a base class, never augmented
    out, out_labels = net.augment(support, labels, torch.tensor([3, 7]), 40, torch.Generator().manual_seed(0))
    assert torch.equal(out[:6], support) and out_labels[6:].tolist() == [3] * 37 + [7] * 38
    assert set(out[6:43, 1].tolist()) == {1.0, 3.0, 5.0} and set(out[43:, 0].tolist()) == {1.0, 3.0}
    same, same_labels = net.augment(support, labels, torch.tensor([3, 7]), 2, torch.Generator())
    assert torch.equal(same, support[:6]) and len(same_labels) == 6  # classes with ≥ n_aug rows get none


def test_plugin_keeps_real_rows_first_and_tops_up(tmp_path):
    plugin = GENERATORS.get("pmn")
    state = plugin.init(pmn_saved(4, hidden=8), 4, None)
    with torch.no_grad():
        state.fc1.weight.add_(0.1)
    feats, labels = torch.rand(4, 4), torch.tensor([5, 5, 6, 8])
    out, out_labels = plugin.generate(feats, labels, state, 3, seed=2)
    assert torch.equal(out[:4], feats) and out_labels.tolist() == [5, 5, 6, 8, 5, 6, 6, 8, 8]
    again, _ = plugin.generate(feats, labels, state, 3, seed=2)
    assert torch.equal(out, again)


def test_novel_classes_of_an_episode_keep_few_shots():
    support, labels = torch.arange(20), torch.tensor([0] * 5 + [1] * 5 + [2] * 5 + [3] * 5)
    cfg = PMNTrainConfig(novel_fraction=0.5, max_novel_shots=2)
    rows, kept, novel = fake_novel(support, labels, 4, cfg, torch.Generator().manual_seed(0))
    counts = torch.bincount(kept, minlength=4)
    assert novel.tolist() == [2, 3] and counts[:2].tolist() == [5, 5] and (counts[2:] >= 1).all()
    assert (counts[2:] <= 2).all() and (rows // 5 == kept).all()


def episode_nll(net: PrototypeMatchingNet, cfg: PMNTrainConfig, episodes: int = 30) -> float:
    """Mean query NLL of `episodes` fixed episodes (seed 123) drawn as `train-pmn` draws its own."""
    base = base_rows(cfg)[0]
    feats, labels = base.feats, base.labels
    rows, valid, _ = group_rows(torch.arange(len(labels))[:, None], labels, torch.unique(labels))
    gen, m, total = torch.Generator().manual_seed(123), cfg.classes_per_episode, 0.0
    with torch.no_grad():
        for _ in range(episodes):
            support, support_labels, queries = sample_episode(rows[..., 0], valid, m, cfg.max_shots, gen)
            support, support_labels, novel = fake_novel(support, support_labels, m, cfg, gen)
            logp = net(feats[support], support_labels, feats[queries], novel, gen)
            total += F.nll_loss(logp, torch.arange(m)).item()
    return total / episodes


def test_training_reduces_the_loss_of_held_out_episodes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nuisance_project(tmp_path)
    cfg = PMNTrainConfig(run="runs/n", seed=3, device="cpu", **{**TINY, "episodes": 100, "classes_per_episode": 10})
    trained = from_saved(torch.load(train_pmn(cfg), weights_only=True), 16)
    torch.manual_seed(3)  # the initialisation train_pmn starts from
    untrained = PrototypeMatchingNet(16, cfg.K, cfg.hidden, cfg.n_aug)
    before, after = episode_nll(untrained, cfg), episode_nll(trained, cfg)
    assert after < 0.95 * before, (before, after)  # measured: 1.63 -> 1.48
    assert not torch.equal(trained.hallucinator.fc1.weight, untrained.hallucinator.fc1.weight)  # G learned too


def test_training_is_deterministic_and_cached(feature_project, capsys):
    cfg = dict(run="runs/synth", seed=3, device="cpu", **{**TINY, "episodes": 20})
    a = train_pmn(PMNTrainConfig(out="a.pt", **cfg))
    b = train_pmn(PMNTrainConfig(out="b.pt", **cfg))
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    assert sa["dim"] == 16 and sa["identity"]["config"]["seed"] == 3 and sa["identity"]["config"]["n_aug"] == 3 and len(sa["log"]) == 10
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sb["state_dict"][k]), k
    train_pmn(PMNTrainConfig(out="a.pt", **cfg))
    assert "up to date" in capsys.readouterr().out


def test_missing_model_is_one_line_and_dimension_is_checked(tmp_path):
    with pytest.raises(InputError, match="run `lowshot train-pmn") as err:
        trained_model(str(tmp_path), HEADS.get("pmn_hallucinator"), 4, torch.device("cpu"))
    assert "\n" not in str(err.value) and str(tmp_path / "heads" / "pmn_hallucinator.pt") in str(err.value)
    with pytest.raises(InputError, match="trained on 4-dimensional features, these have 3"):
        from_saved(pmn_saved(4), 3)


def test_head_scores_are_log_probabilities_over_the_classes_it_saw(tmp_path):
    task = Task(6, np.array([0, 1]), np.array([4, 5]), seed=0)
    feats, labels = torch.rand(7, 4), torch.tensor([0, 0, 0, 1, 1, 4, 5])
    head = HEADS.create("pmn_hallucinator", support_per_class=2)
    head.fit(feats, labels, dataclasses.replace(task, model=pmn_net(4, n_aug=3)))
    assert head.classes_.tolist() == [0, 1, 4, 5] and head.protos_.shape == (4, 4)
    scores = head.scores(torch.rand(3, 4))
    assert torch.isneginf(scores[:, [2, 3]]).all() and torch.allclose(scores.exp().sum(1), torch.ones(3))


def test_trained_pmn_matches_or_beats_imprinting_on_a_gaussian_mixture(tmp_path, monkeypatch):
    """Imprinting's cosine to the mean shot keeps the shots' 10 noise dimensions; the trained f and g can learn to discount them."""
    monkeypatch.chdir(tmp_path)
    nuisance_project(tmp_path)
    train_pmn(PMNTrainConfig(run="runs/n", episodes=300, classes_per_episode=10, hidden=64, K=1, device="cpu"))
    out = benchmark(BenchmarkConfig(run="runs/n", heads=["imprint", "pmn_hallucinator"], ns=[1, 5], expids=[1, 2],
                                    device="cpu"))
    res = [json.loads(Path(p).read_text()) for p in out]
    for n in (1, 5):
        mean = {h: np.mean([r["accs"] for r in res if r["head"] == h and r["n"] == n], 0)
                for h in ("imprint", "pmn_hallucinator")}
        gain = mean["pmn_hallucinator"] - mean["imprint"]
        # measured: novel top-1 +14.2 / +13.5 points, all top-1 +5.2 / +3.1 at n = 1 / 5 (base top-1 −3.7 / −7.2)
        assert gain[0] > 0.05 and gain[4] > 0, (n, mean)


def test_cli_trains_benchmarks_and_recomputes_after_retraining(feature_project):
    from synthetic_cli import invoke
    train = ("train-pmn", "--run", "runs/synth", "--device", "cpu", "--set", "hidden=32", "--set", "K=1")
    out = invoke(*train, "--set", "episodes=3")
    assert out.exit_code == 0 and "runs/synth/heads/pmn_hallucinator.pt" in out.output
    bench = ("benchmark", "--run", "runs/synth", "--heads", "pmn_hallucinator", "--n", "1", "--expid", "1",
             "--device", "cpu")
    assert "1 new result files" in invoke(*bench).output
    assert "0 new result files" in invoke(*bench).output  # up to date
    invoke(*train, "--set", "episodes=4")
    assert "1 new result files" in invoke(*bench).output  # another network: the cell is recomputed
    gen = ("benchmark", "--run", "runs/synth", "--heads", "logreg", "--generator", "pmn", "--max-per-label", "5",
           "--n", "1", "--expid", "1", "--device", "cpu")
    assert "1 new result files" in invoke(*gen).output  # default generator file: the run's train-pmn output


def test_runs_in_episodes_where_every_class_is_novel(tmp_path):
    from lowshot.protocols.episodes import episode_accuracies
    g = torch.Generator().manual_seed(0)
    means = 6 * torch.eye(4)[:3]  # 3 ways, well apart; rows stay non-negative-ish around them
    support = (means[None, :, None] + 0.3 * torch.randn(2, 3, 1, 4, generator=g)).abs()  # 2 episodes, 1 shot
    query = (means[None, :, None] + 0.3 * torch.randn(2, 3, 5, 4, generator=g)).abs()
    task = Task(3, np.zeros(0, np.int64), np.arange(3), model=pmn_net(4, n_aug=3))
    acc = episode_accuracies("pmn_hallucinator", {}, support, query, task)
    assert acc.shape == (2,) and (acc > 0.9).all(), acc
