"""`lowshot incremental` (the fair "40 + 1" protocol): the freeze phase, clustered intervals, nested shared shots,
a tiny end-to-end run, bad input."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lowshot.protocols.incremental import (
    FULL_FT,
    IncrementalConfig,
    incremental,
    incremental_metrics,
)
from lowshot.protocols.incremental.finetune import (
    FullFTRecipe,
    SplitCosine,
    bmlmz_class_weight,
    fine_tune,
    ft_step,
    training_rows,
)
from lowshot.stats import clustered_mean_ci
from tests.synthetic_cli import error_line, invoke


class TinyTrunk(nn.Module):
    """A linear 'backbone' (8 → 4) with the trunk surface `forward_features`."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward_features(self, x):
        return self.fc(x.flatten(1).float())


def _tiny_ft(seed=0):
    torch.manual_seed(seed)
    trunk, head = TinyTrunk(), SplitCosine(torch.randn(3, 4), torch.randn(4), 10.0)
    opt = torch.optim.SGD(list(trunk.parameters()) + list(head.parameters()), lr=0.5, momentum=0.9, weight_decay=0.1)
    return trunk, head, opt, torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 3, 1])


def test_frozen_step_leaves_base_rows_untouched_under_momentum_and_weight_decay():
    trunk, head, opt, x, y = _tiny_ft()
    weight = bmlmz_class_weight(3, x.device)
    ft_step(trunk, head, opt, x, y, weight, frozen=False)  # fills the momentum buffers of every parameter
    assert opt.state[head.base]["momentum_buffer"].abs().sum() > 0
    base, new, fc = head.base.detach().clone(), head.new.detach().clone(), trunk.fc.weight.detach().clone()
    ft_step(trunk, head, opt, x, y, weight, frozen=True)
    assert head.base.grad is None or not head.base.grad.any()  # no gradient reaches the frozen rows
    assert torch.equal(head.base, base)  # bit for bit: no momentum, no decay, no re-projection
    assert not torch.equal(head.new, new) and not torch.equal(trunk.fc.weight, fc)  # the rest still moves
    ft_step(trunk, head, opt, x, y, weight, frozen=False)
    assert not torch.equal(head.base, base)  # and the base rows move again on the next step
    assert torch.allclose(head.base.norm(dim=1), torch.ones(3)) and torch.allclose(head.new.norm(), torch.tensor(1.))


def test_frozen_step_gradient_of_the_new_row_equals_the_direct_computation():
    trunk, head, _, x, y = _tiny_ft()
    logits = head(trunk.forward_features(x), frozen=True)
    w = bmlmz_class_weight(3, x.device)
    loss = (w[y] * nn.functional.cross_entropy(logits, y, reduction="none")).sum()
    g_new, = torch.autograd.grad(loss, head.new)
    rows = torch.cat([head.base.detach(), head.new])  # direct: the same loss with the base rows constants
    z = nn.functional.normalize(trunk.forward_features(x), dim=1)
    direct = -(w[y] * torch.log_softmax(10.0 * z @ nn.functional.normalize(rows, dim=1).t(), 1)[range(6), y]).sum()
    assert torch.allclose(g_new, torch.autograd.grad(direct, head.new)[0], atol=1e-6)
    assert torch.allclose(w, torch.tensor([1 / 9, 1 / 9, 1 / 9, 1.0]))


def test_fine_tune_freezes_every_other_step_and_replicates_the_shots(monkeypatch):
    trunk, head, _, _, _ = _tiny_ft()
    pixels, labels = torch.randn(13, 8), torch.tensor([0] * 4 + [1] * 4 + [2] * 4 + [3])
    assert training_rows(labels[:-1], 1, 3).tolist() == list(range(12)) + [12] * 4  # ν = ⌊4 / 1⌋
    moved = []
    real = ft_step

    def spy(trunk, head, opt, x, y, weight, frozen):
        before = head.base.detach().clone()
        real(trunk, head, opt, x, y, weight, frozen)
        moved.append((frozen, not torch.equal(before, head.base)))

    monkeypatch.setattr("lowshot.protocols.incremental.finetune.ft_step", spy)
    steps = fine_tune(trunk, head, pixels, labels, 1, lambda p: p, FullFTRecipe(batch_size=4), torch.Generator())
    assert steps == 8 and [f for f, _ in moved] == [False, True] * 4  # 2 epochs of 16 rows, batch 4
    assert all(m != f for f, m in moved)  # base rows move exactly on the unfrozen steps


