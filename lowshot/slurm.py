"""The whole pipeline as SLURM jobs: one sbatch script per stage of `lowshot.stages.STAGES`, chained.

    train ──► features ──► generate, train-matching, ... ──► benchmark (job array) ──► report

The jobs are the stages the chosen heads and generator need (train, features, the model-training
stages their trained models come from, benchmark, report), plus any named with `--stages` (e.g.
`episodes`, `incremental`, or `all`). Each job runs `<this python> -m lowshot <stage> --run <run> ...`,
so it uses the same virtual environment; `train` may run under torchrun. The benchmark is a job
array with one task per experiment id (or per experiment × head). A job waits with `afterok` for
exactly the jobs that write what it reads (the table's `reads`, plus its heads' trained models),
and is cancelled when one fails; `report` waits with `afterany`, so it also runs after an array task
was cancelled or failed and lists the missing cells. Every stage skips finished work, so
resubmitting the same pipeline after a failure or a `scancel` computes only what is missing.

With `seeds` (`--seeds 0,1,2`), training seeds are one more array dimension: every job but the report is
an array over the seeds' run folders `<run>-seed<k>` (`lowshot.run.seed_run`), run with `--seed k` (the
benchmark's array covers seeds × experiments), and the report averages over the seeds.

Scripts and their logs go to `<run>/slurm/` (scripts written atomically).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.run import RunFolder, seed_run, test_features_path
from lowshot.stages import BY_NAME, STAGES, Stage, makers

JOBS = tuple(s.name for s in STAGES if s.job)
ALWAYS = ("train", "features", "benchmark", "report")
ARRAY_BY = ("experiment", "experiment-head")
EXPERIMENTS = (1, 2, 3, 4, 5)

TIME_LIMIT = re.compile(r"^(\d+(:[0-5]?\d){0,2}|\d+-([01]?\d|2[0-3])(:[0-5]?\d){0,2}|unlimited|infinite)$", re.I)
RESOURCES: Dict[str, Tuple[str, str, re.Pattern]] = {  # name -> (sbatch flag, what a valid value is, its pattern)
    "partition": ("--partition={}", "a partition name (or a comma-separated list)", re.compile(r"^[\w.,-]+$")),
    "account": ("--account={}", "an account name", re.compile(r"^[\w.-]+$")),
    "gpus": ("--gres=gpu:{}", "a number of GPUs", re.compile(r"^[1-9]\d*$")),
    "cpus": ("--cpus-per-task={}", "a number of CPUs", re.compile(r"^[1-9]\d*$")),
    "mem": ("--mem={}", "a memory size such as 16G or 4000M", re.compile(r"^\d+[KMGT]?$", re.I)),
    "time": ("--time={}", "a SLURM time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS", TIME_LIMIT),
}


@dataclass
class SlurmConfig:
    """The pipeline's jobs. Each resource maps a stage (or `all`) to a value, e.g. `time: {"train": "2-00:00:00"}`."""

    run: str = "runs/demo"
    from_stage: str = "train"  # the run folder must hold what the earlier stages make
    stages: List[str] = field(default_factory=list)  # jobs beyond those the heads need, e.g. episodes; "all"
    skip: List[str] = field(default_factory=list)
    heads: List[str] = field(default_factory=lambda: ["logreg"])
    generator: Optional[str] = None  # the benchmark's generator (its trained model's stage joins the jobs)
    expids: List[int] = field(default_factory=lambda: list(EXPERIMENTS))
    array_by: str = "experiment"  # one array task per experiment id, or per experiment × head
    torchrun: int = 0  # > 0: run `train` under torchrun with this many processes per node
    nodes: int = 1  # > 1: the train job spans this many nodes (torchrun on each, rendezvous on the first)
    setup: List[str] = field(default_factory=list)  # shell lines run before every job's command (module load ...)
    seeds: List[int] = field(default_factory=list)  # training seeds: each job an array over <run>-seed<k>
    args: Dict[str, str] = field(default_factory=dict)  # stage -> more options of its `lowshot` command, verbatim
    partition: Dict[str, str] = field(default_factory=dict)
    account: Dict[str, str] = field(default_factory=dict)
    gpus: Dict[str, str] = field(default_factory=dict)
    cpus: Dict[str, str] = field(default_factory=dict)
    mem: Dict[str, str] = field(default_factory=dict)
    time: Dict[str, str] = field(default_factory=dict)
    job_name: str = "lowshot"
    python: str = sys.executable
    workdir: Optional[str] = None  # the jobs' working directory; default: the current one
    submit: bool = False
    dry_run: bool = False


