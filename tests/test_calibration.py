"""Calibration (ECE, NLL, Brier), the novel-prior sweep and the temperature curve: hand-computed cases, a
perfectly calibrated synthetic head, and results written before a metric existed being recomputed."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_cli import invoke

from lowshot.io.results import RESULT_KEYS
from lowshot.metrics import (
    PRIORS,
    TEMPERATURES,
    _prior_hits,
    calibration_metrics,
    cell_metrics,
    episode_calibration,
    expected_calibration_error,
    prior_sweep,
    probability_scores,
    temperature_curve,
)


def test_ece_by_hand():
    # bins of width 1/15: 0.95 and 0.97 share the last bin (mean 0.96, accuracy 1/2), 0.5 is alone in
    # (7/15, 8/15] (accuracy 1), 0.3 alone in (4/15, 5/15] (accuracy 0)
    conf = torch.tensor([0.95, 0.97, 0.5, 0.3])
    correct = torch.tensor([True, False, True, False])
    expected = (2 * abs(0.96 - 0.5) + abs(0.5 - 1) + abs(0.3 - 0)) / 4
    assert expected_calibration_error(conf, correct) == pytest.approx(expected)
    assert math.isnan(expected_calibration_error(conf[:0], correct[:0]))


def test_nll_and_brier_by_hand():
    # p = softmax(log [0.5, 0.3, 0.2]) = [0.5, 0.3, 0.2]; two images of class 0 and 1
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    labels, pred = torch.tensor([0, 1]), torch.tensor([0, 0])
    m = probability_scores(scores, labels, pred)
    assert m["nll"] == pytest.approx((-math.log(0.5) - math.log(0.3)) / 2, rel=1e-5)
    brier0 = 0.5 ** 2 + 0.3 ** 2 + 0.2 ** 2
    brier1 = 0.5 ** 2 + 0.7 ** 2 + 0.2 ** 2
    assert m["brier"] == pytest.approx((brier0 + brier1) / 2, rel=1e-5)
    # both predict class 0 with confidence 0.5, one right: one bin, |0.5 − 0.5| = 0
    assert m["ece"] == pytest.approx(0.0, abs=1e-6)


def test_nll_does_not_underflow_where_the_probability_does():
    scores = torch.tensor([[0.0, -200.0]])  # p(class 1) = e^−200 underflows in float32; −log p = 200
    m = probability_scores(scores, torch.tensor([1]), torch.tensor([0]))
    assert m["nll"] == pytest.approx(200.0, rel=1e-5)


def _calibrated_head(n=60_000, classes=5, seed=0):
    """Scores = log p with each label drawn from p itself: calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.distributions.Dirichlet(torch.full((classes,), 0.7)).sample((n,))
    labels = torch.multinomial(p, 1, generator=gen)[:, 0]
    return p.log(), labels


def test_a_perfectly_calibrated_head_scores_ece_near_zero():
    torch.manual_seed(0)
    scores, labels = _calibrated_head()
    base, novel = torch.tensor([0, 1]), torch.tensor([2, 3, 4])
    m = calibration_metrics(scores, labels, base, novel)
    assert m["ece"] < 0.01 and m["ece_pred_base"] < 0.015 and m["ece_pred_novel"] < 0.015
    assert abs(m["overconf_pred_base"]) < 0.01 and abs(m["overconf_pred_novel"]) < 0.01
    sharper = calibration_metrics(3 * scores, labels, base, novel)  # the same head made over-confident
    assert sharper["ece"] > 0.1 and sharper["overconf_pred_novel"] > 0.1 and sharper["nll"] > m["nll"]


def test_temperature_curve_finds_the_temperature_that_undoes_a_sharpening():
    torch.manual_seed(1)
    scores, labels = _calibrated_head(20_000, seed=1)
    curve = np.array(temperature_curve(4 * scores, labels))  # logits × 4: T = 4 restores calibration
    assert TEMPERATURES[int(curve[:, 1].argmin())] == pytest.approx(4.0)
    assert curve[TEMPERATURES.index(4.0), 0] < 0.01
    at_one = probability_scores(4 * scores, labels, (4 * scores).argmax(1))
    assert curve[TEMPERATURES.index(1.0)].tolist() == pytest.approx([at_one["ece"], at_one["nll"], at_one["brier"]],
                                                                    abs=1e-5)