def test_clustered_interval_equals_a_hand_computed_case():
    # class means 0.3, 0.5, 0.8 (NaN left out): mean 0.53333, sd 0.251661, t(0.975, 2) = 4.302653
    values = [0.2, 0.4, 0.5, np.nan, 0.7, 0.9, 0.8, np.nan]
    classes = [7, 7, 3, 3, 9, 9, 9, 5]
    mean, half, k = clustered_mean_ci(values, classes)
    assert k == 3 and mean == pytest.approx(0.533333, abs=1e-6)
    assert half == pytest.approx(4.302653 * 0.251661 / 3 ** 0.5, abs=1e-5)


def test_metrics_of_one_run():
    # 3 base test images (labels 0, 1, 0) and 2 novel (label 2): predictions 0, 2, 1 | 2, 0
    scores = torch.tensor([[3., 0, 1], [0, 1, 2], [0, 5, 1], [0, 0, 9], [4, 0, 1]])
    m = incremental_metrics(scores, torch.tensor([0, 1, 0, 2, 2]))
    assert m == pytest.approx({"novel_recall": 0.5, "novel_precision": 0.5, "base_accuracy": 1 / 3,
                               "all_accuracy": 0.4, "base_as_novel": 1})


def _config(glyph_model, tmp_path, **kw):
    return IncrementalConfig(run=str(glyph_model["root"] / "run"), ns=[1, 2, 5], draws=2, num_classes=2,
                             full_ft_classes=1, full_ft_draws=1, recipe={"batch_size": 64, "epochs_small": 1},
                             head_params={m: {"steps": 20} for m in ("imprint_ft", "imprint_ft_bmlmz", "rand_ft")},
                             out=str(tmp_path / "incr"), device="cpu", **kw)


def test_tiny_end_to_end_run_writes_every_metric_with_nested_shared_shots(glyph_model, tmp_path):
    cfg = _config(glyph_model, tmp_path)
    df = pd.read_csv(incremental(cfg))
    assert {"novel_recall", "novel_precision", "base_accuracy", "all_accuracy", "base_as_novel", "seed",
            "shots", "checkpoint_sha1"} <= set(df.columns)
    assert len(df) == (len(cfg.methods) - 1) * 3 * 2 * 2 + 3  # full FT on 1 class x 1 draw
    assert set(df.novel_class) == set(glyph_model["splits"].novel_classes_2[:2])
    for (c, r), g in df.groupby(["novel_class", "draw"]):
        assert g.groupby("n").shots.nunique().eq(1).all()  # every method saw the same shots
        s = {n: str(g[g.n == n].shots.iloc[0]).split() for n in (1, 2, 5)}
        assert s[1] == s[2][:1] and s[2] == s[5][:2] and len(set(s[5])) == 5  # nested across n
    assert df[df.n == 5].groupby("novel_class").shots.nunique().eq(2).all()  # two different draws per class
    imprint = df[df.method == "imprint"]
    assert imprint.base_accuracy.mean() > 0.5 and df[df.method == FULL_FT].base_accuracy.notna().all()
    summ = pd.read_csv(tmp_path / "incr" / "summary.csv")
    assert set(summ.metric) == {"novel_recall", "novel_precision", "base_accuracy", "all_accuracy", "base_as_novel",
                                "harmonic_mean"}
    r, b = df.novel_recall, df.base_accuracy
    assert np.allclose(df.harmonic_mean, np.where(r + b > 0, 2 * r * b / (r + b).clip(lower=1e-12), 0), atol=1e-4)
    assert (tmp_path / "incr" / "tables.md").read_text().count("±") > 10


