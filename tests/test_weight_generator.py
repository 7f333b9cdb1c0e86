"""Gidaris & Komodakis' weight generator: the maths by hand, the head against imprinting, the training stage."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import mixture, one_thread, weight_generators, weight_generators_saved  # noqa: F401 (fixture)

from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.heads.weight_generator.model import FewShotWeightGenerator, from_saved
from lowshot.heads.weight_generator.train import (
    WeightGeneratorTrainConfig,
    sample_episode,
)
from lowshot.io.features import FeatureSet, write_features
from lowshot.io.splits import LabelSplits, make_shots, write_label_splits, write_shots
from lowshot.run import trained_model
from lowshot.stages import run
from lowshot.stages.benchmark import BenchmarkConfig, benchmark


def train_weight_generator(cfg: WeightGeneratorTrainConfig) -> Path:
    return run("train-weight-generator", cfg)


def hand_net() -> FewShotWeightGenerator:
    """d = 2, base rows (2, 0) and (0, 3), keys along the axes, identity query, γ = 5 ln 3, φ_avg = (1, 2), φ_att = (2, 1)."""
    net = FewShotWeightGenerator(torch.tensor([4, 7]), torch.tensor([[2.0, 0.0], [0.0, 3.0]]), scale_cls=10.0)
    with torch.no_grad():
        net.keys.copy_(torch.tensor([[1.0, 0.0], [0.0, 5.0]]))
        net.query.weight.copy_(torch.eye(2))
        net.scale_att.fill_(5 * math.log(3))
        net.phi_avg.copy_(torch.tensor([1.0, 2.0]))
        net.phi_att.copy_(torch.tensor([2.0, 1.0]))
        net.bias.fill_(0.5)
    return net


def test_generated_row_is_the_hand_computed_formula():
    # shot (3, 4) -> ẑ = (.6, .8), cosines to the keys .6 and .8, softmax(3 ln 3, 4 ln 3) = (1/4, 3/4);
    # shot (0, -2) -> ẑ = (0, -1), cosines 0 and -1, softmax(0, -5 ln 3) = (243/244, 1/244).
    net = hand_net()
    shots = torch.tensor([[[3.0, 4.0], [0.0, -2.0], [9.0, 9.0]], [[3.0, 4.0], [5.0, 5.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])  # class 0: two shots, class 1: one
    with torch.no_grad():
        rows = net.novel_weights(shots, mask, torch.tensor([0, 1]))
    att_one = torch.tensor([0.25, 0.75])
    att_two = (att_one + torch.tensor([243 / 244, 1 / 244])) / 2
    torch.testing.assert_close(rows[0], torch.tensor([0.3, -0.1]) * net.phi_avg + att_two * net.phi_att)
    torch.testing.assert_close(rows[1], torch.tensor([1.1, 2.35]))  # (.6 + 2 · .25, 2 · .8 + .75)
    x = torch.tensor([[1.0, 1.0]])
    cos = (1.1 + 2.35) / (math.sqrt(2) * math.sqrt(1.1 ** 2 + 2.35 ** 2))
    torch.testing.assert_close(net.logits(x, rows[1:])[0, 0], torch.tensor(10.0 * (cos + 0.5)))


def test_attention_reads_only_the_given_base_rows():
    net = hand_net()
    with torch.no_grad():
        row = net.novel_weights(torch.tensor([[[3.0, 4.0]]]), torch.ones(1, 1, dtype=torch.bool), torch.tensor([1]))
    torch.testing.assert_close(row[0], torch.tensor([0.6, 1.6]) + net.phi_att * torch.tensor([0.0, 1.0]))


def test_feature_averaging_generator_has_no_attention_term():
    net = hand_net()
    net.attention.fill_(False)
    with torch.no_grad():
        row = net.novel_weights(torch.tensor([[[3.0, 4.0]]]), torch.ones(1, 1, dtype=torch.bool), torch.tensor([0, 1]))
    torch.testing.assert_close(row[0], torch.tensor([0.6, 1.6]))


def test_without_attention_the_head_is_imprinting(tmp_path):
    xtr, ytr, xte, _, task = mixture(shots=3, d=16, base=6, novel=5, interleave=True)
    model = weight_generators(task.classifier_weight, scale=10.0, phi_att=0.0)
    ours = HEADS.create("weight_generator").fit(xtr, ytr, dataclasses.replace(task, model=model)).scores(xte)
    theirs = HEADS.create("imprint").fit(xtr, ytr, task).scores(xte)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_episode_batch_equals_one_episode_at_a_time(tmp_path):
    g = torch.Generator().manual_seed(1)
    model = weight_generators(torch.randn(9, 8, generator=g), phi_att=1.0, shots=(1, 3))
    support, query = torch.randn(4, 5, 3, 8, generator=g), torch.randn(4, 7, 8, generator=g)
    task = Task(5, np.zeros(0, np.int64), np.arange(5), model=model)
    head = HEADS.create("weight_generator")
    batched = head.episode_scores(support, query, task)
    labels = torch.arange(5).repeat_interleave(3)
    for e in range(4):
        one = HEADS.create("weight_generator").fit(support[e].reshape(-1, 8), labels, task)
        torch.testing.assert_close(one.scores(query[e]), batched[e])


def test_the_generator_trained_for_the_nearest_smaller_n_is_used():
    saved = weight_generators_saved(torch.eye(4), shots=(1, 5))
    saved["generators"]["5"]["scale_cls"] = torch.tensor(7.0)
    generators = from_saved(saved, 4)
    assert [generators.for_shots(n).scale_cls.item() for n in (1, 4, 5, 20)] == [10.0, 10.0, 7.0, 7.0]


def test_missing_model_and_unknown_base_class_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="run `lowshot train-weight-generator") as err:
        trained_model(str(tmp_path), HEADS.get("weight_generator"), 4, torch.device("cpu"))
    assert "\n" not in str(err.value) and str(tmp_path / "heads" / "weight_generator.pt") in str(err.value)
    task = Task(6, np.array([0, 5]), np.array([2]), model=weight_generators(torch.eye(4)[:3]))  # base classes 0-2
    with pytest.raises(InputError, match="no base row for class 5"):
        HEADS.create("weight_generator").fit(torch.randn(3, 4), torch.tensor([0, 5, 2]), task)


def test_episode_sampling_keeps_shots_and_test_rows_apart():
    rows = torch.arange(60).view(6, 10)
    valid = torch.ones(6, 10, dtype=torch.bool)
    cfg = WeightGeneratorTrainConfig(test_per_novel=4, base_test_per_novel=3)
    support, test, target, base = sample_episode(rows, valid, 2, 3, cfg, torch.Generator().manual_seed(0))
    novel = support[:, 0] // 10
    assert support.shape == (2, 3) and len(base) == 4 and not set(base.tolist()) & set(novel.tolist())
    assert (support // 10 == novel[:, None]).all() and len(test) == 6 + 8
    base_part, novel_part = test[:6], test[6:].view(2, 4)
    assert (base[target[:6]] == base_part // 10).all() and (target[6:] == torch.tensor([4] * 4 + [5] * 4)).all()
    assert (novel_part // 10 == novel[:, None]).all()
    for k in range(2):
        assert not set(novel_part[k].tolist()) & set(support[k].tolist())


def nuisance_project(root: Path) -> None:
    """40 classes whose means lie in 6 of 16 dimensions, the other 10 pure noise (σ 1.5 against 0.6)."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(40, 6))
    mu = 3.0 * mu / np.linalg.norm(mu, axis=1, keepdims=True)

    def rows(per, seed):
        r = np.random.default_rng(seed)
        y = np.repeat(np.arange(40), per)
        x = np.concatenate([mu[y] + 0.6 * r.normal(size=(len(y), 6)), 1.5 * r.normal(size=(len(y), 10))], 1)
        return x.astype(np.float32), y

    weight, attrs = np.concatenate([mu / 3.0, np.zeros((40, 10))], 1).astype(np.float32), {"dataset": "nuis"}
    (xtr, ytr), (xte, yte) = rows(30, 1), rows(20, 2)
    write_features(root / "runs/n/features/train.hdf5", FeatureSet(xtr, ytr, attrs, weight, 10.0))
    write_features(root / "runs/n/features/test.hdf5", FeatureSet(xte, yte, attrs, weight, 10.0))
    write_label_splits(root / "label_splits/nuis.json", LabelSplits([f"c{i}" for i in range(40)], list(range(10)),
                                                                    list(range(10, 20)), list(range(20, 30)),
                                                                    list(range(30, 40))))
    for k in (1, 2):
        write_shots(root / f"experiment_cfgs/nuis/splitfile_{k}.json", make_shots(ytr, 40, 0, k))


