"""`lowshot slurm --submit` on a real single-node SLURM: the whole pipeline, a cancelled array task, a resubmission.

Skipped, with the reason, where SLURM is not installed or the tests do not run as root (`.ci/run`
installs the Debian packages when it runs as root).
"""
import re
import time
from pathlib import Path

import pytest
from slurm_cluster import skip_reason, slurm, slurm_cluster
from synthetic_cli import invoke

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

RUN = Path("runs/tiny")
SUBMIT = ["slurm", "--run", str(RUN), "--submit", "--expid", "1,2,3", "--cpus", "1", "--time", "10",
          "--heads", "logreg,matching", "--stages", "generate", "--setup-line", "echo site set-up ran",
          "--args", "train=--config train.json --epochs 1 --device cpu",
          "--args", "generate=--set iterations=20 --device cpu", "--args", "train-matching=--set episodes=5 --device cpu",
          "--args", "benchmark=--n 1,2 --device cpu", "--args", "report=--no-plot"]
OUTPUTS = ("checkpoints", "features", "generator", "heads", "results")  # everything a stage computes


@pytest.fixture
def cluster(tmp_path_factory):
    """A private SLURM for one test (about 2 s to start)."""
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as conf:
        yield conf


def submit() -> dict:
    """`lowshot slurm ... --submit`; returns stage -> job id."""
    out = invoke(*SUBMIT)
    assert out.exit_code == 0, out.output
    return {line.split(":")[0]: line.split()[2] for line in out.output.splitlines()}


def states(ids) -> dict:
    """Job (or array task) id -> SLURM state, for the jobs of `ids` (finished ones included)."""
    out = slurm("squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i %T")
    return dict(line.split() for line in out.splitlines())


def wait(ids, seconds=300) -> dict:
    """Wait until every job of `ids` has ended; their final states (with the logs when one did not complete)."""
    end = time.monotonic() + seconds
    while any(s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING") for s in states(ids).values()):
        assert time.monotonic() < end, f"jobs still running after {seconds} s: {states(ids)}"
        time.sleep(0.5)
    return states(ids)


def logs() -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((RUN / "slurm/logs").glob("*.out")))


def snapshot() -> dict:
    """Path -> modification time (ns) of every output file of the run."""
    return {p: p.stat().st_mtime_ns for d in OUTPUTS for p in (RUN / d).rglob("*") if p.is_file()}


def cells(paths) -> list:
    """The sorted `n<n>_exp<id>` of the result files among `paths` (each of every head)."""
    return sorted({re.search(r"_(n\d+_exp\d+)_", p.name).group(1) for p in paths if p.parent.name == "results"})


def test_pipeline_cancel_and_resubmit(tiny_project, cluster):
    first = submit()
    bench = first["benchmark"]
    slurm("scancel", f"{bench}_1")  # experiment 2's task, while it waits for train and features
    final = wait(first.values())
    assert set(final.values()) == {"COMPLETED"}, logs()
    assert {i for i in final if i.startswith(f"{bench}_")} == {f"{bench}_0", f"{bench}_2"}  # _1 never ran
    for path in ("checkpoints/last.pt", "features/train.hdf5", "features/test.hdf5", "generator/generator.pt",
                 "heads/matching.pt", "report/results_long.csv"):
        assert (RUN / path).exists(), f"{path}\n{logs()}"
    assert cells(snapshot()) == ["n1_exp1", "n1_exp3", "n2_exp1", "n2_exp3"]
    assert "2 experiments per row" in (RUN / f"slurm/logs/report-{first['report']}.out").read_text()
    assert "matching" in (RUN / "report/results_long.csv").read_text()  # a trained head, benchmarked
    train_log = (RUN / f"slurm/logs/train-{first['train']}.out").read_text()
    assert train_log.startswith("site set-up ran")  # the site's lines run before the command
    assert "lowshot: 1 CPU (SLURM_CPUS_PER_TASK)" in train_log  # threads and workers from the allocation
    before = snapshot()

    second = submit()  # the same command again: only experiment 2 is missing
    final = wait(second.values())
    assert set(final.values()) == {"COMPLETED"}, logs()
    after = snapshot()
    assert {p: after[p] for p in before} == before  # nothing that existed was recomputed
    assert cells(set(after) - set(before)) == ["n1_exp2", "n2_exp2"]
    assert "3 experiments per row" in (RUN / f"slurm/logs/report-{second['report']}.out").read_text()
