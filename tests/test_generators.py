"""Feature generators: k-means, analogy mining, the `generate` stage and the plug-ins."""
import numpy as np
import pytest
import torch

import lowshot.stages.generate as stage
from lowshot.errors import InputError
from lowshot.generators import GENERATORS
from lowshot.generators.analogies import AnalogyGenerator
from lowshot.generators.analogies.kmeans import kmeans_per_class
from lowshot.generators.analogies.mining import mine_analogies, mine_analogies_loop
from lowshot.io.features import FeatureSet, read_features, write_features
from lowshot.io.splits import LabelSplits, write_label_splits

DIM = 16


def write_project(root, dim=DIM, weight=True, num_classes=10, per_class=30):
    """Train features (non-negative Gaussian blobs) + a label split file; returns their paths."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(num_classes), per_class)
    feats = np.abs(rng.normal(size=(num_classes, dim)) * 3)[labels] + rng.normal(size=(len(labels), dim))
    w = rng.normal(size=(num_classes, dim)).astype(np.float32) if weight else None
    write_features(root / "features" / "train.hdf5", FeatureSet(np.maximum(feats, 0).astype(np.float32), labels,
                                                                {"dataset": "synth"}, w))
    splits = LabelSplits([f"c{i}" for i in range(num_classes)], [0, 1, 2], [3, 4, 5], [6, 7], [8, 9])
    write_label_splits(root / "splits.json", splits)
    return root / "features", root / "splits.json"


def config(root, **kw):
    fdir, splits = write_project(root) if not (root / "splits.json").exists() else (root / "features",
                                                                                     root / "splits.json")
    return stage.GenerateConfig(**{"run": str(root), "features_dir": str(fdir), "splits": str(splits),
                                   "out_dir": str(root / "gen"), "iterations": 30, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    path = stage.generate(config(root))
    return root, path


def novel_shots(counts, dim=DIM):
    """Shots with the given number of rows per label 6, 7, 8, ... (interleaved, not sorted)."""
    labels = torch.cat([torch.full((m,), 6 + i) for i, m in enumerate(counts)])
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return torch.rand(len(labels), dim, generator=torch.Generator().manual_seed(1)), labels[perm]


# --- mining and clustering --------------------------------------------------------------------

def test_miner_finds_a_planted_analogy_and_never_pairs_a_class_with_itself():
    gen = torch.Generator().manual_seed(0)
    k = 4
    cent = torch.randn(5, k, 8, generator=gen)
    v = torch.randn(8, generator=gen)
    cent[1, 2] = cent[1, 0] - v  # class 1: centroid 0 − centroid 2 = v
    cent[3, 3] = cent[3, 1] - 2 * v  # class 3: centroid 1 − centroid 3 = 2v, parallel
    quads, scores = mine_analogies(cent)
    found = {tuple(q): s for q, s in zip(quads.tolist(), scores.tolist())}
    assert found[(1 * k + 0, 1 * k + 2, 3 * k + 1, 3 * k + 3)] == pytest.approx(1.0, abs=1e-4)
    assert found[(3 * k + 3, 3 * k + 1, 1 * k + 2, 1 * k + 0)] == pytest.approx(1.0, abs=1e-4)
    assert (quads[:, 0] // k == quads[:, 1] // k).all() and (quads[:, 2] // k == quads[:, 3] // k).all()
    assert (quads[:, 0] // k != quads[:, 2] // k).all()
    assert (quads[:, 0] != quads[:, 1]).all() and (quads[:, 2] != quads[:, 3]).all() and (scores > 0).all()


@pytest.mark.parametrize("classes,k,memory_mb", [(9, 5, 256.0), (9, 5, 0.002), (12, 8, 256.0), (12, 8, 0.3)])
def test_miner_equals_the_reference_loop(classes, k, memory_mb):
    cent = torch.rand(classes, k, 12, generator=torch.Generator().manual_seed(3))
    quads, scores = mine_analogies(cent, memory_mb)
    ref_quads, ref_scores = mine_analogies_loop(cent)
    assert torch.equal(quads, ref_quads)
    torch.testing.assert_close(scores, ref_scores)
    assert len(quads) == classes * k * (k - 1)  # every ordered pair a ≠ b of every class found a match


def test_kmeans_is_seeded_and_independent_of_class_grouping():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(torch.tensor([5, 9, 12, 3, 20, 7]))
    feats = torch.rand(len(labels), 4, generator=gen) + labels[:, None].float()
    one = kmeans_per_class(feats, labels, [0, 2, 4, 5], k=3, iters=5, seed=1)
    grouped = kmeans_per_class(feats, labels, [0, 2, 4, 5], k=3, iters=5, seed=1, max_block_mb=1e-4)
    assert one.shape == (4, 3, 4)
    torch.testing.assert_close(one, grouped)
    assert not torch.equal(one, kmeans_per_class(feats, labels, [0, 2, 4, 5], k=3, iters=5, seed=2))
    for row, c in enumerate([0, 2, 4, 5]):  # every centroid ends inside its class's bounding box
        x = feats[labels == c]
        assert ((one[row] >= x.min(0).values - 1e-5) & (one[row] <= x.max(0).values + 1e-5)).all()


# --- the stage --------------------------------------------------------------------------------

def test_generator_file_loads_with_weights_only(trained):
    _, path = trained
    obj = torch.load(path, weights_only=True)
    assert obj["feature_dim"] == DIM and obj["base_classes"] == [0, 1, 2, 3, 4, 5]
    k = obj["clusters_per_class"]
    assert k == 6 and obj["centroids"].shape == (6 * k, DIM) and obj["centroids"].dtype == torch.float32


def test_second_run_is_up_to_date(trained, capsys):
    root, path = trained
    stamp = path.stat().st_mtime_ns
    assert stage.generate(config(root)) == path
    assert "up to date" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp


def test_interrupted_run_resumes_after_clustering(tmp_path, monkeypatch, capsys):
    cfg = config(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    real_mine = stage.mine_analogies
    monkeypatch.setattr(stage, "mine_analogies", broken)
    with pytest.raises(RuntimeError):
        stage.generate(cfg)
    assert len(list((tmp_path / "gen" / "cache").glob("clusters-*.pt"))) == 1
    assert not (tmp_path / "gen" / "generator.pt").exists()
    monkeypatch.setattr(stage, "mine_analogies", real_mine)
    monkeypatch.setattr(stage, "kmeans_per_class", broken)  # must not be called again
    assert stage.generate(cfg).exists()
    assert "reusing k-means" in capsys.readouterr().out


def test_the_fitted_classifier_needs_no_classifier_rows_and_the_representation_needs_linear_ones(tmp_path):
    write_project(tmp_path, weight=False)
    obj = torch.load(stage.generate(config(tmp_path)), weights_only=True)
    assert obj["classifier"]["kind"] == "fit"
    with pytest.raises(InputError, match="has no classifier_weight") as err:
        stage.generate(config(tmp_path, classifier="representation"))
    assert "\n" not in str(err.value)
    write_project(tmp_path)  # a linear classifier: H&G's choice, allowed
    obj = torch.load(stage.generate(config(tmp_path, classifier="representation")), weights_only=True)
    assert obj["classifier"]["kind"] == "representation"
    write_planted(tmp_path, cosine=True)
    with pytest.raises(InputError, match="holds a cosine classifier"):
        stage.generate(config(tmp_path, classifier="representation"))


def write_planted(root, cosine=True, num_classes=10, per_class=40):
    """Classes that share one mode of variation: x = μ_c + t·v + small noise, t ~ U(−1, 1), at the
    scale of real post-ReLU features; the file carries a cosine classifier, as the demo's does."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(num_classes), per_class)
    means = 0.2 + 0.6 * rng.random((num_classes, DIM))
    v = rng.normal(size=DIM)
    v *= 1.5 / np.linalg.norm(v)
    feats = means[labels] + rng.uniform(-1, 1, size=(len(labels), 1)) * v + 0.03 * rng.normal(size=(len(labels), DIM))
    write_features(root / "features" / "train.hdf5", FeatureSet(np.maximum(feats, 0).astype(np.float32), labels,
                                                                {"dataset": "synth"}, means.astype(np.float32),
                                                                10.0 if cosine else None))
    write_label_splits(root / "splits.json", LabelSplits([f"c{i}" for i in range(num_classes)],
                                                         [0, 1, 2], [3, 4, 5], [6, 7], [8, 9]))
    return torch.from_numpy(v).float()