def test_trained_generator_beats_imprinting_on_a_gaussian_mixture(tmp_path, monkeypatch):
    """Imprinted rows keep the shots' noise dimensions; the trained φ_avg learns to drop them."""
    monkeypatch.chdir(tmp_path)
    nuisance_project(tmp_path)
    train_weight_generator(WeightGeneratorTrainConfig(run="runs/n", shots=[1, 5], episodes=300, device="cpu"))
    out = benchmark(BenchmarkConfig(run="runs/n", heads=["imprint", "weight_generator"], ns=[1, 5], expids=[1, 2],
                                    device="cpu"))
    res = [json.loads(Path(p).read_text()) for p in out]
    for n in (1, 5):
        mean = {h: np.mean([r["accs"] for r in res if r["head"] == h and r["n"] == n], 0)
                for h in ("imprint", "weight_generator")}
        gain = mean["weight_generator"] - mean["imprint"]
        assert gain[0] >= 0 and gain[1] > 0.02 and gain[4] > 0, (n, mean)  # novel top-1, novel top-5, all top-1
        assert gain[1 if n == 1 else 0] > 0.1, (n, mean)  # n = 1: novel top-5; n = 5: novel top-1


def test_training_is_deterministic_cached_and_weights_only(feature_project, capsys):
    cfg = dict(run="runs/synth", shots=[1, 2], episodes=5, seed=3, device="cpu")
    a = train_weight_generator(WeightGeneratorTrainConfig(out="a.pt", **cfg))
    b = train_weight_generator(WeightGeneratorTrainConfig(out="b.pt", **cfg))
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    assert sa["dim"] == 16 and sa["identity"]["config"]["seed"] == 3 and sorted(sa["generators"]) == ["1", "2"]
    assert sa["novel_per_episode"] == 4 and sa["identity"]["base_rows"] == sb["identity"]["base_rows"]
    for n, state in sa["generators"].items():
        assert state["classes"].tolist() == list(range(6))
        for k, v in state.items():
            assert torch.equal(v, sb["generators"][n][k]), (n, k)
    assert not torch.equal(sa["generators"]["1"]["keys"], sa["generators"]["2"]["keys"])
    train_weight_generator(WeightGeneratorTrainConfig(out="a.pt", **cfg))
    assert "up to date" in capsys.readouterr().out


def test_cli_trains_benchmarks_recomputes_after_retraining_and_refuses_too_many_fake_novel_classes(feature_project):
    from synthetic_cli import error_line, invoke
    out = invoke("train-weight-generator", "--run", "runs/synth", "--device", "cpu", "--set", "episodes=3",
                 "--set", "shots=[1]")
    assert out.exit_code == 0 and "runs/synth/heads/weight_generator.pt" in out.output
    bench = ("benchmark", "--run", "runs/synth", "--heads", "weight_generator", "--n", "1", "--expid", "1", "--device", "cpu")
    out = invoke(*bench)
    assert out.exit_code == 0 and "1 new result files" in out.output
    assert "0 new result files" in invoke(*bench).output  # up to date
    invoke("train-weight-generator", "--run", "runs/synth", "--device", "cpu", "--set", "episodes=4", "--set", "shots=[1]")
    assert "1 new result files" in invoke(*bench).output  # another generator: the cell is recomputed
    line = error_line(invoke("train-weight-generator", "--run", "runs/synth", "--set", "novel_per_episode=6"))
    assert "6 fake novel classes per episode" in line and "train.hdf5" in line