@dataclass
class Job:
    """One sbatch script: the stage it runs, its text, the stages it waits for and how."""

    stage: str
    path: Path
    text: str
    after: Tuple[str, ...]
    dependency: str = "afterok"


def per_stage(values: Sequence[str], option: str) -> Dict[str, str]:
    """`--time` values as {stage or 'all': value}: `VALUE` (every stage), `STAGE=VALUE`, or a JSON object."""
    out: Dict[str, str] = {}
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                out.update({k: str(v) for k, v in json.loads(value).items()})
            except (json.JSONDecodeError, AttributeError):
                raise InputError(None, f"--{option} {value!r} is not a JSON object") from None
            continue
        stage, sep, rest = value.partition("=")
        out.update({stage: rest} if sep else {"all": value})
    return out


def check_config(cfg: SlurmConfig) -> None:
    """One clear error for anything SLURM or a stage would reject, before anything is written."""
    _check_choice(cfg.from_stage, JOBS, "--from-stage")
    for stage in cfg.skip + [s for s in cfg.stages if s != "all"]:
        _check_choice(stage, JOBS, "--stages/--skip")
    _check_choice(cfg.array_by, ARRAY_BY, "--array-by")
    if cfg.torchrun < 0 or cfg.nodes < 1:
        raise InputError(None, f"--torchrun {cfg.torchrun} --nodes {cfg.nodes}: processes must be >= 0, nodes >= 1")
    if any("\n" in line for line in cfg.setup):
        raise InputError(None, "--setup-line: one shell line each (repeat the option for several)")
    check_paths(cfg)
    if not cfg.heads or not cfg.expids:
        raise InputError(None, "the benchmark array needs at least one head and one experiment id")
    for stage in cfg.args:
        _check_choice(stage, JOBS, "--args stage")
    for name, (_, what, pattern) in RESOURCES.items():
        for stage, value in getattr(cfg, name).items():
            _check_choice(stage, JOBS + ("all",), f"--{name} stage")
            if not pattern.match(str(value)):
                raise InputError(None, f"--{name} {stage}={value!r}: SLURM would reject it; expected {what}")


PATH_OPTIONS = ("--config", "--checkpoint", "--weights", "--root", "--images", "--features", "--test-features")
PATH_KEYS = ("splits", "shots_dir", "features_dir", "test_features", "checkpoint", "generator_file")


def check_paths(cfg: SlurmConfig) -> None:
    """Every file or folder named in a stage's `--args` exists (seen from the jobs' working folder): a typo is an
    error now, not after the job waited in the queue."""
    for stage, args in cfg.args.items():
        words = shlex.split(args)
        named = [(o, v) for o, v in zip(words, words[1:]) if o in PATH_OPTIONS]
        named += [("--set", v.split("=", 1)[1]) for o, v in zip(words, words[1:])
                  if o == "--set" and v.split("=", 1)[0] in PATH_KEYS and "=" in v]
        for option, value in named:
            if not (Path(cfg.workdir or ".") / value).exists():
                raise InputError(value, f"does not exist ({option} in --args {stage}=...): the job would fail "
                                        "after waiting in the queue")


def _check_choice(value: str, choices: Sequence[str], option: str) -> None:
    if value not in choices:
        raise InputError(None, f"{option} {value!r} is not one of {', '.join(choices)}")


def model_reads(cfg: SlurmConfig) -> Tuple[str, ...]:
    """The trained-model artefacts the chosen heads and generator read (`all`: none is required)."""
    from lowshot.generators import GENERATORS
    from lowshot.heads import HEADS
    heads = [] if cfg.heads == ["all"] else [HEADS.get(h) for h in cfg.heads]
    plugin = [GENERATORS.get(cfg.generator)] if cfg.generator else []
    return tuple(a for a in [h.artefact for h in heads] + [g.artefact for g in plugin] if a)


def reads(cfg: SlurmConfig, stage: Stage) -> Tuple[str, ...]:
    """What a stage's job reads: the table's `reads`, plus the heads' trained models for a `model_reads` stage."""
    return stage.reads + (model_reads(cfg) if stage.model_reads else ())


def planned_stages(cfg: SlurmConfig) -> List[str]:
    """The jobs, in pipeline order: those the heads need and those `--stages` names, from `from_stage` on, minus `skip`."""
    wanted = set(JOBS) if "all" in cfg.stages else set(ALWAYS) | set(cfg.stages) | set(makers(model_reads(cfg)))
    first = JOBS.index(cfg.from_stage)
    return [s for s in JOBS[first:] if s in wanted and s not in cfg.skip]