def test_finished_cells_are_reused_and_changed_inputs_recompute(glyph_model, tmp_path):
    cfg = _config(glyph_model, tmp_path, methods=["imprint", "protonet"])
    first = pd.read_csv(incremental(cfg))
    cells = sorted((tmp_path / "incr" / "cells").iterdir())
    stamps = [p.stat().st_mtime_ns for p in cells]
    pd.testing.assert_frame_equal(pd.read_csv(incremental(cfg)), first)
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "incr" / "cells").iterdir())] == stamps
    incremental(_config(glyph_model, tmp_path, methods=["imprint", "protonet"], seed=1))
    assert len(list((tmp_path / "incr" / "cells").iterdir())) == 2 * len(cells)
    row = json.loads(cells[0].read_text())["rows"][0]
    assert row["seed"] >= 0 and row["setup"] == 2


@pytest.mark.parametrize("args, message", [
    (["--methods", "imprint,bogus"], "unknown method(s) bogus"),
    (["--classes", "0"], "are not novel classes of setup 2"),
    (["--n", "1,500"], "training images (n up to 500 needed)"),
    (["--checkpoint", "nowhere.pt"], "nowhere.pt: checkpoint not found"),
])
def test_bad_input_is_one_line(glyph_model, tmp_path, args, message):
    result = invoke(*["incremental", "--run", str(glyph_model["root"] / "run"), "--device", "cpu",
                     "--set", f"out={tmp_path / 'x'}"] + args)
    assert result.exit_code == 1 and message in error_line(result)


CIFAR_SPLITS = Path(__file__).resolve().parents[1] / "label_splits" / "cifar100_40.json"


def _fake_cifar(root: Path, classes, train_per_class: int, test_per_class: int) -> None:
    """A cifar-100-binary copy of random pixels for `classes` (records: coarse, fine label, 3,072 pixel bytes)."""
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    names = json.loads(CIFAR_SPLITS.read_text())["label_names"]
    (folder / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(0)
    for part, per in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.asarray(classes, np.uint8), per)
        records = np.concatenate([np.zeros((len(labels), 1), np.uint8), labels[:, None],
                                  rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)], axis=1)
        records.tofile(folder / f"{part}.bin")


def test_cifar100_40_plus_1_runs_from_a_local_copy(tmp_path):
    classes = list(range(40)) + [50, 51]
    _fake_cifar(tmp_path / "c100", classes, 6, 1)
    cfg = {"dataset": "cifar100", "splits": str(CIFAR_SPLITS), "backbone": "resnet10", "width": 0.125,
           "stem": "small", "classifier": "cosine", "epochs": 1, "batch_size": 64, "device": "cpu"}
    (tmp_path / "train.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    assert invoke("train", "--config", tmp_path / "train.json", "--root", tmp_path / "c100", "--run", run).exit_code == 0
    result = invoke("incremental", "--run", run, "--dataset", "cifar100", "--root", tmp_path / "c100", "--classes",
                    "50,51", "--draws", "1", "--n", "1,5", "--methods", f"imprint,{FULL_FT}", "--device", "cpu",
                    "--set", "recipe={\"batch_size\": 256}", "--set", "full_ft_classes=1")
    assert result.exit_code == 0, result.output
    df = pd.read_csv(run / "incremental" / "setup2" / "incremental.csv")
    assert len(df) == 2 * 2 + 2 and set(df.novel_class) == {50, 51} and (df.class_name.iloc[0] in ("mouse", "mushroom"))
    bad = invoke("incremental", "--run", run, "--classes", "45", "--device", "cpu")  # a validation-novel class
    assert bad.exit_code == 1 and "not novel classes of setup 2" in error_line(bad)