def test_prior_sweep_by_hand_and_against_the_wang_reweighting():
    # base {0, 1}, novel {2, 3}. Image 0 (class 0): base share of class 0 = 0.8, novel best share 0.5,
    # margin log(0.5/0.8) < 0: novel wins only when log((1−π)/π) < log(0.625), i.e. π > 0.615.
    scores = torch.log(torch.tensor([[0.8, 0.2, 0.5, 0.5], [0.5, 0.5, 0.9, 0.1]]))
    acc = dict(zip(PRIORS, prior_sweep(scores, torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([2, 3]))))
    assert acc[0.6] == 1.0 and acc[0.65] == 0.5  # image 1 (class 2, novel share 0.9 > base 0.5) is right from π = 0.36
    assert acc[0.35] == 0.5 and acc[0.4] == 1.0
    torch.manual_seed(2)
    scores, labels = torch.randn(500, 12) * 3, torch.randint(0, 10, (500,))
    base, novel = torch.arange(0, 5), torch.arange(5, 10)
    sweep = prior_sweep(scores, labels, base, novel)
    for prior, got in zip(PRIORS, sweep):
        assert got == pytest.approx(float(_prior_hits(scores, labels, base, novel, prior, 1).float().mean()))


def test_cell_metrics_writes_every_result_key():
    scores, labels = torch.randn(20, 6), torch.randint(0, 4, (20,))
    m = cell_metrics(scores, labels, [0, 1], [2, 3])
    assert set(m) == set(RESULT_KEYS)  # a new metric must join RESULT_KEYS, so old results get recomputed
    assert "calibration_by_temperature" in cell_metrics(scores, labels, [0, 1], [2, 3], temperatures=True)


def test_episode_calibration_pools_the_queries():
    scores = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [0.6, 0.4]]]))  # (E=2, Q=2, W=2)
    truth = torch.tensor([[0, 0], [1, 0]])
    m = episode_calibration(scores, truth)
    assert m["nll"] == pytest.approx(-(math.log(0.5) + math.log(0.9) + math.log(0.8) + math.log(0.6)) / 4, rel=1e-5)


def test_a_result_without_the_new_metrics_is_recomputed_and_the_report_says_which_lack_them(feature_project):
    run = ("--run", "runs/synth", "--heads", "protonet", "--n", "1", "--expid", "1,2")
    assert "2 new result files" in invoke("benchmark", *run).output
    path = sorted(Path("runs/synth/results").glob("*.json"))[0]
    old = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in old.items() if k not in ("ece", "all_top1_by_prior")}))
    out = invoke("report", "runs/synth/results", "--no-plot")
    assert "**Results without some metrics** (all_top1_by_prior, ece): 1 results" in out.output
    assert "1 new result files" in invoke("benchmark", *run).output  # the old result is recomputed...
    assert json.loads(path.read_text())["ece"] == pytest.approx(old["ece"])  # ...to the same numbers
    assert "2 new result files" in invoke("benchmark", *run, "--set", "temperatures=true").output  # asked: curves
    out = invoke("report", "runs/synth/results", "--no-plot")
    assert "Results without" not in out.output and "ECE (%) / NLL / Brier" in out.output
    assert Path("runs/synth/report/prior_sweep.csv").exists()


def test_temperature_and_prior_are_chosen_on_setup_1_and_applied_to_setup_2(feature_project):
    run = ("--run", "runs/synth", "--heads", "cosine_ncm", "--n", "1", "--expid", "1,2", "--set", "temperatures=true")
    invoke("benchmark", *run, "--setup", "1")
    invoke("benchmark", *run, "--setup", "2")
    assert invoke("report", "runs/synth/results").exit_code == 0
    import pandas as pd
    long = pd.read_csv("runs/synth/report/results_long.csv")
    s1, s2 = long[long["setup"] == 1], long[long["setup"] == 2]
    assert s1["temperature_setup1"].isna().all() and s2["temperature_setup1"].notna().all()
    results = [json.loads(p.read_text()) for p in Path("runs/synth/results").glob("*.json")]
    nll = np.mean([[t[1] for t in r["calibration_by_temperature"]] for r in results if r["setup"] == 1], axis=0)
    assert s2["temperature_setup1"].iloc[0] == pytest.approx(TEMPERATURES[int(nll.argmin())], rel=0.02)  # CSV: 4 decimals
    sweep = np.mean([r["all_top1_by_prior"] for r in results if r["setup"] == 1], axis=0)
    assert s2["prior_setup1"].iloc[0] == pytest.approx(PRIORS[int(sweep.argmax())])
    assert Path("runs/synth/report/bias_prototypes_and_clusters.png").exists()