def check_inputs(cfg: SlurmConfig, stages: Sequence[str]) -> None:
    """Every input of a planned stage exists, or a planned stage makes it (in every seed's run folder)."""
    for run in [seed_run(cfg.run, k) for k in cfg.seeds] or [cfg.run]:
        _check_run_inputs(cfg, RunFolder(Path(cfg.workdir or ".") / run), stages)


def _check_run_inputs(cfg: SlurmConfig, run: RunFolder, stages: Sequence[str]) -> None:
    for name in stages:
        for artefact in reads(cfg, BY_NAME[name]):
            path = test_features_path(run.features) if artefact == "test_features" else run.path(artefact)
            maker = makers((artefact,))[0]
            if maker not in stages and not path.exists():
                raise InputError(path, f"does not exist, and `{name}` needs it: start at an earlier stage "
                                       f"(`{maker}` makes it) or run `lowshot {maker}` first")


def command(cfg: SlurmConfig, stage: str) -> str:
    """The shell command of one stage's job (the benchmark's reads its task's heads and experiment)."""
    py, run = shlex.quote(cfg.python), shlex.quote(cfg.run)
    seed = '"${SEEDS[$SLURM_ARRAY_TASK_ID]}"'
    if cfg.seeds and stage != "report":
        run = shlex.quote(seed_run(cfg.run, "")) + seed  # `<run>-seed`, then the task's seed
    if stage == "train" and (cfg.torchrun or cfg.nodes > 1):
        line = f"{torchrun(cfg)} -m lowshot -- train --run {run}"
    elif stage == "benchmark":
        line = (f'{py} -m lowshot benchmark --run {run} --heads "${{HEADS[$SLURM_ARRAY_TASK_ID]}}" '
                f'--expid "${{EXPIDS[$SLURM_ARRAY_TASK_ID]}}"' + (f" --generator {cfg.generator}" if cfg.generator else ""))
    elif stage == "report":
        line = f"{py} -m lowshot report {shlex.quote(str(RunFolder(Path(cfg.run)).path('results')))}"
        line += f" --seeds {','.join(map(str, cfg.seeds))}" if cfg.seeds else ""
    else:
        line = f"{py} -m lowshot {stage} --run {run}"
    if cfg.seeds and stage != "report":
        line += f" --seed {seed}"
    return f"{line} {cfg.args.get(stage, '')}".rstrip()


def torchrun(cfg: SlurmConfig) -> str:
    """torchrun on one node (`--standalone`), or under `srun` on every node of the job with a rendezvous on the first."""
    py, per_node = shlex.quote(cfg.python), cfg.torchrun or 1
    if cfg.nodes <= 1:
        return f"{py} -m torch.distributed.run --standalone --nproc-per-node {per_node}"
    return (f"srun {py} -m torch.distributed.run --nnodes {cfg.nodes} --nproc-per-node {per_node} "
            '--rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$(scontrol show hostnames '
            '"$SLURM_JOB_NODELIST" | head -n 1):29500"')


def array_cells(cfg: SlurmConfig) -> List[Tuple[str, int]]:
    """(heads, experiment id) of each benchmark array task, task id = position (`all`: one task per experiment)."""
    if cfg.array_by == "experiment" or cfg.heads == ["all"]:
        return [(",".join(cfg.heads), e) for e in cfg.expids]
    return [(h, e) for h in cfg.heads for e in cfg.expids]


def array_lines(cfg: SlurmConfig, stage: str) -> List[str]:
    """The array directive and the bash arrays a task reads its cell from: the benchmark's (heads, experiment)
    cells, times the seeds when there are several; every other job but the report, the seeds."""
    if stage == "benchmark":
        cells = array_cells(cfg)
        seeds = [k for k in cfg.seeds for _ in cells]
        cells = cells * len(cfg.seeds) if cfg.seeds else cells
        return [f"#SBATCH --array=0-{len(cells) - 1}", "HEADS=(" + " ".join(shlex.quote(h) for h, _ in cells) + ")",
                "EXPIDS=(" + " ".join(str(e) for _, e in cells) + ")"] + (
                ["SEEDS=(" + " ".join(map(str, seeds)) + ")"] if seeds else [])
    if cfg.seeds and stage != "report":
        return [f"#SBATCH --array=0-{len(cfg.seeds) - 1}", "SEEDS=(" + " ".join(map(str, cfg.seeds)) + ")"]
    return []


