"""Numbers a researcher can trust: stale results are recomputed, diverged fits write nothing,
results from different inputs are never averaged, and each bad input file is one error line."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from synthetic_cli import error_line, invoke

from lowshot.io.features import FeatureSet, read_features, write_features

RUN = ("--run", "runs/synth")


def _results():
    return {p.name: json.loads(p.read_text()) for p in Path("runs/synth/results").glob("*.json")}


def _shift_features(offset: float) -> None:
    """Rewrite both feature files with different values (as re-extracting after more training would)."""
    for split in ("train", "test"):
        fs = read_features(f"runs/synth/features/{split}.hdf5")
        write_features(fs.path, FeatureSet(fs.feats + offset, fs.labels, fs.attrs, fs.classifier_weight,
                                           fs.classifier_scale))


def test_changed_features_recompute_the_cell(feature_project):
    assert "1 new result files" in invoke("benchmark", *RUN, "--n", "1", "--expid", "1").output
    (name, before), = _results().items()
    _shift_features(3.0)
    assert "1 new result files" in invoke("benchmark", *RUN, "--n", "1", "--expid", "1").output
    (name_after, after), = _results().items()
    assert name_after == name  # the stale result is replaced, not kept beside the new one
    assert after["inputs"]["train_features"] != before["inputs"]["train_features"]
    assert after["inputs"]["test_features"] != before["inputs"]["test_features"]
    assert "0 new result files" in invoke("benchmark", *RUN, "--n", "1", "--expid", "1").output


def test_changed_shot_file_recomputes_only_its_experiment(feature_project):
    invoke("benchmark", *RUN, "--n", "1", "--expid", "1,2")
    rows = json.loads(Path("experiment_cfgs/synth/splitfile_2.json").read_text())
    rows[9] = rows[9][1:] + rows[9][:1]
    Path("experiment_cfgs/synth/splitfile_2.json").write_text(json.dumps(rows))
    out = invoke("benchmark", *RUN, "--n", "1", "--expid", "1,2").output
    assert "1 new result files" in out and "exp=2" in out


def test_report_refuses_to_mix_feature_files(feature_project):
    invoke("benchmark", *RUN, "--heads", "logreg", "--n", "1", "--expid", "1")
    _shift_features(3.0)
    invoke("benchmark", *RUN, "--heads", "protonet", "--n", "1", "--expid", "1")
    line = error_line(invoke("report", "runs/synth/results", "--no-plot"))
    assert "come from different train features" in line and "runs/synth/features/train.hdf5" in line
    assert "logreg_nogen" in line and "protonet_nogen" in line


@pytest.mark.parametrize("head,params", [("logreg", {"solver": "hg", "lr": 1e30, "maxiters": 20}),
                                         ("imprint_ft", {"lr": 1e30})])
def test_diverged_fit_is_an_error_and_writes_nothing(feature_project, head, params):
    line = error_line(invoke("benchmark", *RUN, "--heads", head, "--n", "1", "--expid", "1",
                             "--set", "head_params=" + json.dumps({head: params})))
    assert f"head '{head}' diverged in cell n=1 exp=1 setup 2" in line and '"lr": 1e+29' in line
    assert not Path("runs/synth/results").exists() or not any(Path("runs/synth/results").iterdir())


def _set_count(path, count):
    with h5py.File(path, "r+") as f:
        f["count"][0] = count


def _edit_json(path, change):
    obj = json.loads(Path(path).read_text())
    change(obj)
    Path(path).write_text(json.dumps(obj))


def _duplicate_shot(rows):
    rows[9][1] = rows[9][0]


def _checkpoint(split, sha):
    with h5py.File(f"runs/synth/features/{split}.hdf5", "r+") as f:
        f.attrs["checkpoint_sha1"] = sha


BAD_INPUTS = {
    "count beyond the rows": (lambda: _set_count("runs/synth/features/train.hdf5", 10_000), (),
                              "train.hdf5: count = 10000 but the file stores 480 feature rows"),
    "repeated shot": (lambda: _edit_json("experiment_cfgs/synth/splitfile_1.json", _duplicate_shot), ("--n", "2"),
                      "splitfile_1.json: class 9 repeats an image among its first 2 shots"),
    "base_classes not the union": (lambda: _edit_json("label_splits/synth.json", lambda s: s.update(base_classes=[0])),
                                   (), "synth.json: base_classes is not the union of base_classes_1 and base_classes_2"),
    "two checkpoints": (lambda: (_checkpoint("train", "aaa"), _checkpoint("test", "bbb")), (),
                        "test.hdf5: was extracted from checkpoint bbb, runs/synth/features/train.hdf5 from aaa"),
    "zero shots": (lambda: None, ("--n", "0"), "--n 0: the number of shots must be a positive integer"),
    "negative shots": (lambda: None, ("--n", "-1"), "--n -1: the number of shots must be a positive integer"),
    "no shot file": (lambda: Path("experiment_cfgs/synth/splitfile_1.json").unlink(), (),
                     "splitfile_1.json: file not found"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_overwrites_nothing(feature_project, case):
    invoke("benchmark", *RUN, "--n", "1", "--expid", "2")
    before = {p: p.read_bytes() for p in Path("runs/synth/results").iterdir()}
    spoil, args, message = BAD_INPUTS[case]
    spoil()
    line = error_line(invoke("benchmark", *RUN, "--expid", "1", *(args or ("--n", "1")), "--force"))
    assert message in line
    assert {p: p.read_bytes() for p in Path("runs/synth/results").iterdir()} == before


def test_hg_feature_folder_benchmarks_unchanged(feature_project):
    """train.hdf5 + val.hdf5 with zero padding rows after `count`, as the H&G harness writes them."""
    folder = Path("hg_features")
    for split, name in (("train", "train.hdf5"), ("test", "val.hdf5")):
        fs = read_features(f"runs/synth/features/{split}.hdf5")
        with h5py.File(folder.mkdir(exist_ok=True) or folder / name, "w") as f:
            f["all_feats"] = np.concatenate([fs.feats, np.zeros((7, fs.dim), np.float32)])
            f["all_labels"] = np.concatenate([fs.labels, np.zeros(7, np.int64)]).astype(np.int32)
            f["count"] = np.array([len(fs.labels)], np.int32)
    args = ("--set", "features_dir=hg_features", "--set", "splits=label_splits/synth.json",
            "--set", "shots_dir=experiment_cfgs/synth", "--n", "1", "--expid", "1")
    out = invoke("benchmark", "--run", "runs/hg", *args)
    assert out.exit_code == 0 and "1 new result files" in out.output
    (result,) = [json.loads(p.read_text()) for p in Path("runs/hg/results").glob("*.json")]
    assert result["input_files"]["test_features"].endswith("hg_features/val.hdf5")
    reference = invoke("benchmark", *RUN, "--n", "1", "--expid", "1")
    assert reference.exit_code == 0
    (same,) = _results().values()
    assert same["accs"] == result["accs"]  # padding rows are never read


def test_test_features_option_names_the_file(feature_project):
    out = invoke("benchmark", *RUN, "--n", "1", "--expid", "1", "--test-features", "elsewhere/val.hdf5")
    assert "elsewhere/val.hdf5: feature file not found" in error_line(out)


def test_config_file_heads_and_ns_are_not_masked_by_flag_defaults(feature_project):
    Path("bench.json").write_text(json.dumps({"heads": ["protonet"], "ns": [2], "expids": [1]}))
    out = invoke("benchmark", *RUN, "--config", "bench.json")
    assert "1 new result files" in out.output and "protonet n=2" in out.output.replace("  ", " ").replace("   ", " ")
    out = invoke("benchmark", *RUN, "--config", "bench.json", "--set", "ns=5", "--set", "seed=3")
    (fresh,) = [r for r in _results().values() if r["n"] == 5]
    assert fresh["seed"] == 3 and isinstance(fresh["seed"], int)


def _drop_classifier() -> None:
    for split in ("train", "test"):
        path = f"runs/synth/features/{split}.hdf5"
        fs = read_features(path)
        write_features(path, FeatureSet(fs.feats, fs.labels, fs.attrs))


def test_heads_all_runs_what_the_inputs_allow_and_a_named_head_fails_before_any_cell(feature_project):
    _drop_classifier()
    out = invoke("benchmark", "--run", "runs/synth", "--heads", "all", "--n", "1", "--expid", "1")
    assert out.exit_code == 0, out.output
    ran = {r["head"] for r in _results().values()}
    for name in ("imprint", "imprint_ft", "rand_ft", "raw_imprint", "matching", "weight_generator", "pmn_hallucinator"):
        assert name not in ran and f"skipping {name}:" in out.output
    assert {"logreg", "protonet", "cosine_ncm", "bd_cspn"} <= ran
    line = error_line(invoke("benchmark", "--run", "runs/synth", "--heads", "protonet,imprint", "--n", "1",
                             "--expid", "2"))
    assert "'imprint'" in line and "classifier_weight" in line
    assert not [r for r in _results().values() if r["expid"] == 2]  # protonet, listed first, ran no cell either
