"""`lowshot slurm` without a SLURM: the scripts, their chaining, and bad input (one line, nothing written)."""
from pathlib import Path

import pytest
from synthetic_cli import error_line, invoke

from lowshot.errors import InputError
from lowshot.slurm import SlurmConfig, build_jobs, check_config, per_stage


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An `sbatch` on the PATH that records its arguments and answers job ids 101, 102, ... as `--parsable` does."""
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> {log}\necho "$((100 + $(wc -l < {log})));cluster"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def test_dry_run_prints_the_chain_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = invoke("slurm", "--run", "demo", "--dry-run", "--time", "train=2-00:00:00", "--time", "30",
                 "--gpus", "train=1", "--partition", '{"train": "gpu"}', "--args", "benchmark=--n 1,2",
                 "--heads", "logreg,matching", "--generator", "analogies")
    assert out.exit_code == 0
    scripts = out.output.split("# runs/demo/slurm/")[1:]
    assert [s.split(".sbatch")[0] for s in scripts] == ["train", "features", "generate", "train-matching",
                                                         "benchmark", "report"]
    train, bench, report = scripts[0], scripts[4], scripts[5]
    assert "#SBATCH --time=2-00:00:00" in train and "#SBATCH --gres=gpu:1" in train and "--partition=gpu" in train
    assert "#SBATCH --time=30" in bench and "gres" not in bench and "#SBATCH --array=0-4" in bench
    assert "(afterok: features, generate, train-matching)" in bench and "--n 1,2" in bench
    assert "--generator analogies" in bench
    assert "(afterany: benchmark)" in report and "report runs/demo/results" in report
    assert not Path("runs").exists()


def test_array_by_experiment_and_head():
    cfg = SlurmConfig(run="runs/x", heads=["logreg", "imprint"], expids=[1, 3], array_by="experiment-head",
                      skip=["generate", "train-matching"], torchrun=4)
    jobs = {j.stage: j for j in build_jobs(cfg)}
    assert "#SBATCH --array=0-3\nHEADS=(logreg logreg imprint imprint)\nEXPIDS=(1 3 1 3)" in jobs["benchmark"].text
    assert jobs["benchmark"].after == ("features",)
    assert "torch.distributed.run --standalone --nproc-per-node 4 -m lowshot -- train --run runs/x" in jobs["train"].text


@pytest.mark.parametrize("limit", ["30", "30:00", "12:30:00", "2-12", "2-12:30", "2-00:00:00", "UNLIMITED"])
def test_time_limits_slurm_accepts(limit):
    check_config(SlurmConfig(time={"train": limit}))


@pytest.mark.parametrize("limit", ["2h", "1:2:3:4", "1-", "2-25", "10:75", "-5", ""])
def test_time_limits_slurm_rejects(limit):
    with pytest.raises(InputError, match="time limit"):
        check_config(SlurmConfig(time={"train": limit}))


def test_per_stage_values():
    assert per_stage(["1:00:00", "train=2-00:00:00", '{"report": 5}'], "time") == {
        "all": "1:00:00", "train": "2-00:00:00", "report": "5"}


def test_submit_chains_the_jobs(tmp_path, monkeypatch, fake_sbatch):
    monkeypatch.chdir(tmp_path)
    out = invoke("slurm", "--run", "demo", "--submit", "--heads", "logreg,matching")
    assert out.exit_code == 0, out.output
    calls = fake_sbatch.read_text().splitlines()
    assert [c.split()[-1].rsplit("/", 1)[-1] for c in calls] == [
        "train.sbatch", "features.sbatch", "train-matching.sbatch", "benchmark.sbatch", "report.sbatch"]
    assert calls[0] == "--parsable runs/demo/slurm/train.sbatch"
    assert "--dependency=afterok:102 --kill-on-invalid-dep=yes" in calls[2]
    assert "--dependency=afterok:102:103" in calls[3] and "--dependency=afterany:104" in calls[4]
    assert "benchmark: job 104 (afterok: 102, 103)" in out.output
    assert Path("runs/demo/slurm/logs").is_dir()


def test_submit_without_sbatch_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "`sbatch` is not on the PATH" in error_line(invoke("slurm", "--run", "demo", "--submit"))
    assert not Path("runs").exists()


def test_starting_at_a_stage_whose_input_is_missing(tmp_path, monkeypatch, fake_sbatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke("slurm", "--run", "demo", "--from-stage", "features", "--submit"))
    assert "runs/demo/checkpoints/last.pt: does not exist, and `features` needs it" in line
    Path("runs/demo/features").mkdir(parents=True)
    for name in ("train.hdf5", "test.hdf5"):
        Path("runs/demo/features", name).touch()
    line = error_line(invoke("slurm", "--run", "demo", "--from-stage", "benchmark", "--heads", "logreg,matching"))
    assert "heads/matching.pt: does not exist" in line and "`train-matching` makes it" in line
    assert not Path("runs/demo/slurm").exists() and not fake_sbatch.exists()
    assert invoke("slurm", "--run", "demo", "--from-stage", "benchmark", "--submit").exit_code == 0
    assert len(fake_sbatch.read_text().splitlines()) == 2  # benchmark and report


@pytest.mark.parametrize("option, value, message", [
    ("--time", "train=2h", "--time train='2h': SLURM would reject it"),
    ("--mem", "lots", "--mem all='lots': SLURM would reject it"),
    ("--gpus", "tran=2", "--gpus stage 'tran' is not one of"),
    ("--from-stage", "bench", "--from-stage 'bench' is not one of"),
])
def test_bad_options_are_one_line_before_submitting(tmp_path, monkeypatch, fake_sbatch, option, value, message):
    monkeypatch.chdir(tmp_path)
    assert message in error_line(invoke("slurm", "--run", "demo", option, value, "--submit"))
    assert not Path("runs").exists() and not fake_sbatch.exists()


def test_every_stage_make_knows_is_a_job_waiting_for_exactly_what_it_reads():
    from lowshot.stages import STAGES
    cfg = SlurmConfig(run="runs/x", heads=["weight_generator", "pmn_hallucinator"], stages=["all"])
    jobs = {j.stage: j for j in build_jobs(cfg)}
    assert list(jobs) == [s.name for s in STAGES if s.job]
    assert jobs["train-weight-generator"].after == ("features",) and jobs["incremental"].after == ("train",)
    assert jobs["benchmark"].after == ("features", "train-weight-generator", "train-pmn")
    assert jobs["episodes"].after == ("features", "train-weight-generator", "train-pmn")
    assert jobs["report"].after == ("benchmark",) and jobs["report"].dependency == "afterany"
    only = {j.stage for j in build_jobs(SlurmConfig(run="runs/x", heads=["weight_generator"]))}
    assert only == {"train", "features", "train-weight-generator", "benchmark", "report"}


def test_gpus_go_to_the_stages_that_use_one_and_setup_lines_run_first():
    cfg = SlurmConfig(run="runs/x", heads=["matching"], gpus={"all": "2"}, setup=["module load cuda", "source v/bin/activate"])
    jobs = {j.stage: j.text for j in build_jobs(cfg)}
    assert "--gres=gpu:2" in jobs["train"] and "--gres=gpu:2" in jobs["train-matching"]
    assert "gres" not in jobs["report"]
    assert "set -euo pipefail\nmodule load cuda\nsource v/bin/activate\nexec " in jobs["features"]


def test_multi_node_train_runs_torchrun_under_srun_with_a_rendezvous():
    text = {j.stage: j.text for j in build_jobs(SlurmConfig(run="runs/x", torchrun=4, nodes=2))}["train"]
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1" in text
    assert "exec srun" in text and "--nnodes 2 --nproc-per-node 4" in text and "--rdzv-backend c10d" in text


def test_paths_in_stage_arguments_are_checked_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke("slurm", "--run", "demo", "--args", "train=--config trian.json", "--dry-run"))
    assert "trian.json: does not exist (--config in --args train=...)" in line
    line = error_line(invoke("slurm", "--run", "demo", "--args", "benchmark=--set splits=nope.json"))
    assert "nope.json: does not exist" in line and not Path("runs").exists()