def test_generator_learns_a_planted_class_shared_mode(tmp_path):
    """Issue 8: trained through the cosine classifier, G completed analogies no better than copying the seed."""
    v = write_planted(tmp_path)
    # the MSE is a mean over d elements, so its step grows as 1/d: initlr 0.01 at d = 16 ≈ 0.1 at d = 256
    obj = torch.load(stage.generate(config(tmp_path, iterations=600, initlr=0.01)), weights_only=True)
    model = AnalogyGenerator(DIM)
    model.load_state_dict(obj["model_state"])
    cent = obj["centroids"]
    quads, _ = mine_analogies(cent.view(6, -1, DIM))
    a, b, c, d = (cent[quads[:, i]] for i in range(4))
    with torch.no_grad():
        mse, copy_seed = (model(a, c, d) - b).pow(2).mean(), (a - b).pow(2).mean()
        seed = torch.from_numpy(read_features(tmp_path / "features" / "train.hdf5").feats[8 * 40:8 * 40 + 1])
        moves = model(seed.expand(len(c), -1), c, d) - seed  # a novel class's seed, moved by base analogies
    assert mse < 0.3 * copy_seed
    assert obj["fit"]["generator"] == pytest.approx(mse.item(), rel=1e-4)
    assert obj["fit"]["copy_seed"] == pytest.approx(copy_seed.item(), rel=1e-4)
    along = (moves @ v / v.norm()).pow(2).sum() / moves.pow(2).sum()
    assert along > 0.5, along  # a novel seed mostly moves along the shared mode (a random direction: 1/16)


