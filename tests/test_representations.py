"""The representation table's choices and sums (lowshot/representations.py) on hand-made result files."""
import math

import pandas as pd
import pytest

from lowshot.errors import InputError
from lowshot.io.results import long_table
from lowshot.io.tables import paired_difference, summary
from lowshot.protocols.representations import (
    RepresentationsConfig,
    choose_weights,
    cosine_run,
    difference_table,
    representation_tables,
    run_name,
    setup1_scores,
    sweep_runs,
    sweep_table,
    table_methods,
)


def _result(rep, setup, n, expid, novel, base=0.8, head="logreg", generator=None):
    """One result dict as `lowshot benchmark` writes it (fractions); all = mean of novel and base."""
    accs = [novel, min(1.0, novel + 0.2), base, min(1.0, base + 0.1), (novel + base) / 2, (novel + base) / 2 + 0.1]
    return {"representation": rep, "head": head, "head_params": {}, "generator": generator, "setup": setup,
            "n": n, "expid": expid, "seed": 0, "accs": accs}


def _runs():
    cfg = RepresentationsConfig(prefix="runs/rep", sweep={"sgm": [0.002, 0.02], "l2": [0.03]})
    return sweep_runs(cfg)


def test_run_names_and_sweep_order():
    assert run_name("runs/rep", "sgm", 0.002) == "runs/rep-sgm-0.002"
    assert run_name("runs/rep", "batchsgm", 5.0) == "runs/rep-batchsgm-5"
    assert cosine_run(RepresentationsConfig(prefix="runs/rep")) == "runs/rep-cosine"
    assert cosine_run(RepresentationsConfig(cosine_run="runs/demo")) == "runs/demo"
    assert [r for _, _, r in _runs()] == ["runs/rep-none", "runs/rep-sgm-0.002", "runs/rep-sgm-0.02", "runs/rep-l2-0.03"]
    with pytest.raises(InputError):
        sweep_runs(RepresentationsConfig(sweep={"none": [0.0]}))


def test_weights_are_chosen_on_setup_1_only():
    """Setup 2 prefers sgm 0.02 by far; setup 1 prefers 0.002, and setup 1 must decide."""
    novel = {("rep-none", 1): 0.30, ("rep-sgm-0.002", 1): 0.40, ("rep-sgm-0.02", 1): 0.35, ("rep-l2-0.03", 1): 0.2,
             ("rep-none", 2): 0.30, ("rep-sgm-0.002", 2): 0.10, ("rep-sgm-0.02", 2): 0.90, ("rep-l2-0.03", 2): 0.9}
    df = long_table([_result(rep, setup, n, e, v) for (rep, setup), v in novel.items() for n in (1, 5) for e in (1, 2)])
    scores = setup1_scores(df, "top1_all")
    assert scores["rep-sgm-0.002"] == pytest.approx(100 * (0.40 + 0.8) / 2)
    chosen = choose_weights(_runs(), scores)
    assert chosen == {"none": (0.0, "runs/rep-none"), "sgm": (0.002, "runs/rep-sgm-0.002"),
                      "l2": (0.03, "runs/rep-l2-0.03")}
    table = sweep_table(_runs(), df, "top1_all", chosen, {"rep-sgm-0.002": {"val_top1": 0.855, "aux": 3.21}})
    assert "| rep-sgm-0.002 (chosen) | sgm | 0.002 | 85.5 | 3.21 | 60.00 | 60.00 | 60.00 |" in table
    assert "| rep-sgm-0.02 | sgm | 0.02 |" in table and "| rep-none | none | 0 |" in table


def test_ties_go_to_the_smaller_weight_and_missing_scores_are_an_error():
    scores = pd.Series({"rep-none": 1.0, "rep-sgm-0.002": 2.0, "rep-sgm-0.02": 2.0, "rep-l2-0.03": 0.5})
    assert choose_weights(_runs(), scores)["sgm"] == (0.002, "runs/rep-sgm-0.002")
    with pytest.raises(InputError, match="rep-l2-0.03"):
        choose_weights(_runs(), scores.drop("rep-l2-0.03"))


def test_paired_difference_of_representations_pairs_by_method_and_experiment():
    """A − B per method over 3 experiments: differences 1, 2, 3 points (logreg) and 0, 0, 0 (cosine_ncm).

    Mean 2, sd 1, t(0.975, 2) = 4.3027 -> 2.00 ± 2.48; a method's rows are never paired with another's.
    """
    rows = []
    for e, d in zip((1, 2, 3), (0.01, 0.02, 0.03)):
        rows += [_result("A", 2, 1, e, 0.5 + d), _result("B", 2, 1, e, 0.5),
                 _result("A", 2, 1, e, 0.2, head="cosine_ncm"), _result("B", 2, 1, e, 0.2, head="cosine_ncm")]
        rows += [_result("A", 1, 1, e, 0.9), _result("B", 1, 1, e, 0.1)]  # setup 1: must not enter
    df = long_table(rows)
    diff = paired_difference(df[df["setup"] == 2], "A", "B", by="representation")
    logreg = diff[(diff["method"] == "logreg") & (diff["metric"] == "top1_novel")].iloc[0]
    assert logreg["difference"] == pytest.approx(2.0)
    assert logreg["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert diff[diff["method"] == "cosine_ncm"]["difference"].abs().max() == pytest.approx(0.0, abs=1e-9)
    text = difference_table(df, [("A", "B")])
    assert "**A − B, logreg**" in text and "| top1_novel | 2.00 ± 2.48 |" in text
    assert "| top1_all | 1.00 ± 1.24 |" in text


def test_table_methods():
    cfg = RepresentationsConfig(heads=["logreg"], cosine_heads=["imprint"], max_per_label=5)
    assert table_methods(cfg) == ["logreg", "imprint", "logreg+analogies(M=5)"]


def test_setup2_tables_have_a_row_per_representation_and_method():
    rows = [_result(rep, s, n, e, 0.5, head=h) for rep in ("rep-none", "rep-cosine") for h in ("logreg", "imprint")
            for s in (1, 2) for n in (1, 2) for e in (1, 2)]
    text = representation_tables(summary(long_table(rows)))
    assert "### top1_novel" in text and "### top5_all" in text
    assert "| rep-cosine / imprint | 50.00 ± 0.00 | 50.00 ± 0.00 |" in text
