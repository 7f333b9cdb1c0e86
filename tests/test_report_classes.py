"""Per-class results: result files carry per-class accuracy and base/novel confusion; the report
turns them into a per-class CSV with intervals, a confusion table and the hardest-classes plot."""
import json
from pathlib import Path

import pandas as pd
import pytest
from synthetic_cli import invoke

from lowshot.stages.report_classes import hardest_novel

RUN = ("--run", "runs/synth")


def test_result_files_stay_small_and_report_writes_per_class_tables(feature_project):
    assert invoke("benchmark", *RUN, "--heads", "protonet", "--n", "1,2", "--expid", "1,2").exit_code == 0
    results = [json.loads(p.read_text()) for p in Path("runs/synth/results").glob("*.json")]
    for r in results:  # setup 2 of the synthetic splits: base 3, 4, 5 and novel 9, 10, 11, 10 test images each
        assert r["per_class_count"] == [10] * 6 and len(r["per_class_top1"]) == 6
        assert sum(map(sum, r["base_novel_confusion"])) == 60
    out = invoke("report", "runs/synth/results")
    assert out.exit_code == 0 and "base → novel" in out.output and "novel → novel" in out.output
    per_class = pd.read_csv("runs/synth/report/per_class.csv")
    assert list(per_class.columns) == ["representation", "method", "setup", "n", "class", "class_name", "kind",
                                       "test_images", "top1", "ci95", "runs"]
    assert len(per_class) == 2 * 6 and set(per_class["runs"]) == {2}
    row = per_class[(per_class["n"] == 1) & (per_class["class"] == 9)].iloc[0]
    accs = [100 * r["per_class_top1"][3] for r in results if r["n"] == 1]
    assert row["class_name"] == "c9" and row["kind"] == "novel" and row["top1"] == pytest.approx(sum(accs) / 2)
    confusion = pd.read_csv("runs/synth/report/base_novel_confusion.csv")
    assert len(confusion) == 2 * 6 and (confusion.groupby(["n", "true"])["percent_of_true"].sum().round(6) == 100).all()
    assert Path("runs/synth/report/hardest_novel_synth.png").exists()


def test_report_without_the_split_file_says_so_and_keeps_the_rest(feature_project):
    invoke("benchmark", *RUN, "--heads", "protonet", "--n", "1", "--expid", "1")
    Path("label_splits/synth.json").rename("moved.json")
    out = invoke("report", "runs/synth/results", "--no-plot")
    assert out.exit_code == 0 and "split file is missing or changed: label_splits/synth.json" in out.output
    assert "novel → base" in out.output and not Path("runs/synth/report/per_class.csv").exists()


def test_hardest_novel_ranks_by_mean_over_methods_and_n():
    rows = [{"representation": "r", "method": m, "n": n, "class": c, "kind": "novel" if c < 30 else "base",
             "top1": float(c + (m == "b") + n)} for m in "ab" for n in (1, 5) for c in range(40)]
    hard = hardest_novel(pd.DataFrame(rows), k=20)
    assert sorted(hard["class"].unique()) == list(range(20)) and len(hard) == 20 * 4