# --- the plug-ins -----------------------------------------------------------------------------

def check_generation(plugin, state, counts, max_per_label):
    feats, labels = novel_shots(counts)
    before = feats.clone(), labels.clone()
    out_feats, out_labels = plugin.generate(feats, labels, state, max_per_label, seed=5)
    assert torch.equal(feats, before[0]) and torch.equal(labels, before[1])  # inputs untouched
    n = len(labels)
    assert torch.equal(out_feats[:n], feats) and torch.equal(out_labels[:n], labels)
    expected = {6 + i: max(0, max_per_label - m) for i, m in enumerate(counts)}
    new = out_labels[n:].tolist()
    assert {c: new.count(c) for c in expected} == expected and len(new) == sum(expected.values())
    assert out_feats.shape == (n + len(new), DIM) and torch.isfinite(out_feats).all()
    again = plugin.generate(feats, labels, state, max_per_label, seed=5)
    assert torch.equal(again[0], out_feats)  # seeded
    return out_feats[n:]


def test_analogies_plugin_adds_exactly_the_missing_rows(trained):
    root, path = trained
    plugin = GENERATORS.get("analogies")
    state = plugin.init(torch.load(path, weights_only=True), DIM, None)
    new = check_generation(plugin, state, counts=[1, 2, 5, 3], max_per_label=3)
    assert (new >= 0).all()  # final ReLU


def test_analogies_plugin_rejects_another_feature_dimension(trained, tmp_path):
    _, path = trained
    write_project(tmp_path, dim=8)
    with pytest.raises(InputError, match="generator was trained on d=16 features, these have d=8") as err:
        GENERATORS.get("analogies").init(torch.load(path, weights_only=True), 8, None)
    assert "\n" not in str(err.value)


def test_jitter_plugin_adds_exactly_the_missing_rows(trained):
    root, _ = trained
    plugin = GENERATORS.get("jitter")
    train = read_features(root / "features" / "train.hdf5")
    base = np.isin(train.labels, [0, 1, 2, 3, 4, 5])
    x, y = train.feats[base], train.labels[base]
    state = plugin.init(None, DIM, lambda: (x, y))
    means = np.stack([x[y == c].mean(0) for c in range(6)])
    assert state["sigma"] ** 2 == pytest.approx(((x - means[y]) ** 2).sum() / (DIM * (len(y) - 6)), rel=1e-5)
    check_generation(plugin, state, counts=[1, 4, 2], max_per_label=4)


def test_cli_generate_writes_the_generator_and_reports_bad_input_in_one_line(tmp_path):
    from synthetic_cli import error_line, invoke
    fdir, splits = write_project(tmp_path)
    args = ["generate", "--run", str(tmp_path), "--device", "cpu", "--set", f"features_dir={fdir}",
            "--set", f"splits={splits}", "--set", "iterations=20"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "generator" / "generator.pt").exists()
    write_project(tmp_path, weight=False)
    assert "has no classifier_weight" in error_line(invoke(*args, "--set", "classifier=representation"))
