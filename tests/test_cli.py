"""The pipeline end to end through the CLI on tiny data, and one-line errors for bad input."""
import json
from pathlib import Path

import h5py
import numpy as np
from synthetic_cli import error_line as _error_line
from synthetic_cli import invoke

from lowshot.cli import main


def test_tiny_pipeline_end_to_end(tiny_project):
    assert invoke("train", "--config", "train.json", "--run", "runs/tiny", "--epochs", "1", "--device", "cpu").exit_code == 0
    assert invoke("features", "--run", "runs/tiny").exit_code == 0
    with h5py.File("runs/tiny/features/train.hdf5") as f:
        assert f["count"][0] == len(f["all_labels"]) == 8 * 22
        assert f["classifier_weight"].shape == (8, f["all_feats"].shape[1]) and "classifier_scale" in f
    out = invoke("benchmark", "--run", "runs/tiny", "--n", "1,2", "--expid", "1,2")
    assert out.exit_code == 0 and "4 new result files" in out.output
    again = invoke("benchmark", "--run", "runs/tiny", "--n", "1,2", "--expid", "1,2")
    assert "0 new result files" in again.output  # idempotent: finished cells are skipped
    result = json.loads(next(Path("runs/tiny/results").glob("logreg_nogen_setup2_n2_exp1_*.json")).read_text())
    assert len(result["accs"]) == 6 and result["seed"] == 0 and result["versions"]["torch"]
    rep = invoke("report", "runs/tiny/results")
    assert rep.exit_code == 0 and "| 2 |" in rep.output and "Novel top-1" in rep.output
    for name in ("results_long.csv", "table_top1_novel.csv", "accuracy_vs_n.png"):
        assert (Path("runs/tiny/report") / name).exists()
    assert Path("runs/tiny/report/report.md").read_text().strip() in rep.output  # the markdown, for the docs


def test_slurm_array_task_id_selects_the_experiment(feature_project, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    out = invoke("benchmark", "--run", "runs/synth", "--n", "1")
    assert "1 new result files" in out.output and "exp=3" in out.output


def test_a_new_head_revision_recomputes_its_cells(feature_project, monkeypatch):
    from lowshot.heads.logreg import LogReg
    assert "2 new result files" in invoke("benchmark", "--run", "runs/synth", "--n", "1", "--expid", "1,2").output
    monkeypatch.setattr(LogReg, "revision", LogReg.revision + 1)  # a code change that moves logreg's numbers
    again = invoke("benchmark", "--run", "runs/synth", "--n", "1", "--expid", "1,2")
    assert "2 new result files" in again.output  # not reused: the old results are of another revision


def test_report_flags_missing_cells(feature_project):
    invoke("benchmark", "--run", "runs/synth", "--n", "1,2", "--expid", "1,2")
    next(Path("runs/synth/results").glob("*_n2_exp2_*.json")).unlink()
    out = invoke("report", "runs/synth/results", "--no-plot")
    assert "missing n=2 exp=2" in out.output


def test_missing_feature_file(feature_project):
    Path("runs/synth/features/test.hdf5").unlink()
    assert "test.hdf5: feature file not found" in _error_line(invoke("benchmark", "--run", "runs/synth"))


def test_corrupt_feature_file(feature_project):
    Path("runs/synth/features/test.hdf5").write_bytes(b"\x89HDF garbage")
    assert "test.hdf5: cannot read HDF5" in _error_line(invoke("benchmark", "--run", "runs/synth"))


def test_feature_dimension_mismatch(feature_project):
    from lowshot.io.features import FeatureSet, write_features
    write_features("runs/synth/features/test.hdf5", FeatureSet(np.zeros((4, 3), np.float32), np.arange(4),
                                                              {"dataset": "synth"}))
    line = _error_line(invoke("benchmark", "--run", "runs/synth"))
    assert "test.hdf5: feature dimension 3 does not match" in line


def test_overlapping_split_file(feature_project):
    s = json.loads(Path("label_splits/synth.json").read_text())
    s["novel_classes_2"] = s["novel_classes_2"] + [0]
    Path("label_splits/synth.json").write_text(json.dumps(s))
    assert "synth.json: base and novel classes overlap" in _error_line(invoke("benchmark", "--run", "runs/synth"))


def test_shot_index_outside_its_class(feature_project):
    rows = json.loads(Path("experiment_cfgs/synth/splitfile_1.json").read_text())
    rows[9][0] = 0
    Path("experiment_cfgs/synth/splitfile_1.json").write_text(json.dumps(rows))
    line = _error_line(invoke("benchmark", "--run", "runs/synth", "--expid", "1"))
    assert "splitfile_1.json: shot index 0 of class 9 is outside" in line


def test_label_outside_label_space(feature_project):
    from lowshot.io.features import read_features, write_features
    fs = read_features("runs/synth/features/test.hdf5")
    fs.labels[0] = 99
    write_features("runs/synth/features/test.hdf5", fs)
    assert "label 99 is outside the label space" in _error_line(invoke("benchmark", "--run", "runs/synth"))


def test_bad_input_overwrites_nothing(feature_project):
    invoke("benchmark", "--run", "runs/synth", "--n", "1", "--expid", "1")
    before = {p: p.read_bytes() for p in Path("runs/synth/results").iterdir()}
    Path("runs/synth/features/test.hdf5").write_bytes(b"garbage")
    _error_line(invoke("benchmark", "--run", "runs/synth", "--n", "1", "--expid", "1", "--force"))
    assert {p: p.read_bytes() for p in Path("runs/synth/results").iterdir()} == before


def test_unknown_head_lists_the_choices(feature_project):
    assert "unknown head 'logregg'; choose one of:" in _error_line(invoke("benchmark", "--run", "runs/synth", "--heads", "logregg"))


def test_every_command_has_help():
    for name in main.commands:
        assert invoke(name, "--help").exit_code == 0