def script(cfg: SlurmConfig, stage: str, log_dir: Path) -> str:
    """The sbatch script of one stage: directives, then `exec` of the stage's command."""
    arrays = array_lines(cfg, stage)
    log = log_dir / (f"{stage}-%A_%a.out" if arrays else f"{stage}-%j.out")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={cfg.job_name}-{stage}",
             f"#SBATCH --chdir={os.path.abspath(cfg.workdir or '.')}", f"#SBATCH --output={log}"]
    for name, (flag, _, _) in RESOURCES.items():
        value = resource(cfg, name, stage)
        if value:
            lines.append("#SBATCH " + flag.format(value))
    if stage == "train" and cfg.nodes > 1:
        lines += [f"#SBATCH --nodes={cfg.nodes}", "#SBATCH --ntasks-per-node=1"]
    return "\n".join(lines + arrays + ["set -euo pipefail"] + cfg.setup + ["exec " + command(cfg, stage), ""])

def resource(cfg: SlurmConfig, name: str, stage: str) -> Optional[str]:
    """A stage's value of a resource: its own, else the one for all stages — for GPUs only on stages that use one
    (`Stage.gpu`); on a partition with GPUs (`sinfo`), every such stage asks for one by default."""
    values = getattr(cfg, name)
    if stage in values:
        return values[stage]
    if name != "gpus":
        return values.get("all")
    if not BY_NAME[stage].gpu:
        return None
    return values.get("all") or ("1" if gpu_partition(resource(cfg, "partition", stage)) else None)


@functools.lru_cache(maxsize=None)
def gpu_partition(partition: Optional[str]) -> bool:
    """Whether SLURM says the partition's nodes have GPUs (`sinfo -p P -o %G` names a gpu gres)."""
    if not partition or shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%G"], capture_output=True, text=True)
    return out.returncode == 0 and "gpu" in out.stdout


def build_jobs(cfg: SlurmConfig) -> List[Job]:
    """The jobs of the planned stages, in submission order, each waiting for its planned inputs."""
    stages = planned_stages(cfg)
    folder = Path(cfg.workdir or ".") / cfg.run / "slurm"
    log_dir = Path(os.path.abspath(folder / "logs"))
    return [Job(s, folder / f"{s}.sbatch", script(cfg, s, log_dir),
                tuple(a for a in makers(reads(cfg, BY_NAME[s])) if a in stages),
                "afterany" if s == "report" else "afterok") for s in stages]


def submit_jobs(jobs: Sequence[Job]) -> Dict[str, str]:
    """`sbatch --parsable` each script in order, chained by dependencies; returns stage -> job id."""
    ids: Dict[str, str] = {}
    for job in jobs:
        deps = [ids[a] for a in job.after]
        cmd = ["sbatch", "--parsable"] + ([f"--dependency={job.dependency}:{':'.join(deps)}",
                                           "--kill-on-invalid-dep=yes"] if deps else []) + [str(job.path)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            submitted = ", ".join(f"{s} = job {i}" for s, i in ids.items()) or "nothing"
            raise InputError(job.path, f"sbatch failed ({done.stderr.strip()}); submitted before it: {submitted}")
        ids[job.stage] = done.stdout.strip().split(";")[0]
    return ids


def slurm(cfg: SlurmConfig) -> List[str]:
    """Check, then print (`dry_run`), write, or write and submit the pipeline's jobs; returns lines to show."""
    check_config(cfg)
    jobs = build_jobs(cfg)
    check_inputs(cfg, [j.stage for j in jobs])
    if cfg.submit and not cfg.dry_run and shutil.which("sbatch") is None:
        raise InputError(None, "--submit: `sbatch` is not on the PATH (run on a SLURM login node, or drop --submit)")
    if cfg.dry_run:
        return [f"# {j.path} ({j.dependency}: {', '.join(j.after) or 'nothing'})\n{j.text}" for j in jobs]
    for job in jobs:
        job.path.parent.joinpath("logs").mkdir(parents=True, exist_ok=True)
        with atomic_path(job.path) as tmp:
            tmp.write_text(job.text)
    if not cfg.submit:
        return [f"wrote {j.path}" for j in jobs] + ["submit them, chained, with the same command and --submit"]
    ids = submit_jobs(jobs)
    return [f"{j.stage}: job {ids[j.stage]}" + (f" ({j.dependency}: {', '.join(ids[a] for a in j.after)})"
                                                 if j.after else "") for j in jobs]
